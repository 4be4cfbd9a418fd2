"""Each training row's t and lambda of the last distillation, kept for `metakd report`.

``metrics/distill_rows.safetensors`` holds three arrays of one entry per distilled training row:
``train_index`` (the row's position in the dataset's train split, as `metakd data` reads it),
``t`` (its transferability score; 1 where the teacher has none) and ``lambda`` (the weight
stage 1 gave it; 1 for every row but with ``--method meta``). metrics/distill.json keeps only
lambda's mean, min and max. The file sits in metrics/, not student/, so the student folder stays
a plain transformers classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metakd_cli.core.run_dir import atomic_write_bytes

ROWS_FILE = "distill_rows.safetensors"


@dataclass
class RowWeights:
    train_index: np.ndarray  # [N] int64, positions in the train split
    t: np.ndarray  # [N] float32
    lam: np.ndarray  # [N] float32
    method: str


def save_row_weights(run, train_index, t, lam, method: str) -> Path:
    """Write the per-row arrays (tensors or arrays of equal length) to metrics/distill_rows.safetensors, atomically and
    with a metrics file's mode (run_dir.atomic_write_bytes)."""
    from safetensors.numpy import save

    arrays = {"train_index": np.asarray(train_index, dtype=np.int64),
              "t": np.asarray(_numpy(t), dtype=np.float32), "lambda": np.asarray(_numpy(lam), dtype=np.float32)}
    path = Path(run.metrics) / ROWS_FILE
    atomic_write_bytes(path, save(arrays, metadata={"method": method}))
    return path


def load_row_weights(run) -> RowWeights | None:
    """The arrays the last distillation saved, or None when there are none (or they do not read)."""
    path = Path(run.metrics) / ROWS_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            method = (handle.metadata() or {}).get("method", "")
            arrays = {name: handle.get_tensor(name) for name in ("train_index", "t", "lambda")}
    except Exception:  # noqa: BLE001 - a damaged file: the report says lambda is not available
        return None
    if not len(arrays["train_index"]) == len(arrays["t"]) == len(arrays["lambda"]):
        return None
    return RowWeights(arrays["train_index"], arrays["t"], arrays["lambda"], method)


def _numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
