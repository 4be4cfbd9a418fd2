"""Domain-tagged datasets: readers, validation, seeded stratified splits, tokenisation.

Accepted layouts (DESIGN.md "Data"):

* one JSONL / CSV / TSV file with ``text``, optional ``text_pair``, ``label`` and
  ``domain`` columns (names configurable);
* a folder with one such file per domain (domain = file stem);
* a folder with ``train`` / ``dev`` / ``test`` files (domain column), or per-domain
  folders each holding such files: given splits are kept as they are;
* the Amazon multi-domain sentiment folders ``<domain>/{positive,negative}.review``;
* Parquet files in the layouts above (``train-00000-of-00002.parquet`` counts as ``train``), and
  `datasets` save_to_disk folders and hub ids: metakd_cli/arrow_data.py (optional extra ``datasets``);
* MultiNLI as distributed (``multinli_1.0_train.jsonl`` / ``.txt`` ...): ``genre`` is the
  domain, ``sentence1`` / ``sentence2`` the pair, ``gold_label`` the label; rows whose gold
  label is ``-`` (no majority among the annotators) are skipped and counted. A folder holding
  ``multinli_1.0_train.*`` and ``multinli_1.0_dev_matched.*`` maps the train file to train
  and dev_matched to test (MNLI's test labels are hidden; the paper reports dev_matched), and
  carves dev from train: ``dev_fraction`` of each (genre, label) group, seeded. The
  ``.jsonl`` is read when both forms are present; dev_mismatched (other genres) is ignored.

Without given splits every domain is split 80/10/10, stratified by label, with a seeded
shuffle that is identical across runs and machines. ``DataConfig.domains`` keeps only the
named domains (MNLI's five training genres, say) before anything is split or limited.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metakd_cli.config import DataConfig, resolve_data_path
from metakd_cli.errors import UserError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}
TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
ROW_KINDS = ("parquet", "arrow")  # read by row number (metakd_cli/arrow_data.py), not by line
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
        from metakd_cli.arrow_data import parquet_records

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


def _read_mnli_folder(folder: Path) -> tuple[dict[str, list[Example]], Counter[str]]:
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


def _check_test_genres(splits: dict[str, list[Example]], source: str) -> None:
    """Every genre scored at test time must have training rows."""
    trained = {row.domain for row in splits["train"]}
    extra = sorted({row.domain for row in splits["test"]} - trained)
    if extra:
        keep = ",".join(sorted(trained))
        raise UserError(
            f"{source}: genre(s) {', '.join(extra)} are in dev_matched but not in the train file; "
            f"keep the training genres with --domains {keep}"
        )


def carve_dev(rows: list[Example], cfg: DataConfig) -> tuple[list[Example], list[Example]]:
    """(train, dev): ``dev_fraction`` of each (domain, label) group of given training rows
    becomes dev, by a seeded shuffle; both keep the input order."""
    dev_ids: set[int] = set()
    for (domain, label), group in sorted(_by_group(rows, lambda r: (r.domain, r.label)).items()):
        n_dev = int(len(group) * cfg.dev_fraction + 0.5)
        dev_ids.update(id(row) for row in _shuffled(group, cfg.split_seed, f"dev:{domain}:{label}")[:n_dev])
    train = [row for row in rows if id(row) not in dev_ids]
    dev = [row for row in rows if id(row) in dev_ids]
    for domain, domain_rows in sorted(_by_group(rows, lambda r: r.domain).items()):
        n_dev = sum(id(row) in dev_ids for row in domain_rows)
        if n_dev in (0, len(domain_rows)):
            raise UserError(
                f"{domain_rows[0].where}: domain '{domain}' has {len(domain_rows)} training rows: too few to carve "
                f"a {cfg.dev_fraction:.0%} dev split from (add rows or change dev_fraction)"
            )
    return train, dev


# --------------------------------------------------------------------------- layouts


def _split_name(path: Path) -> str | None:
    return SPLIT_ALIASES.get(table_stem(path).lower()) if path.suffix.lower() in TABLE_SUFFIXES else None


def table_stem(path: Path) -> str:
    """A file's stem without a `datasets` shard suffix: ``train-00000-of-00002.parquet`` -> ``train``."""
    return SHARD_SUFFIX.sub("", path.stem)


def _tables(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)


def _read_split_folder(folder: Path, cfg: DataConfig, domain: str | None) -> dict[str, list[Example]]:
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for path in _tables(folder):
        name = _split_name(path)
        if name is not None:
            splits[name].extend(read_table(path, cfg, domain))
    for split in SPLITS:
        if split == "dev" and domain is None and not splits[split] and any(
                p.suffix.lower() == ".parquet" for p in _tables(folder)):
            continue  # `datasets` Parquet folders often have no validation split: load_dataset carves dev from train
        if not splits[split]:
            raise UserError(f"{folder}: given splits need train, dev and test files; '{split}' is missing or empty")
    return splits


def read_rows(cfg: DataConfig) -> tuple[str, dict[str, list[Example]] | list[Example], Counter[str]]:
    """(layout name, rows, rows skipped by reason): rows are a dict of given splits, or a flat
    list still to be split."""
    if not cfg.path:
        raise UserError("no data path given")
    path = Path(resolve_data_path(cfg.path)).expanduser()
    if not path.exists():
        from metakd_cli.arrow_data import read_hub_dataset

        return read_hub_dataset(cfg.path, cfg)  # a `datasets` hub id, or "no such file or folder"
    if path.is_file():
        if is_mnli_file(path):
            return ("mnli-file", *read_mnli_file(path))
        return "table", read_table(path, cfg), Counter()
    if any(is_mnli_file(p) for p in path.iterdir() if p.is_file()):
        return ("mnli", *_read_mnli_folder(path))
    from metakd_cli.arrow_data import read_arrow_folder

    arrow = read_arrow_folder(path, cfg)  # a `datasets` save_to_disk folder, or <split>/*.parquet folders
    if arrow is not None:
        return arrow
    layout, rows = _read_layout(path, cfg)
    return layout, rows, Counter()


def _read_layout(path: Path, cfg: DataConfig) -> tuple[str, dict[str, list[Example]] | list[Example]]:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    review_dirs = [d for d in subdirs if any((d / name).is_file() for name in AMAZON_FILES)]
    if review_dirs:
        rows: list[Example] = []
        for folder in review_dirs:
            for name, label in AMAZON_FILES.items():
                file = folder / name
                if not file.is_file():
                    raise UserError(f"{folder}: missing {name} (an Amazon domain folder holds both .review files)")
                rows.extend(read_review_file(file, folder.name, label))
        return "amazon", rows
    tables = _tables(path)
    if any(_split_name(p) for p in tables):
        return "splits", _read_split_folder(path, cfg, None)
    split_dirs = [d for d in subdirs if any(_split_name(p) for p in _tables(d))]
    if split_dirs:
        merged: dict[str, list[Example]] = {s: [] for s in SPLITS}
        for folder in split_dirs:
            for split, rows in _read_split_folder(folder, cfg, folder.name).items():
                merged[split].extend(rows)
        return "domain-splits", merged
    if tables:
        rows = []
        for table in tables:
            rows.extend(read_table(table, cfg, table_stem(table)))
        return "file-per-domain", rows
    raise UserError(
        f"{path}: no data found (expected .jsonl/.csv/.tsv/.parquet files, train/dev/test files, "
        "or Amazon <domain>/positive.review folders)"
    )


# --------------------------------------------------------------------------- splitting


def _sorted_labels(labels: Iterable[str]) -> list[str]:
    labels = set(labels)
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _by_group(rows: Iterable[Example], key) -> dict:
    groups: dict = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def _shuffled(rows: list[Example], seed: int, salt: str) -> list[Example]:
    rows = list(rows)
    random.Random(f"{seed}:{salt}").shuffle(rows)  # str seeds hash the same on every machine
    return rows


def subsample(rows: list[Example], fraction: float, seed: int, salt: str) -> list[Example]:
    """A seeded, label-stratified fraction of ``rows`` (at least one per label), in input order."""
    if fraction >= 1.0:
        return list(rows)
    keep: set[int] = set()
    index = {id(row): i for i, row in enumerate(rows)}
    for label, group in sorted(_by_group(rows, lambda r: r.label).items()):
        count = max(1, round(len(group) * fraction))
        keep.update(index[id(r)] for r in _shuffled(group, seed, f"{salt}:{label}")[:count])
    return [row for i, row in enumerate(rows) if i in keep]


def _held_out_sizes(group_size: int, cfg: DataConfig) -> tuple[int, int]:
    """(test rows, dev rows) the split takes from one (domain, label) group."""
    return int(group_size * cfg.test_fraction + 0.5), int(group_size * cfg.dev_fraction + 0.5)


def _empty_splits(rows: list[Example], cfg: DataConfig) -> list[str]:
    """The splits ``split_rows`` would leave without a row of ``rows`` (one domain's)."""
    counts: Counter[str] = Counter()
    for group in _by_group(rows, lambda r: r.label).values():
        n_test, n_dev = _held_out_sizes(len(group), cfg)
        counts.update(test=n_test, dev=n_dev, train=len(group) - n_test - n_dev)
    return [s for s in SPLITS if counts[s] <= 0]


def split_rows(
    rows: list[Example], cfg: DataConfig, unlimited: list[Example] | None = None
) -> dict[str, list[Example]]:
    """Seeded split of each (domain, label) group into train/dev/test, rows in input order.

    ``unlimited``: the rows before --limit-per-domain; when the full domain would split, the
    error for one too small to split blames the flag, not the data.
    """
    assigned: dict[int, str] = {}
    index = {id(row): i for i, row in enumerate(rows)}
    for (domain, label), group in sorted(_by_group(rows, lambda r: (r.domain, r.label)).items()):
        shuffled = _shuffled(group, cfg.split_seed, f"split:{domain}:{label}")
        n_test, n_dev = _held_out_sizes(len(group), cfg)
        for i, row in enumerate(shuffled):
            assigned[index[id(row)]] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for i, row in enumerate(rows):
        splits[assigned[i]].append(row)
    ratio = f"{1 - cfg.dev_fraction - cfg.test_fraction:.0%}/{cfg.dev_fraction:.0%}/{cfg.test_fraction:.0%}"
    for domain, domain_rows in sorted(_by_group(rows, lambda r: r.domain).items()):
        counts = Counter(assigned[index[id(r)]] for r in domain_rows)
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            count = f"{len(domain_rows)} row" + ("s" if len(domain_rows) != 1 else "")
            before = [r for r in unlimited or [] if r.domain == domain]
            if len(before) > len(domain_rows) and not _empty_splits(before, cfg):
                raise UserError(
                    f"--limit-per-domain {cfg.limit_per_domain} leaves domain '{domain}' {count} of its "
                    f"{len(before)}: too few to split {ratio} (its {', '.join(empty)} split would be empty); "
                    "raise the limit"
                )
            raise UserError(
                f"{domain_rows[0].where}: domain '{domain}' (first row here) has {count}: "
                f"too few to split {ratio} (its {', '.join(empty)} split would be empty); "
                "add rows or give train/dev/test files"
            )
    return splits


def _check_labels(splits: dict[str, list[Example]]) -> list[str]:
    # the label set is the classifier's head: a dev/test label train lacks would become a class
    # nothing teaches (a typo, or a label the model can never predict), so it is the data's mistake
    trained = {row.label for row in splits["train"]}
    for split in ("dev", "test"):
        for row in splits[split]:
            if row.label not in trained:
                raise UserError(
                    f"{row.where}: label '{row.label}' of this {split} row is not among the training rows' labels "
                    f"({', '.join(_sorted_labels(trained))}); fix the label, or drop the row"
                )
    rows = [row for split in SPLITS for row in splits[split]]
    domains_of: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Example] = {}
    for row in rows:
        domains_of[row.label].add(row.domain)
        first.setdefault(row.label, row)
    all_domains = {row.domain for row in rows}
    if len(all_domains) > 1:
        for label, domains in sorted(domains_of.items()):
            if len(domains) == 1:
                row = first[label]
                raise UserError(
                    f"{row.where}: label '{label}' appears only in domain '{row.domain}'; "
                    "every domain must share one label set (fix or drop those rows)"
                )
    return _sorted_labels(domains_of)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read, validate and split a domain-tagged dataset as ``cfg`` describes."""
    for name in ("dev_fraction", "test_fraction"):
        value = getattr(cfg, name)
        if not 0 < value < 1:
            raise UserError(f"data.{name} must be between 0 and 1, got {value}")
    if cfg.dev_fraction + cfg.test_fraction >= 1:
        raise UserError("data.dev_fraction + data.test_fraction must leave rows for training")
    if cfg.limit_per_domain is not None and cfg.limit_per_domain < 1:
        raise UserError(f"--limit-per-domain must be a positive number, got {cfg.limit_per_domain}")
    layout, rows, skipped = read_rows(cfg)
    if cfg.domains is not None:
        rows = _keep_domains(rows, cfg.domains, cfg.path)
    given = isinstance(rows, dict)
    if given:
        splits = rows
        if layout == "mnli":
            _check_test_genres(splits, cfg.path)
        if layout == "mnli" or not splits["dev"]:  # MNLI; a `datasets` DatasetDict without a validation split
            splits["train"], splits["dev"] = carve_dev(splits["train"], cfg)
        if cfg.limit_per_domain is not None:
            splits = {s: _limit(splits[s], cfg, _domain_sizes(splits)) for s in SPLITS}
    else:
        unlimited = rows
        if cfg.limit_per_domain is not None:
            rows = _limit(rows, cfg, _domain_sizes({"all": rows}))
        splits = split_rows(rows, cfg, unlimited)
    labels = _check_labels(splits)
    domains = sorted({row.domain for split in SPLITS for row in splits[split]})
    return Dataset(
        source=cfg.path if layout.startswith("hub") else str(Path(resolve_data_path(cfg.path)).expanduser().resolve()),
        layout=layout,
        labels=labels,
        domains=domains,
        splits=splits,
        given_splits=given,
        split_seed=cfg.split_seed,
        skipped=dict(sorted(skipped.items())),
    )


def _keep_domains(
    rows: dict[str, list[Example]] | list[Example], wanted: list[str], source: str
) -> dict[str, list[Example]] | list[Example]:
    """Only the rows of the ``wanted`` domains; a name the data does not hold is a user error."""
    every = rows if isinstance(rows, list) else [row for split in rows.values() for row in split]
    present = sorted({row.domain for row in every})
    for name in wanted:
        if name not in present:
            raise UserError(
                f"{source}: no domain '{name}' in the data (domains: {', '.join(present)}); fix --domains"
            )
    keep = set(wanted)
    if isinstance(rows, list):
        return [row for row in rows if row.domain in keep]
    return {split: [row for row in split_rows if row.domain in keep] for split, split_rows in rows.items()}


def _domain_sizes(splits: dict[str, list[Example]]) -> Counter[str]:
    return Counter(row.domain for rows in splits.values() for row in rows)


def _limit(rows: list[Example], cfg: DataConfig, sizes: Counter[str]) -> list[Example]:
    """Keep about ``limit_per_domain`` rows of each domain (label-stratified, seeded), in input order."""
    kept: set[int] = set()
    for domain, group in sorted(_by_group(rows, lambda r: r.domain).items()):
        fraction = min(1.0, cfg.limit_per_domain / sizes[domain])
        kept.update(id(row) for row in subsample(group, fraction, cfg.split_seed, f"limit:{domain}"))
    return [row for row in rows if id(row) in kept]


def fraction_indices(rows: Sequence[Example], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded, label-stratified ``fraction`` of each domain's rows, in input order.

    The data-scarce setting (``--train-fraction``). Each domain is sampled on its own (salt
    ``fraction:<domain>``, at least one row per label), so a domain keeps the same rows
    whether it is sampled alone (``distill --domain``) or with the others (``fit``), and fit
    and distill with the same fraction and split seed see the same rows. ``fraction`` 1 keeps all.
    """
    if fraction >= 1.0:
        return list(range(len(rows)))
    index = {id(row): i for i, row in enumerate(rows)}
    kept: set[int] = set()
    for domain, group in sorted(_by_group(rows, lambda r: r.domain).items()):
        kept.update(index[id(row)] for row in subsample(group, fraction, seed, f"fraction:{domain}"))
    return sorted(kept)


# --------------------------------------------------------------------------- tokenisation


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
