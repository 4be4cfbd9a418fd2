"""How the speed benchmarks time a model (bench/speed.py, int8_variants.py, int8_static.py): threads pinned in one
process, ONNX Runtime sessions with that many threads, fixed-shape inputs from real texts, latency and throughput."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def available_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


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
    """Seconds of each of ``n`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = np.empty(n)
    for i in range(n):
        started = time.perf_counter()
        call()
        seconds[i] = time.perf_counter() - started
    return seconds


def fixed_shape_speed(forward: Callable[[dict], np.ndarray], inputs: dict, batch: int, repeats: int,
                      batches: int, warmup: int) -> dict:
    """Latency p50/p90 at batch 1 (cycling through the rows) and throughput at ``batch``."""
    pool = inputs["input_ids"].shape[0]
    index = itertools.count()
    single = time_calls(lambda: forward(rows(inputs, next(index) % pool, 1)), repeats, warmup)
    full = time_calls(lambda: forward(rows(inputs, 0, batch)), batches, max(1, min(warmup, 2)))
    return {
        "latency_b1_p50_ms": float(np.percentile(single, 50) * 1000.0),
        "latency_b1_p90_ms": float(np.percentile(single, 90) * 1000.0),
        f"throughput_b{batch}": float(batch * batches / full.sum()),
        f"latency_b{batch}_p50_ms": float(np.percentile(full, 50) * 1000.0),
        "timed_calls": {"batch_1": repeats, f"batch_{batch}": batches},
    }
