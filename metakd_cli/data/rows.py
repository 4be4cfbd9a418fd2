"""Rows and their readers: the Example and Dataset types, the table / review / MultiNLI file readers with their
row-by-row checks (file, line, column), and the unlabelled texts `predict` and `--transfer` read."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metakd_cli.core.config import DataConfig
from metakd_cli.core.errors import UserError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}
TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
ROW_KINDS = ("parquet", "arrow")  # read by row number (metakd_cli/data/arrow.py), not by line
SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")  # datasets' shards: train-00000-of-00002.parquet
MNLI_SUFFIXES = (".jsonl", ".txt")  # in order of preference when both forms ship
MNLI_SPLIT_FILES = {"train": "train", "test": "dev_matched"}  # our split -> the file's part name
MNLI_COLUMNS = ("sentence1", "sentence2", "gold_label", "genre")
MNLI_NO_LABEL = "gold label '-' (no annotator majority)"
MNLI_EMPTY = "empty sentence1 or sentence2"
MAX_FIELD_CHARS = 1_000_000  # a single text longer than this is almost surely a broken file


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: str
    domain: str
    where: str  # "file:line", for error messages


@dataclass
class Dataset:
    source: str
    layout: str
    labels: list[str]
    domains: list[str]
    splits: dict[str, list[Example]]
    given_splits: bool
    split_seed: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out while reading (MNLI)
    _label_index: dict[str, int] = field(default_factory=dict, repr=False)
    _domain_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._label_index = {name: i for i, name in enumerate(self.labels)}
        self._domain_index = {name: i for i, name in enumerate(self.domains)}

    def label_id(self, label: str) -> int:
        return self._label_index[label]

    def domain_id(self, domain: str) -> int:
        return self._domain_index[domain]

    @property
    def train(self) -> list[Example]:
        return self.splits["train"]

    @property
    def dev(self) -> list[Example]:
        return self.splits["dev"]

    @property
    def test(self) -> list[Example]:
        return self.splits["test"]

    def fingerprint(self) -> str:
        """sha256 over every row's split, domain, label and text, in order."""
        digest = hashlib.sha256()
        for split in SPLITS:
            for ex in self.splits[split]:
                for part in (split, ex.domain, ex.label, ex.text, ex.text_pair or ""):
                    digest.update(part.encode("utf-8"))
                    digest.update(b"\x00")
        return digest.hexdigest()

    @property
    def has_pairs(self) -> bool:
        """Whether any row has a second text (MNLI's sentence2, a text_pair column)."""
        return any(ex.text_pair is not None for rows in self.splits.values() for ex in rows)

    def summary(self) -> dict:
        """Counts per domain x split x label: the `metakd data --json` object."""
        domains: dict[str, dict] = {}
        for domain in self.domains:
            entry: dict = {split: 0 for split in SPLITS}
            labels: Counter[str] = Counter()
            for split in SPLITS:
                rows = [ex for ex in self.splits[split] if ex.domain == domain]
                entry[split] = len(rows)
                labels.update(ex.label for ex in rows)
            entry["labels"] = {label: labels.get(label, 0) for label in self.labels}
            domains[domain] = entry
        total = sum(len(rows) for rows in self.splits.values())
        summary = {"total": total, "labels": list(self.labels), "domains": domains}
        if self.skipped:
            summary["skipped"] = dict(self.skipped)
        return summary

    def select(self, split: str, domains: Sequence[str] | None = None) -> list[Example]:
        rows = self.splits[split]
        if domains is None:
            return list(rows)
        wanted = set(domains)
        return [ex for ex in rows if ex.domain in wanted]

    def check_domains(self, names: Iterable[str], flag: str = "") -> list[str]:
        """``names``, refused with one clear line (prefixed with ``flag``) when one is not a domain."""
        names = list(names)
        for name in names:
            if name not in self._domain_index:
                where = f"{flag}: " if flag else ""
                raise UserError(f"{where}unknown domain '{name}' (known domains: {', '.join(self.domains)})")
        return names


# --------------------------------------------------------------------------- reading


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(
            f"{path}:{line}:{column}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    text = _decode(path, raw)
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    return text


def _json_record(path: Path, number: int, line: str) -> dict:
    """One JSONL line as a mapping, or a user error naming the file, line and column."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}:{exc.colno}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: expected a JSON object per line")
    return record


def _records(path: Path, kind: str) -> Iterable[tuple[int, dict]]:
    """(line number, row mapping) for each record of a JSONL / CSV / TSV file (row number: Parquet)."""
    if kind == "parquet":
        from metakd_cli.data.parquet import parquet_records

        yield from parquet_records(path)
        return
    text = _read_text(path)
    if kind == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            yield number, _json_record(path, number, line)
        return
    delimiter = "\t" if kind == "tsv" else ","
    csv.field_size_limit(MAX_FIELD_CHARS + 1)
    # strict: a quote CSV does not allow (text after a closing quote, a quoted field still open at
    # the end of the file) is an error; the lenient default glues it, and the lines after it, into a field
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise UserError(f"{path}:1: cannot read the header ({exc})") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise UserError(f"{path}:1: duplicate column names in the header: {header}")
    start = reader.line_num + 1  # first line of the row being read: a quoted field may span lines
    try:
        for row in reader:
            number, start = start, reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise UserError(
                    f"{path}:{number}: {len(row)} fields, but the header has {len(header)} "
                    f"({', '.join(header)})"
                )
            yield number, dict(zip(header, row))
    except csv.Error as exc:
        if "end of data" in str(exc):  # csv's only error for a quoted field still open at the end of the file
            raise UserError(
                f"{path}:{start}: a quoted field opened on this line is never closed (it runs to the end of the "
                'file); close the quote, or double a quote inside a quoted field ("")'
            ) from None
        opened = f" in the row that starts on line {start}" if start != reader.line_num else ""
        hint = ""
        if '"' in str(exc):
            hint = '; a field that holds a quote must be quoted as a whole, its quotes doubled ("")'
        raise UserError(f"{path}:{reader.line_num}: malformed {kind.upper()} ({exc}){opened}{hint}") from None


def _check_swallowed_rows(path: Path, kind: str, spanning: list[tuple[int, dict]], rows: list[Example],
                          cfg: DataConfig, domain: str | None) -> None:
    """Refuse a quoted field whose lines read as rows of this file: a quote left open that swallowed them.

    The rule, for a field over several lines: the lines it holds whole (those between its first
    and last, and its first too when it is the row's first field, as a quote opened at the start
    of a line is) must not all read as rows: the header's number of fields, with a label of this
    file's rows and, when a column holds the domain, one of its domains. Legitimate multi-line text
    trips it only if each of its lines but the last ends like ",positive,books"; counting fields
    alone would not do, as a line of prose with two commas is common.
    """
    labels = {row.label for row in rows}
    domains = {row.domain for row in rows}
    delimiter = "\t" if kind == "tsv" else ","

    def reads_as_row(line: str, header: list[str]) -> bool:
        try:
            cells = next(csv.reader([line.removesuffix("\r")], delimiter=delimiter))
        except (csv.Error, StopIteration):
            return False
        if len(cells) != len(header):
            return False
        fields = dict(zip(header, cells))
        return fields[cfg.label_column].strip() in labels and (
            domain is not None or fields[cfg.domain_column].strip() in domains
        )

    for number, record in spanning:
        header = list(record)
        for column, value in record.items():
            lines = value.split("\n")
            whole = lines[0 if column == header[0] else 1 : -1]
            if whole and all(reads_as_row(line, header) for line in whole):
                end = number + sum(v.count("\n") for v in record.values())
                raise UserError(
                    f"{path}:{number}: field '{column}' of this row is quoted over lines {number}-{end}, and its "
                    "lines read as rows of the file: a quote is probably not closed (close it, or double a quote "
                    'inside a quoted field: "")'
                )


def _label_str(value: object, where: str, column: str, what: str = "label") -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise UserError(f"{where}: field '{column}': missing or invalid {what} {value!r}")


def _text_str(value: object, where: str, column: str, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise UserError(f"{where}: field '{column}' is empty; every row needs a text")
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{column}': expected a string, got {type(value).__name__}")
    if len(value) > MAX_FIELD_CHARS:
        raise UserError(f"{where}: field '{column}' is {len(value):,} characters long (limit {MAX_FIELD_CHARS:,})")
    return value


def read_table(path: Path, cfg: DataConfig, domain: str | None = None) -> list[Example]:
    """Rows of one JSONL / CSV / TSV file; ``domain`` overrides the domain column."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown file type (expected .jsonl, .csv, .tsv or .parquet)")
    return read_records(path, kind, _records(path, kind), cfg, domain)


def read_records(path: Path | str, kind: str, records: Iterable[tuple[int, dict]], cfg: DataConfig,
                 domain: str | None = None) -> list[Example]:
    """Rows of one source's (number, mapping) records, checked column by column; ``domain`` overrides the
    domain column. ``kind`` is the TABLE_SUFFIXES kind, or ``arrow`` for a `datasets` split."""
    rows: list[Example] = []
    spanning: list[tuple[int, dict]] = []  # CSV / TSV rows with a field over several lines
    pair_seen = False
    for number, record in records:
        where = f"{path}: row {number}" if kind in ROW_KINDS else f"{path}:{number}"
        if kind in ("csv", "tsv") and any("\n" in value for value in record.values()):
            spanning.append((number, record))
        pair_seen = pair_seen or cfg.text_pair_column in record
        required = [cfg.text_column, cfg.label_column] + ([] if domain else [cfg.domain_column])
        for column in required:
            if column not in record:
                columns = ", ".join(map(str, record)) or "none"
                hint = " (set the column names with --text-column / --label-column / --domain-column)"
                if column == cfg.domain_column:
                    hint = " (name it with --domain-column, or use one file per domain in a folder)"
                raise UserError(f"{where}: no column '{column}' (columns: {columns}){hint}")
        text = _text_str(record[cfg.text_column], where, cfg.text_column, required=True)
        pair = _text_str(record.get(cfg.text_pair_column), where, cfg.text_pair_column, required=False)
        label = _label_str(record[cfg.label_column], where, cfg.label_column)
        row_domain = domain or _label_str(record[cfg.domain_column], where, cfg.domain_column, "domain")
        rows.append(Example(text, pair, label, row_domain, where))
    if not rows:
        raise UserError(f"{path}: no rows")
    _check_swallowed_rows(path, kind, spanning, rows, cfg, domain)
    # the default pair column is optional; one the user named must exist, or a typo would train
    # on single texts without a word
    if not pair_seen and cfg.text_pair_column != DataConfig.text_pair_column:
        columns = ", ".join(map(str, record)) or "none"
        raise UserError(
            f"{path}: no column '{cfg.text_pair_column}' in any row (columns: {columns}); "
            "fix --text-pair-column or drop it"
        )
    return rows


_REVIEW = re.compile(r"<review>(.*?)</review>", re.S)
_REVIEW_TAG = re.compile(r"</?review>")
_REVIEW_TEXT = re.compile(r"<review_text>(.*?)</review_text>", re.S)
AMAZON_FILES = {"negative.review": "negative", "positive.review": "positive"}


def _check_review_tags(path: Path, text: str) -> None:
    """<review> and </review> must alternate; name the line of the first one that does not."""
    line, position, open_line = 1, 0, None
    for tag in _REVIEW_TAG.finditer(text):
        line += text.count("\n", position, tag.start())
        position = tag.start()
        if tag.group() == "<review>":
            if open_line is not None:
                raise UserError(
                    f"{path}:{open_line}: <review> is not closed before the next <review> "
                    f"(line {line}); add the missing </review>"
                )
            open_line = line
        elif open_line is None:
            raise UserError(f"{path}:{line}: </review> without an opening <review>")
        else:
            open_line = None
    if open_line is not None:
        raise UserError(f"{path}:{open_line}: <review> is never closed; add the missing </review>")


def read_review_file(path: Path, domain: str, label: str) -> list[Example]:
    """The Amazon multi-domain sentiment pseudo-XML, parsed leniently (raw '&' and '<').

    Each ``<review>`` must hold one ``<review_text>``; the text is that element's content.
    """
    text = _read_text(path)
    _check_review_tags(path, text)
    rows: list[Example] = []
    position = 0
    line = 1
    for match in _REVIEW.finditer(text):
        line += text.count("\n", position, match.start())
        position = match.start()
        where = f"{path}:{line}"
        body = _REVIEW_TEXT.search(match.group(1))
        if body is None:
            raise UserError(f"{where}: <review> without a <review_text>...</review_text> element")
        content = " ".join(body.group(1).split())
        if not content:
            raise UserError(f"{where}: empty <review_text>")
        rows.append(Example(content, None, label, domain, where))
    if not rows:
        raise UserError(f"{path}: no <review> elements found")
    return rows


def is_mnli_file(path: Path) -> bool:
    """A file of the MultiNLI distribution (``multinli_1.0_<part>.jsonl`` or ``.txt``)."""
    return path.name.lower().startswith("multinli_") and path.suffix.lower() in MNLI_SUFFIXES


def _mnli_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, line) of a possibly large file, streamed and decoded line by line."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"{path}:{number}:{exc.start + 1}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                    "re-save the file as UTF-8"
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield number, line.rstrip("\r\n")


def _mnli_records(path: Path) -> Iterable[tuple[int, dict]]:
    """Records of a MultiNLI ``.jsonl`` (one object a line) or ``.txt`` (tab-separated, one
    header line, quotes taken literally as the distribution writes them)."""
    lines = iter(_mnli_lines(path))
    if path.suffix.lower() == ".jsonl":
        for number, line in lines:
            yield number, _json_record(path, number, line)
        return
    first = next(lines, None)
    if first is None:
        raise UserError(f"{path}: the file is empty")
    header = [name.strip() for name in first[1].split("\t")]
    missing = [name for name in MNLI_COLUMNS if name not in header]
    if missing:
        raise UserError(
            f"{path}:{first[0]}: not a MultiNLI .txt header: no column {', '.join(missing)} "
            f"(expected tab-separated columns including {', '.join(MNLI_COLUMNS)})"
        )
    needed = max(header.index(name) for name in MNLI_COLUMNS) + 1
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) < needed:
            raise UserError(
                f"{path}:{number}: {len(fields)} tab-separated fields, but the header puts "
                f"'{header[needed - 1]}' in field {needed}"
            )
        yield number, dict(zip(header, fields))


def read_mnli_file(path: Path) -> tuple[list[Example], Counter[str]]:
    """Rows of a MultiNLI file as distributed, and the count of rows skipped, by reason.

    genre -> domain, sentence1 / sentence2 -> text / text_pair, gold_label -> label. A gold
    label of ``-`` means the annotators had no majority: MNLI's own evaluation drops those
    rows, so do we, counting them (``Dataset.skipped``, `metakd data`).
    """
    rows: list[Example] = []
    skipped: Counter[str] = Counter()
    for number, record in _mnli_records(path):
        where = f"{path}:{number}"
        for column in MNLI_COLUMNS:
            if column not in record:
                raise UserError(
                    f"{where}: no field '{column}' (a MultiNLI row has {', '.join(MNLI_COLUMNS)})"
                )
        label = _label_str(record["gold_label"], where, "gold_label")
        if label == "-":
            skipped[MNLI_NO_LABEL] += 1
            continue
        first, second = record["sentence1"], record["sentence2"]
        if not isinstance(first, str) or not isinstance(second, str):
            raise UserError(f"{where}: sentence1 and sentence2 must be strings")
        if not first.strip() or not second.strip():
            skipped[MNLI_EMPTY] += 1
            continue
        genre = _label_str(record["genre"], where, "genre", "domain")
        rows.append(Example(first, second, label, genre, where))
    if not rows:
        raise UserError(f"{path}: no labelled MultiNLI rows")
    return rows, skipped


def _mnli_file(folder: Path, part: str) -> Path | None:
    """``multinli_*_<part>.jsonl`` (preferred) or ``.txt`` in ``folder``."""
    for suffix in MNLI_SUFFIXES:
        found = sorted(p for p in folder.iterdir() if p.is_file() and is_mnli_file(p)
                       and p.suffix.lower() == suffix and p.stem.lower().endswith(f"_{part}"))
        if found:
            return found[0]
    return None


def read_mnli_folder(folder: Path) -> tuple[dict[str, list[Example]], Counter[str]]:
    """The train file as train, dev_matched as test; dev is carved from train later."""
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    skipped: Counter[str] = Counter()
    for split, part in MNLI_SPLIT_FILES.items():
        path = _mnli_file(folder, part)
        if path is None:
            raise UserError(
                f"{folder}: a MultiNLI folder needs multinli_1.0_{part}.jsonl (or .txt); it is missing "
                "(the train file is the training data, dev_matched the test split)"
            )
        splits[split], counts = read_mnli_file(path)
        skipped.update(counts)
    return splits, skipped


TABLE_HINT = ("; --file reads .csv / .tsv / .jsonl / .json as a table with a header (JSON: one object per line): "
              "give a file of one text per line another suffix, such as .txt")


def read_texts(path: Path, text_column: str = "text", pair_column: str | None = "text_pair", *,
               text_named: bool = False, pair_named: bool = False,
               pairs_required: bool = False) -> tuple[list[str], list[str | None]]:
    """Texts (and their second texts) to classify, from ``path`` (`metakd predict --file`).

    A .csv / .tsv / .jsonl / .json file is read as a table: ``text_column`` of each row, and
    ``pair_column`` (None: no pairs) where a row has one; a column the user named
    (``text_named``, ``pair_named``) must exist, and so must a pair in some row when the model
    needs pairs (``pairs_required``). A MultiNLI file (multinli_*.jsonl / .txt) gives
    sentence1 / sentence2 for the columns not named. Any other file holds one text per
    non-blank line.
    """
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if is_mnli_file(path):
        records = _mnli_records(path)
        text_column = text_column if text_named else "sentence1"
        pair_column = pair_column if pair_named or pair_column is None else "sentence2"
    elif kind is not None:
        records = _records(path, kind)
    else:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror})") from None
        texts = [line.strip() for line in _decode(path, raw).splitlines() if line.strip()]
        if pairs_required and texts:
            raise UserError(f"{path}: one text per line, but the model was trained on text pairs; give a .csv / "
                            ".tsv / .jsonl file with a column for each text (--text-column, --text-pair-column)")
        return texts, [None] * len(texts)
    texts: list[str] = []
    pairs: list[str | None] = []
    pair_seen = False
    columns: list[str] = []
    try:
        for number, record in records:
            where = f"{path}:{number}"
            columns = list(map(str, record))
            if text_column not in record:
                hint = "fix --text-column" if text_named else "name the text column with --text-column"
                raise UserError(f"{where}: no column '{text_column}' (columns: {', '.join(columns) or 'none'}); "
                                + hint + ("" if text_named or kind is None else TABLE_HINT))
            texts.append(_text_str(record[text_column], where, text_column, required=True))
            if pair_column is not None:
                pair_seen = pair_seen or pair_column in record
                pairs.append(_text_str(record.get(pair_column), where, pair_column, required=False))
            else:
                pairs.append(None)
    except UserError as exc:
        message = str(exc)
        if kind is not None and TABLE_HINT not in message and ("fields, but the header has" in message
                                                               or "JSON" in message):
            message += TABLE_HINT  # a file of one text per line, named .csv / .jsonl
        raise UserError(message) from None
    if texts and pair_named and not pair_seen:
        raise UserError(f"{path}: no column '{pair_column}' in any row (columns: {', '.join(columns)}); "
                        "fix --text-pair-column or drop it")
    if texts and pairs_required and all(p is None for p in pairs):
        raise UserError(f"{path}: no second text in column '{pair_column}' (columns: {', '.join(columns)}), but the "
                        "model was trained on text pairs; name the column with --text-pair-column")
    return texts, pairs
