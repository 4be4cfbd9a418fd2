"""`metakd export`: ONNX + int8 + ORT files that load without metakd, the checks, the drop gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from export_fixtures import copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_export_writes_onnx_int8_ort_and_configs(exported_run):
    onnx = exported_run / "onnx"
    for name in ("model.onnx", "model_quantized.onnx", "model.ort", "config.json", "tokenizer.json",
                 "vocab.txt", "ort_config.json", "metakd_export.json"):
        assert (onnx / name).is_file(), name
    assert not any(p.name.startswith(".") for p in exported_run.iterdir()), "a temporary folder was left behind"
    manifest = json.loads((exported_run / "manifest.json").read_text())
    assert manifest["steps"]["export"]["opset"] == 18
    metrics = json.loads((exported_run / "metrics" / "export.json").read_text())
    assert metrics["passed"] and metrics["failures"] == []
    assert metrics["logits_check"]["max_abs_diff"] <= 1e-4 and metrics["logits_check"]["rows"] > 0
    assert metrics["target"] in ("avx2", "avx512_vnni", "arm64") and metrics["target_reason"]
    assert set(metrics["dev_accuracy"]) == {"pytorch", "onnx", "int8"}
    assert set(metrics["int8_check"]["drop_per_domain"]) == {"books", "electronics", "kitchen", "average"}
    assert metrics["size_mb"]["model_quantized.onnx"] < metrics["size_mb"]["model.onnx"]
    assert metrics["parameters"]["pytorch"] > 0 and metrics["ort_check"]["source"] == "model_quantized.onnx"


def test_exported_folder_loads_with_plain_optimum(exported_run):
    """The acceptance line: ORTModelForSequenceClassification.from_pretrained(onnx/) with no metakd."""
    import onnx
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = exported_run / "onnx"
    assert onnx.load(str(folder / "model.onnx")).opset_import[0].version == 18
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["the pan was very good great", "my phone is quite awful broken"], padding=True,
                       return_tensors="np")
    for file_name in (None, "model.onnx", "model_quantized.onnx"):
        kwargs = {"file_name": file_name} if file_name else {}
        model = ORTModelForSequenceClassification.from_pretrained(folder, **kwargs)
        predicted = model(**inputs).logits.argmax(-1).tolist()
        assert [model.config.id2label[i] for i in predicted] == ["positive", "negative"], file_name


def test_exported_predictions_equal_pytorch_student(exported_run):
    """Every test row: the ONNX fp32 logits equal the PyTorch student's, so do int8 and ORT predictions."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data import encode
    from metakd_cli.distill import reload_dataset
    from metakd_cli.evaluate import onnx_logits, onnx_session, torch_logits
    from metakd_cli.run_dir import RunDir

    _, dataset = reload_dataset(RunDir(exported_run))
    tokenizer = AutoTokenizer.from_pretrained(exported_run / "student")
    encoded = encode(dataset.test + dataset.dev, dataset, tokenizer, 32)
    student = AutoModelForSequenceClassification.from_pretrained(exported_run / "student")
    expected = torch_logits(student, encoded, 0, batch_size=7)
    fp32 = onnx_logits(onnx_session(exported_run / "onnx" / "model.onnx"), encoded, 0, batch_size=5)
    assert np.abs(fp32 - expected).max() <= 1e-4
    for name in ("model_quantized.onnx", "model.ort"):
        predicted = onnx_logits(onnx_session(exported_run / "onnx" / name), encoded, 0).argmax(-1)
        assert (predicted == expected.argmax(-1)).all(), name


def test_drop_gate_fails_with_exit_1_and_keeps_the_files(exported_run, tmp_path):
    run = copy_run(exported_run, tmp_path / "run")
    manifest_before = (run / "manifest.json").read_bytes()
    metrics_before = (run / "metrics" / "export.json").read_bytes()
    onnx_before = (run / "onnx" / "model_quantized.onnx").read_bytes()

    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--int8", "--max-drop", "-1"])

    assert result.exit_code == 1, result.output
    assert "onnx.failed" in result.stderr and "--max-drop -1" in result.stderr
    assert (run / "manifest.json").read_bytes() == manifest_before
    assert (run / "metrics" / "export.json").read_bytes() == metrics_before
    assert (run / "onnx" / "model_quantized.onnx").read_bytes() == onnx_before
    failed = run / "onnx.failed"
    assert (failed / "model.onnx").is_file() and (failed / "model_quantized.onnx").is_file()
    report = json.loads((failed / "metakd_export.json").read_text())
    assert report["passed"] is False and report["int8_check"]["passed"] is False
    assert not any(p.name.startswith(".onnx") for p in run.iterdir())

    # a later passing export replaces onnx/ and drops the stale onnx.failed/
    assert invoke("--run-dir", str(run), "export").exit_code == 0
    assert not failed.exists() and not (run / "onnx" / "model_quantized.onnx").exists()


def test_export_cli_json_and_fp32_only(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--json", "--opset", "17")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["passed"] and out["opset"] == 17 and out["int8"] is False and out["target"] is None
    assert sorted(p.name for p in (run / "onnx").glob("model*")) == ["model.onnx"]
    assert "fp32 ONNX vs PyTorch" in result.stderr


def test_export_teacher(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--model", "teacher")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics" / "export.json").read_text())
    assert metrics["model"] == "teacher" and metrics["source"] == str(run / "teacher")


def test_arm64_target_implies_ort(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--int8", "--target", "arm64")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics" / "export.json").read_text())
    assert metrics["target"] == "arm64" and metrics["ort"] is True
    assert (run / "onnx" / "model.ort").is_file()


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "target"),
    [
        ("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", "x86_64", "avx512_vnni"),
        ("processor: 0\nflags\t\t: fpu sse4_2 avx2 fma\n", "x86_64", "avx2"),
        ("processor: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n", "x86_64", "avx2"),
        ("", "aarch64", "arm64"),
        ("", "arm64", "arm64"),
    ],
)
def test_detect_target(cpuinfo, machine, target):
    from metakd_cli.export import detect_target

    found, reason = detect_target(cpuinfo, machine)
    assert found == target and reason


def test_export_errors_are_user_errors(tiny_run, tmp_path):
    empty = tmp_path / "nothing"
    result = CliRunner().invoke(cli, ["--run-dir", str(empty), "export"])
    assert result.exit_code == 2 and "does not exist" in result.stderr

    run = copy_run(tiny_run, tmp_path / "run")
    import shutil

    shutil.rmtree(run / "student")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export"])
    assert result.exit_code == 2 and "metakd distill" in result.stderr

    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--model", "teacher", "--opset", "9"])
    assert result.exit_code == 2 and "--opset 9" in result.stderr
    assert not (run / "onnx").exists() and not (run / "onnx.failed").exists()
