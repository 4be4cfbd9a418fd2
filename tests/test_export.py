"""`metakd export`: ONNX + int8 + ORT files that load without metakd, the checks, the drop gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from export_fixtures import copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.data.dataset import reload_dataset
from metakd_cli.cli import cli
from metakd_cli.core.run_dir import LOCK_FILE


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_export_writes_onnx_int8_ort_and_configs(exported_run):
    onnx = exported_run / "onnx"
    for name in ("onnx/model.onnx", "onnx/model_quantized.onnx", "model.ort", "required_operators.config",
                 "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "ort_config.json",
                 "metakd_export.json"):
        assert (onnx / name).is_file(), name
    # one copy of the weights: the .onnx files live in onnx/ only (transformers.js's layout), model.ort at the top
    assert sorted(p.relative_to(onnx).as_posix() for p in onnx.rglob("*.onnx")) == [
        "onnx/model.onnx", "onnx/model_quantized.onnx"]
    assert json.loads((onnx / "tokenizer_config.json").read_text())["model_max_length"] == 32  # the export's
    left = [p.name for p in exported_run.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    assert not left, f"a temporary folder was left behind: {left}"
    assert (exported_run / LOCK_FILE).read_text() == ""  # the lock stays, with no holder once export is done
    manifest = json.loads((exported_run / "manifest.json").read_text())
    assert manifest["steps"]["export"]["opset"] == 18
    metrics = json.loads((exported_run / "metrics" / "export.json").read_text())
    assert metrics["passed"] and metrics["failures"] == []
    assert metrics["logits_check"]["max_abs_diff"] <= 1e-4 and metrics["logits_check"]["rows"] > 0
    assert metrics["target"] in ("avx2", "avx512_vnni", "arm64") and metrics["target_reason"]
    assert set(metrics["dev_accuracy"]) == {"pytorch", "onnx", "int8"}
    assert set(metrics["int8_check"]["drop_per_domain"]) == {"books", "electronics", "kitchen", "average"}
    # the weights are int8 (on this 32-wide model the QDQ nodes and their scales outweigh what that saves; on a
    # real student the file is about a quarter of model.onnx)
    assert metrics["size_mb"]["model_quantized.onnx"] > 0
    import onnx as onnx_lib

    weight_bytes = {name: sum(len(t.raw_data) for t in onnx_lib.load(str(onnx / "onnx" / name)).graph.initializer)
                    for name in ("model.onnx", "model_quantized.onnx")}
    assert weight_bytes["model_quantized.onnx"] < weight_bytes["model.onnx"] / 2
    assert metrics["parameters"]["pytorch"] > 0 and metrics["ort_check"]["source"] == "model_quantized.onnx"


def test_exported_folder_loads_with_plain_optimum(exported_run):
    """The acceptance line: ORTModelForSequenceClassification.from_pretrained(onnx/) with no metakd."""
    import onnx
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = exported_run / "onnx"
    assert onnx.load(str(folder / "onnx" / "model.onnx")).opset_import[0].version == 18
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

    from metakd_cli.data.encode import encode
    from metakd_cli.models.inference import onnx_logits, onnx_session, torch_logits
    from metakd_cli.core.run_dir import RunDir

    _, dataset = reload_dataset(RunDir(exported_run))
    tokenizer = AutoTokenizer.from_pretrained(exported_run / "student")
    encoded = encode(dataset.test + dataset.dev, dataset, tokenizer, 32)
    student = AutoModelForSequenceClassification.from_pretrained(exported_run / "student")
    expected = torch_logits(student, encoded, 0, batch_size=7)
    fp32 = onnx_logits(onnx_session(exported_run / "onnx" / "onnx" / "model.onnx"), encoded, 0, batch_size=5)
    assert np.abs(fp32 - expected).max() <= 1e-4
    for name in ("onnx/model_quantized.onnx", "model.ort"):
        predicted = onnx_logits(onnx_session(exported_run / "onnx" / name), encoded, 0).argmax(-1)
        assert (predicted == expected.argmax(-1)).all(), name


@pytest.fixture
def int8_always_wrong(monkeypatch):
    """Every int8 attempt predicts a wrong label on every dev row, so it fails --max-drop 0.

    (These tests used --max-drop -1, which is now refused.)
    """
    def wrong(attempt, path, dev, pad_id) -> np.ndarray:
        return (np.asarray(dev.labels) + 1) % 2

    monkeypatch.setattr("metakd_cli.steps.export.int8_dev_predictions", wrong)


def test_drop_gate_fails_with_exit_1_and_keeps_the_files(exported_run, tmp_path, int8_always_wrong):
    run = copy_run(exported_run, tmp_path / "run")
    manifest_before = (run / "manifest.json").read_bytes()
    metrics_before = (run / "metrics" / "export.json").read_bytes()
    onnx_before = (run / "onnx" / "onnx" / "model_quantized.onnx").read_bytes()

    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--int8", "--max-drop", "0"])

    assert result.exit_code == 1, result.output
    assert "onnx.failed" in result.stderr and "--max-drop 0" in result.stderr
    assert (run / "manifest.json").read_bytes() == manifest_before
    assert (run / "metrics" / "export.json").read_bytes() == metrics_before
    assert (run / "onnx" / "onnx" / "model_quantized.onnx").read_bytes() == onnx_before
    failed = run / "onnx.failed"
    assert (failed / "onnx" / "model.onnx").is_file() and (failed / "onnx" / "model_quantized.onnx").is_file()
    report = json.loads((failed / "metakd_export.json").read_text())
    assert report["passed"] is False and report["int8_check"]["passed"] is False
    assert not any(p.name.startswith(".onnx") for p in run.iterdir())

    # a later passing export replaces onnx/ and drops the stale onnx.failed/
    assert invoke("--run-dir", str(run), "export").exit_code == 0
    assert not failed.exists() and not (run / "onnx" / "onnx" / "model_quantized.onnx").exists()


def test_export_cli_json_and_fp32_only(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--json", "--opset", "17")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["passed"] and out["opset"] == 17 and out["int8"] is False and out["target"] is None
    assert sorted(p.relative_to(run / "onnx").as_posix() for p in (run / "onnx").rglob("model*")) == [
        "onnx/model.onnx"]
    assert "fp32 ONNX vs PyTorch" in result.stderr


def test_export_reads_a_recipe_and_set_under_its_flags(tiny_run, tmp_path):
    """Defaults < the recipe's export: section < --set and flags, as for fit and distill."""
    run = copy_run(tiny_run, tmp_path / "run")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("export:\n  opset: 16\n  atol: 0.001\n", encoding="utf-8")
    result = invoke("--run-dir", str(run), "export", "--json", "--recipe", str(recipe), "--set", "export.opset=17")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["opset"] == 17 and out["config"]["atol"] == 0.001  # --set over the recipe; the recipe's atol kept
    result = invoke("--run-dir", str(run), "export", "--json", "--recipe", str(recipe), "--opset", "18")
    assert json.loads(result.stdout)["opset"] == 18


def test_fuse_quantizes_a_fused_graph_that_loads_plainly(tiny_run, tmp_path):
    import onnx
    import onnxruntime as ort

    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--int8", "--fuse", "--max-drop", "100")
    assert result.exit_code == 0, result.output
    assert "fused graph for int8: " in result.stderr and "Attention" in result.stderr
    assert not (run / "onnx" / ".fused").exists()
    folder = run / "onnx" / "onnx"
    assert sorted(p.name for p in (run / "onnx").rglob("*.onnx")) == ["model.onnx", "model_quantized.onnx"]
    ops = {n.op_type for n in onnx.load(str(folder / "model_quantized.onnx")).graph.node}
    assert "QAttention" in ops  # the fused attention, quantized
    assert "Attention" not in {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}  # fp32 as exported
    session = ort.InferenceSession(str(folder / "model_quantized.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((2, 8), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feed)[0].shape == (2, 2)
    metrics = json.loads((run / "metrics" / "export.json").read_text())
    assert metrics["int8_check"]["fused"] is True


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
    from metakd_cli.steps.export import detect_target

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


# --------------------------------------------------------------------------- --trim-vocab


def test_trim_vocab_exports_the_trimmed_model_and_keeps_covered_predictions(tiny_run, tmp_path):
    import onnx
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data.encode import encode
    from metakd_cli.models.inference import onnx_logits, onnx_session, torch_logits
    from metakd_cli.core.run_dir import RunDir

    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--trim-vocab", "--keep-top", "2", "--json")
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    trim = m["trim"]
    assert trim["keep_top"] == 2 and trim["from_top"] == 2
    assert trim["vocab_after"] < trim["vocab_before"] and trim["parameters_after"] < trim["parameters_before"]
    assert trim["size_mb_after"] < trim["size_mb_before"]
    assert set(trim["unknown_rate"]) == {"books", "electronics", "kitchen"}
    assert all(r["after"] >= r["before"] >= 0 for r in trim["unknown_rate"].values())
    assert trim["covered_rows"] > 0 and trim["covered_agreement"] == 100.0 and trim["passed"]
    assert set(trim["dev_accuracy"]) == {"untrimmed", "trimmed"}
    assert set(m["dev_accuracy"]) == {"untrimmed", "pytorch", "onnx"}
    assert m["logits_check"]["reference"] == "trimmed PyTorch model" and m["logits_check"]["passed"]
    assert m["parameters"]["pytorch"] == trim["parameters_after"] == m["parameters"]["onnx_initializers"]

    # the shipped folder: a tokenizer and an ONNX embedding table of the trimmed size, loadable as usual
    folder = run / "onnx"
    assert len((folder / "vocab.txt").read_text().splitlines()) == trim["vocab_after"]
    graph = onnx.load(str(folder / "onnx" / "model.onnx")).graph
    (table,) = [t for t in graph.initializer if t.name.endswith("word_embeddings.weight")]
    assert table.dims[0] == trim["vocab_after"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = ORTModelForSequenceClassification.from_pretrained(folder)
    inputs = tokenizer(["the pan was very good great", "my phone is quite awful broken"], padding=True,
                       return_tensors="np")
    assert [model.config.id2label[i] for i in model(**inputs).logits.argmax(-1).tolist()] == ["positive", "negative"]

    # every test row whose pieces were all kept: the trimmed ONNX model gives the untrimmed student's logits
    _, dataset = reload_dataset(RunDir(run))
    original_tokenizer = AutoTokenizer.from_pretrained(run / "student")
    rows = dataset.test + dataset.dev
    before = encode(rows, dataset, original_tokenizer, 32)
    after = encode(rows, dataset, tokenizer, 32)
    kept = original_tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    covered = [i for i, (a, b) in enumerate(zip(before.input_ids, after.input_ids)) if [kept[t] for t in b] == a]
    assert covered
    student = AutoModelForSequenceClassification.from_pretrained(run / "student")
    expected = torch_logits(student, before.subset(covered), 0)
    trimmed = onnx_logits(onnx_session(folder / "onnx" / "model.onnx"), after.subset(covered), 0)
    assert np.abs(trimmed - expected).max() <= 1e-4
    assert (trimmed.argmax(-1) == expected.argmax(-1)).all()

    rendered = invoke("--run-dir", str(run), "export", "--trim-vocab")
    assert rendered.exit_code == 0 and "vocabulary trimmed" in rendered.stdout and "[UNK] %" in rendered.stdout


def test_keep_top_without_trim_vocab_is_a_user_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--keep-top", "10"])
    assert result.exit_code == 2 and "--trim-vocab" in result.stderr
    assert not (run / "onnx").exists()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_max_drop_is_a_user_error(tiny_run, tmp_path, value):
    run = copy_run(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--int8", "--max-drop", value])
    assert result.exit_code == 2, result.output
    assert "--max-drop must be 0 or more" in result.stderr
    assert not (run / "onnx").exists()


def test_recipes_can_set_trim_vocab_and_keep_top(tmp_path):
    from metakd_cli.core.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("export:\n  trim_vocab: true\n  keep_top: 5000\n", encoding="utf-8")
    loaded = load_recipe(recipe).export
    assert loaded.trim_vocab is True and loaded.keep_top == 5000


# --------------------------------------------------------------------------- int8 fallback


def test_int8_fallback_keeps_the_first_remedy_that_passes(tiny_run, tmp_path, monkeypatch):
    """Plain int8 is made to miss the gate (its predictions are flipped); the first remedy passes."""
    import onnx

    from metakd_cli.steps import export as export_module
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import export
    from metakd_cli.core.run_dir import RunDir

    real = export_module.int8_dev_predictions

    def flip_plain(attempt, path, dev, pad_id):
        predictions = real(attempt, path, dev, pad_id)
        return 1 - predictions if attempt.name == "plain" else predictions

    monkeypatch.setattr(export_module, "int8_dev_predictions", flip_plain)
    run = copy_run(tiny_run, tmp_path / "run")
    result = export(ExportConfig(int8=True, target="avx512_vnni", max_drop=1.0), RunDir(run))

    assert result.passed, result.failures
    attempts = result.metrics["int8_attempts"]
    assert [a["name"] for a in attempts] == ["plain", "fp32_embeddings_classifier"]
    assert attempts[0]["drop"] > 50 and not attempts[0]["passed"]
    assert attempts[1]["passed"] and attempts[1]["drop"] <= 1.0 and attempts[1]["size_mb"] > 0
    check = result.metrics["int8_check"]
    assert check["attempt"] == "fp32_embeddings_classifier" and check["passed"] and check["remedy"]
    assert json.loads((run / "metrics" / "export.json").read_text())["int8_attempts"] == attempts
    # the kept file is the remedy's: fp32 embedding table and classifier, and its settings in ort_config.json
    quantization = json.loads((run / "onnx" / "ort_config.json").read_text())["quantization"]
    assert quantization["operators_to_quantize"] == ["MatMul"]
    assert "/classifier/Gemm" in quantization["nodes_to_exclude"]
    graph = onnx.load(str(run / "onnx" / "onnx" / "model_quantized.onnx")).graph
    names = {t.name for t in graph.initializer}
    assert "bert.embeddings.word_embeddings.weight" in names
    assert not [n for n in graph.node if n.name.startswith("/classifier/") and n.op_type == "MatMulInteger"]
    assert not any(p.name.startswith(".") for p in (run / "onnx").iterdir())


def _weight_zero_points(path) -> list[tuple]:
    """(output columns of the weight matrix, shape of its zero points) for each int8 weight of a MatMul: the
    MatMulIntegers of dynamic int8, the DequantizeLinears feeding a MatMul of static (QDQ) int8."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    into_matmul = {i for n in graph.node if n.op_type == "MatMul" for i in n.input}
    # MatMulInteger inputs: A, B (int8 weights), a_zero_point, b_zero_point; attention's activation products have
    # no weight. DequantizeLinear inputs: x (int8), scale, zero_point
    return [(initializers[n.input[1]].shape[1], initializers[n.input[3]].shape) for n in graph.node
            if n.op_type == "MatMulInteger" and n.input[1] in initializers] + \
        [(initializers[n.input[0]].shape[1], initializers[n.input[2]].shape) for n in graph.node
         if n.op_type == "DequantizeLinear" and n.input[0] in initializers and n.output[0] in into_matmul]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_is_per_channel_by_default_and_per_tensor_on_request(tiny_run, tmp_path, mode):
    for flags, per_channel in (([], True), (["--per-tensor"], False)):
        run = copy_run(tiny_run, tmp_path / f"run-{per_channel}")
        result = invoke("--run-dir", str(run), "export", "--int8", "--int8-mode", mode, *flags, "--max-drop", "100")
        assert result.exit_code == 0, result.output
        check = json.loads((run / "metrics" / "export.json").read_text())["int8_check"]
        assert check["attempt"] == "plain" and check["per_channel"] is per_channel
        assert json.loads((run / "onnx" / "ort_config.json").read_text())["quantization"]["per_channel"] is per_channel
        found = _weight_zero_points(run / "onnx" / "onnx" / "model_quantized.onnx")
        assert found
        for columns, shape in found:  # one zero point per output column, or one per matrix
            assert shape == ((columns,) if per_channel else ())


def test_weight_scaling_without_int8_is_a_user_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--fuse"])  # it was ignored
    assert result.exit_code == 2 and "add --int8 or drop --fuse" in result.output
    for flag in ("--per-channel", "--per-tensor"):
        result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", flag])
        assert result.exit_code == 2 and f"add --int8 or drop {flag}" in result.output
        assert "Traceback" not in result.output and not (run / "onnx").exists()


def test_int8_fallback_fails_with_every_attempt_listed(tiny_run, tmp_path, int8_always_wrong):
    run = copy_run(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--int8", "--target", "avx2", "--per-tensor",
                                      "--max-drop", "0"])
    assert result.exit_code == 1, result.output
    names = ["plain", "fp32_embeddings_classifier", "per_channel", "reduce_range", "other_weight_type"]
    error = result.stderr.replace("\n", " ")
    assert "--max-drop 0" in error and all(name in error for name in names) and "onnx.failed" in error
    failed = run / "onnx.failed"
    report = json.loads((failed / "metakd_export.json").read_text())
    assert [a["name"] for a in report["int8_attempts"]] == names
    assert all(not a["passed"] and a["size_mb"] > 0 and "drop" in a for a in report["int8_attempts"])
    assert report["int8_attempts"][-1]["weights"] == "QInt8"  # avx2's default is QUInt8
    assert report["passed"] is False and not (run / "onnx").exists() and not (run / "metrics" / "export.json").exists()
    assert (failed / "onnx" / "model_quantized.onnx").is_file()
    assert not any(p.name.startswith(".") for p in failed.iterdir())


def test_int8_attempts_are_in_the_fixed_order():
    from metakd_cli.ship.int8 import INT8_REMEDIES
    from metakd_cli.ship.int8 import int8_attempts

    assert [a.name for a in int8_attempts("avx512_vnni", False)] == ["plain", *INT8_REMEDIES]
    with_per_channel = int8_attempts("arm64", True)
    assert [a.name for a in with_per_channel] == ["plain", "fp32_embeddings_classifier", "reduce_range",
                                                  "other_weight_type"]
    assert all(a.per_channel for a in with_per_channel) and with_per_channel[-1].weights == "QUInt8"


# --------------------------------------------------------------------------- ORT Mobile


def test_ort_round_trip_and_mobile_checks(exported_run):
    from transformers import AutoTokenizer

    from metakd_cli.data.encode import encode
    from metakd_cli.models.inference import onnx_logits, onnx_session
    from metakd_cli.core.run_dir import RunDir

    metrics = json.loads((exported_run / "metrics" / "export.json").read_text())
    check = metrics["ort_check"]
    assert check["passed"] and check["mismatched_labels"] == 0 and check["rows"] == metrics["int8_check"]["rows"]
    mobile = metrics["mobile"]
    assert mobile["opset"] == 18 and mobile["opset_ok"] and mobile["supported_opsets"][1] >= 18
    assert {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram", "try_nnapi_or_coreml"} <= set(mobile["usability"])
    operators = (exported_run / "onnx" / "required_operators.config").read_text()
    assert mobile["operators_config"] == "required_operators.config" and "QLinearMatMul" in operators  # static int8

    _, dataset = reload_dataset(RunDir(exported_run))
    encoded = encode(dataset.dev, dataset, AutoTokenizer.from_pretrained(exported_run / "onnx"), 32)
    ort = onnx_logits(onnx_session(exported_run / "onnx" / "model.ort"), encoded, 0)
    int8 = onnx_logits(onnx_session(exported_run / "onnx" / "onnx" / "model_quantized.onnx"), encoded, 0)
    assert (ort.argmax(-1) == int8.argmax(-1)).all()


def test_ort_file_that_predicts_other_labels_fails_the_export(tiny_run, tmp_path, monkeypatch):
    """A model.ort whose logits are negated (labels swapped) must not replace onnx/."""
    import onnx
    from onnx import helper

    from metakd_cli.steps import export as export_module

    real = export_module.convert_to_ort

    def convert_negated(source, folder, target):
        model = onnx.load(str(source))
        output = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [f"{o}_raw" if o == output else o for o in node.output]
        model.graph.node.append(helper.make_node("Neg", [f"{output}_raw"], [output], name="negate"))
        negated = folder / "negated.onnx"
        onnx.save(model, str(negated))
        try:
            return real(negated, folder, target)
        finally:
            negated.unlink()

    monkeypatch.setattr(export_module, "convert_to_ort", convert_negated)
    run = copy_run(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--ort"])
    assert result.exit_code == 1, result.output
    assert "model.ort predicts a different label than model.onnx" in result.stderr.replace("\n", " ")
    report = json.loads((run / "onnx.failed" / "metakd_export.json").read_text())
    assert report["ort_check"]["passed"] is False and report["ort_check"]["mismatched_labels"] > 0
    assert not (run / "onnx").exists()


def test_ort_needs_an_opset_ort_mobile_runs(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", "--ort", "--opset", "21"])
    assert result.exit_code == 2 and "--opset 19 or lower" in result.stderr
