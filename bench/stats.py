"""Paired significance tests for two classifiers scored on the same test rows (numpy only).

Inputs are per-row correctness arrays (1 = right, 0 = wrong) in one fixed row order, so that
row i of system A and row i of system B are the same example.

* ``mcnemar_exact(a, b)``: for ONE run of each system. b = rows A gets right and B wrong,
  c = the reverse; under H0 (equal error rates) b ~ Binomial(b + c, 1/2). Two-sided exact
  p = min(1, 2 * P(X <= min(b, c))), and 1 when b + c = 0.
* ``seed_average(runs)``: each row's correctness averaged over a system's seeds (values in
  [0, 1]), so that seed noise is averaged out before the rows are resampled.
* ``paired_bootstrap(a, b, strata)``: resamples test rows with replacement (within each
  stratum -- a domain -- with the stratum's own size) and recomputes the difference
  diff = mean over strata of mean(a - b), in points. That is exactly the difference of the
  tables' "average" column (the mean of per-domain accuracies). Two-sided p-value by
  inverting the percentile interval: p = min(1, 2 * min(#{diff* <= 0} + 1, #{diff* >= 0} + 1)
  / (B + 1)), the smallest level at which the percentile interval excludes 0 (the +1 keeps
  p above 0 with B resamples). The 95% interval is the 2.5th and 97.5th percentiles of diff*.
* ``compare(a_runs, b_runs, strata)``: the whole entry of a results file's "tests" section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class McNemar:
    a_only: int  # rows A gets right and B wrong (b)
    b_only: int  # rows B gets right and A wrong (c)
    p_value: float


@dataclass
class Bootstrap:
    diff: float  # A minus B, accuracy points (mean over strata)
    p_value: float
    ci95: tuple[float, float]
    resamples: int
    seed: int


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n trials with p = 1/2: min(1, 2 * P(X <= min(k, n - k)))."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def _correctness(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"expected one value per row, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError("correctness values must lie in [0, 1]")
    return array


def mcnemar_exact(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> McNemar:
    """Exact McNemar test on the discordant pairs of two 0/1 correctness arrays of the same rows."""
    a, b = _correctness(a), _correctness(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {a.size} vs {b.size}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar needs 0/1 correctness of one run, not seed averages")
    a_only = int(((a == 1) & (b == 0)).sum())
    b_only = int(((a == 0) & (b == 1)).sum())
    return McNemar(a_only=a_only, b_only=b_only, p_value=binomial_two_sided(a_only, a_only + b_only))


def seed_average(runs: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    """Each row's correctness averaged over runs (seeds) of one system: [rows] in [0, 1]."""
    if not runs:
        raise ValueError("no runs to average")
    arrays = [_correctness(r) for r in runs]
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"runs differ in length: {[a.size for a in arrays]}")
    return np.mean(np.stack(arrays), axis=0)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, strata: Sequence | np.ndarray | None = None,
    resamples: int = 10_000, seed: int = 0,
) -> Bootstrap:
    """Paired (stratified) bootstrap of the accuracy difference A - B over test rows; see the module doc."""
    a, b = _correctness(a), _correctness(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no rows to compare")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    labels = np.zeros(a.size, dtype=int) if strata is None else np.asarray(strata)
    if labels.shape != a.shape:
        raise ValueError("strata must give one label per row")
    rng = np.random.default_rng(seed)
    difference = a - b
    observed, samples = [], []
    for stratum in dict.fromkeys(labels.tolist()):  # first-seen order: reproducible draws
        d = difference[labels == stratum]
        observed.append(d.mean())
        picks = rng.integers(0, d.size, size=(resamples, d.size))
        samples.append(d[picks].mean(axis=1))
    diff = float(np.mean(observed) * 100.0)
    boot = np.mean(np.stack(samples), axis=0) * 100.0
    below, above = int((boot <= 0).sum()), int((boot >= 0).sum())
    p_value = min(1.0, 2.0 * (min(below, above) + 1) / (resamples + 1))
    low, high = np.percentile(boot, [2.5, 97.5])
    return Bootstrap(diff=diff, p_value=p_value, ci95=(float(low), float(high)), resamples=resamples, seed=seed)


def compare(
    a_runs: Mapping[str, Sequence[int]], b_runs: Mapping[str, Sequence[int]], strata: Sequence | None = None,
    resamples: int = 10_000, seed: int = 0,
) -> dict:
    """A vs B from their runs ({seed: 0/1 correctness per row}), as a JSON-ready dict.

    The bootstrap uses every seed of each system (seed-averaged correctness); McNemar pairs
    run s of A with run s of B for each seed both have.
    """
    if not a_runs or not b_runs:
        raise ValueError("both systems need at least one run")
    boot = paired_bootstrap(seed_average(list(a_runs.values())), seed_average(list(b_runs.values())),
                            strata, resamples, seed)
    per_seed = {}
    for s in [s for s in a_runs if s in b_runs]:
        per_seed[s] = asdict(mcnemar_exact(a_runs[s], b_runs[s]))
    return {
        "diff": round(boot.diff, 3),
        "p_value": round(boot.p_value, 5),
        "ci95": [round(boot.ci95[0], 3), round(boot.ci95[1], 3)],
        "test": f"paired bootstrap over test rows, stratified by domain, seed-averaged correctness, "
                f"{boot.resamples} resamples (rng seed {boot.seed}); p from the percentile interval",
        "seeds": {"a": sorted(a_runs), "b": sorted(b_runs)},
        "rows": len(next(iter(a_runs.values()))),
        "mcnemar_exact_per_seed": per_seed,
    }
