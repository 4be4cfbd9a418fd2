"""Issue 26's bench (bench/mpnet.py) and its recipe: amazon-mpnet loads and passes `metakd run`'s checks offline;
the reader turns run folders' metrics into results and the issue's targets (pass, fail, not measured), reading
only folders written in step order with the driver's settings; the driver runs the systems in order."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from metakd_cli import distill, evaluate, export, fit, pipeline
from metakd_cli.config import apply_overrides, find_recipe, load_recipe
from metakd_cli.packaged import MINILM4, MPNET

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def bench():
    """bench/mpnet.py as `bench.mpnet` (bench is a package at the repository root)."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("bench.mpnet")
    finally:
        sys.path.remove(str(ROOT))


def _check(recipe) -> None:
    """What `metakd run` checks before its first step (pipeline.run_pipeline), the data aside."""
    fit.validate(recipe.fit)
    distill.validate(recipe.distill)
    distill.check_teacher(recipe.distill, recipe.fit.teacher_mode, recipe.fit.hold_out)
    pipeline._check_student(recipe)
    export.validate(recipe.export)
    evaluate.validate(recipe.eval)
    pipeline._check_outputs(recipe)


def test_the_recipe_loads_and_passes_runs_checks_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # mpnet-base and minilm4 come from installed packages, not the hub
    recipe = load_recipe(find_recipe("amazon-mpnet"))
    assert (recipe.fit.teacher, recipe.distill.student, recipe.export.int8) == (MPNET, MINILM4, True)
    _check(recipe)


def test_every_system_and_the_speed_settings_are_valid_overrides(bench, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in bench.SYSTEMS:
        for extra in ((), bench.SPEED_SETS):
            recipe = load_recipe(bench.RECIPE)
            apply_overrides(recipe, "fit", {}, tuple(bench.sets_of(name, extra)))
            _check(recipe)
    for name, system in bench.SYSTEMS.items():  # a system changes only the steps it runs, never those it copies
        assert all(item.split(".")[0] in system.steps for item in system.sets), name
    assert set(bench.RUN_DEFAULT) | {"teacher-mix"} == set(bench.SYSTEMS)
    assert set(bench.SPEED_SYSTEMS) <= set(bench.RUN_DEFAULT)


# --------------------------------------------------------------------------- fake run folders


def write_steps(bench, run_dir: Path, system: str, bodies: dict[str, dict], extra: tuple[str, ...] = (),
                at: float = T0) -> Path:
    """metrics/<step>.json for each step of ``bodies``, in order (one second apart), with the configs the
    driver expects of ``system`` (a body's own "config" wins)."""
    configs = bench.expected_configs(system, extra)
    (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
    for i, (step, body) in enumerate(bodies.items()):
        path = run_dir / "metrics" / f"{step}.json"
        path.write_text(json.dumps({"step": step, "config": configs[step], **body}))
        os.utime(path, (at + i, at + i))
    return run_dir


def _accuracy(average: float) -> dict:
    return {"books": average - 1, "electronics": average + 1, "average": average}


def _model(name: str, average: float, throughput: float, size: float = 10.0) -> dict:
    return {"name": name, "accuracy": _accuracy(average), "throughput": throughput, "latency_ms": 1000 / throughput,
            "size_mb": size, "timed_rows": {"batch_1": 64, "batch_32": 256}}


def _student(bench, run_dir: Path, system: str, teacher: float, int8: float, int8_mb: float,
             throughputs: tuple[float, float], extra: tuple[str, ...] = ()) -> Path:
    return write_steps(bench, run_dir, system, {
        "fit": {},  # the teacher's, copied with its folder
        "distill": {"seconds": 7200, "alignment": {"aligned": 6400, "rows": 6400},
                    "parameters": {"student": 19_165_058}},
        "export": {"size_mb": {"pytorch": 76.7, "model.onnx": 76.7, "model_quantized.onnx": int8_mb},
                   "int8_check": {"drop": 0.25, "attempt": "plain", "mode": "static"}},
        "eval": {"models": [_model("teacher", teacher, throughputs[0], 438.0), _model("student", int8 + 0.2, 60.0),
                            _model("onnx", int8 + 0.2, 90.0), _model("int8", int8, throughputs[1], int8_mb)],
                 "threads": {"torch": 2}, "cpu": {"cores": 2}, "written": "2026-12-02T06:00:00+00:00",
                 "config": {**bench.expected_configs(system, extra)["eval"]}},
    }, extra)


def _by_target(document: dict) -> dict[str, dict]:
    return {t["target"].split(" ")[0] + ("-trim" if "trim" in t["target"] else "")
            + ("-gap" if "within" in t["target"] else "") + ("-speed" if "throughput" in t["target"] else "")
            + ("-file" if "file" in t["target"] else ""): t for t in document["targets"]}


def test_nothing_finished_is_all_not_measured(bench, tmp_path):
    out = tmp_path / "mpnet.json"
    document = bench.table(tmp_path / "runs", out=out)
    assert json.loads(out.read_text()) == document
    assert set(document["results"].values()) == {"not measured"}
    assert document["speed"] == "not measured"
    assert len(document["targets"]) == 6
    assert all(t["status"] == "not measured" and t["value"] is None for t in document["targets"])


def test_finished_folders_give_each_target_its_figure_and_status(bench, tmp_path):
    runs = tmp_path / "runs"
    write_steps(bench, runs / "teacher-meta", "teacher-meta",
                {"fit": {"test_accuracy": _accuracy(90.5), "dev_accuracy": _accuracy(91.0), "seconds": 36000}})
    _student(bench, runs / "meta", "meta", teacher=90.5, int8=89.0, int8_mb=19.9, throughputs=(3.0, 60.0))
    write_steps(bench, runs / "meta-trim", "meta-trim", {
        "fit": {}, "distill": {},
        "export": {"size_mb": {"model_quantized.onnx": 9.4}, "trim": {"vocab_before": 30522, "vocab_after": 11000,
                                                                      "texts": 12800}},
        "eval": {"models": [_model("int8", 88.9, 60.0, 9.4)]}})
    speed = runs / "speed"  # the under-trained pipeline, with the speed settings
    _student(bench, speed / "meta", "meta", teacher=50.0, int8=50.0, int8_mb=19.9, throughputs=(4.0, 120.0),
             extra=bench.SPEED_SETS)
    write_steps(bench, speed / "meta-trim", "meta-trim",
                {"fit": {}, "distill": {}, "export": {"size_mb": {"model_quantized.onnx": 9.9}}}, bench.SPEED_SETS)
    write_steps(bench, speed / "teacher-onnx", "teacher-onnx", {
        "fit": {},
        "export": {"size_mb": {"pytorch": 438.0, "model.onnx": 438.1}},
        "eval": {"models": [_model("teacher", 50.0, 4.2, 438.0), _model("onnx", 50.0, 10.0, 438.1)]}},
        bench.SPEED_SETS)

    document = bench.table(runs, out=tmp_path / "mpnet.json")
    targets = _by_target(document)
    assert targets["MPNet"]["value"] == 90.5 and targets["MPNet"]["status"] == "pass"
    assert targets["int8"]["value"] == 89.0 and targets["int8"]["status"] == "fail"  # below the paper's 89.4
    assert targets["int8-gap"]["value"] == 1.5 and targets["int8-gap"]["status"] == "fail"  # 90.5 - 89.0 > 1.0
    # speed from the speed run, not the full run's eval: 120 / 4 = 30x
    assert targets["int8-speed"]["value"] == 30.0 and targets["int8-speed"]["status"] == "pass"
    assert targets["int8-speed"]["source"].startswith("speed")
    assert targets["int8-file"]["value"] == 19.9 and targets["int8-file"]["status"] == "pass"
    assert targets["int8-trim-file"]["value"] == 9.4 and targets["int8-trim-file"]["source"].startswith("meta-trim")

    figures = document["speed"]
    assert figures["measured_on"].startswith("measured on an under-trained pipeline")
    assert figures["throughput_rows_per_s"]["teacher_onnx_fp32"] == 10.0
    assert figures["int8_speedup"] == {"vs_teacher_pytorch": 30.0, "vs_teacher_onnx_fp32": 12.0}
    assert figures["teacher_pytorch_in_second_eval"] == 4.2
    assert figures["size_mb"]["int8_student_trimmed"] == 9.9 and figures["size_mb"]["teacher_onnx_fp32"] == 438.1
    assert document["results"]["meta"]["test_accuracy"]["int8"]["average"] == 89.0
    assert document["results"]["tinybert"] == "not measured" and document["results"]["teacher-mix"] == "not measured"


def test_without_a_speed_run_the_full_runs_figures_are_used(bench, tmp_path):
    runs = tmp_path / "runs"
    _student(bench, runs / "meta", "meta", teacher=90.0, int8=89.4, int8_mb=20.0, throughputs=(3.0, 72.0))
    targets = _by_target(bench.table(runs, out=tmp_path / "mpnet.json"))
    assert targets["int8"]["status"] == "pass"  # 89.4 >= 89.4
    assert targets["int8-gap"]["value"] == 0.6 and targets["int8-gap"]["status"] == "pass"
    assert targets["int8-speed"]["value"] == 24.0 and targets["int8-speed"]["status"] == "fail"
    assert targets["int8-speed"]["source"] == "meta (the full run's eval)"
    assert targets["int8-file"]["status"] == "pass"  # 20.0 <= 20
    assert targets["int8-trim-file"]["status"] == "not measured" and targets["MPNet"]["status"] == "not measured"


def test_a_folder_redone_out_of_order_or_with_other_settings_is_not_read(bench, tmp_path):
    runs = tmp_path / "runs"
    run = _student(bench, runs / "meta", "meta", teacher=90.0, int8=89.5, int8_mb=19.0, throughputs=(3.0, 90.0))
    assert bench.step_metrics(run, "meta") is not None
    os.utime(run / "metrics" / "export.json", (T0 + 10, T0 + 10))  # export redone after eval: eval is stale
    assert bench.step_metrics(run, "meta") is None
    assert bench.table(runs, out=tmp_path / "mpnet.json")["results"]["meta"] == "not measured"

    other = _student(bench, runs / "tinybert", "meta", teacher=90.0, int8=89.5, int8_mb=19.0, throughputs=(3.0, 90.0))
    assert bench.step_metrics(other, "tinybert") is None  # distilled by Meta-KD: not the tinybert system
    full = _student(bench, runs / "speed" / "meta", "meta", teacher=90.0, int8=89.5, int8_mb=19.0,
                    throughputs=(3.0, 90.0))
    assert bench.step_metrics(full, "meta", bench.SPEED_SETS) is None  # a full run's settings, not the speed run's
    assert bench.read_speed(runs / "speed", ()) is None

    student = _student(bench, tmp_path / "student", "meta", teacher=90.0, int8=89.5, int8_mb=19.0,
                       throughputs=(3.0, 90.0), extra=bench.SPEED_SETS)
    assert bench.step_metrics(student, "meta", bench.SPEED_SETS) is not None
    # the same student under another fit.epochs: its folder's teacher (fit.json, copied) is not this run's teacher
    assert bench.step_metrics(student, "meta", (*bench.SPEED_SETS, "fit.epochs=2")) is None


def test_a_setting_added_later_reads_as_its_default(bench, tmp_path):
    run = _student(bench, tmp_path / "meta", "meta", teacher=90.0, int8=89.5, int8_mb=19.0, throughputs=(3.0, 90.0))
    path = run / "metrics" / "distill.json"
    body = json.loads(path.read_text())
    del body["config"]["attention_weight"]  # recorded before the key existed: the default, as `metakd run` reads it
    path.write_text(json.dumps(body))
    os.utime(path, (T0, T0))
    assert bench.step_metrics(run, "meta") is not None


def test_target_boundaries(bench):
    assert bench._target("at least", 25.0, 25.0, True, "x")["status"] == "pass"
    assert bench._target("at least", 24.9, 25.0, True, "x")["status"] == "fail"
    assert bench._target("at most", 20.1, 20.0, False, "x")["status"] == "fail"
    assert bench._target("at most", None, 20.0, False, "x") == {
        "target": "at most", "threshold": 20.0, "value": None, "status": "not measured", "source": None}


# --------------------------------------------------------------------------- the driver


def test_run_goes_from_the_teacher_to_its_students_and_skips_finished_systems(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run_steps", lambda runs, system, steps, extra: calls.append((system, steps)))
    runs = tmp_path / "runs"
    write_steps(bench, runs / "teacher-meta", "teacher-meta", {"fit": {}})
    bench.run_systems(runs, ["meta-trim", "teacher-onnx"], ())
    assert calls == [("meta", ("distill", "export", "eval")), ("meta-trim", ("export", "eval")),
                     ("teacher-onnx", ("export", "eval"))]


def test_speed_builds_without_eval_then_times_the_two_evals_back_to_back(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run_steps", lambda runs, system, steps, extra: calls.append((runs.name, system, steps)))
    bench.speed(tmp_path, ("fit.max_length=16",))
    assert calls == [("speed", "teacher-meta", ("fit",)), ("speed", "meta", ("distill", "export")),
                     ("speed", "meta-trim", ("export",)), ("speed", "teacher-onnx", ("export",)),
                     ("speed", "meta", ("eval",)), ("speed", "teacher-onnx", ("eval",))]


def test_a_student_folder_is_a_linked_copy_and_a_copy_of_an_older_fit_is_refused(bench, tmp_path):
    teacher = write_steps(bench, tmp_path / "teacher-meta", "teacher-meta", {"fit": {"seconds": 1}})
    (teacher / "teacher").mkdir()
    (teacher / "teacher" / "model.safetensors").write_bytes(b"weights")
    (teacher / "manifest.json").write_text("{}")
    (teacher / "checkpoints").mkdir()
    student = tmp_path / "meta"
    bench.prepare(student, teacher)
    weights = "teacher/model.safetensors"
    assert (student / weights).stat().st_ino == (teacher / weights).stat().st_ino  # hard-linked, not copied
    assert not (student / "checkpoints").exists()
    bench.prepare(student, teacher)  # already there: kept
    (teacher / "metrics" / "fit.json").unlink()
    write_steps(bench, teacher, "teacher-meta", {"fit": {"seconds": 2}})  # the teacher fitted again
    with pytest.raises(SystemExit, match="before its fit step was redone"):
        bench.prepare(student, teacher)
