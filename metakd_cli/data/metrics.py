"""Accuracy and macro-F1 of predicted labels against a split's gold labels, per domain."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metakd_cli.data.encode import Encoded


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
