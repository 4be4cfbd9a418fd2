"""--augment's derived rows (metakd_cli.data.augment): seeded, K per row keeping the row's domain, the windows of a long
text first, a mask each tokenizer renders in its own token, replacement words from the same domain only; and a
distillation that labels them with the teacher once, learns them without a gold term and reuses the labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from metakd_cli.data.dataset import reload_dataset
from metakd_cli.data.augment import EDITS, MASK, derive, render_mask, tail_offsets
from metakd_cli.data.rows import Example
from metakd_cli.core.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _rows() -> list[Example]:
    return [Example("good solid pan heats evenly " * 3, None, "pos", "kitchen", "k.jsonl:1"),
            Example("a dull slow book with flat characters", None, "neg", "books", "b.jsonl:1"),
            Example("fine", None, "pos", "books", "b.jsonl:2")]


def test_k_rows_per_row_seeded_keeping_domain_and_label(tokenizer):
    rows = _rows()
    derived = derive(rows, 4, seed=3, tokenizer=tokenizer, max_length=64)
    assert len(derived) == 4 * len(rows)
    assert derive(rows, 4, seed=3, tokenizer=tokenizer, max_length=64) == derived  # the same seed, the same rows
    assert derive(rows, 4, seed=4, tokenizer=tokenizer, max_length=64) != derived
    for d in derived:
        source = rows[d.source]
        assert (d.example.domain, d.example.label) == (source.domain, source.label)
        assert d.kind in EDITS and d.example.where.startswith(source.where + "+" + d.kind)


def test_a_long_texts_windows_come_first_and_start_past_the_max_length(tokenizer):
    text = " ".join(f"word{i}" for i in range(60))
    offsets = tail_offsets(tokenizer, text, 16, limit=10)
    assert offsets and offsets == sorted(offsets)
    # what comes before the first window is exactly what a 16-token encoding keeps (14 pieces and 2 specials)
    assert len(tokenizer(text[:offsets[0]], add_special_tokens=False)["input_ids"]) == 14
    derived = derive([Example(text, None, "pos", "books", "b:1")], 3, 0, tokenizer, 16)
    assert [d.kind for d in derived][:min(3, len(offsets))] == ["window"] * min(3, len(offsets))
    assert derived[0].example.text == text[offsets[0]:].strip()


def test_replacement_words_come_from_the_rows_own_domain(tokenizer):
    rows = [Example("alpha beta gamma delta epsilon zeta eta theta", None, "pos", "a", "a:1"),
            Example("one two three four five six seven eight", None, "neg", "b", "b:1")]
    derived = derive(rows, 30, 1, tokenizer, 64)
    words = {d.example.domain: set() for d in derived}
    for d in derived:
        if d.kind == "replace":
            words[d.example.domain] |= set(d.example.text.split())
    assert words["a"] and words["a"] <= set(rows[0].text.split())
    assert words["b"] and words["b"] <= set(rows[1].text.split())


def test_the_mask_is_each_tokenizers_own_token():
    row = Example(f"great {MASK} pan", f"{MASK} b", "pos", "k", "k:1")
    assert render_mask(row, "[MASK]").text == "great [MASK] pan"
    assert render_mask(row, "<mask>").text_pair == "<mask> b"
    plain = Example("no mask", None, "pos", "k", "k:1")
    assert render_mask(plain, "[MASK]") is plain


# --------------------------------------------------------------------------- in a distillation


@pytest.fixture
def run(fitted_toy_run):
    return fitted_toy_run


def _small(**overrides):
    from metakd_cli.core.config import DistillConfig

    values = dict(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5, augment=2)
    values.update(overrides)
    return DistillConfig(**values)


def test_a_distillation_learns_the_derived_rows_from_the_teacher_once(run, monkeypatch):
    import metakd_cli.steps.distill as distill_module

    labelled_batches = []
    real = distill_module.prediction_loss

    def spy(logits, targets, labels, temperature, gold_weight, labelled):
        labelled_batches.append(labelled)
        return real(logits, targets, labels, temperature, gold_weight, labelled)

    monkeypatch.setattr(distill_module, "prediction_loss", spy)
    lines = []
    result = distill_module.distill(_small(gold_weight=1.0), run, log=lines.append, warn=lambda _: None)
    transfer = result.metrics["transfer"]
    train_rows = sum(result.metrics["train_rows"].values())
    assert transfer["augment_rows"] == 2 * train_rows and not transfer["reused"]
    assert sum(transfer["by_domain"].values()) == 2 * train_rows
    seen = sum(len(b) for b in labelled_batches)
    assert seen == 3 * train_rows  # one epoch over the training rows and the derived ones
    assert sum(float(b.sum()) for b in labelled_batches) == train_rows  # the gold term on labelled rows only
    kept = list(run.checkpoints.glob("transfer-teacher-*"))
    assert len(kept) == 1  # kept after the distillation, for the next one
    recipes = [json.loads(line) for line in (kept[0] / "rows.jsonl").read_text().splitlines()]  # each row's recipe
    assert [r["row"] for r in recipes] == list(range(2 * train_rows))
    assert {r["kind"]: 0 for r in recipes}.keys() == transfer["by_kind"].keys()
    assert all(r["where"] and 0 <= r["source"] for r in recipes)
    again = distill_module.distill(_small(method="tinybert", intermediate_epochs=1), run, log=lines.append,
                                   warn=lambda _: None)
    assert again.metrics["transfer"]["reused"]  # the same teacher, rows, K and seed: labelled once
    assert any(line.startswith(f"the teacher's labels of {2 * train_rows:,} derived rows from") for line in lines)
    other_k = distill_module.distill(_small(augment=1), run, log=lambda _: None, warn=lambda _: None)
    assert not other_k.metrics["transfer"]["reused"] and other_k.metrics["transfer"]["augment_rows"] == train_rows


def test_without_augment_nothing_changes(run):
    from metakd_cli.steps.distill import distill

    result = distill(_small(augment=0), run, log=lambda _: None, warn=lambda _: None)
    assert result.metrics["transfer"] is None and not list(run.checkpoints.glob("transfer-teacher-*"))


@pytest.mark.parametrize("overrides, message", [
    (dict(augment=-1), "--augment must be 0 or more"),
    (dict(method="none"), "learns from gold labels only"),
    (dict(method="mtn"), "has several teachers"),
])
def test_augment_is_refused_where_no_single_teacher_labels(overrides, message):
    from metakd_cli.steps.distill import validate

    with pytest.raises(UserError, match=message):
        validate(_small(**overrides))


def test_the_model_card_says_what_the_student_was_trained_on(run):
    from metakd_cli.steps.distill import distill

    distill(_small(), run, log=lambda _: None, warn=lambda _: None)
    card = (run.student / "README.md").read_text()
    line = next(line for line in card.splitlines() if line.startswith("- **Transfer set:**"))
    assert "`--augment 2`" in line and "soft labels only" in line


# --------------------------------------------------------------------------- labelled by the teacher's ONNX export


def test_onnx_is_wanted_on_a_cpu_for_many_rows_or_when_asked():
    from metakd_cli.ship.onnx_teacher import ONNX_MIN_ROWS, check_rows, wanted

    assert not wanted("onnx", 10**6, True, True, one_process=False)  # each process labels its share with PyTorch
    assert check_rows([3, 9, 4, 8, 5, 7], n=4) == [0, 1, 3]  # the first two and the two longest (1 is both)

    assert wanted("auto", ONNX_MIN_ROWS, True, True) and not wanted("auto", ONNX_MIN_ROWS - 1, True, True)
    assert not wanted("auto", ONNX_MIN_ROWS, True, False)  # a GPU labels with PyTorch
    assert wanted("onnx", 10, True, False) and not wanted("torch", 10**6, True, True)
    assert not wanted("onnx", 10**6, False, True)  # an mtl teacher or several: not one classifier


def _labels_of(run, folder_glob="transfer-teacher-*"):
    from safetensors.torch import load_file

    (folder,) = list(run.checkpoints.glob(folder_glob))
    return load_file(str(folder / "logits.safetensors"))["logits"]


def test_the_onnx_export_labels_as_pytorch_does(fitted_toy_run, tmp_path):
    import shutil

    from metakd_cli.steps.distill import distill
    from metakd_cli.core.run_dir import RunDir

    runs = {}
    import tempfile

    temporary = set(Path(tempfile.gettempdir()).glob("metakd-onnx-teacher-*"))
    for how in ("torch", "onnx"):
        copy = RunDir(tmp_path / how)
        shutil.copytree(fitted_toy_run.path, copy.path)
        result = distill(_small(label_with=how), copy, log=lambda _: None, warn=lambda _: None)
        assert result.metrics["transfer"]["labelled_with"]["with"] == how
        runs[how] = copy
    check = result.metrics["transfer"]["labelled_with"]["check"]
    assert check["max_abs_diff"] <= check["atol"] == 1e-3
    import torch

    assert torch.allclose(_labels_of(runs["onnx"]), _labels_of(runs["torch"]), atol=1e-4)
    assert set(Path(tempfile.gettempdir()).glob("metakd-onnx-teacher-*")) == temporary  # the export is removed
    assert not [p for p in runs["onnx"].checkpoints.iterdir() if "onnx-teacher" in p.name]  # never in the run


def test_a_teacher_onnx_cannot_export_is_labelled_by_pytorch(run, monkeypatch):
    import metakd_cli.ship.onnx_teacher as onnx_teacher
    from metakd_cli.steps.distill import distill

    def refuse(*_args):
        raise ValueError("Unsupported architecture for the ONNX export\nmore")

    monkeypatch.setattr(onnx_teacher, "OnnxTeacher", refuse)
    lines = []
    result = distill(_small(label_with="onnx"), run, log=lines.append, warn=lambda _: None)
    how = result.metrics["transfer"]["labelled_with"]
    assert how["with"] == "torch" and "Unsupported architecture" in how["why"]
    assert any(line.startswith("labelling with PyTorch: the teacher's ONNX export failed") for line in lines)


# --------------------------------------------------------------------------- stage 1 over the transfer set


def test_stage_1_reads_the_transfer_set_when_asked(run, monkeypatch):
    import torch

    import metakd_cli.steps.distill as distill_module

    seen = []
    real = distill_module._LossSteps.intermediate_step

    def spy(self, batch, generator):
        seen.append(batch["index"].clone())
        return real(self, batch, generator)

    monkeypatch.setattr(distill_module._LossSteps, "intermediate_step", spy)
    config = _small(method="meta", intermediate_epochs=1, transfer_stage1=True)
    result = distill_module.distill(config, run, log=lambda _: None, warn=lambda _: None)
    train_rows = sum(result.metrics["train_rows"].values())
    stage = result.metrics["stages"]["intermediate"]
    assert stage["rows"] == {"train": train_rows, "transfer": 2 * train_rows}
    assert sorted(torch.cat(seen).tolist()) == list(range(3 * train_rows))  # one epoch over both
    assert 0.26 < stage["transfer_lambda"]["lambda_mean"] <= 1.0 and stage["transfer_lambda"]["rows"] == 2 * train_rows
    seen.clear()
    plain = distill_module.distill(_small(method="meta", intermediate_epochs=1), run, log=lambda _: None,
                                   warn=lambda _: None)
    assert plain.metrics["stages"]["intermediate"]["rows"] == {"train": train_rows, "transfer": 0}
    assert sorted(torch.cat(seen).tolist()) == list(range(train_rows))  # the default: the labelled rows only


def test_a_derived_row_takes_its_sources_t_and_a_text_of_yours_gets_t_from_the_prototypes(run, tmp_path,
                                                                                         monkeypatch):
    import json

    import torch

    import metakd_cli.steps.distill as distill_module

    captured = {}
    real = distill_module._stage1_rows

    def spy(ctx, side, student, rows, cache, transfer):
        out = real(ctx, side, student, rows, cache, transfer)
        captured.update(rows=rows, transfer=transfer, out=out, side=side, run=ctx.run)
        return out

    monkeypatch.setattr(distill_module, "_stage1_rows", spy)
    _, dataset = reload_dataset(run)
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps({"text": f"my own text number {i}", "domain": dataset.domains[0]}) + "\n"
                            for i in range(4)), encoding="utf-8")
    lines = []
    distill_module.distill(_small(method="meta", intermediate_epochs=1, augment=1, transfer=[str(path)],
                                  transfer_stage1=True), run, log=lines.append, warn=lambda _: None)
    rows, transfer, out = captured["rows"], captured["transfer"], captured["out"]
    n = len(rows.train)
    lam = out.lam[n:]
    p = transfer.probabilities.max(-1).values
    from metakd_cli.training.losses import expertise_weight

    for i, source in enumerate(transfer.sources):
        if source is not None:  # a derived row: its source's t
            assert torch.isclose(lam[i], expertise_weight(rows.t[source:source + 1].float(), p[i:i + 1])[0])
    assert transfer.sources[-4:] == [None] * 4
    from dataclasses import replace

    yours = list(range(len(transfer.sources) - 4, len(transfer.sources)))
    theirs = transfer.probabilities[yours].argmax(-1).tolist()  # scored against the class the teacher gives them
    expected_t = distill_module.missing_scores(replace(transfer.teacher_rows.subset(yours), labels=theirs),
                                               captured["run"], captured["side"].extra["prototypes"],
                                               len(dataset.labels), captured["side"].pad_id)
    assert torch.allclose(lam[yours], expertise_weight(expected_t.float(), p[yours]))
    assert any(line.startswith("t for 4 of your texts, from the pretrained encoder") for line in lines)


@pytest.mark.parametrize("overrides, message", [
    (dict(augment=0, transfer_stage1=True), "give --augment K or --transfer PATH"),
    (dict(method="kd", transfer_stage1=True), "--method kd has no stage 1"),
    (dict(method="meta", intermediate_epochs=0, transfer_stage1=True), "with --intermediate-epochs 0 runs no stage 1"),
])
def test_transfer_stage1_needs_a_transfer_set_and_a_stage_1(overrides, message):
    from metakd_cli.steps.distill import validate
    from metakd_cli.core.errors import UserError

    with pytest.raises(UserError, match=message):
        validate(_small(**overrides))


def test_the_training_rows_teacher_pass_uses_the_same_choice(fitted_toy_run, tmp_path):
    import shutil

    from metakd_cli.steps.distill import distill
    from metakd_cli.core.run_dir import RunDir

    metrics, lines = {}, {}
    for how in ("torch", "onnx"):
        copy = RunDir(tmp_path / how)
        shutil.copytree(fitted_toy_run.path, copy.path)
        lines[how] = []
        metrics[how] = distill(_small(augment=0, label_with=how), copy, log=lines[how].append,
                               warn=lambda _: None).metrics
        assert any(line.startswith("the teacher's logits on ") and f"rows by {how} (" in line for line in lines[how])
    assert metrics["onnx"]["teacher_test_accuracy"] == metrics["torch"]["teacher_test_accuracy"]
    assert abs(metrics["onnx"]["lambda"]["mean"] - metrics["torch"]["lambda"]["mean"]) < 1e-4
