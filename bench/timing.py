"""How the speed benchmarks time models (bench/speed.py, int8_variants.py, int8_static.py): threads pinned in one
process, ONNX Runtime sessions with that many threads, fixed-shape inputs from real texts, latency and throughput
timed in interleaved rounds by `metakd eval`'s own timing (``metakd_cli.timing``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metakd_cli.timing import Spread, Steadiness, available_cpus, measured_steadiness, time_rounds


def pin_threads(threads: int) -> dict:
    """torch intra-op = ``threads``, inter-op 1; ``pinned_session`` gives ONNX Runtime the same."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed once parallel work started (a second call in one process)
        pass
    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "onnxruntime_intra_op": threads, "onnxruntime_inter_op": 1, "onnxruntime_execution": "sequential",
            "cpus_available": len(available_cpus())}


def pinned_session(path: Path, threads: int):
    """A CPU session with ``threads`` intra-op threads, sequential (metakd's own sessions leave the count to ORT)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fixed_inputs(tokenizer_dir: Path, examples: list, pool: int, seq_len: int, clip_ids_to: int | None) -> dict:
    """``pool`` test rows (cycled when the split is smaller), truncated or padded to exactly ``seq_len``."""
    from metakd_cli.inference import MODEL_INPUTS
    from metakd_cli.models import load_tokenizer

    rows = [examples[i % len(examples)] for i in range(pool)]
    tokenizer = load_tokenizer(str(tokenizer_dir))
    texts = [ex.text for ex in rows]
    pairs = [ex.text_pair or "" for ex in rows] if any(ex.text_pair for ex in rows) else None
    out = tokenizer(texts, pairs, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    batch = {k: v for k, v in out.items() if k in MODEL_INPUTS}
    if clip_ids_to is not None:
        batch["input_ids"] = batch["input_ids"].clamp(max=clip_ids_to - 1)
    return batch


def rows(batch: dict, start: int, count: int) -> dict:
    return {k: v[start : start + count] for k, v in batch.items()}


def time_calls(call: Callable[[], object], n: int, warmup: int) -> np.ndarray:
    """Seconds of each of ``n`` calls, after ``warmup`` untimed ones (rounds of one call)."""
    return np.asarray(time_rounds({"call": call}, n, warmup)["call"])


@dataclass
class FixedShape:
    """One model's work in each timing round: ``repeats`` batch-1 calls (cycling through the rows of ``inputs``)
    and ``batches`` calls on its first ``batch`` rows."""

    forward: Callable[[dict], object]
    inputs: dict
    repeats: int
    batches: int


def _round_calls(model: FixedShape, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = model.inputs["input_ids"].shape[0]
    index = itertools.count()

    def single() -> None:
        for _ in range(model.repeats):
            model.forward(rows(model.inputs, next(index) % pool, 1))

    def full() -> None:
        for _ in range(model.batches):
            model.forward(rows(model.inputs, 0, batch))

    return single, full


def fixed_shape_rounds(models: Mapping[str, FixedShape], batch: int, rounds: int,
                       warmup: int = 1) -> tuple[dict[str, dict], Steadiness]:
    """Every model's latency at batch 1 and throughput at ``batch``, timed in ``rounds`` interleaved rounds (each
    round: every model's work in turn) after ``warmup`` untimed ones, and how steady the rounds were. Each figure
    is over rounds: its median (p50), the batch-1 latency's p90, and the [fastest, slowest] round beside it
    (``_spread``); ``rounds`` holds each round's figures."""
    calls: dict[tuple[str, str], Callable[[], None]] = {}
    for name, model in models.items():
        calls[name, "batch 1"], calls[name, f"batch {batch}"] = _round_calls(model, batch)
    seconds = time_rounds(calls, rounds, warmup)
    figures = {name: _figures(seconds[name, "batch 1"], seconds[name, f"batch {batch}"], model, batch)
               for name, model in models.items()}
    return figures, measured_steadiness({f"{name} at {what}": s for (name, what), s in seconds.items()})


def _figures(single: list[float], full: list[float], model: FixedShape, batch: int) -> dict:
    """The speed.json figures of one model from its seconds in each round."""
    latency = [s / model.repeats * 1000.0 for s in single]  # ms per batch-1 call, each round
    batch_ms = [s / model.batches * 1000.0 for s in full]
    rate = [batch * model.batches / s for s in full]
    per_round = {"latency_b1_p50_ms": latency, f"throughput_b{batch}": rate, f"latency_b{batch}_p50_ms": batch_ms}
    return {
        "latency_b1_p50_ms": Spread.of(latency).median,
        "latency_b1_p90_ms": float(np.percentile(latency, 90)),
        "latency_b1_spread_ms": Spread.of(latency).range(),
        f"throughput_b{batch}": Spread.of(rate).median,
        f"throughput_b{batch}_spread": Spread.of(rate).range(),
        f"latency_b{batch}_p50_ms": Spread.of(batch_ms).median,
        "timed_calls": {"batch_1": model.repeats * len(single), f"batch_{batch}": model.batches * len(full)},
        "rounds": per_round,
    }
