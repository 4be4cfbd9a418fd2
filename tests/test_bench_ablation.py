"""The ablation suite's table (bench/suites/ablation.yaml, bench/ablation.py) on made-up run folders: per-domain
accuracy over seeds, paired tests against full Meta-KD on the same rows, teachers, and folders that are not
finished or hold other rows; runs whose folders are gone count by the results file's record."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import bench.ablation as ablation
from bench.common import data_path, recipe, selection
from bench.suite import load, table as suite_table, write
from metakd_cli.core.run_dir import RunDir, atomic_write_json

LATER = "9999-01-01T00:00:00+00:00"


def fake(folder: Path, sets: list[str], steps: str, models: dict[str, list[int]], domains: list[str],
         written: str = LATER, rows: str = "r", absolute: bool = False) -> None:
    """A run folder recording ``steps`` with the ablation recipe's settings and eval's rows: 10 rows per domain,
    ``models[name]`` the 0/1 correctness of each (all domains' rows in order); ``absolute``: each row's place is
    a full path under the recipe's data root, as `metakd eval` writes it."""
    config = recipe(sets, SUITE.recipe)
    run = RunDir(folder)
    data = {"config": {**asdict(config.data), "path": str(data_path(config))}, "fingerprint": "f", "domains": domains}
    for step in (s for s in steps.split(",") if s != "eval"):
        run.record_step(step, {"config": asdict(getattr(config, step))}, data if step == "fit" else None)
        run.write_metrics(step, {"seconds": 600.0})
    key = selection(config)
    run.write_metrics("eval", {"selections": {key: {"written": written}}})
    root = f"{data_path(config)}/" if absolute else ""
    where = [f"{root}{d}.xml:{rows}{i}" for d in domains for i in range(10)]
    run.write_metrics("predictions", {key: {
        "where": where, "domain": [d for d in domains for _ in range(10)], "label": ["positive"] * len(where),
        "models": {name: ["positive" if c else "negative" for c in correct] for name, correct in models.items()}}})


SUITE = load("ablation")


@pytest.fixture
def bench_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SUITE", load("ablation", tmp_path))  # runs/ and results/ there
    return tmp_path


def table() -> dict:
    """The table, written (as `python -m bench table ablation` writes it) when a folder is finished."""
    document = suite_table(SUITE)
    write(SUITE, document)
    return document


def student(system: str, domain: str, seed: int, correct: list[int], teacher: list[int] | None = None, **kw):
    at = {"domain": domain, "seed": seed}
    fake(SUITE.folder(system, at), SUITE.sets_of(system, at), "fit,distill,eval",
         {"student": correct, "teacher": teacher or [1] * 10}, [domain], **kw)


def teacher_run(name: str, seed: int, correct: list[int], domains: list[str], settings_of: int | None = None) -> Path:
    folder = SUITE.folder(f"teacher-{name}", {"seed": seed})
    fake(folder, SUITE.sets_of(f"teacher-{name}", {"seed": settings_of or seed}), "fit,eval", {"teacher": correct},
         domains)
    return folder


def test_table_averages_seeds_and_pairs_rows(bench_dir):
    for seed in (42, 1):
        student("meta", "books", seed, [1] * 9 + [0])  # 90
        student("meta", "electronics", seed, [1] * 8 + [0] * 2)  # 80
        student("tinybert", "books", seed, [1] * 7 + [0] * 3)  # 70
        student("tinybert", "electronics", seed, [1] * 8 + [0] * 2)  # 80
    student("kd", "books", 42, [1] * 10)  # no electronics student yet: no row
    student("lambda=1", "books", 42, [1] * 10, written="2000-01-01T00:00:00+00:00")  # eval before the student
    student("lambda=1", "electronics", 42, [1] * 10)
    out = table()
    assert set(out["results"]) == {"meta", "tinybert"}
    meta, tiny = out["results"]["meta"], out["results"]["tinybert"]
    assert (meta["books"], meta["electronics"], meta["average"]) == (90.0, 80.0, 85.0)
    assert (tiny["books"], tiny["electronics"], tiny["average"]) == (70.0, 80.0, 75.0)
    assert meta["seeds"] == [1, 42] and meta["distill_minutes_mean"] == 10.0
    test = out["tests"]["meta vs tinybert"]
    assert test["diff"] == pytest.approx(10.0) and test["rows"] == 20 and test["seeds"]["a"] == ["1", "42"]
    assert out["setup"]["teacher"]["test_accuracy"] == {"books": 100.0, "electronics": 100.0, "average": 100.0}
    assert SUITE.out.is_file()
    from bench.report import section

    lines = section("ablation", SUITE.out)
    row = next(line for line in lines if line.startswith("| tinybert |"))
    assert row.startswith("| tinybert | 70.00 | 80.00 | 75.00 | 1, 42 | -10.00 (p")  # tinybert minus meta
    assert "| - | TinyBERT-KD" in row  # no student weights in these made-up folders
    assert "books 100.0, electronics 100.0, average 100.0" in lines[0]


def test_rows_that_differ_between_runs_stop_the_table(bench_dir):
    student("meta", "books", 42, [1] * 10)
    student("meta", "electronics", 42, [1] * 10)
    student("tinybert", "books", 42, [1] * 10, rows="other")
    with pytest.raises(SystemExit, match="not the other runs' rows of books"):
        table()


def test_teachers_against_the_meta_teacher(bench_dir):
    domains = ["books", "dvd"]
    kept_first(teacher_run("meta", 42, [1] * 20, domains))
    teacher_run("mix", 42, [1] * 10 + [0] * 10, domains)
    teacher_run("meta-none", 1, [1] * 20, domains, settings_of=42)  # seed 42's settings in seed 1's folder: not counted
    out = ablation.teacher_table(SUITE, {})
    assert set(out["results"]) == {"meta", "mix"}
    assert out["results"]["mix"]["books"] == 100.0 and out["results"]["mix"]["dvd"] == 0.0
    assert out["results"]["mix"]["average"] == 50.0
    assert out["tests"]["meta vs mix"]["diff"] == pytest.approx(50.0)
    assert out["results"]["meta"]["dev_selection"] == {"42": FIRST_KEPT}
    assert out["results"]["mix"]["dev_selection"] == {}  # its fit.json records no epochs
    from bench.report import section

    setup = {"domains": SUITE.values["domains"], "teacher": {}}
    atomic_write_json(SUITE.out, {"setup": setup, "results": {}, "tests": {}, "teachers": out})
    lines = section("ablation", SUITE.out)
    assert next(line for line in lines if line.startswith("| meta |")).endswith("| s42: 1 (89.50, 89.38) |")
    assert next(line for line in lines if line.startswith("| mix |")).endswith("| - |")


FIRST_KEPT = {"epoch": 1, "dev": [89.5, 89.375]}


def kept_first(run_dir: Path) -> None:
    """The teacher's metrics/fit.json: two epochs, the first kept by one dev row in 800."""
    history = [{"epoch": 1, "train_loss": 0.35, "dev_score": 89.5}, {"epoch": 2, "train_loss": 0.28, "dev_score": 89.375}]
    RunDir(run_dir).write_metrics("fit", {"seconds": 600.0, "teachers": [{"best_epoch": 1, "history": history}]})


def test_weight_distance_to_meta(bench_dir):
    import numpy as np
    from safetensors.numpy import save_file

    for system, shift in (("meta", 0.0), ("tinybert", 0.5)):
        for domain in SUITE.values["domains"]:
            student = SUITE.folder(system, {"domain": domain, "seed": 42}) / "student"
            student.mkdir(parents=True)
            save_file({"encoder.w": np.full((2, 2), shift, dtype=np.float32),
                       "embeddings.word": np.full((3, 2), 10 * shift, dtype=np.float32)},
                      str(student / "model.safetensors"))
    assert ablation.weight_distance(SUITE, "tinybert", [42]) == 0.5  # the embeddings are left out
    assert ablation.weight_distance(SUITE, "meta", [42]) == 0.0
    assert ablation.weight_distance(SUITE, "kd", [42]) is None  # no such students


def test_the_record_keeps_runs_whose_folders_are_gone(bench_dir):
    import shutil

    for seed in (42, 1):
        student("meta", "books", seed, [1] * 9 + [0])
        student("meta", "electronics", seed, [1] * 8 + [0] * 2)
    student("tinybert", "books", 42, [1] * 7 + [0] * 3)
    student("tinybert", "electronics", 42, [1] * 8 + [0] * 2)
    kept_first(teacher_run("meta", 42, [1] * 20, ["books", "dvd"]))
    first = table()
    assert first["rows"]["students"]["meta"]["books"]["1"]["correct"] == "1111111110"
    shutil.rmtree(bench_dir / "runs")  # every run folder gone: the table reads the record alone
    student("tinybert", "books", 1, [1] * 10)  # a new run beside the record
    student("tinybert", "electronics", 1, [1] * 10)
    again = table()
    assert again["results"]["meta"] == first["results"]["meta"]
    assert again["results"]["tinybert"]["seeds"] == [1, 42]
    assert again["results"]["tinybert"]["books"] == 85.0  # (70 + 100) / 2 over the two seeds
    assert again["tests"]["meta vs tinybert"]["rows"] == 20
    assert again["teachers"]["results"]["meta"]["average"] == 100.0
    assert again["teachers"]["results"]["meta"]["dev_selection"] == {"42": FIRST_KEPT}  # from the results file
    refit = SUITE.folder("teacher-meta", {"seed": 42})  # a refit under way: its fit.json written, its eval not yet
    RunDir(refit).write_metrics("fit", {"teachers": [{"best_epoch": 2, "history": [{"dev_score": 1.0}] * 2}]})
    assert table()["teachers"]["results"]["meta"]["dev_selection"] == {"42": FIRST_KEPT}
    assert again["setup"]["teacher"]["test_accuracy"]["books"] == 100.0


def test_the_record_compares_with_runs_where_the_data_lives_elsewhere(bench_dir, monkeypatch):
    import shutil

    import bench.common

    for system in ("meta", "tinybert"):
        for domain in SUITE.values["domains"]:
            student(system, domain, 42, [1] * 9 + [0], absolute=True)
    first = table()
    assert first["rows"]["where"]["books"][0] == "books.xml:r0"  # relative to the data root, not /…/books.xml
    shutil.rmtree(bench_dir / "runs")
    elsewhere = bench_dir / "another-checkout"  # another machine: the checkout, and the data beside it, elsewhere
    elsewhere.mkdir()
    monkeypatch.setattr(bench.common, "ROOT", elsewhere)
    monkeypatch.chdir(elsewhere)  # `metakd run` runs in the checkout
    for domain in SUITE.values["domains"]:
        student("meta", domain, 1, [1] * 10, absolute=True)
    again = table()
    assert again["results"]["meta"]["seeds"] == [1, 42] and again["results"]["meta"]["books"] == 95.0
    assert again["rows"]["where"] == first["rows"]["where"]


def test_a_record_with_full_paths_compares_on_the_machine_that_wrote_it(bench_dir):
    import json
    import shutil

    for domain in SUITE.values["domains"]:
        student("meta", domain, 42, [1] * 10, absolute=True)
    out = table()
    root = data_path(recipe([], SUITE.recipe))
    out["rows"]["where"] = {d: [f"{root}/{w}" for w in places] for d, places in out["rows"]["where"].items()}
    SUITE.out.write_text(json.dumps(out))  # as the record stood before places were made relative
    shutil.rmtree(bench_dir / "runs")
    for domain in SUITE.values["domains"]:
        student("meta", domain, 1, [1] * 10, absolute=True)
    assert table()["rows"]["where"]["books"][0] == "books.xml:r0"


def test_rows_from_before_the_record_are_kept_and_marked(bench_dir):
    import json

    old_row = {"books": 76.0, "electronics": 77.5, "average": 76.75, "seeds": [42], "what": "stage 2 only",
               "sets": [], "distill_minutes_mean": 3.0, "weight_distance_to_meta": 0.001}
    old_test = {"diff": 8.0, "p_value": 0.0002}
    SUITE.out.parent.mkdir(parents=True, exist_ok=True)
    SUITE.out.write_text(json.dumps({"results": {"kd": old_row, "not-a-system": old_row},
                                        "tests": {"meta vs kd": old_test},
                                        "teachers": {"results": {"mix": {"average": 80.0, "seeds": [42]}}}}))
    student("meta", "books", 42, [1] * 10)
    student("meta", "electronics", 42, [1] * 10)
    out = table()
    assert list(out["results"]) == ["meta", "kd"]  # in SYSTEMS order; unknown names dropped
    assert out["results"]["kd"]["average"] == 76.75 and "not recomputed" in out["results"]["kd"]["kept"]
    assert out["tests"]["meta vs kd"] == old_test
    assert "kept" in out["teachers"]["results"]["mix"]
    from bench.report import section

    assert any(line.startswith("| kd | 76.00 |") and line.endswith("(an earlier run's figures, kept) |")
               for line in section("ablation", SUITE.out))
    student("kd", "books", 1, [1] * 10)  # once the system has runs of its own, the old row gives way
    student("kd", "electronics", 1, [1] * 10)
    out = table()
    assert out["results"]["kd"]["seeds"] == [1] and "kept" not in out["results"]["kd"]


def test_stage1_terms_and_lambda_spread_are_read_and_kept(bench_dir):
    import json
    import shutil

    import numpy as np

    from metakd_cli.training.row_weights import save_row_weights

    for domain, scale in (("books", 1.0), ("electronics", 3.0)):
        student("meta", domain, 42, [1] * 10)
        run_dir = SUITE.folder("meta", {"domain": domain, "seed": 42})
        metrics = run_dir / "metrics" / "distill.json"
        terms = {"hidden": 0.5 * scale, "attention": 2.0 * scale, "domain": 0.01 * scale}
        metrics.write_text(json.dumps({"seconds": 600.0, "config": {"method": "meta", "lambda_weights": True},
                                       "stages": {"intermediate": {"history": [
                                           {"epoch": 1, "train_terms": terms}, {"epoch": 2, "train_terms": {}}]}}}))
        lam = np.array([0.3] + [0.8] * 9, dtype=np.float32)  # one row in ten weighted well under the rest
        save_row_weights(RunDir(run_dir), np.arange(10), np.zeros(10), lam, "meta")
        student("tinybert", domain, 42, [1] * 10)  # lambda = 1: no spread recorded
    out = table()
    meta = out["results"]["meta"]
    assert meta["stage1_terms"] == {"hidden": 1.0, "attention": 4.0, "domain": 0.02}  # first epoch, mean of runs
    assert meta["lambda"]["share_within_10pct_of_max"] == pytest.approx(0.9)
    assert meta["lambda"]["min"] == pytest.approx(0.3) and meta["lambda"]["max"] == pytest.approx(0.8)
    assert "lambda" not in out["results"]["tinybert"] and "stage1_terms" not in out["results"]["tinybert"]
    shutil.rmtree(bench_dir / "runs")
    assert table()["results"]["meta"] == meta  # kept in the record
    from bench.report import section

    lines = section("ablation", SUITE.out)
    assert "| meta | 1 | 4 | 0.02 | 0.3 | 0.8 | 0.8 | 0.9 |" in lines
