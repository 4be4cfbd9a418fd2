"""Typed results: FitResult, DistillResult and ExportResult carry what the commands show, equal to the
values of the metrics JSON they come from, and the commands render those fields (not the metrics dict)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_toy_dataset
from export_fixtures import copy_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli


def _quiet(*_args, **_kwargs) -> None:
    pass


# --------------------------------------------------------------------------- fields equal the JSON


def test_fit_and_distill_results_hold_the_metrics_json_values(tiny_model_dir, tmp_path):
    from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
    from metakd_cli.steps.distill import DistillStage, distill
    from metakd_cli.steps.fit import fit
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))
    fitted = fit(data, FitConfig(teacher=str(tiny_model_dir), epochs=1, batch_size=8, lr=1e-3, max_length=16,
                                 seed=7), run, log=_quiet)
    written = json.loads((run.metrics / "fit.json").read_text())
    assert fitted.mode == written["mode"] == "meta"
    assert fitted.dev_accuracy == written["dev_accuracy"] and fitted.test_accuracy == written["test_accuracy"]
    assert fitted.mean_t == {d: stats["mean"] for d, stats in written["t"].items()}
    assert fitted.held_out is None and fitted.metrics["step"] == "fit"

    result = distill(DistillConfig(method="meta", intermediate_epochs=1, epochs=1, batch_size=8), run,
                     log=_quiet, warn=_quiet)
    written = json.loads((run.metrics / "distill.json").read_text())
    # the JSON itself stays available, as pipeline.py reads it (its seconds: the run's end, after the writing)
    assert {**result.metrics, "seconds": None} == {**written, "seconds": None}
    assert (result.method, result.student, result.teacher_mode, result.held_out) == (
        written["method"], written["student"], written["teacher_mode"], written["held_out"])
    assert result.dev_accuracy == written["dev_accuracy"]
    assert result.test_accuracy == written["test_accuracy"]
    assert result.teacher_test_accuracy == written["teacher_test_accuracy"]
    assert result.agreement_with_teacher == written["test_agreement_with_teacher"]
    assert result.student_parameters == written["parameters"]["student"] > 0
    assert result.teacher_parameters == written["parameters"]["teacher"] > 0
    assert set(result.stages) == {"intermediate", "prediction"}
    for name, stage in written["stages"].items():
        assert result.stages[name] == DistillStage(stage["seconds"], stage["examples_per_second"],
                                                   len(stage["history"]), stage.get("best_epoch"),
                                                   stage.get("best_step"), bool(stage.get("stopped_early")))
    assert result.stages["intermediate"].best_epoch is None and result.stages["prediction"].best_epoch == 1
    assert result.seconds == result.metrics["seconds"] >= written["seconds"]


def test_export_result_holds_the_export_json_values(tiny_run, tmp_path):
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import Int8Tried, export
    from metakd_cli.core.run_dir import RunDir

    run = copy_run(tiny_run, tmp_path / "run")
    result = export(ExportConfig(int8=True, int8_mode="dynamic", ort=True, trim_vocab=True), RunDir(run))
    assert result.passed, result.failures
    written = json.loads((run / "metrics" / "export.json").read_text())
    assert result.metrics == written
    assert (result.model, result.opset, result.folder, result.seconds) == (
        "student", written["opset"], run / "onnx", written["seconds"])
    assert result.dev_accuracy == written["dev_accuracy"]
    assert list(result.dev_accuracy) == ["untrimmed", "pytorch", "onnx", "int8"]
    logits = written["logits_check"]
    assert (result.logits_check.rows, result.logits_check.max_abs_diff, result.logits_check.passed) == (
        logits["rows"], logits["max_abs_diff"], logits["passed"])
    check = written["int8_check"]
    assert (result.int8.mode, result.int8.target, result.int8.attempt, result.int8.drop) == (
        "dynamic", written["target"], check["attempt"], check["drop"])
    assert result.int8.drop_per_domain == check["drop_per_domain"]
    assert result.int8.tried == [Int8Tried(a["name"], a["description"], a["drop"], a["size_mb"], a["passed"])
                                 for a in written["int8_attempts"]]
    trim = written["trim"]
    assert (result.trim.vocab_before, result.trim.vocab_after, result.trim.covered_rows) == (
        trim["vocab_before"], trim["vocab_after"], trim["covered_rows"])
    assert result.trim.unknown_rate_after == {d: rate["after"] for d, rate in trim["unknown_rate"].items()}
    assert (result.mobile.mismatched_labels, result.mobile.source, result.mobile.opset) == (
        written["ort_check"]["mismatched_labels"], "model_quantized.onnx", written["mobile"]["opset"])
    assert result.size_mb == written["size_mb"] and set(result.size_mb) >= {"model.onnx", "model.ort"}
    assert (result.parameters, result.onnx_initializers) == (
        written["parameters"]["pytorch"], written["parameters"]["onnx_initializers"])


# --------------------------------------------------------------------------- the commands render the fields


def _distill_result(run_dir: Path, held_out: str | None = None):
    from metakd_cli.steps.distill import DistillResult, DistillStage

    return DistillResult(
        run_dir=run_dir, metrics={}, seconds=90.0, method="mtn", student="tiny (test)", teacher_mode="single",
        held_out=held_out, dev_accuracy={"books": 81.0, "kitchen": 82.0, "average": 81.5},
        test_accuracy={"books": 71.0, "kitchen": 72.0, "average": 71.5},
        teacher_test_accuracy={"books": 91.0, "kitchen": 92.0, "average": 91.5}, agreement_with_teacher=64.25,
        student_parameters=10, teacher_parameters=20,
        stages={"prediction": DistillStage(seconds=1.0, examples_per_second=2.0, epochs=1, best_epoch=1)},
    )


def test_distill_command_renders_the_typed_result(tmp_path, monkeypatch):
    """metrics is empty: every figure shown comes from the typed fields."""
    import metakd_cli.steps.distill

    monkeypatch.setattr(metakd_cli.steps.distill, "distill", lambda *args, **kwargs: _distill_result(tmp_path, "kitchen"))
    shown = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(tmp_path), "distill"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "student (mtn, tiny (test))" in text and "1.5 min" in text and "agreement with teacher 64.2%" in text
    assert "teachers' mean test %" in text and "kitchen (held out)" in text
    for figure in ("91.00", "81.00", "71.00", "92.00", "82.00", "72.00", "91.50", "81.50", "71.50"):
        assert figure in text


def test_fit_command_renders_the_typed_result(tmp_path, monkeypatch):
    import metakd_cli.steps.fit
    from metakd_cli.steps.fit import FitResult

    result = FitResult(run_dir=tmp_path, mode="meta", teachers=[], metrics={}, seconds=30.0,
                       dev_accuracy={"books": 61.0, "kitchen": 62.0, "average": 61.5},
                       test_accuracy={"books": 51.0, "kitchen": 52.0, "average": 51.5},
                       mean_t={"books": 0.25}, held_out="kitchen")
    monkeypatch.setattr(metakd_cli.steps.fit, "fit", lambda *args, **kwargs: result)
    data = write_toy_dataset(tmp_path, "jsonl")
    shown = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(tmp_path / "run"), "fit", str(data)],
                               catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "teacher (meta)" in text and "0.5 min" in text and "kitchen (held out)" in text
    for figure in ("61.00", "51.00", "0.25", "62.00", "52.00", "61.50", "51.50"):
        assert figure in text


def _export_result(folder: Path, passed: bool = True):
    from metakd_cli.steps.export import ExportResult, Int8Check, Int8Tried, LogitsCheck, MobileCheck, TrimCheck

    tried = [Int8Tried("plain", "avx2 defaults", 2.5, 0.5, False), Int8Tried("per_channel", "per-channel", -0.25,
                                                                              0.6, True)]
    return ExportResult(
        passed=passed, folder=folder, failures=[] if passed else ["int8 too far"], metrics={}, seconds=3.0,
        model="student", opset=17,
        dev_accuracy={"untrimmed": {"books": 80.0, "average": 80.0}, "pytorch": {"books": 79.0, "average": 79.0},
                      "onnx": {"books": 78.0, "average": 78.0}, "int8": {"books": 77.0, "average": 77.0}},
        logits_check=LogitsCheck(rows=12, max_abs_diff=3e-7, atol=1e-4, passed=True),
        int8=Int8Check(mode="dynamic", target="avx2", attempt="per_channel", passed=passed, drop=-0.25, max_drop=1.0,
                       drop_per_domain={"books": -0.25, "average": 1.5}, tried=tried),
        trim=TrimCheck(vocab_before=500, vocab_after=40, parameters_before=4000, parameters_after=3000,
                       size_mb_before=0.2, size_mb_after=0.1, from_corpus=33, from_top=2, special=5, texts=96,
                       covered_rows=11, covered_agreement=None, unknown_rate_after={"books": 1.25}, passed=True),
        mobile=MobileCheck(source="model_quantized.onnx", rows=12, mismatched_labels=0, opset=17, opset_ok=True,
                           usability="use the CPU execution provider"),
        size_mb={"pytorch": 0.2, "model.onnx": 0.3}, parameters=3000, onnx_initializers=3001,
    )


def test_export_command_renders_the_typed_result(tmp_path, monkeypatch):
    import metakd_cli.steps.export

    monkeypatch.setattr(metakd_cli.steps.export, "export", lambda *args, **kwargs: _export_result(tmp_path / "onnx"))
    shown = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(tmp_path), "export", "--int8"],
                               catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "(opset 17, int8 dynamic avx2) — 3.0 s" in text and "max |diff| 3.0e-07 on 12 rows" in text
    assert "+0.25" in text and "-1.50" in text  # a signed change per domain
    assert "33 pieces from 96 training texts + 2 top + 5 special" in text and "11 fully covered dev rows: n/a" in text
    assert "1.25" in text  # [UNK] % after trimming
    assert "int8 remedies tried (limit 1 points): kept per_channel" in text and "+2.50" not in text
    assert "-2.50" in text
    assert "parameters 3,000 (ONNX initializers 3,001)" in text
    assert "model.ort: 0 labels differ from model_quantized.onnx on 12 dev rows, opset 17" in text


def test_export_command_exits_1_when_a_check_fails(tmp_path, monkeypatch):
    import metakd_cli.steps.export

    monkeypatch.setattr(metakd_cli.steps.export, "export",
                        lambda *args, **kwargs: _export_result(tmp_path / "onnx.failed", passed=False))
    shown = CliRunner().invoke(cli, ["--run-dir", str(tmp_path), "export", "--int8"])
    assert shown.exit_code == 1
    assert "none passed" in " ".join(shown.stdout.split())
    assert "export checks failed: int8 too far" in shown.output


@pytest.mark.parametrize("name", ["model_logits"])
def test_evaluate_names_used_by_report_are_public(name):
    import metakd_cli.steps.evaluate as evaluate

    assert callable(getattr(evaluate, name)) and not hasattr(evaluate, f"_{name}")
