"""Many processes (metakd_cli/core/processes.py, training.run_phase): sharding, refusals, and a real two-process launch.

The launch test starts `torchrun --nproc_per_node 2` (gloo, two CPU processes) on a tiny BERT
without dropout and checks that every process ends each phase with the same weights, that they
match a one-process run with the same global batch and seed within float tolerance, and that
one manifest is written, once: a mix and a meta fit (t-weighted loss, confusion domain loss, whose
shuffle is the global batch's), and `distill --method meta` of the meta teacher (lambda-weighted
stage 1 with the domain-feature term, then stage 2). Dropout is off because its masks are drawn per
process over that process's rows, so with dropout a two-process run is a different (equally valid)
random draw than a one-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import toy_rows, write_jsonl
from metakd_cli.core.errors import UserError
from metakd_cli.core.processes import check_command, check_settings, gather_rows
from metakd_cli.training.loop import shard

WORKER = Path(__file__).resolve().parent / "multiprocess_worker.py"


# --------------------------------------------------------------------------- one process, fast


def test_shares_of_a_batch_give_the_one_process_gradient_even_when_unequal():
    torch.manual_seed(0)
    x, w = torch.randn(5, 3), torch.randn(3, requires_grad=True)

    def grad(rows: list[int], factor: float) -> torch.Tensor:
        w.grad = None
        ((x[rows] @ w).pow(2).mean() * factor).backward()
        return w.grad.clone()

    batch = [4, 0, 2, 1, 3]  # 5 rows, 2 processes: shares of 3 and 2
    whole = grad(batch, 1.0)
    shares = [shard(batch, rank, 2) for rank in range(2)]
    assert [len(rows) for rows, _ in shares] == [3, 2]
    averaged = sum(grad(rows, factor) for rows, factor in shares) / 2  # what DDP's all-reduce gives
    assert torch.allclose(averaged, whole, atol=1e-6)
    assert shard(batch, 0, 1) == (batch, 1.0)  # one process: the batch as it is


def test_a_process_left_without_rows_runs_a_step_that_counts_for_nothing():
    assert shard([7], 1, 2) == ([7], 0.0)
    assert shard([7], 0, 2) == ([7], 2.0)  # its one row is the whole batch: x2, and DDP halves it


def test_gather_rows_in_one_process_is_the_plain_computation():
    assert gather_rows(3, lambda rows: torch.tensor(rows).numpy() * 2).tolist() == [0, 2, 4]


def test_settings_a_launch_cannot_honour_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="--batch-size 30 is the global batch, split evenly across the 4 processes"):
        check_settings(30, None)
    check_settings(32, "bf16")
    with pytest.raises(UserError, match="--mixed-precision: unknown value 'fp8'"):
        check_settings(32, "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16 needs a GPU"):
            check_settings(32, "fp16")


def test_commands_that_run_in_one_process_are_refused_under_a_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_command("fit")
    check_command("distill")
    with pytest.raises(UserError, match="`metakd export` runs in one process, but this launch started 2"):
        check_command("export")
    from metakd_cli.cli import cli

    result = CliRunner().invoke(cli, ["eval"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 2
    assert "runs in one process" in result.output and "Traceback" not in result.output


def test_one_process_may_change_its_mixed_precision_between_steps():
    from metakd_cli.core.processes import accelerator

    try:  # `metakd run` with a bf16 fit and a full-precision distill: accelerate alone would refuse the change
        assert accelerator("bf16").mixed_precision == "bf16"
        assert accelerator("no").mixed_precision == "no"
    finally:
        accelerator("no")  # what the other tests run with


def test_an_unset_mixed_precision_does_not_inherit_the_previous_steps(monkeypatch):
    """`metakd run` with `fit.mixed_precision: bf16` and distill left unset: distill runs in the launcher's
    precision (none without a launcher), not in the bf16 the fit step left in accelerate's shared state."""
    from metakd_cli.core.processes import accelerator

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    try:
        assert accelerator("bf16").mixed_precision == "bf16"
        assert accelerator(None).mixed_precision == "no"
    finally:
        accelerator("no")


def test_a_launcher_world_size_that_is_not_a_number_is_one_line(monkeypatch):
    from metakd_cli.core.errors import UserError
    from metakd_cli.core.processes import world_size

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not a whole number"):
        world_size()


def test_fit_help_says_what_the_batch_size_is():
    from metakd_cli.cli import cli

    for command in ("fit", "distill"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        assert "Global batch size" in text and "--mixed-precision" in text


# --------------------------------------------------------------------------- two processes (gloo), slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _launch(processes: int, out: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    metakd = ["--quiet", "--run-dir", str(run_dir), *args]
    if processes == 1:
        command = [sys.executable, str(WORKER), str(out), "--", *metakd]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out), "--",
                   *metakd]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT with dropout off (see the module docstring)."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-no-dropout") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


FIT = ["--epochs", "2", "--batch-size", "8", "--max-length", "16", "--lr", "1e-3", "--seed", "3"]
DISTILL = ["--method", "meta", "--intermediate-epochs", "2", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
           "--intermediate-lr", "1e-3", "--seed", "4"]
TOLERANCE = 1e-4  # float noise: each process pads its share to its own longest row, and sums differ in order


@pytest.mark.slow
def test_two_processes_train_as_one_and_write_once(no_dropout_model, tmp_path):
    # 39 training rows: each epoch ends with a batch of 7, which two processes share 4 + 3 (weighted)
    data = write_jsonl(tmp_path / "toy.jsonl", toy_rows(per_label=9)[:-3])
    started = time.perf_counter()
    for mode in ("mix", "meta"):  # OUT folders one-MODE / two-MODE, run folders run-one-MODE / run-two-MODE
        fit = ["fit", str(data), "--teacher", str(no_dropout_model), "--teacher-mode", mode, *FIT]
        for processes, name in ((1, "one"), (2, "two")):
            _launch(processes, tmp_path / f"{name}-{mode}", tmp_path / f"run-{name}-{mode}", *fit)
    # distil the same meta teacher (the one-process run's) with one and with two processes
    import shutil

    shutil.copytree(tmp_path / "run-one-meta", tmp_path / "run-two-distill")
    _launch(1, tmp_path / "one-meta", tmp_path / "run-one-meta", "distill", *DISTILL)
    _launch(2, tmp_path / "two-meta", tmp_path / "run-two-distill", "distill", *DISTILL)
    seconds = time.perf_counter() - started

    # each phase's kept (best on dev) and last state: the last is what every step moved (a state kept after the
    # first step hides the rest: Adam's first step is the gradient's sign, alike for nearly alike gradients)
    for mode, phase in (("mix", "fit-teacher"), ("meta", "fit-teacher"), ("meta", "distill-intermediate"),
                        ("meta", "distill-prediction"), ("mix", "fit-teacher-last"), ("meta", "fit-teacher-last"),
                        ("meta", "distill-intermediate-last"), ("meta", "distill-prediction-last")):
        rank0, rank1 = (_weights(tmp_path / f"two-{mode}" / f"{phase}-rank{r}.safetensors") for r in (0, 1))
        assert _max_difference(rank0, rank1) == 0.0, f"{mode} {phase}: the two processes ended with different weights"
        one = _weights(tmp_path / f"one-{mode}" / f"{phase}-rank0.safetensors")
        assert _max_difference(one, rank0) < TOLERANCE, (mode, phase, _max_difference(one, rank0))

    for run in ("run-two-mix", "run-two-meta", "run-two-distill"):  # nothing half-written, no checkpoint left
        assert list((tmp_path / run).glob(".*.tmp")) == [] and list((tmp_path / run / "checkpoints").glob("*")) == []
    # the manifest is saved once per command, by the main process (the worker logs each save's rank)
    assert (tmp_path / "two-mix" / "manifest-saves.txt").read_text().split() == ["0"]
    assert (tmp_path / "two-meta" / "manifest-saves.txt").read_text().split() == ["0", "0"]  # fit, then distill
    manifest = json.loads((tmp_path / "run-two-meta" / "manifest.json").read_text())
    assert list(manifest["steps"]) == ["fit"]  # written once, by the main process
    assert json.loads((tmp_path / "run-two-meta" / "metrics" / "fit.json").read_text())["processes"] == 2
    distilled = json.loads((tmp_path / "run-two-distill" / "manifest.json").read_text())
    assert list(distilled["steps"]) == ["fit", "distill"]
    metrics = json.loads((tmp_path / "run-two-distill" / "metrics" / "distill.json").read_text())
    assert metrics["processes"] == 2
    # every dev and test row scored once: the same row counts as in one process
    one = json.loads((tmp_path / "run-one-meta" / "metrics" / "distill.json").read_text())
    assert metrics["test_accuracy"] == one["test_accuracy"] and metrics["dev_accuracy"] == one["dev_accuracy"]
    assert metrics["method"] == "meta" and "domain" in metrics["stages"]["intermediate"]["history"][0]["train_terms"]
    # the recorded loss and each named term are the whole batch's means, unequal last batch included
    for step, one_run, two_run in (("fit", "run-one-mix", "run-two-mix"), ("fit", "run-one-meta", "run-two-meta"),
                                   ("distill", "run-one-meta", "run-two-distill")):
        histories = [_histories(json.loads((tmp_path / run / "metrics" / f"{step}.json").read_text()))
                     for run in (one_run, two_run)]
        assert histories[0] and len(histories[0]) == len(histories[1])
        for a, b in zip(*histories):
            assert set(a.get("train_terms", {})) == set(b.get("train_terms", {}))
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3, abs=1e-6)
            for name, value in a.get("train_terms", {}).items():
                assert b["train_terms"][name] == pytest.approx(value, rel=1e-3, abs=1e-6), (step, name)
    print(f"two-process fit (mix, meta) + distill test: {seconds:.0f} s")


def _histories(metrics: dict) -> list[dict]:
    """Every epoch record of a fit.json (each teacher's ``history``) or distill.json (each stage's), in order."""
    runs = metrics["stages"].values() if "stages" in metrics else metrics["teachers"]
    return [epoch for run in runs for epoch in run.get("history") or []]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_two_process_fit_killed_then_resumed_ends_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    """Dropout on (the tiny BERT's 0.1): each process's random streams are checkpointed and restored as its own."""
    import signal

    data = write_jsonl(tmp_path / "toy.jsonl", toy_rows(per_label=9)[:-3])
    fit = ["fit", str(data), "--teacher", str(tiny_model_dir), "--epochs", "20", "--batch-size", "8",
           "--max-length", "16", "--lr", "1e-3", "--seed", "3"]
    _launch(2, tmp_path / "whole", tmp_path / "run-whole", *fit)

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(WORKER), str(tmp_path / "killed"), "--", "--quiet",
               "--run-dir", str(run_dir), *fit]
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                                start_new_session=True)  # its own process group: the kill reaches every process
    checkpoint, deadline = run_dir / "checkpoints" / "fit-teacher" / "loop.json", time.monotonic() + 300
    while not checkpoint.is_file():
        assert launcher.poll() is None, launcher.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere inside a later epoch
    for worker in _children(launcher.pid):  # torchrun starts each worker in a session of its own
        os.kill(worker, signal.SIGKILL)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.communicate(timeout=60)
    assert not (run_dir / "teacher").exists() and not (run_dir / "manifest.json").exists()

    _launch(2, tmp_path / "resumed", run_dir, *fit, "--resume")
    for rank in (0, 1):
        whole = _weights(tmp_path / "whole" / f"fit-teacher-rank{rank}.safetensors")
        resumed = _weights(tmp_path / "resumed" / f"fit-teacher-rank{rank}.safetensors")
        assert _max_difference(whole, resumed) == 0.0, f"rank {rank}"
    clean = {k: v for k, v in json.loads((run_dir / "metrics" / "fit.json").read_text()).items()
             if k in ("dev_accuracy", "test_accuracy", "teachers")}
    reference = json.loads((tmp_path / "run-whole" / "metrics" / "fit.json").read_text())
    assert clean["dev_accuracy"] == reference["dev_accuracy"]
    assert [t["history"] for t in clean["teachers"]] == [t["history"] for t in reference["teachers"]]
