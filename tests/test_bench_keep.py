"""The keep suite (bench/suites/keep.yaml): its systems are valid overrides of the recipe; the table reads finished
folders only, chooses the best distilled student on dev (never test), pairs students and peers on the same test
rows, and says where each target lands (a difference without p < 0.05 fails)."""

from __future__ import annotations

import shutil
from dataclasses import asdict

import pytest

from bench import peers
from bench.common import Scored, data_path, recipe, selection
from bench.suite import load, significant, table, write
from conftest import check_bench_system
from metakd_cli.core.run_dir import RunDir, atomic_write_json

LATER = "9999-01-01T00:00:00+00:00"
WHERE = [f"books/positive.review:{i}" for i in range(40)] + [f"kitchen/negative.review:{i}" for i in range(40)]
DOMAINS = ["books"] * 40 + ["kitchen"] * 40


@pytest.fixture
def keep(tmp_path):
    return load("keep", tmp_path)


def test_every_system_is_a_valid_override_of_the_recipe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    keep = load("keep")
    for name in keep.systems:
        check_bench_system(keep, name)
    by_dev = recipe(keep.sets_of("kd-cut"), keep.recipe).distill
    assert by_dev.epochs is None and by_dev.student_layers is None  # the new defaults: length by dev, default cut
    assert set(keep.spec["default"]) | {"teacher"} == set(keep.systems)


def write_student(keep, system: str, dev: float, correct: list[int], teacher: float = 88.0) -> None:
    """``system``'s folder as `metakd run` leaves it, with its int8 student right on the rows ``correct`` marks."""
    config = recipe(keep.sets_of(system), keep.recipe)
    run = RunDir(keep.folder(system))
    data = {"config": {**asdict(config.data), "path": str(data_path(config))}}
    int8 = sum(correct) / len(correct) * 100
    bodies = {"fit": {}, "distill": {"dev_accuracy": {"average": dev}, "stages": {"prediction": {"history": [{}]}}},
              "export": {"size_mb": {"model_quantized.onnx": 17.0}}}
    for step, body in bodies.items():
        run.record_step(step, {"config": asdict(getattr(config, step))}, data if step == "fit" else None)
        run.write_metrics(step, body)
    models = [{"name": "teacher", "accuracy": {"average": teacher}}, {"name": "int8", "accuracy": {"average": int8}}]
    record = {"config": asdict(config.eval), "models": models, "written": LATER}
    run.write_metrics("eval", {**record, "selections": {selection(config): record}})
    atomic_write_json(run.metrics / "predictions.json", {selection(config): {
        "split": "test", "domain": DOMAINS, "where": [f"{data_path(config)}/{w}" for w in WHERE],
        "label": [1] * len(WHERE), "models": {"int8": [1 if c else 0 for c in correct]}}})


def test_nothing_finished_is_not_measured_and_the_file_is_left_as_it_stands(keep):
    document = table(keep)
    assert set(document["results"].values()) == {"not measured"}
    assert document["tests"] == {} and document["setup"]["best_distilled"] is None
    assert all(t["status"] == "not measured" for t in document["targets"])
    assert not write(keep, document) and not keep.out.exists()


def test_the_best_is_chosen_on_dev_and_paired_with_the_no_teacher_student_and_tfidf(keep):
    # kd-cut: best on dev, 78 of 80 right; kd-before: better on test (80 of 80) but worse on dev; none: 60 of 80
    write_student(keep, "kd-cut", dev=88.0, correct=[1] * 78 + [0] * 2, teacher=99.0)
    write_student(keep, "kd-before", dev=85.0, correct=[1] * 80)
    write_student(keep, "none", dev=86.0, correct=[1] * 30 + [0] * 10 + [1] * 30 + [0] * 10)
    peer = {"system": "tfidf-lr", "test_accuracy": {"average": 78.75}, "chosen_on_dev": {"dev_accuracy": {"1.0": 80.0}},
            "rows": {"where": list(reversed(WHERE)), "domain": list(reversed(DOMAINS)),
                     "correct": list(reversed([1] * 39 + [0] + [1] * 24 + [0] * 16))}}
    atomic_write_json(keep.runs / "peers" / "tfidf-lr.json", peer)
    document = table(keep)
    assert document["setup"]["best_distilled"] == "kd-cut"
    tests = document["tests"]
    assert tests["kd-cut vs none"]["diff"] == pytest.approx(97.5 - 75.0)
    assert tests["kd-cut vs tfidf-lr"]["diff"] == pytest.approx(97.5 - 78.75)  # paired by place, not by order
    assert "kd-length vs kd-before" not in tests  # kd-length is not finished
    targets = {t["target"].split(" (")[0]: t for t in document["targets"]}
    assert targets["MiniLM-path int8 student test accuracy"]["value"] == 97.5
    assert targets["MiniLM-path int8 student test accuracy"]["status"] == "pass"
    assert targets["MiniLM-path int8 student within 0.5 of its teacher"]["status"] == "fail"  # 99.0 - 97.5
    assert targets["best distilled int8 above the no-teacher int8 student"]["status"] == "pass"
    assert targets["MPNet-path int8 student test accuracy"]["status"] == "not measured"
    assert document["results"]["tfidf-lr"]["test_accuracy"]["average"] == 78.75
    assert "rows" not in document["results"]["tfidf-lr"]
    assert write(keep, document) and keep.out.is_file()


def test_a_gain_without_significance_fails_its_target():
    assert significant("x", {"name": "a vs b", "diff": 2.0, "p_value": 0.2}, 1.0)["status"] == "fail"
    assert significant("x", {"name": "a vs b", "diff": 2.0, "p_value": 0.01}, 1.0)["status"] == "pass"
    assert significant("x", {"name": "a vs b", "diff": 0.5, "p_value": 0.01}, 1.0)["status"] == "fail"
    assert significant("x", None, 1.0)["status"] == "not measured"


def test_a_peer_without_the_students_rows_is_refused():
    order = Scored({"books": [1]}, {"books": ["books/positive.review:1"]})
    with pytest.raises(SystemExit, match="run `python -m bench peers keep` again"):
        peers.peer_scored({"system": "tfidf-lr", "rows": {"where": ["elsewhere:1"], "correct": [1]}}, order)


def test_the_report_shows_targets_systems_peers_and_tests(keep):
    from bench.report import section

    write_student(keep, "kd-cut", dev=88.0, correct=[1] * 78 + [0] * 2)
    write_student(keep, "none", dev=86.0, correct=[1] * 60 + [0] * 20)
    peer = {"system": "tfidf-lr", "what": "TF-IDF", "test_accuracy": {"average": 84.62}, "size_mb": 3.1,
            "chosen_on_dev": {"C": 1.0, "dev_accuracy": {"1.0": 85.9, "3.0": 85.0}},
            "rows_per_s": 6298.4, "rows": {"where": WHERE, "domain": DOMAINS, "correct": [1] * 70 + [0] * 10}}
    atomic_write_json(keep.runs / "peers" / "tfidf-lr.json", peer)
    write(keep, table(keep))
    text = "\n".join(lines := section("keep", keep.out))
    assert "the best distilled student chosen on dev: kd-cut" in text
    assert next(line for line in lines if line.startswith("| kd-cut |")).split(" | ")[2] == "97.50"
    assert "| tfidf-lr | TF-IDF | - | 84.62 | 85.90 |" in text and "| 3.1 | 6298 |" in text
    assert "| kd-cut vs none |" in text and "| kd-before | " in text and "not measured" in text


def test_figures_whose_folders_are_gone_are_kept_and_marked(keep):
    write_student(keep, "kd-cut", dev=88.0, correct=[1] * 78 + [0] * 2)
    write_student(keep, "none", dev=86.0, correct=[1] * 60 + [0] * 20)
    first = table(keep)
    write(keep, first)
    shutil.rmtree(keep.runs)  # a new checkout: the run folders are gone, the results file is not
    again = table(keep)
    assert again["results"]["kd-cut"]["kept"].startswith("from the results file")
    assert again["setup"]["best_distilled"] == "kd-cut"
    assert again["tests"]["kd-cut vs none"]["diff"] == first["tests"]["kd-cut vs none"]["diff"]
    assert again["tests"]["kd-cut vs none"]["kept"]
    assert [t["value"] for t in again["targets"]] == [t["value"] for t in first["targets"]]


def test_a_student_whose_export_failed_shows_its_fp32_figures_and_is_not_the_best(keep):
    write_student(keep, "kd-cut", dev=88.0, correct=[1] * 78 + [0] * 2)
    config = recipe(keep.sets_of("meta"), keep.recipe)
    run = RunDir(keep.folder("meta"))
    run.record_step("fit", {"config": asdict(config.fit)}, {"config": {**asdict(config.data),
                                                                      "path": str(data_path(config))}})
    run.write_metrics("fit", {})
    run.record_step("distill", {"config": asdict(config.distill)})
    run.write_metrics("distill", {"dev_accuracy": {"average": 90.0}, "test_accuracy": {"average": 84.5},
                                  "stages": {"prediction": {"history": [{}], "best_step": 7}}})
    document = table(keep)
    meta = document["results"]["meta"]
    assert meta["test_accuracy"] == {"student": {"average": 84.5}} and "not_shipped" in meta
    assert document["setup"]["best_distilled"] == "kd-cut"  # better on dev, but it has no int8 to ship
