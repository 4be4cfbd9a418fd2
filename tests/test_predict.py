"""`metakd predict`: labels and probabilities from int8 / ONNX / student, from args, files or stdin."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from export_fixtures import LABELS, exported_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli

POSITIVE = "the kettle was really lovely perfect"
NEGATIVE = "my cable is quite awful broken"


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_default_is_int8_with_tab_separated_lines(exported_run):
    result = invoke("--run-dir", str(exported_run), "predict", POSITIVE, NEGATIVE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]
    assert [line.split("\t")[2] for line in lines] == [POSITIVE, NEGATIVE]
    assert all(0.5 <= float(line.split("\t")[1]) <= 1.0 for line in lines)
    assert "int8" in result.stderr and "model_quantized.onnx" in result.stderr


@pytest.mark.parametrize("model", ["int8", "onnx", "student"])
def test_every_model_gives_the_same_labels_as_json(exported_run, model):
    result = invoke("--run-dir", str(exported_run), "predict", "--model", model, "--json", POSITIVE, NEGATIVE)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [p["label"] for p in out] == ["positive", "negative"]
    for p in out:
        assert set(p["probabilities"]) == set(LABELS)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["probability"] == max(p["probabilities"].values())


def test_onnx_and_student_probabilities_match(exported_run):
    texts = [POSITIVE, NEGATIVE, "this book is very good", "the screen was bad"]
    onnx = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", "onnx", "--json", *texts).stdout)
    student = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", "student", "--json",
                                *texts).stdout)
    for a, b in zip(onnx, student):
        assert a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_reads_stdin_lines(exported_run):
    result = invoke("--run-dir", str(exported_run), "predict", input=f"{POSITIVE}\n\n{NEGATIVE}\n")
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["positive", "negative"]


def test_reads_text_and_jsonl_files(exported_run, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text(f"{POSITIVE}\n{NEGATIVE}\n", encoding="utf-8")
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text(json.dumps({"text": NEGATIVE, "id": 1}) + "\n" + json.dumps({"text": POSITIVE}) + "\n")
    for path, expected in ((lines, ["positive", "negative"]), (jsonl, ["negative", "positive"])):
        result = invoke("--run-dir", str(exported_run), "predict", "--file", str(path), "--json")
        assert result.exit_code == 0, result.output
        assert [p["label"] for p in json.loads(result.stdout)] == expected


def test_long_texts_are_cut_in_the_line_output(exported_run):
    text = " ".join(["the pan was very good great"] * 10)
    result = invoke("--run-dir", str(exported_run), "predict", text)
    prefix = result.stdout.rstrip("\n").split("\t")[2]
    assert len(prefix) == 60 and prefix.endswith("...")


def test_user_errors(exported_run, tiny_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    cases = [
        (["--run-dir", str(exported_run), "predict", "--file", str(bad)], "bad.jsonl:2"),
        (["--run-dir", str(exported_run), "predict", "--file", str(tmp_path / "none.txt")], "cannot read"),
        (["--run-dir", str(exported_run), "predict"], "no text to classify"),
        (["--run-dir", str(exported_run), "predict", "--file", str(bad), "a text"], "not both"),
        (["--run-dir", str(tiny_run), "predict", "--model", "int8", "x"], "metakd export --int8"),
        (["--run-dir", str(tmp_path / "missing"), "predict", "x"], "does not exist"),
    ]
    for args, message in cases:
        result = invoke(*args, input="")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def test_an_empty_text_argument_is_refused_by_position(exported_run):
    # it used to be dropped, so 3 inputs gave 2 lines and every later line sat against the wrong input
    result = invoke("--run-dir", str(exported_run), "predict", POSITIVE, "", NEGATIVE)
    assert result.exit_code == 2, result.output
    assert "text 2 of 3 is empty" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_a_file_without_text_is_named(exported_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    result = invoke("--run-dir", str(exported_run), "predict", "--file", str(empty))
    assert result.exit_code == 2, result.output
    assert f"{empty}: no text to classify" in result.stderr


def test_falls_back_to_the_student_without_onnx(tiny_run):
    result = invoke("--run-dir", str(tiny_run), "predict", POSITIVE)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("positive\t") and "student" in result.stderr


def test_no_bucketing_gives_the_same_predictions_in_input_order(exported_run):
    texts = [POSITIVE, "the pan was good", NEGATIVE, " ".join(["this book is really excellent lovely"] * 3),
             "my cable is bad", "the kettle was very good great and the toaster was perfect"]
    # dynamic int8 quantizes activations with one scale per batch tensor, padding included: other
    # batches give slightly other probabilities (the same labels); fp32 models agree to float noise
    for model, tolerance in (("student", 1e-5), ("onnx", 1e-5), ("int8", 1e-3)):
        bucketed = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", model, "--json",
                                     *texts).stdout)
        result = invoke("--run-dir", str(exported_run), "predict", "--model", model, "--no-bucketing", "--json",
                        *texts)
        assert result.exit_code == 0, result.output
        unbucketed = json.loads(result.stdout)
        assert [p["text"] for p in bucketed] == [p["text"] for p in unbucketed] == texts
        for a, b in zip(bucketed, unbucketed):
            assert a["label"] == b["label"], model
            assert a["probability"] == pytest.approx(b["probability"], abs=tolerance), model


def test_int8_made_for_a_missing_feature_warns(exported_run, tmp_path, monkeypatch):
    import shutil

    from metakd_cli import predict
    from metakd_cli.cpu import CpuInfo

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    beside = run / "onnx" / "metakd_export.json"
    beside.write_text(json.dumps({**json.loads(beside.read_text()), "target": "avx512_vnni"}))
    monkeypatch.setattr(predict, "cpu_info", lambda *a, **k: CpuInfo("Test CPU", "x86_64", 2, ["avx2"]))
    result = invoke("--run-dir", str(run), "predict", POSITIVE)
    assert result.exit_code == 0 and result.stdout.startswith("positive\t")
    assert "made for avx512_vnni" in result.stderr.replace("\n", " ")
    assert "made for" not in invoke("--run-dir", str(run), "predict", "--model", "onnx", POSITIVE).stderr
