"""Model-free derived rows for the transfer set (`metakd distill --augment K`): rows the teacher labels.

Each training row gives K derived rows that keep its domain (and, as a record, its label; the student learns
them from the teacher's soft labels only, as Tang et al. 2019 label their augmented rows with the teacher):

    window   the text past the tokenizer's max length (a long review's tail no model reads), then the next
             window past that; a long row's windows come first of its K
    mask     ~15% of the words replaced by a placeholder that each tokenizer renders as its own mask token
    delete   ~15% of the words removed
    swap     ~10% of the words swapped with a random other word of the row
    span     one contiguous span of 50-90% of the words (n-gram / span sampling)
    replace  ~15% of the words replaced by a word drawn from the same domain's training texts

Seeded: the same rows, K and seed give the same derived rows. Each records its source row and recipe.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from metakd_cli.data.rows import Example

KINDS = ("window", "mask", "delete", "swap", "span", "replace")
EDITS = KINDS[1:]  # the kinds every row can take (window needs a text longer than the max length)
MASK = "\ue000"  # a private-use character: no review holds it; render_mask turns it into a tokenizer's mask token
RATE = 0.15


@dataclass(frozen=True)
class Derived:
    """One derived row: the row itself, the training row it comes from (an index into the rows given) and how."""

    example: Example
    source: int
    kind: str


def tail_offsets(tokenizer, text: str, max_length: int, limit: int) -> list[int]:
    """Character offsets where the windows past ``max_length`` tokens begin (at most ``limit``): the first token
    that truncation drops, then each ``max_length - 2`` tokens further (room for the special tokens)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    step = max(1, max_length - 2)
    return [offsets[i][0] for i in range(step, len(offsets), step)][:limit]


def derive(rows: Sequence[Example], k: int, seed: int, tokenizer, max_length: int) -> list[Derived]:
    """K derived rows per row of ``rows`` (windows of a long text first, then edits in a seeded rotation)."""
    rng = random.Random(seed)
    vocabulary = _domain_words(rows)
    derived: list[Derived] = []
    for index, row in enumerate(rows):
        windows = tail_offsets(tokenizer, row.text, max_length, k)
        for n, start in enumerate(windows):
            derived.append(_made(row, index, "window", row.text[start:].strip(), row.text_pair, n))
        for n in range(len(windows), k):
            kind = EDITS[rng.randrange(len(EDITS))]
            edit = lambda text: _edit(text, kind, rng, vocabulary[row.domain]) if text else text  # noqa: E731
            derived.append(_made(row, index, kind, edit(row.text), edit(row.text_pair), n))
    return derived


def render_mask(example: Example, mask_token: str) -> Example:
    """The row as a tokenizer reads it: the mask placeholder as that tokenizer's own mask token."""
    if MASK not in example.text and MASK not in (example.text_pair or ""):
        return example
    return replace(example, text=example.text.replace(MASK, mask_token),
                   text_pair=example.text_pair.replace(MASK, mask_token) if example.text_pair else example.text_pair)


def _made(row: Example, index: int, kind: str, text: str, pair: str | None, n: int) -> Derived:
    return Derived(replace(row, text=text or row.text, text_pair=pair, where=f"{row.where}+{kind}{n + 1}"), index, kind)


def _domain_words(rows: Sequence[Example]) -> dict[str, list[str]]:
    """Each domain's training words, in first-seen order (a seeded draw from them is reproducible)."""
    words: dict[str, dict[str, None]] = {}
    for row in rows:
        seen = words.setdefault(row.domain, {})
        for text in (row.text, row.text_pair):
            for word in (text or "").split():
                seen.setdefault(word, None)
    return {domain: list(seen) for domain, seen in words.items()}


def _edit(text: str, kind: str, rng: random.Random, vocabulary: list[str]) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    if kind == "mask":
        words = [MASK if rng.random() < RATE else w for w in words]
    elif kind == "delete":
        kept = [w for w in words if rng.random() >= RATE]
        words = kept or words[:1]
    elif kind == "swap":
        for _ in range(max(1, len(words) // 10)):
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    elif kind == "span":
        length = max(1, int(len(words) * rng.uniform(0.5, 0.9)))
        start = rng.randrange(len(words) - length + 1)
        words = words[start:start + length]
    elif kind == "replace":
        words = [vocabulary[rng.randrange(len(vocabulary))] if rng.random() < RATE else w for w in words]
    return " ".join(words)
