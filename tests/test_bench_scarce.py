"""bench/scarce.py: a run on a fraction of one domain gets the optimizer steps it would make on all of it (so that
the data-scarce table measures data, not an untrained head), each system is the recipe plus overrides, and the
table and its paired tests come from the run folders' rows (made-up folders: nothing is trained)."""

from __future__ import annotations

import argparse
import math

import pytest

from bench import scarce
from bench.common import RUNS, TEACHERS, recipe
from test_bench_common import fake_run


@pytest.mark.parametrize("rows, epochs, expected", [
    (1600, 2, 2),  # F = 1: as given
    (320, 2, 10),  # 10 batches an epoch: 100 steps in 10 epochs
    (160, 2, 20),
    (80, 2, 34),  # 3 batches an epoch: 102 steps, the fewest epochs with at least 100
    (16, 2, 100),
    (16, 1, 50),
    (3000, 2, 2),  # more rows than F = 1 never means fewer epochs
])
def test_matched_epochs_reach_the_full_data_steps(rows, epochs, expected):
    assert scarce.matched_epochs(epochs, rows, 1600) == expected
    steps = expected * math.ceil(rows / scarce.BATCH)
    assert steps >= epochs * math.ceil(1600 / scarce.BATCH)
    if expected > epochs:  # one epoch fewer would fall short
        assert (expected - 1) * math.ceil(rows / scarce.BATCH) < epochs * math.ceil(1600 / scarce.BATCH)


def test_the_fraction_rows_are_metakds_own(toy_dataset):
    """The rows a fraction keeps come from metakd's sampler on the one domain, as fit and distill see them."""
    from metakd_cli.config import DataConfig
    from metakd_cli.data import fraction_indices, load_dataset

    data = DataConfig(path=str(toy_dataset("jsonl")))
    dataset = load_dataset(data)
    domain = dataset.domains[0]
    rows = scarce.train_rows(data, domain, [0.5])
    own = [r for r in dataset.train if r.domain == domain]
    assert rows[1.0] == len(own)
    assert rows[0.5] == len(fraction_indices(own, 0.5, dataset.split_seed)) < len(own)


def _plan(**overrides) -> scarce.Plan:
    values = dict(domain="kitchen", fractions=[0.05, 1.0], intermediate_epochs=1, epochs=2, seed=42,
                  match_steps=True, sets=[], dry_run=False)
    plan = scarce.Plan.__new__(scarce.Plan)  # the rows per fraction by hand: no data read
    plan.args, plan.rows = argparse.Namespace(**{**values, **overrides}), {1.0: 1600, 0.05: 80}
    return plan


def test_each_system_is_the_recipe_plus_overrides():
    plan = _plan()
    folder, sets = plan.teacher("single", 0.05)
    config = recipe(sets)
    assert folder == RUNS / "scarce" / "single-teacher-kitchen-f0.05"
    assert (config.data.domains, config.fit.teacher_mode, config.fit.train_fraction, config.fit.epochs) == (
        ["kitchen"], "single", 0.05, 34)  # 3 batches an epoch: 34 epochs make the 100 steps of F = 1
    folder, sets = plan.student("meta", 0.05)
    config = recipe(sets)
    assert (config.fit.fraction_domains, config.fit.train_fraction, config.fit.epochs) == (["kitchen"], 0.05, 2)
    assert (config.distill.method, config.distill.domain, config.distill.train_fraction) == ("meta", "kitchen", 0.05)
    assert (config.distill.intermediate_epochs, config.distill.epochs, config.eval.models) == (17, 34, ["student"])
    assert plan.teacher("meta", 1.0)[0] == RUNS / TEACHERS["teacher-meta"][0]  # bench/teachers.py's meta-teacher
    assert recipe(_plan(match_steps=False).student("single", 0.05)[1]).distill.epochs == 2


def test_the_table_and_its_paired_tests_come_from_the_run_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(scarce, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(scarce, "OUT", tmp_path / "scarce.json")
    plan = _plan(fractions=[0.05], systems=["single", "meta"])
    rows = 10
    made = {("single", "teacher"): [1] * 6 + [0] * 4, ("single", "student"): [1] * 5 + [0] * 5,
            ("meta", "teacher"): [1] * 9 + [0], ("meta", "student"): [1] * 10}
    for (kind, model), correct in made.items():
        folder, sets = plan.teacher(kind, 0.05) if model == "teacher" else plan.student(kind, 0.05)
        fake_run(folder, sets, "fit,eval" if model == "teacher" else "fit,distill,eval", model, correct)
    results = scarce.table(plan)
    row = results["results"]["0.05"]
    assert (row["single-teacher"], row["single->tinybert"], row["meta-teacher"], row["meta->meta"]) == (
        60.0, 50.0, 90.0, 100.0)
    assert row["epochs"] == {"single-teacher": 34, "single->tinybert": [17, 34], "meta-teacher": 2,
                             "meta->meta": [17, 34]}
    assert row["train_rows"] == 10 and results["test_rows"]["rows"] == rows
    test = results["tests"]["0.05"]["meta->meta vs single->tinybert"]
    assert test["diff"] == pytest.approx(50.0) and test["mcnemar_exact_per_seed"]["1"]["b_only"] == 0
    assert "meta->meta vs meta->tinybert" not in results["tests"]["0.05"]  # that system did not run
    assert results["correct"]["0.05"]["meta->meta"] == {"rows": [1] * 10}
