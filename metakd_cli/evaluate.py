"""Per-domain metrics for any artifact (PyTorch here; ONNX through the same batching)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from metakd_cli.data import Encoded, collate


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to pad little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batched_logits(
    encoded: Encoded, pad_id: int, batch_size: int, forward: Callable[[dict], np.ndarray]
) -> np.ndarray:
    """Logits [N, C] in input order, computed on length-sorted, dynamically padded batches."""
    out: np.ndarray | None = None
    for indices in length_sorted_batches([len(ids) for ids in encoded.input_ids], batch_size):
        logits = forward(collate(encoded, indices, pad_id))
        if out is None:
            out = np.zeros((len(encoded), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def torch_logits(model, encoded: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of a transformers sequence classifier, in eval mode and without gradients."""
    import torch

    model.eval()

    def forward(batch: dict) -> np.ndarray:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            return model(**inputs).logits.float().cpu().numpy()

    return batched_logits(encoded, pad_id, batch_size, forward)


def accuracy(predictions: np.ndarray, labels: Sequence[int]) -> float:
    labels = np.asarray(labels)
    return float((predictions == labels).mean() * 100.0) if len(labels) else float("nan")


def macro_f1(predictions: np.ndarray, labels: Sequence[int], n_labels: int) -> float:
    labels = np.asarray(labels)
    scores = []
    for c in range(n_labels):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores) * 100.0) if scores else float("nan")


def per_domain_accuracy(predictions: np.ndarray, encoded: Encoded, domains: Sequence[str]) -> dict[str, float]:
    """Accuracy (%) per domain present in ``encoded``, plus ``average`` over those domains."""
    domain_ids = np.asarray(encoded.domains)
    labels = np.asarray(encoded.labels)
    result: dict[str, float] = {}
    for i, name in enumerate(domains):
        mask = domain_ids == i
        if mask.any():
            result[name] = accuracy(predictions[mask], labels[mask])
    if result:
        result["average"] = float(np.mean(list(result.values())))
    return result
