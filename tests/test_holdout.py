"""`metakd fit --hold-out DOMAIN` (the teacher never sees it) then `metakd distill --domain DOMAIN`,
and `--train-fraction` (seeded, label-stratified, the same rows every run) on fit and distill."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import metakd_cli.steps.distill as distill_module
import metakd_cli.steps.fit as fit_module
from conftest import toy_rows, write_toy_dataset
from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
from metakd_cli.data.rows import Example
from metakd_cli.data.dataset import fraction_indices, load_dataset
from metakd_cli.steps.distill import distill
from metakd_cli.core.errors import UserError
from metakd_cli.steps.fit import fit
from metakd_cli.models.heads import TeacherInfo, load_domain_classifiers, load_head
from metakd_cli.core.run_dir import RunDir

DOMAINS = ["books", "electronics", "kitchen"]
HELD_OUT = "kitchen"


def _quiet(*_args, **_kwargs) -> None:
    pass


def tiny_fit(model: Path, **overrides) -> FitConfig:
    values = dict(teacher=str(model), epochs=1, batch_size=8, lr=1e-3, max_length=16, seed=3)
    values.update(overrides)
    return FitConfig(**values)


def small(**overrides) -> DistillConfig:
    values = dict(intermediate_epochs=1, epochs=1, batch_size=8, lr=1e-3, intermediate_lr=1e-3, seed=5)
    values.update(overrides)
    return DistillConfig(**values)


class Spy:
    """Records the domain ids of every training batch and of every row the scores are computed on."""

    def __init__(self, monkeypatch):
        self.batches: list[int] = []
        self.scored: list[int] = []
        collate, represent = fit_module.collate, fit_module.encode_representations

        def spy_collate(encoded, indices, pad_id):
            batch = collate(encoded, indices, pad_id)
            self.batches.extend(batch["domains"].tolist())
            self.batch_rows.append(sorted(batch["index"].tolist()))
            return batch

        def spy_represent(encoder, encoded, *args, **kwargs):
            self.scored.extend(encoded.domains)
            return represent(encoder, encoded, *args, **kwargs)

        self.batch_rows: list[list[int]] = []
        monkeypatch.setattr(fit_module, "collate", spy_collate)
        monkeypatch.setattr(fit_module, "encode_representations", spy_represent)


@pytest.fixture
def toy_data(tmp_path: Path) -> DataConfig:
    return DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))


# --------------------------------------------------------------------------- hold-out


@pytest.fixture(scope="module")
def held_out_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A meta-teacher fitted without kitchen, and what reached it (training batches, scored rows)."""
    root = tmp_path_factory.mktemp("held-out")
    data = DataConfig(path=str(write_toy_dataset(root, "jsonl")))
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = Spy(monkeypatch)
        fit(data, tiny_fit(Path(tiny_model_dir), hold_out=HELD_OUT, epochs=2), RunDir(root / "run"), log=_quiet)
    return root / "run", {"batches": spy.batches, "scored": spy.scored}


@pytest.fixture
def run(held_out_run, tmp_path) -> RunDir:
    shutil.copytree(held_out_run[0], tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_no_row_of_the_held_out_domain_reaches_the_teacher(held_out_run):
    path, seen = held_out_run
    kitchen = DOMAINS.index(HELD_OUT)
    assert seen["batches"] and kitchen not in seen["batches"]  # no training batch holds a kitchen row
    assert set(seen["batches"]) == {0, 1}
    assert seen["scored"] and kitchen not in seen["scored"]  # prototypes and t: without kitchen too
    run = RunDir(path)
    info = TeacherInfo.load(run.teacher)
    _, extra = load_head(run.teacher, info.hidden_size, len(info.domains))
    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    is_kitchen = torch.tensor([ex.domain == HELD_OUT for ex in dataset.train])
    assert torch.isnan(extra["scores"][is_kitchen]).all()  # no t for a row the teacher did not train on
    assert torch.isfinite(extra["scores"][~is_kitchen]).all()
    assert torch.count_nonzero(extra["prototypes"][kitchen]) == 0  # no kitchen prototype
    assert torch.count_nonzero(extra["prototypes"][:kitchen]) > 0
    # the manifest and the metrics say what was held out; the teacher is still scored on it
    manifest = run.load()
    assert manifest.steps["fit"]["held_out"] == HELD_OUT
    assert manifest.steps["fit"]["config"]["hold_out"] == HELD_OUT
    assert manifest.steps["fit"]["train_rows"][HELD_OUT] == 0 and manifest.steps["fit"]["train_rows"]["books"] > 0
    assert info.held_out == HELD_OUT
    metrics = json.loads((run.metrics / "fit.json").read_text())
    assert metrics["held_out"] == HELD_OUT and HELD_OUT in metrics["test_accuracy"]
    assert HELD_OUT not in metrics["t"]


def test_distilling_to_the_held_out_domain_computes_its_t(run, monkeypatch):
    captured = {}
    original = distill_module.expertise_weight

    def spy(t, p_gold):
        captured["t"] = t.clone()
        return original(t, p_gold)

    monkeypatch.setattr(distill_module, "expertise_weight", spy)
    result = distill(small(domain=HELD_OUT), run, log=_quiet, warn=_quiet)
    t = captured["t"]
    assert len(t) == result.metrics["train_rows"][HELD_OUT] and torch.isfinite(t).all()
    assert (t.abs() <= 1.0).all() and t.min() < t.max()  # the usual formula and scale, per row
    assert result.metrics["held_out"] == HELD_OUT
    assert set(result.metrics["test_accuracy"]) == {HELD_OUT, "average"}
    assert run.load().steps["distill"]["held_out"] == HELD_OUT


def test_held_out_t_uses_the_stored_prototypes_and_its_own_centroid(run):
    """missing_scores for kitchen rows == the fit formula with kitchen's centroid from those rows."""
    from metakd_cli.data.encode import encode
    from metakd_cli.training.prototypes import encode_representations
    from metakd_cli.models.loading import load_encoder, load_tokenizer
    from metakd_cli.training.prototypes import transferability

    info = TeacherInfo.load(run.teacher)
    _, extra = load_head(run.teacher, info.hidden_size, len(info.domains))
    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    tokenizer = load_tokenizer(str(run.teacher))
    rows = encode([ex for ex in dataset.train if ex.domain == HELD_OUT], dataset, tokenizer, 16)
    t = distill_module.missing_scores(rows, run, extra["prototypes"], 2, 0)
    reps = encode_representations(load_encoder(run.load().steps["fit"]["model_path"]), rows, 0, "mean")
    labels = torch.tensor(rows.labels)
    protos = extra["prototypes"].clone()
    for c in range(2):
        protos[2, c] = reps[labels == c].mean(0)
    present = torch.tensor([[True, True], [True, True], [False, False]])
    expected = transferability(reps, torch.tensor(rows.domains), labels, protos, present, 0.5, 0.5)
    assert torch.allclose(t, expected, atol=1e-5)


def test_single_teachers_with_a_held_out_domain(tiny_model_dir, toy_data, tmp_path):
    run = RunDir(tmp_path / "single")
    result = fit(toy_data, tiny_fit(Path(tiny_model_dir), teacher_mode="single", hold_out=HELD_OUT), run, log=_quiet)
    assert [t.name for t in result.teachers] == ["books", "electronics"]
    assert not (run.teacher / HELD_OUT).exists()
    with pytest.raises(UserError, match="no single-domain teacher for 'kitchen': it was held out .*--teacher-domain"):
        distill(small(domain=HELD_OUT, method="kd"), run, log=_quiet, warn=_quiet)
    other = distill(small(domain=HELD_OUT, teacher_domain="books", method="kd"), run, log=_quiet, warn=_quiet)
    assert set(other.metrics["test_accuracy"]) == {HELD_OUT, "average"}
    mtn = distill(small(domain=HELD_OUT, method="mtn"), run, log=_quiet, warn=_quiet)
    assert mtn.metrics["teachers"] == ["books", "electronics"]
    with pytest.raises(UserError, match="--teacher-domain kitchen: no single-domain teacher for it .*books, electronics"):
        distill(small(domain=HELD_OUT, method="mtn", teacher_domain=HELD_OUT), run, log=_quiet, warn=_quiet)
    with pytest.raises(UserError, match="--domain: unknown domain 'garden'"):
        distill(small(domain="garden", method="mtn"), run, log=_quiet, warn=_quiet)

    # eval: no single teacher for the held-out domain, so the teacher is scored (and is the agreement
    # reference) on the other domains only; the student on every domain
    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "eval", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    teacher, student = ({m["name"]: m for m in report["models"]}[n] for n in ("teacher", "student"))
    assert set(teacher["accuracy"]) == {"books", "electronics"}  # no average over fewer domains than the others'
    assert set(student["accuracy"]) == {*DOMAINS, "average"}
    assert set(student["agreement"]) == {"books", "electronics", "average", "all"}
    assert "no single teacher for kitchen (held out at fit); scored on the other domains only" in result.output
    only = CliRunner().invoke(cli, ["--run-dir", str(run.path), "eval", "--model", "student", "--domain", HELD_OUT])
    assert only.exit_code == 0, only.output  # nothing to compare with: no agreement, no error
    asked = CliRunner().invoke(cli, ["--run-dir", str(run.path), "eval", "--model", "teacher", "--domain", HELD_OUT])
    assert asked.exit_code == 2
    assert "no single teacher for kitchen (held out at fit); give --model student" in asked.output


def test_mtl_heads_of_a_held_out_domain_are_the_mean_of_the_others(tiny_model_dir, toy_data, tmp_path):
    run = RunDir(tmp_path / "mtl")
    fit(toy_data, tiny_fit(Path(tiny_model_dir), teacher_mode="mtl", hold_out=HELD_OUT), run, log=_quiet)
    heads = load_domain_classifiers(run.teacher)
    assert torch.allclose(heads.weight[2], heads.weight[:2].mean(0))
    assert torch.allclose(heads.bias[2], heads.bias[:2].mean(0))


def test_hold_out_errors_and_command_line(tiny_model_dir, toy_data, tmp_path):
    with pytest.raises(UserError, match="--hold-out: unknown domain 'garden'"):
        fit(toy_data, tiny_fit(Path(tiny_model_dir), hold_out="garden"), RunDir(tmp_path / "r"), log=_quiet)
    # a fraction of the held-out domain would thin out nothing: refused before any work, not silently ignored
    with pytest.raises(UserError, match="--fraction-domains kitchen: that domain is held out"):
        fit(toy_data, tiny_fit(Path(tiny_model_dir), hold_out=HELD_OUT, train_fraction=0.5,
                               fraction_domains=[HELD_OUT]), RunDir(tmp_path / "r"), log=_quiet)
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(cli, [
        "--quiet", "--run-dir", str(tmp_path / "cli"), "fit", toy_data.path, "--teacher", str(tiny_model_dir),
        "--teacher-mode", "mix", "--hold-out", HELD_OUT, "--epochs", "1", "--batch-size", "8", "--max-length", "16",
    ])
    assert result.exit_code == 0, result.output
    assert "kitchen (held out)" in result.stdout


# --------------------------------------------------------------------------- train fraction


def test_fraction_indices_are_seeded_stratified_and_per_domain():
    rows = [Example(r["text"], None, r["label"], r["domain"], f"toy:{i}") for i, r in enumerate(toy_rows())]
    kept = fraction_indices(rows, 0.25, seed=42)
    assert kept == fraction_indices(rows, 0.25, seed=42) == sorted(kept)  # the same rows every run, in order
    assert kept != fraction_indices(rows, 0.25, seed=43)
    counts = Counter((rows[i].domain, rows[i].label) for i in kept)
    assert counts == {(d, lab): 5 for d in DOMAINS for lab in ("negative", "positive")}  # 25% of 20 each
    # a domain keeps the same rows sampled alone (distill --domain) as sampled with the others (fit)
    books = [i for i, r in enumerate(rows) if r.domain == "books"]
    alone = fraction_indices([rows[i] for i in books], 0.25, seed=42)
    assert [books[i] for i in alone] == [i for i in kept if rows[i].domain == "books"]
    assert fraction_indices(rows, 1.0, seed=42) == list(range(len(rows)))
    tiny = fraction_indices(rows, 0.001, seed=42)  # at least one row per label and domain
    assert Counter((rows[i].domain, rows[i].label) for i in tiny) == {(d, lab): 1 for d in DOMAINS
                                                                      for lab in ("negative", "positive")}


def test_fit_and_distill_train_on_the_same_fraction(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    run = RunDir(tmp_path / "run")
    fit(toy_data, tiny_fit(Path(tiny_model_dir), teacher_mode="meta", train_fraction=0.5), run, log=_quiet)
    dataset = load_dataset(toy_data)
    expected = fraction_indices(dataset.train, 0.5, dataset.split_seed)
    assert len(spy.batches) == len(expected)  # one epoch: every kept row once, nothing else
    manifest = run.load()
    assert manifest.steps["fit"]["train_fraction"] == 0.5
    assert manifest.steps["fit"]["train_rows"] == dict(Counter(dataset.train[i].domain for i in expected))
    info = TeacherInfo.load(run.teacher)
    _, extra = load_head(run.teacher, info.hidden_size, len(info.domains))
    has_t = torch.isfinite(extra["scores"]).nonzero().flatten().tolist()
    assert has_t == expected  # t stored exactly for the rows the teacher trained on

    result = distill(small(domain="books", train_fraction=0.5), run, log=_quiet, warn=_quiet)
    books = [i for i in expected if dataset.train[i].domain == "books"]
    assert result.metrics["train_rows"] == {"books": len(books)}
    assert result.metrics["train_fraction"] == 0.5
    assert run.load().steps["distill"]["train_rows"] == {"books": len(books)}
    # a larger fraction reaches rows without a stored t: they get one, and lambda stays finite
    more = distill(small(domain="books", train_fraction=0.75, intermediate_epochs=0), run, log=_quiet, warn=_quiet)
    assert more.metrics["train_rows"]["books"] > len(books)
    assert all(value == value for value in more.metrics["lambda"].values())  # no NaN


def test_same_fraction_same_rows_every_run(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    first = Spy(monkeypatch)
    fit(toy_data, tiny_fit(Path(tiny_model_dir), teacher_mode="mix", train_fraction=0.3), RunDir(tmp_path / "a"),
        log=_quiet)
    monkeypatch.undo()
    second = Spy(monkeypatch)
    fit(toy_data, tiny_fit(Path(tiny_model_dir), teacher_mode="mix", train_fraction=0.3), RunDir(tmp_path / "b"),
        log=_quiet)
    assert first.batch_rows == second.batch_rows and first.batches == second.batches
    balance = Counter(first.batches)
    assert balance[0] == balance[1] == balance[2]


def test_fraction_domains_scarce_one_domain_only(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    """The data-scarce meta-teacher: a fraction of one domain's rows, every row of the others."""
    spy = Spy(monkeypatch)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "--quiet", "--run-dir", str(run_dir), "fit", str(toy_data.path), "--teacher", str(tiny_model_dir),
        "--teacher-mode", "mix", "--epochs", "1", "--batch-size", "8", "--max-length", "16",
        "--train-fraction", "0.3", "--fraction-domains", "books"])
    assert result.exit_code == 0, result.output
    dataset = load_dataset(toy_data)
    sampled = set(fraction_indices(dataset.train, 0.3, dataset.split_seed))
    expected = Counter(r.domain for i, r in enumerate(dataset.train) if r.domain != "books" or i in sampled)
    assert Counter(dataset.domains[d] for d in spy.batches) == expected
    assert expected["books"] < expected["kitchen"] == Counter(r.domain for r in dataset.train)["kitchen"]
    step = RunDir(run_dir).load().steps["fit"]
    assert step["fraction_domains"] == ["books"] and step["train_rows"] == dict(expected)

    bad = CliRunner().invoke(cli, [
        "--quiet", "--run-dir", str(tmp_path / "bad"), "fit", str(toy_data.path), "--teacher", str(tiny_model_dir),
        "--train-fraction", "0.3", "--fraction-domains", "books,garden"])
    assert bad.exit_code == 2
    assert "--fraction-domains: unknown domain 'garden'" in bad.output


def test_bad_fractions_are_user_errors(tiny_model_dir, toy_data, tmp_path):
    for value in (0.0, 1.5):
        with pytest.raises(UserError, match="--train-fraction must be above 0 and at most 1"):
            fit(toy_data, tiny_fit(Path(tiny_model_dir), train_fraction=value), RunDir(tmp_path / "r"), log=_quiet)
    # --fraction-domains without a fraction below 1 would record a scarce run that did not happen
    bad = CliRunner().invoke(cli, [
        "--quiet", "--run-dir", str(tmp_path / "r"), "fit", str(toy_data.path), "--teacher", str(tiny_model_dir),
        "--fraction-domains", "books"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--fraction-domains books says which domains --train-fraction thins out, but --train-fraction is 1" in (
        bad.output)
    assert not (tmp_path / "r").exists()


def test_eval_marks_the_held_out_domain(run):
    from click.testing import CliRunner

    from metakd_cli.cli import cli

    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "eval", "--model", "teacher",
                                      "--domain", HELD_OUT, "--domain", "books"])
    assert result.exit_code == 0, result.output
    assert f"{HELD_OUT} (held out) acc %" in result.stdout
    assert json.loads((run.metrics / "eval.json").read_text())["held_out"] == HELD_OUT


def test_eval_scores_an_mtl_teacher_with_each_rows_own_head(tiny_model_dir, toy_data, tmp_path):
    import numpy as np

    from metakd_cli.core.config import EvalConfig
    from metakd_cli.steps.evaluate import evaluate_run

    fitted = fit(toy_data, tiny_fit(Path(tiny_model_dir), teacher_mode="mtl", epochs=2), RunDir(tmp_path / "r"),
                 log=_quiet)
    result = evaluate_run(EvalConfig(models=["teacher"], latency_rows=2, throughput_batches=1), RunDir(tmp_path / "r"))
    report = result.models[0]
    for domain in DOMAINS:
        assert report.accuracy[domain] == fitted.metrics["test_accuracy"][domain]
    assert np.isclose(report.accuracy["average"], fitted.metrics["test_accuracy"]["average"])
