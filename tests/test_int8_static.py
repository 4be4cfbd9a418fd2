"""Static int8 (`metakd export --int8`, the default --int8-mode): one text, one answer, whatever its batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from export_fixtures import copy_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli
from metakd_cli.core.errors import UserError

REVIEWS = Path(__file__).resolve().parent.parent / "examples" / "reviews"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def mixed_length_texts(n: int = 32) -> list[str]:
    """``n`` real-looking review texts of mixed lengths: "great kettle", then review openings cut to 1-7 words."""
    reviews = [json.loads(line)["text"] for path in sorted(REVIEWS.glob("*.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = ["great kettle"] + [" ".join(text.split()[: 1 + i % 7]) for i, text in enumerate(reviews[: n - 1])]
    assert len(texts) == n and len({len(t.split()) for t in texts}) >= 5
    return texts


def alone_vs_batch(run: Path) -> tuple[float, int]:
    """`metakd predict` on each text alone and on all 32 together (one padded batch): the largest
    |probability difference| over texts and labels, and how many texts change label."""
    from metakd_cli.steps.predict import PredictConfig, predict
    from metakd_cli.core.run_dir import RunDir

    texts = mixed_length_texts()
    together = predict(PredictConfig(texts=texts, model="int8"), RunDir(run)).predictions
    alone = [predict(PredictConfig(texts=[text], model="int8"), RunDir(run)).predictions[0] for text in texts]
    diff = max(abs(a.probabilities[k] - b.probabilities[k]) for a, b in zip(alone, together) for k in a.probabilities)
    return diff, sum(a.label != b.label for a, b in zip(alone, together))


@pytest.fixture(scope="module")
def int8_runs(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny run exported with the default int8 and with --int8-mode dynamic."""
    runs = {}
    for name, flags in (("default", []), ("dynamic", ["--int8-mode", "dynamic"])):
        run = copy_run(tiny_run, tmp_path_factory.mktemp(name) / "run")
        result = invoke("--run-dir", str(run), "export", "--int8", *flags)
        assert result.exit_code == 0, result.output
        runs[name] = run
    return runs


def test_default_int8_gives_a_text_the_same_answer_alone_and_in_a_batch(int8_runs):
    """The issue's done-criterion: one text alone vs in a batch of 32 of mixed lengths, identical label and
    probability within 1e-6, through `metakd predict`."""
    diff, flips = alone_vs_batch(int8_runs["default"])
    assert flips == 0 and diff <= 1e-6, f"max |probability diff| {diff:.2e}, {flips} labels changed"
    check = json.loads((int8_runs["default"] / "metrics" / "export.json").read_text())["int8_check"]
    assert check["mode"] == "static" and check["calibration"]["method"] == "percentile"
    assert check["batch_invariance"]["max_abs_prob_diff"] <= 1e-6 and check["batch_invariance"]["label_flips"] == 0


def test_dynamic_int8_answers_move_with_the_batch(int8_runs):
    """What the default fixes, and the proof that the test above can fail: dynamic int8 computes activation
    scales over the whole batch, padding included."""
    diff, _ = alone_vs_batch(int8_runs["dynamic"])
    assert diff > 1e-6
    check = json.loads((int8_runs["dynamic"] / "metrics" / "export.json").read_text())["int8_check"]
    assert check["mode"] == "dynamic" and check["calibration"] is None
    assert check["batch_invariance"]["max_abs_prob_diff"] > 1e-6


def test_predict_batch_size_1_gives_dynamic_int8_rows_their_answer_alone(int8_runs):
    """For a dynamic int8 model (an older export, or --int8-mode dynamic): predict warns when it batches, and
    --batch-size 1 gives each text the probability it gets alone."""
    run = str(int8_runs["dynamic"])
    texts = mixed_length_texts()
    batched = invoke("--run-dir", run, "predict", "--json", *texts)
    assert batched.exit_code == 0 and "--batch-size 1" in batched.stderr.replace("\n", " ")
    one_by_one = invoke("--run-dir", run, "predict", "--json", "--batch-size", "1", *texts)
    assert one_by_one.exit_code == 0 and "dynamic int8" not in one_by_one.stderr
    alone = [json.loads(invoke("--run-dir", run, "predict", "--json", text).stdout)[0] for text in texts[:4]]
    assert [p["probabilities"] for p in json.loads(one_by_one.stdout)[:4]] == [p["probabilities"] for p in alone]
    static = invoke("--run-dir", str(int8_runs["default"]), "predict", "--json", *texts)
    assert static.exit_code == 0 and "dynamic int8" not in static.stderr


def test_static_int8_folder_loads_with_plain_optimum(int8_runs):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = int8_runs["default"] / "onnx"
    quantization = json.loads((folder / "ort_config.json").read_text())["quantization"]
    assert quantization["is_static"] is True and quantization["format"] == "QDQ"
    assert quantization["operators_to_quantize"] == ["MatMul", "Gather"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = ORTModelForSequenceClassification.from_pretrained(folder, file_name="model_quantized.onnx")
    inputs = tokenizer(["the pan was very good great", "my phone is quite awful broken"], padding=True,
                       return_tensors="np")
    assert [model.config.id2label[i] for i in model(**inputs).logits.argmax(-1).tolist()] == ["positive", "negative"]


@pytest.mark.parametrize(("calibration", "static_format"), [("minmax", "qdq"), ("entropy", "qoperator")])
def test_other_calibrations_and_the_qoperator_graph_are_batch_invariant(tiny_run, tmp_path, calibration,
                                                                       static_format):
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import export
    from metakd_cli.core.run_dir import RunDir

    run = copy_run(tiny_run, tmp_path / "run")
    result = export(ExportConfig(int8=True, calibration=calibration, static_format=static_format, max_drop=100),
                    RunDir(run))
    assert result.passed, result.failures
    check = result.metrics["int8_check"]
    assert check["calibration"]["method"] == calibration and check["calibration"]["format"] == static_format
    assert check["batch_invariance"]["max_abs_prob_diff"] <= 1e-6
    diff, flips = alone_vs_batch(run)
    assert flips == 0 and diff <= 1e-6


def test_int8_mode_flags_are_checked(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    for args, message in ((["--calibration", "entropy"], "add --int8 or drop --calibration"),
                          (["--int8-mode", "static"], "add --int8 or drop --int8-mode"),
                          (["--int8", "--int8-mode", "dynamic", "--calibration", "entropy"], "dynamic int8 has none"),
                          (["--int8", "--int8-mode", "static", "--fuse"], "--int8-mode dynamic")):
        result = CliRunner().invoke(cli, ["--run-dir", str(run), "export", *args])
        assert result.exit_code == 2 and message in result.stderr.replace("\n", " "), (args, result.output)
    assert not (run / "onnx").exists()


def test_recipes_can_set_the_int8_mode_and_calibration(tmp_path):
    from metakd_cli.core.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("export:\n  int8_mode: dynamic\n  calibration: entropy\n  calibration_rows: 64\n"
                      "  static_format: qoperator\n", encoding="utf-8")
    loaded = load_recipe(recipe).export
    assert (loaded.int8_mode, loaded.calibration, loaded.calibration_rows, loaded.static_format) == \
        ("dynamic", "entropy", 64, "qoperator")


def test_a_recipe_with_fuse_gets_dynamic_int8_as_the_command_line_does(tmp_path):
    """`export: {int8: true, fuse: true}` was a valid recipe before static int8 became the default: fuse
    implies dynamic there as `--fuse` does on the command line, unless the recipe names a mode."""
    from metakd_cli.core.config import load_recipe
    from metakd_cli.steps.export import validate

    recipe = tmp_path / "r.yaml"
    recipe.write_text("export:\n  int8: true\n  fuse: true\n", encoding="utf-8")
    loaded = load_recipe(recipe).export
    validate(loaded)
    assert loaded.int8_kind == "dynamic"
    recipe.write_text("export:\n  int8: true\n", encoding="utf-8")
    assert load_recipe(recipe).export.int8_kind == "static"
    recipe.write_text("export:\n  int8: true\n  fuse: true\n  int8_mode: static\n", encoding="utf-8")
    with pytest.raises(UserError, match="--int8-mode dynamic"):
        validate(load_recipe(recipe).export)


def test_export_prints_a_signed_change_not_a_negative_drop():
    """An int8 gain of 25 points reads +25.00 in the "int8 vs fp32" column, a loss -0.50."""
    from metakd_cli.commands.export import _render

    class Console:
        tables: list = []

        def print_table(self, title, columns, rows):
            self.tables.append((columns, rows))

    from metakd_cli.core.config import ExportConfig
    from metakd_cli.core.cpu import CpuInfo
    from metakd_cli.steps.export import ExportResult, Int8Check, LogitsCheck

    int8 = Int8Check(mode="static", target="avx2", target_reason="--target", attempt="plain", remedy=None,
                     per_channel=True, fused=False, passed=True, rows=4, drop=0.5, max_drop=1.0,
                     drop_per_domain={"books": -25.0, "average": 0.5}, agreement_with_fp32=75.0, calibration=None,
                     batch_invariance={}, tried=[])
    result = ExportResult(
        passed=True, folder=Path("onnx"), failures=[], seconds=1.0, config=ExportConfig(int8=True, opset=18),
        source=Path("student"), domains=["books"], labels=["neg", "pos"], max_length=16,
        cpu=CpuInfo("test CPU", "x86_64", 2),
        logits_check=LogitsCheck(rows=4, max_abs_diff=1e-6, atol=1e-4, passed=True, reference="PyTorch model"),
        trim=None, int8=int8,
        dev_accuracy={"onnx": {"books": 50.0, "average": 50.0}, "int8": {"books": 75.0, "average": 75.0}},
        mobile=None, size_mb={"model.onnx": 1.0}, parameters=10, onnx_initializers=10, versions={}, command="",
    )
    console = Console()
    _render(result, console)
    columns, rows = console.tables[0]
    assert columns[-1] == "int8 vs fp32" and rows[0][-1] == "+25.00" and rows[1][-1] == "-0.50"
