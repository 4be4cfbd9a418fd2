"""Typed results: FitResult, DistillResult and ExportResult are what each step made, and the metrics JSON is
written from them (``to_json()``, the one place that says what a file holds); the commands render their fields."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_toy_dataset
from export_fixtures import copy_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli


def _quiet(*_args, **_kwargs) -> None:
    pass


# --------------------------------------------------------------------------- the JSON is written from the result


def _written(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _as_written(record: dict) -> str:
    """``record`` as the run folder writes a JSON file (core.run_dir.atomic_write_json)."""
    return json.dumps(record, indent=2) + "\n"


def _same_json(record: dict) -> bool:
    """``record`` survives a JSON round trip unchanged: nothing in it is typed beyond what JSON holds."""
    return json.loads(json.dumps(record)) == record


def test_fit_and_distill_write_their_metrics_from_the_result(tiny_model_dir, tmp_path):
    from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
    from metakd_cli.steps.distill import IntermediateStage, PredictionStage, distill
    from metakd_cli.steps.fit import fit
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))
    fitted = fit(data, FitConfig(teacher=str(tiny_model_dir), epochs=1, batch_size=8, lr=1e-3, max_length=16,
                                 seed=7), run, log=_quiet)
    assert _written(run.metrics / "fit.json") == _as_written(fitted.to_json())  # byte for byte
    assert _same_json(fitted.to_json()) and fitted.metrics == fitted.to_json()
    written = json.loads(_written(run.metrics / "fit.json"))
    assert fitted.mode == written["mode"] == "meta" and fitted.held_out is None
    assert fitted.dev_accuracy == written["dev_accuracy"] and fitted.test_accuracy == written["test_accuracy"]
    assert fitted.mean_t == {d: stats["mean"] for d, stats in written["t"].items()}

    result = distill(DistillConfig(method="meta", intermediate_epochs=1, epochs=1, batch_size=8), run,
                     log=_quiet, warn=_quiet)
    written = json.loads(_written(run.metrics / "distill.json"))
    # the result's seconds: the run's end, after the writing; all else is the file
    assert result.seconds >= written["seconds"]
    assert _written(run.metrics / "distill.json") == _as_written({**result.to_json(), "seconds": written["seconds"]})
    assert _same_json(result.to_json()) and result.metrics == result.to_json()
    assert (result.method, result.student, result.teacher_mode, result.held_out) == (
        written["method"], written["student"], written["teacher_mode"], written["held_out"])
    assert result.agreement_with_teacher == written["test_agreement_with_teacher"]
    assert result.student_parameters == written["parameters"]["student"] > 0
    assert result.teacher_parameters == written["parameters"]["teacher"] > 0
    assert list(result.stages) == ["intermediate", "prediction"]
    intermediate, prediction = result.stages["intermediate"], result.stages["prediction"]
    assert isinstance(intermediate, IntermediateStage) and isinstance(prediction, PredictionStage)
    assert intermediate.epochs == prediction.epochs == 1 and prediction.best_epoch == 1
    assert intermediate.start_check["checked"] is True  # a `tiny` student's head comes from the teacher
    assert "best_epoch" not in written["stages"]["intermediate"]  # stage 1 keeps its last or best-scored state


def test_an_unchecked_stage_1_records_its_start_after_the_projection_warm_up():
    """distill.json's key order, as it has always been: a checked start before ``projection_warmup``, an
    unchecked one (a new head) after it."""
    from metakd_cli.steps.distill import IntermediateStage

    stage = IntermediateStage(seconds=1.0, examples_per_second=2.0, history=[{"loss": 1.0}], resumed_from=None,
                              scored_on_dev=False, dev_curve=[], best_step=-1, stopped_early=False,
                              rows={"train": 4, "transfer": 0}, projection_warmup={"rows": 4},
                              start_check={"checked": False, "why": "new head", "stage_2_starts_from": "stage 1"})
    assert list(stage.to_json())[-3:] == ["rows", "projection_warmup", "start_check"]
    checked = {"checked": True, "initial_dev": 50.0, "after_stage_1_dev": 60.0, "stage_2_starts_from": "stage 1"}
    assert list(replace(stage, start_check=checked).to_json())[-3:] == ["rows", "start_check", "projection_warmup"]
    assert "transfer_lambda" not in stage.to_json()
    lam = {"rows": 2, "lambda_mean": 0.5, "t_mean": 0.25}
    assert list(replace(stage, transfer_lambda=lam).to_json())[-4:-2] == ["rows", "transfer_lambda"]


def test_export_writes_its_metrics_from_the_result(tiny_run, tmp_path):
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import export
    from metakd_cli.core.run_dir import RunDir

    run = copy_run(tiny_run, tmp_path / "run")
    result = export(ExportConfig(int8=True, int8_mode="dynamic", ort=True, trim_vocab=True), RunDir(run))
    assert result.passed, result.failures
    # metrics/export.json and the copy that ships in onnx/ are the result's JSON, byte for byte
    assert _written(run / "metrics" / "export.json") == _as_written(result.to_json())
    assert _written(run / "onnx" / "metakd_export.json") == _as_written(result.to_json())
    assert _same_json(result.to_json()) and result.metrics == result.to_json()
    written = json.loads(_written(run / "metrics" / "export.json"))
    assert list(written)[:4] == ["step", "model", "source", "domains"] and list(written)[-1] == "seconds"
    assert (result.model, result.opset, result.folder) == ("student", written["opset"], run / "onnx")
    assert list(result.dev_accuracy) == ["untrimmed", "pytorch", "onnx", "int8"]
    assert (written["int8"], written["trim_vocab"], written["ort"]) == (True, True, True)
    assert written["target"] == result.int8.target and written["int8_check"]["mode"] == result.int8.mode == "dynamic"
    assert [a["name"] for a in written["int8_attempts"]] == [a.name for a in result.int8.tried]
    assert written["trim"]["keep_top"] == 0 and written["trim"]["vocab_after"] == result.trim.vocab_after
    assert result.trim.unknown_rate_after == {d: rate["after"] for d, rate in written["trim"]["unknown_rate"].items()}
    assert result.logits_check.reference == written["logits_check"]["reference"] == "trimmed PyTorch model"
    assert (result.mobile.source, result.mobile.mismatched_labels) == ("model_quantized.onnx", 0)
    assert result.mobile.recommendation == (written["mobile"]["usability"].get("recommendation")
                                            or written["mobile"]["usability"].get("error"))
    assert set(result.size_mb) >= {"pytorch", "model.onnx", "model_quantized.onnx", "model.ort"}


def test_an_export_without_its_options_writes_none_of_their_sections(tmp_path):
    result = _export_result(tmp_path / "onnx")
    plain = replace(result, int8=None, trim=None, mobile=None)
    record = plain.to_json()
    assert (record["int8"], record["target"], record["target_reason"], record["ort"], record["trim_vocab"]) == (
        False, None, None, False, False)
    assert not {"trim", "int8_check", "int8_attempts", "ort_check", "mobile"} & set(record)
    full = result.to_json()
    assert (full["int8"], full["target"], full["ort"], full["trim_vocab"]) == (True, "avx2", True, True)
    assert list(full["trim"])[0] == "keep_top" and full["trim"]["keep_top"] == result.config.keep_top
    assert full["ort_check"]["mismatched_labels"] == 0 and full["mobile"]["opset"] == 17
    assert _same_json(full)


# --------------------------------------------------------------------------- the commands render the fields


def _cpu():
    from metakd_cli.core.cpu import CpuInfo

    return CpuInfo(model="test CPU", machine="x86_64", cores=2, flags=["avx2"])


def _distill_result(run_dir: Path, held_out: str | None = None):
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.steps.distill import DistillResult, PredictionStage

    return DistillResult(
        run_dir=run_dir, config=DistillConfig(method="mtn"), student="tiny (test)", student_layers=[1, 3, 5, 6],
        teacher_mode="single",
        teachers=["books", "kitchen"], held_out=held_out, train_rows={"books": 8, "kitchen": 8},
        dev_accuracy={"books": 81.0, "kitchen": 82.0, "average": 81.5},
        test_accuracy={"books": 71.0, "kitchen": 72.0, "average": 71.5},
        teacher_test_accuracy={"books": 91.0, "kitchen": 92.0, "average": 91.5}, agreement_with_teacher=64.25,
        lambda_stats={"mean": 1.0, "min": 1.0, "max": 1.0}, alignment=None, teacher_cache_seconds=0.5,
        learning_rates={"intermediate": 5e-5, "prediction": 1e-4},
        stages={"prediction": PredictionStage(seconds=1.0, examples_per_second=2.0, history=[{"loss": 0.5}],
                                              best_epoch=1, resumed_from=None, dev_curve=[], best_step=2,
                                              stopped_early=False)},
        cpu=_cpu(), student_parameters=10, teacher_parameters=20, seconds=90.0, command="metakd distill",
        processes=1, transfer=None,
    )


def test_distill_json_holds_its_optional_sections_only_when_they_exist(tmp_path):
    from metakd_cli.ship.trim import TrimCheck

    record = _distill_result(tmp_path).to_json()
    assert "alignment" not in record and "trim" not in record and record["transfer"] is None
    assert list(record)[-3:] == ["command", "processes", "transfer"]
    assert record["stages"]["prediction"]["head_warmup"] is None and record["method"] == "mtn"
    trim = TrimCheck(**{**_trim_record(), "passed": False})
    record = replace(_distill_result(tmp_path), alignment={"aligned_rows": 3}, trim=trim).to_json()
    assert list(record)[list(record).index("lambda") + 1] == "alignment"
    assert list(record)[-1] == "trim" and record["trim"]["passed"] is False and "keep_top" not in record["trim"]
    assert _same_json(record)


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
    from metakd_cli.core.config import FitConfig
    from metakd_cli.steps.fit import FitResult, TeacherResult

    teacher = TeacherResult(name="teacher", dev={}, test={}, best_epoch=1, history=[], train_seconds=30.0,
                            examples_per_second=4.0, t_stats={"books": {"mean": 0.25}, "kitchen": {}})
    result = FitResult(run_dir=tmp_path, config=FitConfig(teacher="tiny", teacher_mode="meta", hold_out="kitchen"),
                       teachers=[teacher], dev_accuracy={"books": 61.0, "kitchen": 62.0, "average": 61.5},
                       test_accuracy={"books": 51.0, "kitchen": 52.0, "average": 51.5}, seconds=30.0,
                       train_rows={"books": 8, "kitchen": 0}, processes=1, cpu=_cpu(), versions={},
                       command="metakd fit")
    assert result.mean_t == {"books": 0.25}  # a domain without t (held out) has none
    assert (result.to_json()["held_out"], result.to_json()["mode"]) == ("kitchen", "meta")
    monkeypatch.setattr(metakd_cli.steps.fit, "fit", lambda *args, **kwargs: result)
    data = write_toy_dataset(tmp_path, "jsonl")
    shown = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(tmp_path / "run"), "fit", str(data)],
                               catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "teacher (meta)" in text and "0.5 min" in text and "kitchen (held out)" in text
    for figure in ("61.00", "51.00", "0.25", "62.00", "52.00", "61.50", "51.50"):
        assert figure in text


def _trim_record() -> dict:
    """A record of ship.trim.trim_check."""
    return {"vocab_before": 500, "vocab_after": 40, "from_corpus": 33, "from_top": 2, "special": 5,
            "parameters_before": 4000, "parameters_after": 3000, "size_mb_before": 0.2, "size_mb_after": 0.1,
            "texts": 96, "unknown_rate": {"books": {"before": 0.0, "after": 1.25}},
            "dev_accuracy": {"untrimmed": {"books": 80.0}, "trimmed": {"books": 80.0}}, "covered_rows": 11,
            "rows": 12, "covered_agreement": None, "passed": True}


def _export_result(folder: Path, passed: bool = True):
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import ExportResult, Int8Check, Int8Tried, LogitsCheck, MobileCheck, TrimCheck

    def attempt(name, description, drop, size, ok):
        return Int8Tried(name=name, description=description, per_channel=name == "per_channel",
                         fp32_embeddings_classifier=False, reduce_range=False, weights=None, drop=drop,
                         drop_per_domain={"average": drop}, size_mb=size, passed=ok, agreement_with_fp32=90.0)

    tried = [attempt("plain", "avx2 defaults", 2.5, 0.5, False), attempt("per_channel", "per-channel", -0.25, 0.6,
                                                                        True)]
    return ExportResult(
        passed=passed, folder=folder, failures=[] if passed else ["int8 too far"], seconds=3.0,
        config=ExportConfig(model="student", opset=17, int8=True, int8_mode="dynamic", ort=True, trim_vocab=True),
        source=folder.parent / "student", domains=["books"], labels=["neg", "pos"], max_length=16, cpu=_cpu(),
        logits_check=LogitsCheck(rows=12, max_abs_diff=3e-7, atol=1e-4, passed=True, reference="PyTorch model"),
        trim=TrimCheck(**_trim_record()),
        int8=Int8Check(mode="dynamic", target="avx2", target_reason="--target", attempt="per_channel",
                       remedy="per-channel", per_channel=True, fused=False, passed=passed, rows=12, drop=-0.25,
                       max_drop=1.0, drop_per_domain={"books": -0.25, "average": 1.5}, agreement_with_fp32=90.0,
                       calibration=None, batch_invariance={"rows": 12, "batch_size": 32, "max_abs_prob_diff": 0.0,
                                                           "label_flips": 0}, tried=tried),
        dev_accuracy={"untrimmed": {"books": 80.0, "average": 80.0}, "pytorch": {"books": 79.0, "average": 79.0},
                      "onnx": {"books": 78.0, "average": 78.0}, "int8": {"books": 77.0, "average": 77.0}},
        mobile=MobileCheck(source="model_quantized.onnx", rows=12, mismatched_labels=0, agreement=100.0,
                           max_abs_diff=0.0, passed=True, opset=17, supported_opsets=[14, 18], opset_ok=True,
                           operators_config=None, usability={"recommendation": "use the CPU execution provider"}),
        size_mb={"pytorch": 0.2, "model.onnx": 0.3}, parameters=3000, onnx_initializers=3001, versions={},
        command="metakd export --int8",
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
