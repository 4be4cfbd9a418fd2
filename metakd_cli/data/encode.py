"""Tokenisation: a split's examples as token ids, and the batches the models read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metakd_cli.data.rows import Dataset, Example

@dataclass
class Encoded:
    """Token ids (unpadded), labels and domains of a list of examples, in order."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    domains: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> "Encoded":
        return Encoded(
            input_ids=[self.input_ids[i] for i in indices],
            token_type_ids=None if self.token_type_ids is None else [self.token_type_ids[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            domains=[self.domains[i] for i in indices],
        )

    def rows_of(self, domain_id: int | None) -> list[int]:
        """Indices of the rows of one domain (all rows for None)."""
        return [i for i, d in enumerate(self.domains) if domain_id is None or d == domain_id]


def encode(examples: Sequence[Example], dataset: Dataset, tokenizer, max_length: int) -> Encoded:
    """Tokenise once, truncating to ``max_length``; padding happens per batch."""
    out = tokenize(tokenizer, [ex.text for ex in examples], [ex.text_pair for ex in examples], max_length)
    return Encoded(
        input_ids=out["input_ids"],
        token_type_ids=out.get("token_type_ids"),
        labels=[dataset.label_id(ex.label) for ex in examples],
        domains=[dataset.domain_id(ex.domain) for ex in examples],
    )


def tokenize(tokenizer, texts: Sequence[str], pairs: Sequence[str | None] | None, max_length: int):
    """Token ids of ``texts`` (and ``pairs``: when any is given, a missing one is an empty second segment)."""
    if pairs is not None and any(p is not None for p in pairs):
        return tokenizer(list(texts), [p or "" for p in pairs], truncation=True, max_length=max_length)
    return tokenizer(list(texts), truncation=True, max_length=max_length)


def collate(encoded: Encoded, indices: Sequence[int], pad_id: int) -> dict:
    """A padded batch (dict of tensors) of the rows at ``indices``."""
    import torch

    length = max(len(encoded.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), length), dtype=torch.long)
    types = torch.zeros((len(indices), length), dtype=torch.long)
    for row, i in enumerate(indices):
        seq = encoded.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if encoded.token_type_ids is not None:
            types[row, : len(seq)] = torch.tensor(encoded.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if encoded.token_type_ids is not None:
        batch["token_type_ids"] = types
    batch["labels"] = torch.tensor([encoded.labels[i] for i in indices], dtype=torch.long)
    batch["domains"] = torch.tensor([encoded.domains[i] for i in indices], dtype=torch.long)
    batch["index"] = torch.tensor(list(indices), dtype=torch.long)
    return batch


def batch_rows(
    values: "torch.Tensor", index: "torch.Tensor", device: "torch.device | str | None" = None
) -> "torch.Tensor":
    """``values[index]`` on the batch's device: the batch's rows of a per-row tensor (t, lambda,
    soft labels) that stays where it was computed (the CPU) while batches move to a GPU.

    values: [N, ...]; index: [B], a batch's ``index`` on any device; device: where the
    batch lives (default: the index's). Returns [B, ...] on ``device``.
    """
    return values[index.to(values.device)].to(index.device if device is None else device)
