"""Running models on encoded rows: batching, PyTorch and ONNX Runtime forwards, artifact names and sizes.

``torch_logits`` / ``onnx_logits`` give logits on length-sorted, dynamically padded batches
(length bucketing; ``bucketing=False`` pads every row to one length in input order instead,
the baseline a benchmark compares against). fit, distill, export, eval, predict and the bench
all run models through these, so a model's logits do not depend on which command asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from metakd_cli.data.encode import Encoded, collate

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to pad little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def input_order_batches(n_rows: int, batch_size: int) -> list[list[int]]:
    """Indices in input order, ``batch_size`` at a time."""
    return [list(range(i, min(i + batch_size, n_rows))) for i in range(0, n_rows, batch_size)]


def pad_batch(batch: dict, length: int, pad_id: int) -> dict:
    """A collated batch padded on the right to ``length`` positions (no-op when already that long)."""
    import torch

    missing = length - batch["input_ids"].shape[1]
    if missing <= 0:
        return batch
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    out = dict(batch)
    for key, value in fill.items():
        if key in batch:
            rows = batch[key].shape[0]
            out[key] = torch.cat([batch[key], torch.full((rows, missing), value, dtype=batch[key].dtype)], dim=1)
    return out


def make_batch(encoded: Encoded, indices: Sequence[int], pad_id: int, pad_to: int | None = None) -> dict:
    """``collate`` (padding to the longest row of the batch), or to ``pad_to`` positions when given."""
    batch = collate(encoded, indices, pad_id)
    return batch if pad_to is None else pad_batch(batch, pad_to, pad_id)


def batched_logits(
    encoded: Encoded, pad_id: int, batch_size: int, forward: Callable[[dict], np.ndarray],
    bucketing: bool = True, pad_to: int | None = None,
) -> np.ndarray:
    """Logits [N, C] in input order.

    ``bucketing`` (default): length-sorted batches, each padded to its own longest row.
    Without: batches in input order, every row padded to ``pad_to`` positions (the model's
    max_length; the longest row when None), as a fixed-shape pipeline would.
    """
    if bucketing:
        batches, length = length_sorted_batches([len(ids) for ids in encoded.input_ids], batch_size), None
    else:
        longest = max((len(ids) for ids in encoded.input_ids), default=0)
        batches, length = input_order_batches(len(encoded), batch_size), max(pad_to or 0, longest)
    out: np.ndarray | None = None
    for indices in batches:
        logits = forward(make_batch(encoded, indices, pad_id, length))
        if out is None:
            out = np.zeros((len(encoded), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def torch_logits(
    model, encoded: Encoded, pad_id: int, batch_size: int = 64, bucketing: bool = True, pad_to: int | None = None
) -> np.ndarray:
    """Logits of a transformers sequence classifier, in eval mode and without gradients."""
    return batched_logits(encoded, pad_id, batch_size, torch_forward(model), bucketing, pad_to)


def torch_forward(model) -> Callable[[dict], np.ndarray]:
    """A ``batched_logits`` forward for a transformers classifier (eval mode, inference mode)."""
    import torch

    model.eval()
    device = next(model.parameters()).device  # batches are built on the CPU; a model may sit on a GPU

    def forward(batch: dict) -> np.ndarray:
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        with torch.inference_mode():
            return model(**inputs).logits.float().cpu().numpy()

    return forward


def softmax(logits) -> np.ndarray:
    """Probabilities from logits [..., C] (rows of a list or array), in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- ONNX Runtime

ONNX_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
# An export folder holds config.json and the tokenizer files at its top and the .onnx files in this subfolder:
# the layout transformers.js reads (dtype "fp32" -> onnx/model.onnx, "q8" -> onnx/model_quantized.onnx), which
# Optimum's ORTModel finds too (it searches the folder for *.onnx); model.ort stays at the top.
ONNX_SUBDIR = "onnx"
ORT_FILE = "model.ort"
EXPORT_JSON = "metakd_export.json"  # beside config.json: where the ONNX files came from, max_length, checks
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def onnx_model_path(folder: Path, name: str) -> Path:
    """Where export folder ``folder`` holds the ONNX file ``name``: ``folder/onnx/name``, or ``folder/name`` in a
    folder exported before the transformers.js layout (when only that exists)."""
    nested = Path(folder) / ONNX_SUBDIR / name
    flat = Path(folder) / name
    return flat if flat.is_file() and not nested.is_file() else nested


def onnx_session(path: Path):
    """An ONNX Runtime CPU session with default options (intra-op threads left to ORT)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's load errors (InvalidProtobuf, Fail ...) share no base
        from metakd_cli.models.loading import damaged_file

        raise damaged_file(Path(path), exc) from None


def onnx_forward(session) -> Callable[[dict], np.ndarray]:
    """A ``batched_logits`` forward that feeds only the inputs the session declares."""
    names = [i.name for i in session.get_inputs()]

    def forward(batch: dict) -> np.ndarray:
        feed = {name: batch[name].numpy() for name in names if name in batch}
        if "token_type_ids" in names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return session.run(None, feed)[0]

    return forward


def onnx_logits(
    session, encoded: Encoded, pad_id: int, batch_size: int = 64, bucketing: bool = True, pad_to: int | None = None
) -> np.ndarray:
    """Logits [N, C] of an ONNX Runtime session, on the same batches as ``torch_logits``."""
    return batched_logits(encoded, pad_id, batch_size, onnx_forward(session), bucketing, pad_to)


def size_mb(*paths: Path) -> float:
    """Bytes on disk of the files (or of every file under the folders), in MB (10^6 bytes)."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total / 1e6


def weights_size_mb(folder: Path) -> float:
    """Size of a save_pretrained folder's weight files (recursively, for per-domain teachers)."""
    return size_mb(*[p for p in folder.rglob("*") if p.name in WEIGHT_FILES])
