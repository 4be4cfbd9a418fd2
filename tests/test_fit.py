"""`metakd fit` on a tiny random BERT and a few dozen rows: artifacts, modes, reload, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import InterruptAfter, toy_rows, write_jsonl, write_toy_dataset
from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig, FitConfig
from metakd_cli.data.encode import encode
from metakd_cli.data.dataset import load_dataset
from metakd_cli.core.errors import UserError
from metakd_cli.models.inference import torch_logits
from metakd_cli.steps import fit as fit_module
from metakd_cli.steps.fit import fit
from metakd_cli.models.heads import TeacherInfo, load_head
from metakd_cli.models.loading import check_model_source
from metakd_cli.core.run_dir import RunDir


def tiny_fit_config(model: Path, **overrides) -> FitConfig:
    values = dict(teacher=str(model), epochs=2, batch_size=8, lr=1e-3, max_length=16, seed=7)
    values.update(overrides)
    return FitConfig(**values)


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture
def toy_data(tmp_path: Path) -> DataConfig:
    return DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))


def _strip_timings(metrics: dict) -> dict:
    text = json.dumps(metrics, sort_keys=True)
    clean = json.loads(text)
    for key in ("seconds", "train_examples_per_second", "command"):
        clean.pop(key, None)
    for teacher in clean["teachers"]:
        teacher.pop("train_seconds"), teacher.pop("examples_per_second"), teacher.pop("resumed_from")
    return clean


def test_meta_fit_writes_a_plain_transformers_teacher(tiny_model_dir, toy_data, tmp_path):
    run = RunDir(tmp_path / "run")
    result = fit(toy_data, tiny_fit_config(tiny_model_dir), run, log=_quiet)
    assert (run.teacher / "model.safetensors").is_file()
    assert (run.metrics / "fit.json").is_file()
    manifest = run.load()
    assert manifest.steps["fit"]["config"]["teacher_mode"] == "meta"
    assert manifest.data["domains"] == ["books", "electronics", "kitchen"]
    assert manifest.data["text_pairs"] is False  # predict reads no pair column for this model
    metrics = result.metrics
    assert set(metrics["dev_accuracy"]) == {"books", "electronics", "kitchen", "average"}
    assert set(metrics["t"]) == {"books", "electronics", "kitchen"}
    for stats in metrics["t"].values():
        assert -1.0 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1.0

    # plain transformers loads it and reproduces the recorded dev accuracy
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run.teacher)
    tokenizer = AutoTokenizer.from_pretrained(run.teacher)
    dataset = load_dataset(toy_data)
    dev = encode(dataset.dev, dataset, tokenizer, 16)
    overall = np.mean([metrics["dev_accuracy"][d] for d in dataset.domains])
    assert metrics["dev_accuracy"]["average"] == pytest.approx(overall)
    per_domain = {}
    predictions = torch_logits(model, dev, 0).argmax(-1)
    for i, domain in enumerate(dataset.domains):
        mask = np.asarray(dev.domains) == i
        per_domain[domain] = float((predictions[mask] == np.asarray(dev.labels)[mask]).mean() * 100)
        assert per_domain[domain] == pytest.approx(metrics["dev_accuracy"][domain])

    # the extra state: domain head, one t per training row, prototypes per domain and class
    info = TeacherInfo.load(run.teacher)
    assert info.mode == "meta" and info.domain_loss == "confusion"
    head, extra = load_head(run.teacher, info.hidden_size, len(info.domains))
    assert extra["scores"].shape == (len(dataset.train),)
    assert extra["prototypes"].shape == (3, 2, 32)


def test_the_teacher_learns_the_toy_task(tiny_model_dir, toy_data, tmp_path):
    result = fit(toy_data, tiny_fit_config(tiny_model_dir, teacher_mode="mix", epochs=6), RunDir(tmp_path / "r"),
                 log=_quiet)
    assert result.metrics["dev_accuracy"]["average"] >= 80.0


def test_a_fit_on_pairs_records_it(tiny_model_dir, tmp_path):
    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl", pairs=True)))
    run = RunDir(tmp_path / "r")
    fit(data, tiny_fit_config(tiny_model_dir, teacher_mode="mix", epochs=1), run, log=_quiet)
    assert run.load().data["text_pairs"] is True  # predict then asks for the second texts


@pytest.mark.parametrize("overrides", [
    {"teacher_mode": "mix"},
    {"domain_loss": "reversal"},
    {"domain_loss": "none", "prototypes": "domain", "pooling": "cls"},
])
def test_other_modes_run(tiny_model_dir, toy_data, tmp_path, overrides):
    result = fit(toy_data, tiny_fit_config(tiny_model_dir, epochs=1, **overrides), RunDir(tmp_path / "r"), log=_quiet)
    assert result.metrics["mode"] == overrides.get("teacher_mode", "meta")
    info = TeacherInfo.load(tmp_path / "r" / "teacher")
    expected = "none" if overrides.get("teacher_mode") == "mix" else overrides.get("domain_loss", "confusion")
    assert info.domain_loss == expected


def test_single_mode_writes_one_teacher_per_domain(tiny_model_dir, toy_data, tmp_path):
    run = RunDir(tmp_path / "r")
    result = fit(toy_data, tiny_fit_config(tiny_model_dir, teacher_mode="single", epochs=1), run, log=_quiet)
    for domain in ("books", "electronics", "kitchen"):
        assert (run.teacher / domain / "model.safetensors").is_file()
        assert TeacherInfo.load(run.teacher / domain).domain == domain
    assert set(result.metrics["test_accuracy"]) == {"books", "electronics", "kitchen", "average"}


def test_same_seed_same_metrics(tiny_model_dir, toy_data, tmp_path):
    first = fit(toy_data, tiny_fit_config(tiny_model_dir), RunDir(tmp_path / "a"), log=_quiet)
    second = fit(toy_data, tiny_fit_config(tiny_model_dir), RunDir(tmp_path / "b"), log=_quiet)
    assert _strip_timings(first.metrics) == _strip_timings(second.metrics)


def _no_second_pass(*_args, **_kwargs):
    raise AssertionError("the transferability pass ran again")


def test_interrupted_fit_resumes_to_the_same_metrics(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    config = tiny_fit_config(tiny_model_dir, epochs=3)
    reference = fit(toy_data, config, RunDir(tmp_path / "ref"), log=_quiet)
    run = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        fit(toy_data, config, run, progress=InterruptAfter(13), log=_quiet)  # mid second epoch
    assert not run.teacher.exists()  # nothing half-written where the manifest would point
    assert (run.checkpoints / "fit-teacher" / "loop.json").is_file()
    assert (run.checkpoints / "fit-scores" / "scores.safetensors").is_file()
    monkeypatch.setattr(fit_module, "transferability_scores", _no_second_pass)  # resume reads the saved pass
    lines: list[str] = []
    resumed = fit(toy_data, config, run, resume=True, log=lines.append)
    assert _strip_timings(resumed.metrics) == _strip_timings(reference.metrics)  # t_stats included
    assert reference.metrics["teachers"][0]["resumed_from"] is None
    taken_up = resumed.metrics["teachers"][0]["resumed_from"]
    assert (taken_up["epoch"], taken_up["step"]) == (1, 1)  # 0-based: the second epoch's second step
    # the interrupted run's training time counts: in the teacher's train_seconds and in the step's seconds
    assert taken_up["earlier_seconds"] > 0
    assert resumed.metrics["teachers"][0]["train_seconds"] > taken_up["earlier_seconds"]
    assert resumed.metrics["seconds"] > taken_up["earlier_seconds"]
    assert not (run.checkpoints / "fit-teacher").exists()
    assert not (run.checkpoints / "fit-scores").exists()  # the finished fit leaves nothing to resume
    assert "fit-teacher: resuming from epoch 2, step 1" in lines  # 12 steps an epoch, stopped after 13
    assert f"transferability scores from the earlier pass saved in {run.checkpoints / 'fit-scores'}" in lines


def _killed_after_the_pass(toy_data, config, run: RunDir) -> None:
    """A fit stopped after its transferability pass and before any training state was saved (a kill, not Ctrl-C)."""
    with pytest.raises(KeyboardInterrupt):
        fit(toy_data, config, run, progress=InterruptAfter(1), log=_quiet)
    shutil.rmtree(run.checkpoints / "fit-teacher")


@pytest.mark.parametrize("case", ["other settings", "damaged", "no record", "not one score a row"])
def test_saved_scores_that_do_not_match_are_computed_again(tiny_model_dir, toy_data, tmp_path, case):
    from safetensors.torch import save_file

    config = tiny_fit_config(tiny_model_dir, epochs=1)
    run = RunDir(tmp_path / "run")
    _killed_after_the_pass(toy_data, config, run)
    saved = run.checkpoints / "fit-scores"
    why = {"other settings": "they were made with other settings or data (alpha 0.5 -> 0.9)",
           "damaged": "they are damaged (", "no record": "they are damaged (",
           "not one score a row": "they are damaged (t is (3,), not ("}[case]
    if case == "damaged":
        (saved / "scores.safetensors").write_bytes(b"not a tensor file")
    elif case == "no record":
        (saved / "signature.json").unlink()
    elif case == "not one score a row":
        save_file({"t": torch.zeros(3), "prototypes": torch.zeros(2, 2)}, str(saved / "scores.safetensors"))
    else:
        config = tiny_fit_config(tiny_model_dir, epochs=1, alpha=0.9)
    reference = fit(toy_data, config, RunDir(tmp_path / "ref"), log=_quiet)
    lines: list[str] = []
    resumed = fit(toy_data, config, run, resume=True, log=lines.append)
    assert _strip_timings(resumed.metrics) == _strip_timings(reference.metrics)
    assert any(line.startswith(f"the transferability scores in {saved} are not used: {why}") for line in lines), lines
    assert "transferability scores from the untouched pretrained encoder" in lines


def test_a_resume_its_checkpoint_would_refuse_is_refused_before_the_pass(tiny_model_dir, toy_data, tmp_path,
                                                                          monkeypatch):
    run = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        fit(toy_data, tiny_fit_config(tiny_model_dir, epochs=3), run, progress=InterruptAfter(13), log=_quiet)
    monkeypatch.setattr(fit_module, "transferability_scores", _no_second_pass)
    with pytest.raises(UserError, match=r"made with other settings \(checkpoint -> now: epochs 3 -> 4\)"):
        fit(toy_data, tiny_fit_config(tiny_model_dir, epochs=4), run, resume=True, log=_quiet)
    assert (run.checkpoints / "fit-scores" / "scores.safetensors").is_file()  # kept for the right settings


def test_scores_left_beside_an_unfinished_rename_are_reused_then_cleared(tiny_model_dir, toy_data, tmp_path,
                                                                        monkeypatch):
    config = tiny_fit_config(tiny_model_dir, epochs=1)
    run = RunDir(tmp_path / "run")
    _killed_after_the_pass(toy_data, config, run)
    old = run.checkpoints / ".fit-scores.old"
    (run.checkpoints / "fit-scores").rename(old)  # killed between the two renames of a save
    monkeypatch.setattr(fit_module, "transferability_scores", _no_second_pass)
    lines: list[str] = []
    fit(toy_data, config, run, resume=True, log=lines.append)
    assert f"transferability scores from the earlier pass saved in {old}" in lines
    assert list(run.checkpoints.iterdir()) == []


@pytest.mark.parametrize("how", ["meta without --resume", "mix with --resume"])
def test_a_fit_that_does_not_reuse_the_scores_computes_its_own_and_clears_them(tiny_model_dir, toy_data, tmp_path,
                                                                                how):
    config = tiny_fit_config(tiny_model_dir, epochs=1)
    run = RunDir(tmp_path / "run")
    _killed_after_the_pass(toy_data, config, run)
    assert (run.checkpoints / "fit-scores").is_dir()
    lines: list[str] = []
    if how == "mix with --resume":
        fit(toy_data, tiny_fit_config(tiny_model_dir, epochs=1, teacher_mode="mix"), run, resume=True,
            log=lines.append)
        assert not any("transferability" in line for line in lines)
    else:
        fit(toy_data, config, run, log=lines.append)
        assert "transferability scores from the untouched pretrained encoder" in lines
    assert not any("earlier pass" in line for line in lines)
    assert not (run.checkpoints / "fit-scores").exists()


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tiny_model_dir, toy_data, tmp_path):
    lines: list[str] = []
    fit(toy_data, tiny_fit_config(tiny_model_dir, epochs=1), RunDir(tmp_path / "run"), resume=True, log=lines.append)
    assert [line for line in lines if "checkpoint" in line] == [
        f"fit-teacher: no checkpoint to resume in {tmp_path / 'run' / 'checkpoints' / 'fit-teacher'}, "
        "so it starts from scratch"
    ]


def test_bad_options_are_user_errors(tiny_model_dir, toy_data, tmp_path):
    with pytest.raises(UserError, match="--teacher-mode"):
        fit(toy_data, tiny_fit_config(tiny_model_dir, teacher_mode="best"), RunDir(tmp_path / "r"), log=_quiet)
    with pytest.raises(UserError, match="max-length 4096 is above the model's limit of 128"):
        fit(toy_data, tiny_fit_config(tiny_model_dir, max_length=4096), RunDir(tmp_path / "r"), log=_quiet)
    with pytest.raises(UserError, match="not a model folder"):
        fit(toy_data, tiny_fit_config(tmp_path), RunDir(tmp_path / "r"), log=_quiet)


def test_fit_command_line(tiny_model_dir, toy_data, tmp_path):
    result = CliRunner().invoke(cli, [
        "--quiet", "--run-dir", str(tmp_path / "run"), "fit", toy_data.path, "--teacher", str(tiny_model_dir),
        "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--lr", "1e-3",
    ])
    assert result.exit_code == 0, result.output
    assert "average" in result.stdout
    assert json.loads((tmp_path / "run" / "metrics" / "fit.json").read_text())["config"]["epochs"] == 1
    bad = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run2"), "fit", toy_data.path, "--teacher",
                                   str(tiny_model_dir), "--domain-loss", "adversarial"])
    assert bad.exit_code == 2
    assert "unknown --domain-loss 'adversarial' (valid: confusion, reversal, none)" in bad.output
    assert "Traceback" not in bad.output


def test_new_head_warning_is_silenced_and_verbosity_restored(tiny_model_dir):
    """A classification head for the user's labels is expected: transformers' "newly initialized ...
    You should probably TRAIN this model" must not reach the user; its verbosity is left as it was."""
    import logging

    from transformers.utils import logging as transformers_logging

    from metakd_cli.models.loading import load_classifier

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    before = transformers_logging.get_verbosity()
    try:
        model = load_classifier(str(tiny_model_dir), labels=["negative", "positive"])
        silenced = list(records)
        load_classifier(str(tiny_model_dir))  # no labels: a reload, whose warnings are the user's to see
    finally:
        root.removeHandler(handler)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert not [r for r in silenced if "newly initialized" in r.getMessage()]
    assert [r for r in records[len(silenced):] if "newly initialized" in r.getMessage()]
    assert transformers_logging.get_verbosity() == before


def test_an_unknown_teacher_name_fails_at_once_with_the_packaged_names(tmp_path):
    data = write_toy_dataset(tmp_path, "jsonl")
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run"), "fit", str(data), "--teacher",
                                      "all-MiniLM-L6"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "error: --teacher all-MiniLM-L6: not a packaged model or model folder, and the hub is off (HF_HUB_OFFLINE=1); "
        "did you mean all-MiniLM-L6-v2? (packaged: all-MiniLM-L6-v2, minilm, mpnet-base; or a model folder, or a hub id while "
        "online or cached)")
    assert not (tmp_path / "run").exists()


def test_a_hub_id_in_the_local_cache_is_a_teacher_offline(tiny_model_dir, tmp_path, monkeypatch):
    # `HF_HUB_OFFLINE=1 metakd fit DATA --teacher bert-base-uncased` with the model in ~/.cache/huggingface was refused
    import transformers.utils.hub
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--acme--tiny-bert"  # huggingface_hub's layout: refs/main names the snapshot
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import: the env var is too late
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(cache))
    data = write_toy_dataset(tmp_path, "jsonl")
    result = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(tmp_path / "run"), "fit", str(data), "--teacher",
                                      "acme/tiny-bert", "--epochs", "1", "--batch-size", "8", "--max-length", "16"])
    assert result.exit_code == 0, result.output  # the tests run with HF_HUB_OFFLINE=1
    assert (tmp_path / "run" / "teacher" / "model.safetensors").is_file()
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "other"), "fit", str(data), "--teacher",
                                      "acme/tiny-bertt"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "error: --teacher acme/tiny-bertt: not a packaged model or model folder, and the hub is off (HF_HUB_OFFLINE=1) "
        "(packaged: all-MiniLM-L6-v2, minilm, mpnet-base; or a model folder, or a hub id while online or cached)")
    with pytest.raises(UserError, match=r"hub is off \(HF_HUB_OFFLINE=1\); did you mean all-MiniLM-L6-v2\?"):
        check_model_source("all-MiniLM-L6", "--teacher")  # not cached: the typo is still told


def test_one_label_and_one_domain_warn_without_refusing(tiny_model_dir, tmp_path):
    rows = [{**row, "label": "positive"} for row in toy_rows() if row["domain"] == "books"]
    data = write_jsonl(tmp_path / "one.jsonl", rows)
    result = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(tmp_path / "run"), "fit", str(data), "--teacher",
                                      str(tiny_model_dir), "--epochs", "1", "--batch-size", "8", "--max-length", "16"])
    assert result.exit_code == 0, result.output
    assert "warning: only one domain: the meta-teacher's cross-domain terms have nothing to compare" in result.stderr
    assert "warning: every row has the same label ('positive')" in result.stderr
    assert "chance" not in result.stderr  # with one label every model is "at chance": said once is enough
    assert (tmp_path / "run" / "teacher" / "model.safetensors").is_file()


def test_a_teacher_at_or_below_chance_on_dev_is_warned_about():
    from metakd_cli.data.encode import Encoded
    from metakd_cli.steps.fit import TeacherResult, chance_warnings

    # dev: books 3 of 4 rows label 1 (chance 75%), kitchen 2 of 4 (chance 50%)
    dev = Encoded([[1]] * 8, None, [1, 1, 1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1])
    domains = ["books", "kitchen"]

    def teacher(name, **dev_accuracy):
        return TeacherResult(name=name, dev=dev_accuracy, test={}, best_epoch=1, history=[], train_seconds=0,
                             examples_per_second=0)

    assert chance_warnings([teacher("teacher", books=75.0, kitchen=50.0)], dev, domains, 2, []) == [
        "the teacher scores 62.5% on dev, at or below chance (62.5%: always the most common label): check the "
        "labels, or train longer (--epochs) or with another --lr"]
    assert chance_warnings([teacher("teacher", books=100.0, kitchen=50.0)], dev, domains, 2, []) == []
    assert chance_warnings([teacher("teacher", books=100.0, kitchen=50.0)], dev, domains, 2, [0])[0].startswith(
        "the teacher scores 50.0% on dev, at or below chance (50.0%")  # books held out: kitchen alone counts
    single = [teacher("books", books=50.0), teacher("kitchen", kitchen=75.0)]
    assert [m.split(" scores")[0] for m in chance_warnings(single, dev, domains, 2, [], single=True)] == \
        ["the books teacher"]
    assert chance_warnings([teacher("teacher", books=0.0)], dev, domains, 1, []) == []  # one label: warned before


def test_the_learning_rate_defaults_by_the_teachers_width(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    from metakd_cli.steps.fit import teacher_lr

    assert teacher_lr(FitConfig(), str(tiny_model_dir)) == 5e-5  # hidden 32: narrow, like MiniLM-L6's 384
    wide = tmp_path / "wide"
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size = 768
    config.save_pretrained(wide)
    assert teacher_lr(FitConfig(), str(wide)) == 2e-5  # BERT-base's width
    assert teacher_lr(FitConfig(lr=1e-3), str(wide)) == 1e-3


def test_a_fit_without_epochs_chooses_its_length_on_dev(tiny_model_dir, toy_data, tmp_path):
    config = tiny_fit_config(tiny_model_dir, epochs=None, max_epochs=3, patience=2, eval_every=1, lr=None)
    result = fit(toy_data, config, RunDir(tmp_path / "run"), log=_quiet, warn=_quiet)
    teacher = result.metrics["teachers"][0]
    curve = teacher["dev_curve"]
    assert [p["step"] for p in curve] == list(range(1, len(curve) + 1))  # scored after every step
    best = max(p["dev_score"] for p in curve)
    assert teacher["best_step"] == next(p["step"] for p in curve if p["dev_score"] == best)
    after_best = len(curve) - teacher["best_step"]
    assert teacher["stopped_early"] == (after_best >= 2)
    assert teacher["learning_rate"] == 5e-5
    assert result.dev_accuracy["average"] == pytest.approx(best)
