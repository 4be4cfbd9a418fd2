"""Distillation across tokenizers whose word pieces align one to one (an MPNet teacher, a BERT student).

all-mpnet-base-v2's vocabulary is BERT's uncased word pieces with every id shifted by 4
(``<s> <pad> </s> <unk>`` come first) and ``<mask>`` last; it has no token_type_ids. A single
text encodes as ``<s> A </s>`` where BERT gives ``[CLS] A [SEP]`` (same length), a pair as
``<s> A </s></s> B </s>`` where BERT gives ``[CLS] A [SEP] B [SEP]`` (one token longer).

Each side tokenizes with its own tokenizer. A training row *aligns* when, after truncation,
every student token maps to the teacher token at its position: shared pieces by their string,
special tokens by their role ([CLS] -> <s>, [SEP] -> </s>, ...). For a pair the teacher's
extra ``</s>`` (the second of its two separators) is dropped first. Hidden states and attention
scores of aligned rows are compared position by position (the teacher's gathered at the
student's positions); a row that does not align gets no intermediate-stage terms, only the
logit terms of stage 2, and is counted. Vocabularies that share too few pieces are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metakd_cli.data.encode import Encoded, collate
from metakd_cli.core.errors import UserError

ROLES = ("cls_token_id", "sep_token_id", "pad_token_id", "unk_token_id", "mask_token_id")
MIN_SHARED = 0.95  # of each side's ordinary pieces: below this the vocabularies are different ones


@dataclass(frozen=True)
class TokenMap:
    """Student token id -> the teacher's id for the same piece (specials by role)."""

    ids: dict[int, int]
    student_sep: int | None
    teacher_sep: int | None
    offset: int | None  # teacher id - student id when constant over the shared pieces (MPNet/BERT: 4)
    shared: int  # ordinary pieces in both vocabularies

    def to_json(self) -> dict:
        return {"shared_pieces": self.shared, "id_offset": self.offset}


def _ordinary(tokenizer) -> dict[str, int]:
    special = set(tokenizer.all_special_ids)
    return {piece: i for piece, i in tokenizer.get_vocab().items() if i not in special}


def token_map(student_tokenizer, teacher_tokenizer, student: str = "the student") -> TokenMap:
    """How the student's ids map to the teacher's; one line refusing vocabularies whose pieces do not align."""
    student_pieces, teacher_pieces = _ordinary(student_tokenizer), _ordinary(teacher_tokenizer)
    shared = student_pieces.keys() & teacher_pieces.keys()
    fractions = [len(shared) / max(len(pieces), 1) for pieces in (student_pieces, teacher_pieces)]
    if min(fractions) < MIN_SHARED:
        raise UserError(
            f"student {student} has a different tokenizer vocabulary than the teacher, and its word pieces do not "
            f"align ({fractions[0]:.0%} of the student's and {fractions[1]:.0%} of the teacher's are shared; "
            f"{MIN_SHARED:.0%} needed): pick a student built on the teacher's tokenizer, or on the same word pieces "
            "(BERT uncased for an MPNet teacher, e.g. --student minilm4)"
        )
    ids = {student_pieces[p]: teacher_pieces[p] for p in shared}
    for role in ROLES:
        s, t = getattr(student_tokenizer, role, None), getattr(teacher_tokenizer, role, None)
        if s is not None and t is not None:
            ids[s] = t
    offsets = {teacher_pieces[p] - student_pieces[p] for p in shared}
    return TokenMap(ids=ids, student_sep=student_tokenizer.sep_token_id, teacher_sep=teacher_tokenizer.sep_token_id,
                    offset=offsets.pop() if len(offsets) == 1 else None, shared=len(shared))


def align_row(student_ids: Sequence[int], teacher_ids: Sequence[int], tokens: TokenMap) -> list[int] | None:
    """For each student position, the teacher position holding the same token; None when the row does not align.

    Same length: position i <-> i. One longer on the teacher's side: its second separator of a
    ``</s></s>`` (a pair's extra one) is skipped first. Any other difference does not align.
    """
    extra = len(teacher_ids) - len(student_ids)
    positions = list(range(len(student_ids)))
    if extra == 1:
        sep = tokens.teacher_sep
        double = next((k for k in range(1, len(teacher_ids)) if teacher_ids[k - 1] == sep == teacher_ids[k]), None)
        if sep is None or double is None:
            return None
        positions = [i if i < double else i + 1 for i in positions]
    elif extra != 0:
        return None
    for i, j in zip(range(len(student_ids)), positions):
        if tokens.ids.get(student_ids[i]) != teacher_ids[j]:
            return None
    return positions


@dataclass
class CrossTokenizer:
    """The student's own encodings of the rows, the teacher's, and how each training row aligns."""

    tokenizer: object  # the student's tokenizer (saved with the student)
    pad_id: int
    tokens: TokenMap
    teacher_train: Encoded
    teacher_pad_id: int
    positions: list[list[int] | None]  # per training row (same order as teacher_train)

    @classmethod
    def build(cls, tokenizer, tokens: TokenMap, train: Encoded, teacher_train: Encoded,
              teacher_pad_id: int) -> "CrossTokenizer":
        """``train``: the student's encoding of the training rows teacher_train encodes, in the same order."""
        positions = [align_row(s, t, tokens) for s, t in zip(train.input_ids, teacher_train.input_ids, strict=True)]
        return cls(tokenizer, tokenizer.pad_token_id or 0, tokens, teacher_train, teacher_pad_id, positions)

    def summary(self) -> dict:
        aligned = sum(p is not None for p in self.positions)
        return {"rows": len(self.positions), "aligned": aligned, "not_aligned": len(self.positions) - aligned,
                **self.tokens.to_json()}

    def teacher_batch(self, indices: Sequence[int], student_length: int) -> dict[str, torch.Tensor]:
        """The teacher's inputs for these rows (``teacher_``-prefixed), each row's teacher position for every
        student position ([B, L_s], 0 where there is none) and whether the row aligns ([B])."""
        batch = collate(self.teacher_train, indices, self.teacher_pad_id)
        out = {f"teacher_{k}": batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        index = torch.zeros((len(indices), student_length), dtype=torch.long)
        aligned = torch.zeros(len(indices), dtype=torch.bool)
        for row, i in enumerate(indices):
            if self.positions[i] is not None:
                index[row, : len(self.positions[i])] = torch.tensor(self.positions[i], dtype=torch.long)
                aligned[row] = True
        out["teacher_positions"] = index
        out["aligned"] = aligned
        return out


def teacher_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """The teacher's model inputs of a batch from ``CrossTokenizer.teacher_batch``."""
    return {k[len("teacher_"):]: v for k, v in batch.items()
            if k in ("teacher_input_ids", "teacher_attention_mask", "teacher_token_type_ids")}


def gather_hidden(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The teacher's states at the student's positions: [B, L_t, H], [B, L_s] -> [B, L_s, H]."""
    return torch.gather(hidden, 1, positions[:, :, None].expand(-1, -1, hidden.shape[-1]))


def gather_scores(scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The teacher's attention scores between the student's positions (queries and keys):
    [B, heads, L_t, L_t], [B, L_s] -> [B, heads, L_s, L_s]."""
    heads, teacher_length, student_length = scores.shape[1], scores.shape[-1], positions.shape[1]
    rows = torch.gather(scores, 2, positions[:, None, :, None].expand(-1, heads, -1, teacher_length))
    return torch.gather(rows, 3, positions[:, None, None, :].expand(-1, heads, student_length, -1))
