"""amazon_cpu's reading of a finished run folder: step times, the span from fit's start to eval's end, the
60-minute verdict, and a refusal when a step was redone out of order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import amazon_cpu as bench

ACCURACY = {"books": 90.0, "dvd": 80.0, "average": 85.0}


def fake_run(tmp_path: Path, seconds: dict[str, float], written: dict[str, float]) -> Path:
    metrics = tmp_path / "run" / "metrics"
    metrics.mkdir(parents=True)
    for step, at in written.items():
        body = {"step": step, **({"seconds": seconds[step]} if step in seconds else {})}
        if step == "eval":
            body["models"] = [{"name": "teacher", "accuracy": ACCURACY, "throughput": 60.04},
                              {"name": "int8", "accuracy": ACCURACY, "throughput": 200.0}]
        path = metrics / f"{step}.json"
        path.write_text(json.dumps(body))
        os.utime(path, (at, at))
    return tmp_path / "run"


def test_span_runs_from_fit_start_to_eval_end(tmp_path: Path):
    t0 = 1_800_000_000.0
    run = fake_run(tmp_path, {"fit": 1200.0, "distill": 1500.0, "export": 30.0},
                   {"fit": t0 + 1200, "distill": t0 + 2700, "export": t0 + 2730, "eval": t0 + 2790})
    summary = bench.summarize(run)
    assert summary["minutes"] == 46.5  # 2790 s
    assert summary["met"] is True and summary["wall_minutes"] is None
    assert summary["steps"]["eval"]["seconds"] == 60.0
    assert summary["accuracy"]["int8"]["average"] == 85.0
    assert summary["throughput_b32"] == {"teacher": 60.0, "int8": 200.0}

    slow = fake_run(tmp_path / "slow", {"fit": 2400.0, "distill": 1500.0, "export": 30.0},
                    {"fit": t0 + 2400, "distill": t0 + 3900, "export": t0 + 3930, "eval": t0 + 3990})
    assert bench.summarize(slow)["met"] is False


def test_a_step_redone_alone_is_refused(tmp_path: Path):
    t0 = 1_800_000_000.0
    run = fake_run(tmp_path, {"fit": 100.0, "distill": 100.0, "export": 10.0},
                   {"fit": t0 + 100, "distill": t0 + 5000, "export": t0 + 210, "eval": t0 + 5100})
    with pytest.raises(SystemExit, match="not written in the order"):
        bench.summarize(run)
