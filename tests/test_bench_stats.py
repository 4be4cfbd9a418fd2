"""bench/stats.py: exact McNemar, seed averaging and the paired bootstrap, on synthetic arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import stats


def test_binomial_two_sided_by_hand():
    assert stats.binomial_two_sided(0, 5) == pytest.approx(2 * 0.5**5)  # 0.0625
    assert stats.binomial_two_sided(5, 5) == pytest.approx(0.0625)
    assert stats.binomial_two_sided(1, 4) == pytest.approx(2 * (1 + 4) / 16)  # 0.625
    assert stats.binomial_two_sided(2, 4) == 1.0  # capped: the middle outcome counts twice
    assert stats.binomial_two_sided(0, 0) == 1.0
    assert stats.binomial_two_sided(0, 100) == pytest.approx(2 * 0.5**100)


def test_mcnemar_counts_only_discordant_rows():
    # 10 rows both right, 5 where only B is right, 3 both wrong: b = 0, c = 5
    a = [1] * 10 + [0] * 5 + [0] * 3
    b = [1] * 10 + [1] * 5 + [0] * 3
    result = stats.mcnemar_exact(a, b)
    assert (result.a_only, result.b_only) == (0, 5)
    assert result.p_value == pytest.approx(0.0625)
    assert stats.mcnemar_exact(b, a).p_value == pytest.approx(0.0625)  # symmetric
    same = stats.mcnemar_exact(a, a)
    assert (same.a_only, same.b_only, same.p_value) == (0, 0, 1.0)


def test_mcnemar_rejects_averages_and_length_mismatch():
    with pytest.raises(ValueError):
        stats.mcnemar_exact([0.5, 1], [1, 1])
    with pytest.raises(ValueError):
        stats.mcnemar_exact([1, 0, 1], [1, 0])


def test_seed_average():
    averaged = stats.seed_average([[1, 0, 1, 0], [1, 1, 0, 0], np.array([1, 0, 0, 0])])
    np.testing.assert_allclose(averaged, [1.0, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_array_equal(stats.seed_average([[0, 1]]), [0.0, 1.0])
    with pytest.raises(ValueError):
        stats.seed_average([[1, 0], [1]])
    with pytest.raises(ValueError):
        stats.seed_average([])


def test_bootstrap_identical_systems_is_not_significant():
    rng = np.random.default_rng(1)
    a = (rng.random(800) < 0.85).astype(int)
    result = stats.paired_bootstrap(a, a, strata=np.repeat(["books", "dvd", "electronics", "kitchen"], 200))
    assert result.diff == 0.0
    assert result.p_value == 1.0
    assert result.ci95 == (0.0, 0.0)


def test_bootstrap_clearly_better_system_is_significant():
    rng = np.random.default_rng(2)
    b = (rng.random(800) < 0.80).astype(int)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:80]] = 1  # A fixes 80 of B's errors, breaks none: +10 points
    result = stats.paired_bootstrap(a, b, resamples=2000, seed=0)
    assert result.diff == pytest.approx(10.0)
    assert result.p_value == pytest.approx(2 / 2001)  # no resample at or below 0: the floor
    assert 0 < result.ci95[0] < 10 < result.ci95[1]
    reverse = stats.paired_bootstrap(b, a, resamples=2000, seed=0)
    assert reverse.diff == pytest.approx(-10.0) and reverse.p_value == pytest.approx(result.p_value)


def test_bootstrap_noise_sized_difference_is_not_significant():
    # one point on 200 rows: A fixes 3 of B's errors and breaks 1
    b = np.array([1] * 170 + [0] * 30)
    a = b.copy()
    a[170:173] = 1
    a[0] = 0
    result = stats.paired_bootstrap(a, b, resamples=4000, seed=3)
    assert result.diff == pytest.approx(1.0)
    assert result.p_value > 0.2
    assert result.ci95[0] < 0 < result.ci95[1]


def test_bootstrap_diff_is_the_mean_of_per_stratum_differences():
    # unequal strata: the difference weights strata equally, like the tables' "average"
    a = np.array([1, 1, 1, 1, 1, 1])
    b = np.array([0, 1, 1, 1, 0, 0])
    strata = ["x", "x", "x", "x", "y", "y"]  # x: +25 points, y: +100 points
    result = stats.paired_bootstrap(a, b, strata=strata, resamples=500)
    assert result.diff == pytest.approx(62.5)
    again = stats.paired_bootstrap(a, b, strata=strata, resamples=500)
    assert again == result  # seeded: reproducible


def test_compare_entry():
    rows = 40
    b_runs = {"1": [1] * 30 + [0] * 10, "2": [1] * 28 + [0] * 12}
    a_runs = {"1": [1] * 35 + [0] * 5, "2": [1] * 34 + [0] * 6, "3": [1] * 36 + [0] * 4}
    entry = stats.compare(a_runs, b_runs, resamples=1000)
    assert entry["rows"] == rows
    assert entry["diff"] == pytest.approx((35 + 34 + 36) / 3 / rows * 100 - (30 + 28) / 2 / rows * 100, abs=1e-3)
    assert set(entry["mcnemar_exact_per_seed"]) == {"1", "2"}  # seed 3 has no partner
    first = entry["mcnemar_exact_per_seed"]["1"]
    assert (first["a_only"], first["b_only"]) == (5, 0)
    assert first["p_value"] == pytest.approx(2 * 0.5**5)
    assert 0 < entry["p_value"] <= 1 and entry["ci95"][0] <= entry["diff"] <= entry["ci95"][1]
    assert not math.isnan(entry["p_value"])
