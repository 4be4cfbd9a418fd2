"""Timing models side by side in interleaved rounds (`metakd eval` and the speed benchmarks in bench/).

A model timed once, after the one before it, takes whatever else the machine is doing at that moment: a burst
of other work lands on one model and the table can rank the models backwards. Here every round times each call
once, in turn, so a burst lands on one round of every model rather than on all of one model's time; a figure is
the median over rounds, with its fastest and slowest round beside it, and ratios between models come from the
medians of the same rounds. ``steadiness`` says when the rounds disagree too much to trust the absolute times.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)

UNSTEADY_SPREAD = 2.0  # a call whose slowest round took over twice its fastest: other work in some rounds


@dataclass(frozen=True)
class Spread:
    """A figure over rounds: its median, and its lowest and highest round."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan)
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)))

    def range(self) -> list[float]:
        """[lowest, highest], as the JSON records carry it beside the median."""
        return [self.low, self.high]


@dataclass
class Steadiness:
    """How far the rounds can be trusted: ``why`` names each reason they cannot (empty: steady)."""

    rounds: int
    load_average: float | None  # one-minute load average just after the rounds; None where the OS has none
    cpus: int  # CPUs this process may run on
    why: list[str] = field(default_factory=list)  # the load first, then the widest spreads first
    unsteady: bool = False


def why_unsteady(why: Sequence[str], shown: int = 2) -> str:
    """The first ``shown`` reasons the rounds were unsteady, and how many more there are: for one line."""
    more = len(why) - shown
    return "; ".join(why[:shown]) + (f" (and {more} more)" if more > 0 else "")


def time_rounds(calls: Mapping[Key, Callable[[], object]], rounds: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[Key, list[float]]:
    """Seconds each call took in each of ``rounds`` rounds. Every round makes each call once, in the mapping's
    order (interleaved); ``warmup`` untimed rounds go first (first-call allocations, kernel selection)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds: dict[Key, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            started = clock()
            call()
            seconds[key].append(clock() - started)
    return seconds


def per_round(total: int, rounds: int) -> int:
    """How many rows or batches each of ``rounds`` rounds times so that together they time at least ``total``."""
    return max(1, -(-total // rounds))


def available_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity where the OS has one, else every CPU)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def load_average() -> float | None:
    """The machine's one-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def steadiness(seconds: Mapping[str, Sequence[float]], load: float | None, cpus: int) -> Steadiness:
    """Unsteady when a call's slowest round took over UNSTEADY_SPREAD times its fastest, or when the load average
    was above the CPUs this process may use (other work was competing for them)."""
    spreads = {name: max(values) / min(values) for name, values in seconds.items() if values and min(values) > 0}
    why = [f"load average {load:.1f} on {cpus} CPU{'s' * (cpus != 1)}"] if load is not None and load > cpus else []
    why += [f"{name}: slowest round {spread:.1f}x the fastest"
            for name, spread in sorted(spreads.items(), key=lambda item: -item[1]) if spread > UNSTEADY_SPREAD]
    rounds = max((len(values) for values in seconds.values()), default=0)
    return Steadiness(rounds=rounds, load_average=load, cpus=cpus, why=why, unsteady=bool(why))


def measured_steadiness(seconds: Mapping[str, Sequence[float]]) -> Steadiness:
    """``steadiness`` with this machine's load average and CPUs, read now (just after the rounds)."""
    return steadiness(seconds, load_average(), len(available_cpus()))


def with_spread(median: float, low_high: Sequence[float] | None, digits: int = 2) -> str:
    """``median (lowest–highest)`` of a figure timed in rounds; the median alone when there is no spread (a record
    from before rounds)."""
    text = f"{median:.{digits}f}"
    if not low_high or len(low_high) != 2:
        return text
    return f"{text} ({low_high[0]:.{digits}f}–{low_high[1]:.{digits}f})"
