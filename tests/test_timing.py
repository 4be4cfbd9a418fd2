"""metakd_cli/core/timing.py: interleaved rounds, medians and their spread, and when rounds are unsteady. A fake clock
that the fake models advance by their cost: deterministic, no sleeping."""

from __future__ import annotations

import math

import pytest

from metakd_cli.core.timing import Spread, per_round, steadiness, time_rounds, why_unsteady, with_spread


class FakeClock:
    """Seconds pass only when a fake model runs: its cost, plus a burst of other work in the rounds given."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def model(self, cost: float, bursts: dict[int, float] | None = None, warmup: int = 1):
        calls = iter(range(-warmup, 10**6))  # the warm-up calls come first, then round 0, 1, ...

        def call() -> None:
            self.now += cost + (bursts or {}).get(next(calls), 0.0)

        return call


def test_the_median_ranks_models_right_where_one_pass_does_not():
    # the student (1 s) is three times faster than the teacher (3 s), but a burst of other work (+5 s) lands on the
    # student's first timed pass: timed once, it looks slower than the teacher
    def timed(rounds: int) -> dict[str, Spread]:
        clock = FakeClock()
        calls = {"teacher": clock.model(3.0), "student": clock.model(1.0, bursts={0: 5.0})}
        return {name: Spread.of(seconds) for name, seconds in time_rounds(calls, rounds, clock=clock).items()}

    once = timed(1)
    assert once["student"].median > once["teacher"].median  # backwards
    rounds = timed(5)
    assert rounds["student"].median == 1.0 and rounds["teacher"].median == 3.0
    assert rounds["student"] == Spread(median=1.0, low=1.0, high=6.0)  # the burst stays visible in the spread
    assert rounds["teacher"].median / rounds["student"].median == 3.0  # the ratio from the medians


def test_rounds_interleave_the_calls_after_untimed_warm_ups():
    order: list[str] = []
    seconds = time_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=2,
                          clock=FakeClock())
    assert order == ["a", "b"] * 5 and {key: len(value) for key, value in seconds.items()} == {"a": 3, "b": 3}


def test_spread_of_rounds():
    assert Spread.of([3.0, 1.0, 2.0, 10.0]) == Spread(median=2.5, low=1.0, high=10.0)
    assert Spread.of([4.0]).range() == [4.0, 4.0]
    assert all(math.isnan(v) for v in Spread.of([]).range())
    assert with_spread(2.5, [1.0, 10.0]) == "2.50 (1.00–10.00)" and with_spread(2.5, []) == "2.50"


@pytest.mark.parametrize(("total", "rounds", "each"), [(64, 8, 8), (8, 8, 1), (8, 5, 2), (1, 8, 1), (64, 1, 64)])
def test_each_round_times_its_share_and_together_at_least_the_total(total, rounds, each):
    assert per_round(total, rounds) == each and each * rounds >= total


def test_steady_rounds_on_a_quiet_machine():
    assert not steadiness({"teacher": [3.0, 3.2, 2.9], "student": [1.0, 1.1, 1.9]}, load=0.5, cpus=2).unsteady


def test_a_wide_spread_makes_the_rounds_unsteady_and_says_which_call():
    steady = steadiness({"teacher": [3.0, 3.1], "student at batch 1": [1.0, 2.5]}, load=None, cpus=2)
    assert steady.unsteady and steady.why == ["student at batch 1: slowest round 2.5x the fastest"]
    assert steady.rounds == 2 and steady.load_average is None


def test_a_load_above_the_cpus_makes_the_rounds_unsteady_and_comes_first():
    steady = steadiness({"a": [1.0, 3.0], "b": [1.0, 5.0]}, load=3.7, cpus=2)
    assert steady.unsteady and steady.why == ["load average 3.7 on 2 CPUs", "b: slowest round 5.0x the fastest",
                                              "a: slowest round 3.0x the fastest"]
    assert why_unsteady(steady.why) == "load average 3.7 on 2 CPUs; b: slowest round 5.0x the fastest (and 1 more)"
    assert not steadiness({"a": [1.0, 1.1]}, load=2.0, cpus=2).unsteady  # at the CPU count: not above it
