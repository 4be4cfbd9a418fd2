"""bench/scarce.py's step matching: a run on a fraction of one domain gets the optimizer steps it
would make on all of it, so that the data-scarce table measures data, not an untrained head."""

from __future__ import annotations

import math

import pytest

from conftest import load_bench

scarce = load_bench("scarce")


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


def test_the_fraction_rows_are_metakds_own(toy_dataset, monkeypatch):
    """The rows a fraction keeps come from metakd's sampler on the one domain, as fit and distill see them."""
    from metakd_cli.config import DataConfig
    from metakd_cli.data import fraction_indices, load_dataset

    path = toy_dataset("jsonl")
    dataset = load_dataset(DataConfig(path=str(path)))
    domain = dataset.domains[0]
    monkeypatch.setattr(scarce, "DATA", path)
    args = type("Args", (), {"domain": domain, "fractions": [0.5], "match_steps": True})()
    bench = scarce.Bench.__new__(scarce.Bench)
    bench.args, bench.rows = args, {}
    own = [r for r in dataset.train if r.domain == domain]
    assert bench.train_rows(1.0) == len(own)
    assert bench.train_rows(0.5) == len(fraction_indices(own, 0.5, dataset.split_seed)) < len(own)
    args.match_steps = False
    assert bench.epochs(2, 0.5) == 2


def test_paired_tests_score_the_test_rows_each_run_reports(tiny_model_dir, tmp_path, monkeypatch):
    """Each model is scored row by row on D's test rows, checked against its own metrics, scored once per
    version of its metrics file, and paired with the other system at the same fraction."""
    import json

    from metakd_cli.config import DataConfig, FitConfig
    from metakd_cli.fit import fit
    from metakd_cli.run_dir import RunDir

    from conftest import write_toy_dataset

    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))
    config = FitConfig(teacher=str(tiny_model_dir), teacher_mode="mix", epochs=1, batch_size=8, lr=1e-3,
                       max_length=16, seed=3)
    fit(data, config, RunDir(tmp_path / "run"), log=lambda *a, **k: None)
    run = tmp_path / "run"
    metrics = run / "metrics" / "fit.json"
    dataset = RunDir(run).reload_dataset()[1]
    domain = dataset.domains[0]
    bench = scarce.Bench.__new__(scarce.Bench)
    bench.args = type("Args", (), {"domain": domain})()
    bench.results, bench.datasets = {}, {}
    bench.score(0.5, "single-teacher", run, "teacher", metrics)
    kept = bench.results["correct"]["0.5"]["single-teacher"]
    rows = dataset.select("test", [domain])
    assert len(kept["rows"]) == len(rows) == bench.results["test_rows"]["rows"]
    assert 100 * sum(kept["rows"]) / len(rows) == pytest.approx(json.loads(metrics.read_text())["test_accuracy"][domain])

    def refuse(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(scarce, "test_correctness", refuse)
    bench.score(0.5, "single-teacher", run, "teacher", metrics)  # same metrics file: kept, not re-scored

    # a second system at the same fraction: every row it gets right and the teacher got wrong is +1 for it
    better = [1] * len(rows)
    bench.results["correct"]["0.5"]["meta-teacher"] = {"stamp": "x", "rows": better}
    tests = bench.tests()
    test = tests["0.5"]["meta-teacher vs single-teacher"]
    assert test["diff"] == pytest.approx(100 * (len(rows) - sum(kept["rows"])) / len(rows), abs=1e-3)
    assert test["mcnemar_exact_per_seed"]["1"]["b_only"] == 0
    assert "meta->meta vs single->tinybert" not in tests["0.5"]  # students not scored: no test

    # metrics that report another accuracy than the rows give: refused, not paired
    monkeypatch.undo()
    report = json.loads(metrics.read_text())
    report["test_accuracy"][domain] += 10
    metrics.write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="scores .* but"):
        bench.score(0.2, "single-teacher", run, "teacher", metrics)
