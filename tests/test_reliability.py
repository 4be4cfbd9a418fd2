"""Interruptions: SIGINT and SIGKILL in the middle of `fit` and `distill`, then `--resume`.

A real `metakd` process is started, killed once its first checkpoint exists, and resumed;
the resumed run must report the same metrics as an uninterrupted run with the same seed,
and no half-written artifact folder may be left where the manifest points.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import toy_rows, write_jsonl

FIT_ARGS = ["--epochs", "40", "--batch-size", "4", "--max-length", "16", "--lr", "1e-3", "--seed", "3"]
DISTILL_ARGS = ["--intermediate-epochs", "30", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
                "--intermediate-lr", "1e-3", "--seed", "4"]


def _metakd(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "metakd_cli", "--quiet", "--run-dir", str(run_dir), *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _kill_after_first_checkpoint(command: list[str], checkpoint: Path, sig: int) -> int:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 300
    while not (checkpoint / "loop.json").is_file():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere inside a later epoch
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert b"Traceback" not in stderr
        assert b"--resume" in stderr
    return process.returncode


def _comparable(metrics: dict) -> dict:
    """Metrics without wall times, rates, where a resumed run took training up, and the command line."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if k not in ("seconds", "train_seconds", "examples_per_second", "train_examples_per_second",
                                 "teacher_cache_seconds", "command", "resumed_from")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return clean(metrics)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", toy_rows())


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data_file, tmp_path_factory) -> Path:
    """An uninterrupted fit + distill with the same seeds."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _run(_metakd(run_dir, "fit", str(data_file), "--teacher", str(tiny_model_dir), *FIT_ARGS))
    _run(_metakd(run_dir, "distill", *DISTILL_ARGS))
    return run_dir


def _metrics(run_dir: Path, step: str) -> dict:
    return _comparable(json.loads((run_dir / "metrics" / f"{step}.json").read_text()))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_fit_killed_then_resumed_matches_an_uninterrupted_run(tiny_model_dir, data_file, reference, tmp_path, sig):
    run_dir = tmp_path / "run"
    command = _metakd(run_dir, "fit", str(data_file), "--teacher", str(tiny_model_dir), *FIT_ARGS)
    code = _kill_after_first_checkpoint(command, run_dir / "checkpoints" / "fit-teacher", sig)
    assert code != 0
    assert not (run_dir / "teacher").exists()  # nothing half-written where the manifest would point
    assert not (run_dir / "manifest.json").exists()
    _run(command + ["--resume"])
    assert _metrics(run_dir, "fit") == _metrics(reference, "fit")
    taken_up = json.loads((run_dir / "metrics" / "fit.json").read_text())["teachers"][0]["resumed_from"]
    assert taken_up["earlier_seconds"] > 0  # the killed run's training time, from its checkpoint


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_distill_killed_then_resumed_matches_an_uninterrupted_run(reference, tmp_path, sig):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "student")
    manifest_before = (run_dir / "manifest.json").read_text()
    command = _metakd(run_dir, "distill", *DISTILL_ARGS)
    code = _kill_after_first_checkpoint(command, run_dir / "checkpoints" / "distill-intermediate", sig)
    assert code != 0
    assert not (run_dir / "student").exists()
    assert (run_dir / "manifest.json").read_text() == manifest_before
    _run(command + ["--resume"])
    assert _metrics(run_dir, "distill") == _metrics(reference, "distill")


def test_resume_refuses_a_checkpoint_of_other_settings(reference, tmp_path, tiny_model_dir, data_file):
    run_dir = tmp_path / "run"
    command = _metakd(run_dir, "fit", str(data_file), "--teacher", str(tiny_model_dir), *FIT_ARGS)
    _kill_after_first_checkpoint(command, run_dir / "checkpoints" / "fit-teacher", signal.SIGKILL)
    changed = [*command, "--lr", "5e-4", "--resume"]
    result = subprocess.run(changed, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 2
    assert "checkpoint was made with other settings" in result.stderr
    assert "Traceback" not in result.stderr
