"""The scarce suite (bench/suites/scarce.yaml, its hooks in bench/scarce.py): a run on a fraction of one domain gets
the optimizer steps it would make on all of it (so that the data-scarce table measures data, not an untrained
head), each system is the recipe plus overrides, and the table and its paired tests come from the run folders' rows
(made-up folders: nothing is trained), or from the results file's rows once the folders are gone."""

from __future__ import annotations

import math
import shutil

import pytest

from bench import scarce
from bench.common import recipe
from bench.suite import load
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
    from metakd_cli.core.config import DataConfig
    from metakd_cli.data.dataset import fraction_indices, load_dataset

    data = DataConfig(path=str(toy_dataset("jsonl")))
    dataset = load_dataset(data)
    domain = dataset.domains[0]
    rows = scarce.train_rows(data, domain, [0.5])
    own = [r for r in dataset.train if r.domain == domain]
    assert rows[1.0] == len(own)
    assert rows[0.5] == len(fraction_indices(own, 0.5, dataset.split_seed)) < len(own)


@pytest.fixture
def suite(tmp_path, monkeypatch):
    """The scarce suite at F = 0.05 of kitchen, its rows per fraction given (no data read)."""
    suite = load("scarce", tmp_path)
    suite.values["fractions"] = [0.05]
    monkeypatch.setitem(scarce._ROWS, (suite.recipe, "kitchen", (0.05,)), {1.0: 1600, 0.05: 80})
    return suite


def test_each_system_is_the_recipe_plus_overrides(suite):
    at = {"domain": "kitchen", "fraction": 0.05}
    config = recipe(suite.sets_of("single-teacher", at), suite.recipe)
    assert suite.folder("single-teacher", at) == suite.runs / "scarce" / "single-teacher-kitchen-f0.05"
    assert (config.data.domains, config.fit.teacher_mode, config.fit.train_fraction, config.fit.epochs) == (
        ["kitchen"], "single", 0.05, 34)  # 3 batches an epoch: 34 epochs make the 100 steps of F = 1
    config = recipe(suite.sets_of("meta->meta", at), suite.recipe)
    assert (config.fit.fraction_domains, config.fit.train_fraction, config.fit.epochs) == (["kitchen"], 0.05, 2)
    assert (config.distill.method, config.distill.domain, config.distill.train_fraction) == ("meta", "kitchen", 0.05)
    assert (config.distill.intermediate_epochs, config.distill.epochs, config.eval.models) == (17, 34, ["student"])


def test_the_table_and_its_paired_tests_come_from_the_run_folders(suite):
    from bench.suite import table, write

    at = {"domain": "kitchen", "fraction": 0.05}
    made = {"single-teacher": [1] * 6 + [0] * 4, "single->tinybert": [1] * 5 + [0] * 5,
            "meta-teacher": [1] * 9 + [0], "meta->meta": [1] * 10}
    for system, correct in made.items():
        model = "teacher" if system.endswith("teacher") else "student"
        fake_run(suite.folder(system, at), suite.sets_of(system, at), suite.chain(system), model, correct,
                 path=suite.recipe)
    results = table(suite)
    row = results["results"]["0.05"]
    assert (row["single-teacher"], row["single->tinybert"], row["meta-teacher"], row["meta->meta"]) == (
        60.0, 50.0, 90.0, 100.0)
    assert row["epochs"] == {"single-teacher": 34, "single->tinybert": [17, 34], "meta-teacher": 2,
                             "meta->meta": [17, 34]}
    assert row["train_rows"] == 10 and results["test_rows"]["rows"] == 10
    test = results["tests"]["0.05"]["meta->meta vs single->tinybert"]
    assert test["diff"] == pytest.approx(50.0) and test["mcnemar_exact_per_seed"]["1"]["b_only"] == 0
    assert "meta->meta vs meta->tinybert" not in results["tests"]["0.05"]  # that system did not run
    assert results["correct"]["0.05"]["meta->meta"] == {"rows": [1] * 10}
    assert write(suite, results)
    shutil.rmtree(suite.runs)  # the folders gone: the results file's rows and figures still make the table
    assert table(suite) == results
