"""The user's unlabelled in-domain texts for the transfer set (`metakd distill --transfer PATH`).

A PATH is a table (.jsonl / .json / .csv / .tsv / .parquet) whose rows carry a text (and, for pair tasks, a second
text) and a domain, or a folder with one file per domain (domain = the file's stem: a table, or one text per line).
Labels are ignored when present. Rows whose domain the run does not know are refused in one line naming it,
unless it is the run's held-out domain; empty files, rows without text and repeated texts are counted; a row
identical to a dev or test text is dropped (the student must not learn the rows it is scored on), one identical to
a training text is counted and kept out too (the training row is there already).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metakd_cli.data.rows import TABLE_SUFFIXES, Example, _records, read_texts
from metakd_cli.core.errors import UserError

UNLABELLED = ""  # the label of a transfer row: none (stage 2 gives it no gold term)


@dataclass
class TransferRead:
    """The transfer rows kept, and what was left out and why (counts), for the log and the metrics."""

    rows: list[Example]
    sources: list[str]
    left_out: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {"rows": len(self.rows), "sources": self.sources, "left_out": dict(self.left_out),
                "by_domain": dict(Counter(row.domain for row in self.rows))}


def seen_texts(dataset, train_rows: Sequence[int] | None = None) -> dict[str, set[str]]:
    """The texts a transfer row may not repeat: dev and test (dropped: no leakage), and the training rows learnt
    from (``train_rows``, indices into the train split; None: all of them)."""
    train = dataset.train if train_rows is None else [dataset.train[i] for i in train_rows]
    return {"train": {ex.text for ex in train}, **{split: {ex.text for ex in dataset.splits[split]}
                                                      for split in ("dev", "test")}}


def read_transfer(paths: Sequence[str], domains: Sequence[str], seen: dict[str, set[str]], only: str | None = None,
                  text_column: str = "text", pair_column: str = "text_pair",
                  domain_column: str = "domain", pairs: bool | None = None) -> TransferRead:
    """The transfer rows of ``paths``; ``domains``: the run's (a held-out domain is one of them); ``seen``: the
    texts of the run's splits ({"train", "dev", "test"}: set of texts), which a transfer row may not repeat;
    ``only``: distilling one domain (--domain), the other domains' rows are counted and left out; ``pairs``:
    whether the run's rows are text pairs (a row must then have its second text, and may not otherwise: the
    teacher would read what it never trained on), None: not checked."""
    read = TransferRead([], [str(p) for p in paths])
    unique: set[tuple[str, str | None]] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"--transfer {path}: no such file or folder")
        for row in _rows_of(path, text_column, pair_column, domain_column, read.left_out):
            if row.domain not in domains:
                raise UserError(f"{row.where}: domain '{row.domain}' is not one of the run's "
                                f"({', '.join(domains)}); give it its domain's name, or leave it out")
            if pairs is not None and (row.text_pair is not None) != pairs:
                raise UserError(f"{row.where}: " + (
                    f"no second text ('{pair_column}'): the run's rows are text pairs, so each needs both" if pairs
                    else f"a second text ('{pair_column}'), but the run's rows are single texts; leave it out"))
            key = (row.text, row.text_pair)
            if only is not None and row.domain != only:
                read.left_out["another domain than --domain"] += 1
            elif row.text in seen.get("dev", set()) or row.text in seen.get("test", set()):
                read.left_out["the same text as a dev or test row (dropped: no leakage)"] += 1
            elif row.text in seen.get("train", set()):
                read.left_out["the same text as a training row"] += 1
            elif key in unique:
                read.left_out["a repeated text"] += 1
            else:
                unique.add(key)
                read.rows.append(row)
    return read


def _rows_of(path: Path, text_column: str, pair_column: str, domain_column: str, left_out: Counter) -> list[Example]:
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise UserError(f"--transfer {path}: an empty folder (one file per domain expected)")
        return [row for file in files for row in _file_rows(file, file.stem, text_column, pair_column, left_out)]
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"--transfer {path}: one file needs a domain column, so a table (.jsonl, .json, .csv, .tsv, "
                        ".parquet); give texts of one text per line as a folder with one file per domain")
    rows = []
    for number, record in _records(path, kind):
        where = f"{path}:{number}"
        if domain_column not in record:
            raise UserError(f"{where}: no column '{domain_column}' (columns: {', '.join(map(str, record))}); name "
                            "it with --domain-column, or use a folder with one file per domain")
        text = record.get(text_column)
        if not isinstance(text, str) or not text.strip():
            left_out["a row without text"] += 1
            continue
        pair = record.get(pair_column)
        rows.append(Example(text.strip(), pair.strip() if isinstance(pair, str) and pair.strip() else None,
                            UNLABELLED, str(record[domain_column]).strip(), where))
    return rows


def _file_rows(file: Path, domain: str, text_column: str, pair_column: str, left_out: Counter) -> list[Example]:
    texts, pairs = read_texts(file, text_column, pair_column)
    if not texts:
        left_out["an empty file"] += 1
    rows = []
    for number, (text, pair) in enumerate(zip(texts, pairs), 1):
        if not text or not text.strip():
            left_out["a row without text"] += 1
            continue
        rows.append(Example(text.strip(), pair, UNLABELLED, domain, f"{file}:{number}"))
    return rows
