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
