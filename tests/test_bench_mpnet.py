"""The mpnet suite (bench/suites/mpnet.yaml, its hooks in bench/mpnet.py) and its recipe: amazon-mpnet loads and
passes `metakd run`'s checks offline; the table turns run folders' metrics into results and the targets (pass,
fail, not measured), reading only folders that `metakd run` would skip with the driver's settings and whose eval
came after their steps; the speed mode builds without eval, then times the two evals back to back."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import mpnet as hooks
from bench import rows
from bench.common import data_path, recipe, selection
from bench.suite import load, table, target, write
from metakd_cli.core.config import apply_overrides, find_recipe, load_recipe
from metakd_cli.core.run_dir import RunDir
from metakd_cli.models.packaged import MINILM4, MPNET
from metakd_cli.steps import distill, evaluate, export, fit, pipeline

LATER = "9999-01-01T00:00:00+00:00"  # an eval written after any step finished
SPEED = load("mpnet").spec["speed"]  # the under-trained pipeline of `python -m bench speed mpnet`
SPEED_SETS, SPEED_SYSTEMS = tuple(SPEED["sets"]), SPEED["systems"]


@pytest.fixture
def bench(tmp_path):
    """The mpnet suite with its runs/ and results/ under a temporary folder."""
    return load("mpnet", tmp_path)


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
    for name in bench.systems:
        for extra in ((), SPEED_SETS):
            recipe = load_recipe(bench.recipe)
            apply_overrides(recipe, "fit", {}, tuple(bench.sets_of(name, {}, extra)))
            _check(recipe)
    for name, system in bench.systems.items():  # a system changes only the steps it runs, never those it copies
        assert all(item.split(".")[0] in system.steps for item in system.sets), name
    assert set(SPEED_SYSTEMS) <= set(bench.spec["default"])


# --------------------------------------------------------------------------- fake run folders


def write_steps(bench, run_dir: Path, system: str, bodies: dict[str, dict], extra: tuple[str, ...] = (),
                written: str = LATER) -> Path:
    """``system``'s folder as `metakd run` leaves it: each step of ``bodies`` recorded in the manifest with the
    driver's settings for it (``extra``: the mode's --set) and its body as metrics/<step>.json; an "eval" body is
    eval's record of the system's selection in metrics/eval.json, written at ``written``."""
    config = recipe(bench.sets_of(system, {}, extra), bench.recipe)
    run = RunDir(run_dir)
    data = {"config": {**asdict(config.data), "path": str(data_path(config))}}
    for step, body in bodies.items():
        if step == "eval":
            record = {"config": asdict(config.eval), **body, "written": written}
            run.write_metrics("eval", {**record, "selections": {selection(config): record}})
        else:
            run.record_step(step, {"config": asdict(getattr(config, step))}, data if step == "fit" else None)
            run.write_metrics(step, body)
    return run_dir


def _accuracy(average: float) -> dict:
    return {"books": average - 1, "electronics": average + 1, "average": average}


def _model(name: str, average: float, throughput: float, size: float = 10.0) -> dict:
    return {"name": name, "accuracy": _accuracy(average), "throughput": throughput, "latency_ms": 1000 / throughput,
            "size_mb": size, "timed_rows": {"batch_1": 64, "batch_32": 256}}


def _student(bench, run_dir: Path, system: str, teacher: float, int8: float, int8_mb: float,
             throughputs: tuple[float, float], extra: tuple[str, ...] = (), written: str = LATER) -> Path:
    return write_steps(bench, run_dir, system, {
        "fit": {},  # the teacher's, copied with its folder
        "distill": {"seconds": 7200, "alignment": {"aligned": 6400, "rows": 6400},
                    "parameters": {"student": 19_165_058}},
        "export": {"size_mb": {"pytorch": 76.7, "model.onnx": 76.7, "model_quantized.onnx": int8_mb},
                   "int8_check": {"drop": 0.25, "attempt": "plain", "mode": "static"}},
        "eval": {"models": [_model("teacher", teacher, throughputs[0], 438.0), _model("student", int8 + 0.2, 60.0),
                            _model("onnx", int8 + 0.2, 90.0), _model("int8", int8, throughputs[1], int8_mb)],
                 "threads": {"torch": 2}, "cpu": {"cores": 2}},
    }, extra, written)


def _by_target(document: dict) -> dict[str, dict]:
    return {t["target"].split(" ")[0] + ("-trim" if "trim" in t["target"] else "")
            + ("-gap" if "within" in t["target"] else "") + ("-speed" if "throughput" in t["target"] else "")
            + ("-file" if "file" in t["target"] else ""): t for t in document["targets"]}


def test_nothing_finished_is_all_not_measured(bench):
    out = bench.out
    document = table(bench)
    assert not write(bench, document) and not out.exists()  # no finished folder: the file is left as it stands
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(document))
    assert set(document["results"].values()) == {"not measured"}
    assert document["speed"] == "not measured"
    assert len(document["targets"]) == 6
    assert all(t["status"] == "not measured" and t["value"] is None for t in document["targets"])
    from bench.report import section

    assert not [line for line in section("mpnet", out) if "(metakd)" in line or "Test accuracy" in line]


def test_finished_folders_give_each_target_its_figure_and_status(bench):
    runs = bench.runs
    write_steps(bench, runs / "teacher-meta", "teacher-meta",
                {"fit": {"test_accuracy": _accuracy(90.5), "dev_accuracy": _accuracy(91.0), "seconds": 36000}})
    _student(bench, runs / "meta", "meta", teacher=90.5, int8=89.0, int8_mb=19.9, throughputs=(3.0, 60.0))
    _student(bench, runs / "kd", "kd", teacher=90.5, int8=87.0, int8_mb=19.9, throughputs=(3.0, 60.0))
    write_steps(bench, runs / "meta-trim", "meta-trim", {
        "fit": {}, "distill": {},
        "export": {"size_mb": {"model_quantized.onnx": 9.4}, "trim": {"vocab_before": 30522, "vocab_after": 11000,
                                                                      "texts": 12800}},
        "eval": {"models": [_model("int8", 88.9, 60.0, 9.4)]}})
    speed = runs / "speed"  # the under-trained pipeline, with the speed settings; meta-trim built, not evaluated
    _student(bench, speed / "meta", "meta", teacher=50.0, int8=50.0, int8_mb=19.9, throughputs=(4.0, 120.0),
             extra=SPEED_SETS)
    write_steps(bench, speed / "meta-trim", "meta-trim",
                {"fit": {}, "distill": {}, "export": {"size_mb": {"model_quantized.onnx": 9.9}}}, SPEED_SETS)
    write_steps(bench, speed / "teacher-onnx", "teacher-onnx", {
        "fit": {},
        "export": {"size_mb": {"pytorch": 438.0, "model.onnx": 438.1}},
        "eval": {"models": [_model("teacher", 50.0, 4.2, 438.0), _model("onnx", 50.0, 10.0, 438.1)]}},
        SPEED_SETS)

    document = table(bench)
    write(bench, document)
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
    assert figures["batch_size"] == recipe(bench.sets_of("meta", {}, SPEED_SETS), bench.recipe).eval.batch_size
    assert document["results"]["meta"]["test_accuracy"]["int8"]["average"] == 89.0
    assert document["results"]["kd"]["test_accuracy"]["int8"]["average"] == 87.0  # a control: no target reads it
    assert document["results"]["meta-trim"]["vocab_after"] == 11000
    assert document["results"]["tinybert"] == "not measured" and document["results"]["teacher-mix"] == "not measured"
    from bench.report import section

    report = section("mpnet", bench.out)
    assert "| int8 student file <= 20 MB | 20 | 19.9 | pass |" in report
    # the accuracy table: measured systems only, each with the paper's row beneath
    shown = [line for line in report if "(metakd)" in line or "(the paper" in line]
    assert shown == [
        "| meta-teacher | MPNet-base (metakd) | 89.50 | - | 91.50 | - | 90.50 |",
        "| meta-teacher | BERT-base (the paper: Meta-teacher) | 92.50 | 87.00 | 91.10 | 89.20 | 89.90 |",
        "| Meta-KD student | minilm4, fp32 (metakd) | 88.20 | - | 90.20 | - | 89.20 |",
        "| Meta-KD student | minilm4, static int8 (metakd) | 88.00 | - | 90.00 | - | 89.00 |",
        "| Meta-KD student | TinyBERT-4, fp32 (the paper: Meta-teacher -> Meta-distillation) | 91.50 | 86.50 | 90.10 "
        "| 89.70 | 89.40 |",
        "| logit-only KD student | minilm4, fp32 (metakd) | 86.20 | - | 88.20 | - | 87.20 |",  # the paper has no row
        "| logit-only KD student | minilm4, static int8 (metakd) | 86.00 | - | 88.00 | - | 87.00 |",
        "| Meta-KD student, --trim-vocab | minilm4, static int8 (metakd) | 87.90 | - | 89.90 | - | 88.90 |",
    ]


def test_a_models_speed_keeps_its_spread_over_eval_rounds_beside_the_median():
    timed = {**_model("int8", 89.0, 120.0), "throughput_spread": [100.04, 130.06], "latency_ms_spread": [7.123, 9.456]}
    speed = rows.speed_of(timed)
    assert speed["throughput_rows_per_s"] == 120.0 and speed["throughput_spread"] == [100.0, 130.1]
    assert speed["latency_ms_spread"] == [7.12, 9.46]
    assert rows.speed_of(_model("int8", 89.0, 120.0))["throughput_spread"] is None  # an eval before rounds


def test_without_a_speed_run_the_full_runs_figures_are_used(bench):
    _student(bench, bench.runs / "meta", "meta", teacher=90.0, int8=89.4, int8_mb=20.0, throughputs=(3.0, 72.0))
    targets = _by_target(table(bench))
    assert targets["int8"]["status"] == "pass"  # 89.4 >= 89.4
    assert targets["int8-gap"]["value"] == 0.6 and targets["int8-gap"]["status"] == "pass"
    assert targets["int8-speed"]["value"] == 24.0 and targets["int8-speed"]["status"] == "fail"
    assert targets["int8-speed"]["source"] == "meta (the full run's eval)"
    assert targets["int8-file"]["status"] == "pass"  # 20.0 <= 20
    assert targets["int8-trim-file"]["status"] == "not measured" and targets["MPNet"]["status"] == "not measured"


def test_a_folder_not_finished_or_with_other_settings_is_not_read(bench, tmp_path):
    runs = bench.runs
    stale = _student(bench, runs / "meta", "meta", teacher=90.0, int8=89.5, int8_mb=19.0, throughputs=(3.0, 90.0),
                     written="2000-01-01T00:00:00+00:00")  # eval's record predates the student: stale
    assert bench.finished("meta", run_dir=stale) is None
    assert table(bench)["results"]["meta"] == "not measured"
    unscored = write_steps(bench, tmp_path / "unscored", "meta", {"fit": {}, "distill": {}, "export": {}})
    assert bench.finished("meta", run_dir=unscored) is None  # eval never ran
    assert bench.finished("meta", steps="fit,distill,export", run_dir=unscored) is not None  # but it is built

    other = _student(bench, runs / "tinybert", "meta", teacher=90.0, int8=89.5, int8_mb=19.0, throughputs=(3.0, 90.0))
    assert bench.finished("tinybert", run_dir=other) is None  # distilled by Meta-KD: not the tinybert system
    full = _student(bench, runs / "speed" / "meta", "meta", teacher=90.0, int8=89.5, int8_mb=19.0,
                    throughputs=(3.0, 90.0))
    assert bench.finished("meta", {}, SPEED_SETS, run_dir=full) is None  # a full run's settings, not speed's
    assert hooks.read_speed(bench, ()) is None

    student = _student(bench, tmp_path / "student", "meta", teacher=90.0, int8=89.5, int8_mb=19.0,
                       throughputs=(3.0, 90.0), extra=SPEED_SETS)
    assert bench.finished("meta", {}, SPEED_SETS, run_dir=student)["eval"]["models"][3]["name"] == "int8"
    # the same student under another fit.epochs: its folder's teacher (copied) is not this run's teacher
    assert bench.finished("meta", {}, (*SPEED_SETS, "fit.epochs=2"), run_dir=student) is None


def test_a_setting_added_later_reads_as_its_default(bench, tmp_path):
    run = _student(bench, tmp_path / "meta", "meta", teacher=90.0, int8=89.5, int8_mb=19.0, throughputs=(3.0, 90.0))
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["steps"]["distill"]["config"]["attention_weight"]  # recorded before the key existed
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert bench.finished("meta", run_dir=run) is not None


def _predictions(bench, run_dir: Path, system: str, right: dict[str, list[int]], rows: str = "r") -> None:
    """metrics/predictions.json of ``system``'s eval selection: int8 right (1) or wrong (0) on each row."""
    config = recipe(bench.sets_of(system), bench.recipe)
    domains = [d for d, bits in right.items() for _ in bits]
    where = [f"{data_path(config)}/{d}/{rows}.review:{i}" for d, bits in right.items() for i in range(len(bits))]
    gold = ["positive"] * len(domains)
    got = ["positive" if bit else "negative" for bits in right.values() for bit in bits]
    entry = {"split": "test", "domain": domains, "where": where, "label": gold, "models": {"int8": got}}
    (run_dir / "metrics" / "predictions.json").write_text(json.dumps({selection(config): entry}))


def test_the_students_are_compared_on_the_same_test_rows(bench):
    runs, out = bench.runs, bench.out
    for system in ("meta", "tinybert", "kd"):
        _student(bench, runs / system, system, teacher=90.0, int8=80.0, int8_mb=19.0, throughputs=(3.0, 90.0))
    _predictions(bench, runs / "meta", "meta", {"books": [1] * 8 + [0] * 2, "electronics": [1] * 6 + [0] * 4})
    _predictions(bench, runs / "tinybert", "tinybert", {"books": [1] * 6 + [0] * 4, "electronics": [1] * 6 + [0] * 4})
    write(bench, document := table(bench))
    tests = document["tests"]
    assert list(tests) == ["meta vs tinybert"]  # kd recorded no rows, kd-lr and meta-lr are not run: not compared
    test = tests["meta vs tinybert"]
    assert (test["diff"], test["rows"], test["model"]) == (10.0, 20, "int8")  # (80 + 60) / 2 - (60 + 60) / 2
    assert test["mcnemar_exact_per_seed"]["42"] == {"a_only": 2, "b_only": 0, "p_value": 0.5}
    from bench.report import section

    row = next(line for line in section("mpnet", out) if line.startswith("| meta vs tinybert |"))
    assert row.startswith("| meta vs tinybert | 20 | +10.00 | ") and row.endswith(" | 2 | 0 | p = 0.500 |")

    _student(bench, runs / "kd-lr", "kd-lr", teacher=90.0, int8=80.0, int8_mb=19.0, throughputs=(3.0, 90.0))
    _predictions(bench, runs / "kd-lr", "kd-lr", {"books": [1] * 10, "electronics": [1] * 10})
    _predictions(bench, runs / "kd", "kd", {"books": [1] * 10, "electronics": [1] * 9 + [0]})
    tests = table(bench)["tests"]
    assert list(tests) == ["meta vs tinybert", "meta vs kd", "kd-lr vs kd"]  # meta-lr is not run
    assert (tests["meta vs kd"]["diff"], tests["kd-lr vs kd"]["diff"]) == (-25.0, 5.0)  # A minus B
    _predictions(bench, runs / "kd", "kd", {"books": [1] * 10, "electronics": [1] * 10}, rows="other")
    with pytest.raises(SystemExit, match="kd: its test rows are not those of meta"):
        table(bench)
    shutil.rmtree(runs)  # the folders gone: the recorded tests are kept, marked
    kept = table(bench)["tests"]["meta vs tinybert"]
    assert kept["diff"] == 10.0 and "folders are gone" in kept["kept"]


def test_a_steps_hours_only_when_its_seconds_are_its_whole_time():
    fit = {"seconds": 7200}
    assert rows.hours(fit, [{"resumed_from": None}]) == 2.0  # never resumed
    assert rows.hours(fit, [{"resumed_from": {"epoch": 1, "step": 3, "earlier_seconds": 5000.0}}]) == 2.0
    # resumed from a checkpoint that did not record its time, or written before metakd recorded resumption at
    # all: the seconds may be the last run's alone
    assert rows.hours(fit, [{"resumed_from": {"epoch": 1, "step": 3, "earlier_seconds": None}}]) is None
    assert rows.hours(fit, [{"train_seconds": 7000}]) is None
    assert rows.hours({"seconds": 3600}, {"intermediate": {"resumed_from": None},
                                            "prediction": {"resumed_from": None}}) == 1.0
    assert rows.hours(fit, None) is None


def test_target_boundaries():
    assert target("at least", 25.0, 25.0, True, "x")["status"] == "pass"
    assert target("at least", 24.9, 25.0, True, "x")["status"] == "fail"
    assert target("at most", 20.1, 20.0, False, "x")["status"] == "fail"
    assert target("at most", None, 20.0, False, "x") == {
        "target": "at most", "threshold": 20.0, "value": None, "status": "not measured", "source": None}


# --------------------------------------------------------------------------- the driver


@pytest.fixture
def calls(bench, monkeypatch):
    """What the driver starts: ("copy", source, folder) and ("run", folder, steps, sets), folders by name."""
    out = []
    monkeypatch.setattr("bench.suite.start_from",
                        lambda source, run_dir, dry_run=False: out.append(("copy", source.name, run_dir.name)))
    def run(run_dir, sets, steps, path, dry_run=False):
        out.append(("run", run_dir.name, steps, tuple(sets)))

    monkeypatch.setattr("bench.suite.metakd_run", run)  # the suite builds with it
    monkeypatch.setattr(hooks, "metakd_run", run)  # speed() times with it
    return out


def test_the_steps_a_folder_holds(bench):
    assert bench.chain("teacher-meta") == "fit"
    assert bench.chain("meta") == bench.chain("meta-trim") == "fit,distill,export,eval"
    assert bench.chain("meta-trim", built=True) == "fit,distill,export"
    assert bench.chain("teacher-onnx") == "fit,export,eval"


def test_run_goes_from_the_teacher_to_its_students_and_skips_finished_systems(bench, calls):
    write_steps(bench, bench.runs / "teacher-meta", "teacher-meta", {"fit": {}})
    bench.run(["meta-trim", "teacher-onnx"])
    assert [call[:3] for call in calls] == [
        ("copy", "teacher-meta", "meta"), ("run", "meta", "fit,distill,export,eval"),
        ("copy", "meta", "meta-trim"), ("run", "meta-trim", "fit,distill,export,eval"),
        ("copy", "teacher-meta", "teacher-onnx"), ("run", "teacher-onnx", "fit,export,eval")]
    assert calls[3][3] == ("export.trim_vocab=true", "eval.models=int8")


def test_speed_builds_without_eval_then_times_the_two_evals_back_to_back(bench, calls):
    hooks.speed(bench, ("fit.max_length=16",))
    runs = [call[1:3] for call in calls if call[0] == "run"]
    assert runs == [("teacher-meta", "fit"), ("meta", "fit,distill,export"), ("meta-trim", "fit,distill,export"),
                    ("teacher-onnx", "fit,export"), ("meta", "eval"), ("teacher-onnx", "eval")]
    assert all(call[3][-len(SPEED_SETS) - 1:] == (*SPEED_SETS, "fit.max_length=16")
               for call in calls if call[0] == "run")

    calls.clear()  # built: a second `speed` only times again
    sets = (*SPEED_SETS, "fit.max_length=16")
    for system in SPEED_SYSTEMS:
        write_steps(bench, bench.runs / "speed" / system, system,
                    {step: {} for step in bench.chain(system, built=True).split(",")}, sets)
    hooks.speed(bench, ("fit.max_length=16",))
    assert [call[1:3] for call in calls] == [("meta", "eval"), ("teacher-onnx", "eval")]


def test_figures_whose_folders_are_gone_are_kept_and_marked(bench):
    runs, out = bench.runs, bench.out
    _student(bench, runs / "meta", "meta", teacher=90.0, int8=89.4, int8_mb=20.0, throughputs=(3.0, 72.0))
    write(bench, first := table(bench))
    document = json.loads(out.read_text())
    document["fit_speed"] = {"rows_per_s": 1.3, "timed_steps": 3, "batch_size": 32, "padded_lengths": [128] * 3,
                             "threads": 2, "train_rows": 6400, "epoch_minutes_of_optimiser_steps": 82.1}
    out.write_text(json.dumps(document))
    shutil.rmtree(runs)
    again = table(bench)
    out.write_text(json.dumps(again))
    assert again["results"]["meta"]["test_accuracy"] == first["results"]["meta"]["test_accuracy"]
    assert "folders are gone" in again["results"]["meta"]["kept"]
    assert again["fit_speed"] == document["fit_speed"]  # fit-speed's own figures: no run folder behind them
    assert _by_target(again)["int8"]["status"] == "pass"  # the targets still read the kept figures
    from bench.report import section

    assert any("1.3 rows/s" in line and "about 82.1 minutes" in line for line in section("mpnet", out))
    other = table(bench, ("fit.epochs=1",))  # other settings: nothing of the old file counts
    assert other["results"]["meta"] == "not measured" and other["fit_speed"] == document["fit_speed"]
