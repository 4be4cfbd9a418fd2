"""metakd_cli.data.dataset: every layout loads, splits are seeded and stratified, bad input is a UserError
naming the file, line and field; `metakd data` turns it into one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import (
    EXAMPLES,
    TOY_PER_LABEL,
    review_xml,
    toy_rows,
    toy_split,
    write_jsonl,
    write_rows,
    write_toy_dataset,
)
from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig
from metakd_cli.data.rows import SPLITS, Dataset
from metakd_cli.data.encode import collate, encode
from metakd_cli.data.dataset import load_dataset
from metakd_cli.core.errors import UserError

DOMAINS = ["books", "electronics", "kitchen"]
LABELS = ["negative", "positive"]
N_TOY = len(DOMAINS) * len(LABELS) * TOY_PER_LABEL  # 120


def load(path: Path | str, **kwargs) -> Dataset:
    return load_dataset(DataConfig(path=str(path), **kwargs))


def texts(rows) -> list[str]:
    return [row.text for row in rows]


def group_counts(dataset: Dataset) -> dict[tuple[str, str], dict[str, int]]:
    """(domain, label) -> rows per split."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for split in SPLITS:
        for ex in dataset.splits[split]:
            counts.setdefault((ex.domain, ex.label), dict.fromkeys(SPLITS, 0))[split] += 1
    return counts


def data_error(path: Path | str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_one_file_with_a_domain_column(tmp_path, fmt):
    dataset = load(write_toy_dataset(tmp_path, fmt))
    assert dataset.layout == "table"
    assert dataset.domains == DOMAINS
    assert dataset.labels == LABELS
    assert not dataset.given_splits
    assert sum(len(rows) for rows in dataset.splits.values()) == N_TOY


def test_jsonl_csv_and_tsv_give_the_same_dataset(tmp_path):
    prints = {fmt: load(write_toy_dataset(tmp_path, fmt, pairs=True)).fingerprint() for fmt in ("jsonl", "csv", "tsv")}
    assert len(set(prints.values())) == 1, prints


def test_custom_column_names(tmp_path):
    rows = [
        {"review": r["text"], "sentiment": r["label"], "category": r["domain"], "question": "why ?"}
        for r in toy_rows()
    ]
    path = write_rows(tmp_path / "custom.csv", rows)
    dataset = load(
        path, text_column="review", label_column="sentiment", domain_column="category", text_pair_column="question"
    )
    assert dataset.domains == DOMAINS and dataset.labels == LABELS
    assert {ex.text_pair for ex in dataset.train} == {"why ?"}
    assert sorted(texts(dataset.train + dataset.dev + dataset.test)) == sorted(r["text"] for r in toy_rows())


def test_folder_with_one_file_per_domain(tmp_path):
    path = write_toy_dataset(tmp_path, "folder")
    dataset = load(path)
    assert dataset.layout == "file-per-domain"
    assert dataset.domains == DOMAINS
    assert sum(len(rows) for rows in dataset.splits.values()) == N_TOY
    # the domain comes from the file stem, the rows carry none
    assert all(ex.where.startswith(str(path / ex.domain)) for ex in dataset.train)


def test_folder_with_one_file_per_domain_in_mixed_formats(tmp_path):
    rows = toy_rows()
    for domain, suffix in zip(DOMAINS, (".jsonl", ".csv", ".tsv")):
        write_rows(
            tmp_path / "mixed" / f"{domain}{suffix}",
            [{"text": r["text"], "label": r["label"]} for r in rows if r["domain"] == domain],
        )
    dataset = load(tmp_path / "mixed")
    assert dataset.domains == DOMAINS
    assert dataset.summary()["total"] == N_TOY


def test_folder_with_train_dev_test_files_keeps_the_given_splits(tmp_path):
    path = write_toy_dataset(tmp_path, "splits")
    dataset = load(path)
    assert dataset.layout == "splits"
    assert dataset.given_splits
    for split in SPLITS:
        on_disk = [json.loads(line)["text"] for line in (path / f"{split}.jsonl").read_text().splitlines()]
        assert texts(dataset.splits[split]) == on_disk, split
    # 60/20/20 as written, not re-split 80/10/10
    assert {counts["dev"] for counts in group_counts(dataset).values()} == {TOY_PER_LABEL // 5}


def test_split_file_aliases(tmp_path):
    path = write_toy_dataset(tmp_path, "splits")
    (path / "dev.jsonl").rename(path / "validation.jsonl")
    (path / "test.jsonl").rename(path / "Test.jsonl")
    dataset = load(path)
    assert len(dataset.dev) == len(dataset.test) == N_TOY // 5


def test_per_domain_folders_with_split_files(tmp_path):
    path = write_toy_dataset(tmp_path, "domain-splits")
    dataset = load(path)
    assert dataset.layout == "domain-splits"
    assert dataset.given_splits
    assert dataset.domains == DOMAINS
    for domain in DOMAINS:
        on_disk = [json.loads(line)["text"] for line in (path / domain / "dev.jsonl").read_text().splitlines()]
        assert texts(dataset.select("dev", [domain])) == on_disk


def test_a_dev_or_test_label_missing_from_train_is_refused(tmp_path):
    path = write_toy_dataset(tmp_path, "splits")
    test_file = path / "test.jsonl"
    n_lines = len(test_file.read_text().splitlines())
    with open(test_file, "a", encoding="utf-8") as handle:
        for domain in DOMAINS:  # in every domain, so only the train check can catch it
            handle.write(json.dumps({"text": "meh", "label": "neutral", "domain": domain}) + "\n")
    message = data_error(path)
    assert message.startswith(f"{test_file}:{n_lines + 1}: label 'neutral' of this test row is not among the "
                              "training rows' labels (negative, positive)")


def test_given_splits_need_all_three(tmp_path):
    path = write_toy_dataset(tmp_path, "splits")
    (path / "test.jsonl").unlink()
    message = data_error(path)
    assert str(path) in message and "'test'" in message


def test_amazon_review_folders(tmp_path):
    root = tmp_path / "amazon"
    positive = ["Sharp & sturdy, works <great> for me", "I love it &amp; so does my\n  brother <3"]
    negative = ["Broke at once & the < button stuck", "Not   good"]
    for domain in ("books", "kitchen"):
        (root / domain).mkdir(parents=True)
        (root / domain / "positive.review").write_text(review_xml(positive * 5), encoding="utf-8")
        (root / domain / "negative.review").write_text(review_xml(negative * 5), encoding="utf-8")
    dataset = load(root)
    assert dataset.layout == "amazon"
    assert dataset.domains == ["books", "kitchen"]
    assert dataset.labels == ["negative", "positive"]
    rows = [ex for split in SPLITS for ex in dataset.splits[split]]
    assert len(rows) == 40
    found = {ex.text: ex.label for ex in rows}
    # raw '&' and '<' are kept as written; whitespace (newlines included) is collapsed
    assert found == {
        "Sharp & sturdy, works <great> for me": "positive",
        "I love it &amp; so does my brother <3": "positive",
        "Broke at once & the < button stuck": "negative",
        "Not good": "negative",
    }
    assert all(ex.text_pair is None for ex in rows)


def test_amazon_domain_needs_both_files(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "positive.review").write_text(review_xml(["fine"] * 10), encoding="utf-8")
    message = data_error(tmp_path)
    assert str(tmp_path / "books") in message and "negative.review" in message


def test_text_pair_is_kept(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "jsonl", pairs=True))
    assert all(ex.text_pair and ex.text_pair.startswith("is the ") for ex in dataset.train)
    assert dataset.has_pairs and not load(write_toy_dataset(tmp_path / "single", "jsonl")).has_pairs


def test_empty_text_pair_cell_is_none(tmp_path):
    rows = [dict(r, text_pair="" if i % 2 else "a pair") for i, r in enumerate(toy_rows())]
    dataset = load(write_rows(tmp_path / "pairs.csv", rows))
    assert {ex.text_pair for ex in dataset.train} == {None, "a pair"}


# --------------------------------------------------------------------------- labels


def test_string_labels_are_sorted(tmp_path):
    rows = [dict(r, label={"negative": "neg", "positive": "pos"}[r["label"]]) for r in toy_rows()]
    rows += [dict(r, label="neutral") for r in toy_rows()[:60]]
    assert load(write_jsonl(tmp_path / "d.jsonl", rows)).labels == ["neg", "neutral", "pos"]


def test_int_labels_are_sorted_numerically(tmp_path):
    rows = [dict(r, label={"negative": 2, "positive": 10}[r["label"]]) for r in toy_rows()]
    rows += [dict(r, label=0) for r in toy_rows()[:60]]
    dataset = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert dataset.labels == ["0", "2", "10"]
    assert [dataset.label_id(label) for label in dataset.labels] == [0, 1, 2]


def test_int_labels_read_the_same_from_json_and_csv(tmp_path):
    rows = [dict(r, label={"negative": 0, "positive": 1}[r["label"]]) for r in toy_rows()]
    from_json = load(write_jsonl(tmp_path / "d.jsonl", rows))
    from_csv = load(write_rows(tmp_path / "d.csv", rows))
    floats = load(write_jsonl(tmp_path / "f.jsonl", [dict(r, label=float(r["label"])) for r in rows]))
    assert from_json.labels == from_csv.labels == floats.labels == ["0", "1"]
    assert from_json.fingerprint() == from_csv.fingerprint() == floats.fingerprint()


# --------------------------------------------------------------------------- splits


def test_split_is_80_10_10_per_domain_and_label(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "jsonl"))
    counts = group_counts(dataset)
    assert set(counts) == {(d, label) for d in DOMAINS for label in LABELS}
    assert all(c == {"train": 16, "dev": 2, "test": 2} for c in counts.values()), counts


def test_split_is_a_partition_in_input_order(tmp_path):
    rows = toy_rows()
    dataset = load(write_toy_dataset(tmp_path, "jsonl"))
    seen: list[int] = []
    for split in SPLITS:
        order = [int(ex.where.rsplit(":", 1)[1]) - 1 for ex in dataset.splits[split]]
        assert [rows[i]["text"] for i in order] == texts(dataset.splits[split])
        assert order == sorted(order), f"{split} is not in input order"
        seen += order
    assert sorted(seen) == list(range(len(rows)))


def test_split_is_identical_across_loads(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    first, second = load(path), load(path)
    for split in SPLITS:
        assert first.splits[split] == second.splits[split]
    assert first.fingerprint() == second.fingerprint()


def test_split_does_not_depend_on_hash_randomisation(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    code = (
        "import sys; from metakd_cli.core.config import DataConfig; from metakd_cli.data.dataset import load_dataset; "
        "print(load_dataset(DataConfig(path=sys.argv[1])).fingerprint())"
    )
    prints = {
        subprocess.run(
            [sys.executable, "-c", code, str(path)],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert prints == {load(path).fingerprint()}


def test_split_seed(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    one, again, other = load(path, split_seed=1), load(path, split_seed=1), load(path, split_seed=2)
    assert texts(one.test) == texts(again.test)
    assert texts(one.test) != texts(other.test)
    assert one.fingerprint() != other.fingerprint()
    assert group_counts(one) == group_counts(other)  # still stratified
    assert one.split_seed == 1


def test_split_fractions(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "jsonl"), dev_fraction=0.25, test_fraction=0.25)
    assert all(c == {"train": 10, "dev": 5, "test": 5} for c in group_counts(dataset).values())


@pytest.mark.parametrize(("dev", "test"), [(0, 0.1), (0.1, 1.0), (0.5, 0.5), (-0.1, 0.1)])
def test_bad_split_fractions(tmp_path, dev, test):
    with pytest.raises(UserError, match="fraction"):
        load(write_toy_dataset(tmp_path, "jsonl"), dev_fraction=dev, test_fraction=test)


def test_toy_split_fingerprint_is_pinned(tmp_path):
    """The seeded split is part of every run folder's identity: a change here silently
    changes users' train/dev/test rows, so it must be deliberate (and in the changelog)."""
    fingerprint = load(write_toy_dataset(tmp_path, "jsonl")).fingerprint()
    assert fingerprint == "18855321f79f4e06e1224a6b48889e52c700dd221d8722f0094d1af69c75c5d5"


# --------------------------------------------------------------------------- limit_per_domain


def test_limit_per_domain_keeps_about_n_per_domain_stratified(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "jsonl"), limit_per_domain=20)
    summary = dataset.summary()
    assert summary["total"] == 60
    for domain in DOMAINS:
        assert summary["domains"][domain]["labels"] == {"negative": 10, "positive": 10}
        assert [summary["domains"][domain][s] for s in SPLITS] == [16, 2, 2]


def test_limit_per_domain_is_seeded(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    assert load(path, limit_per_domain=20).fingerprint() == load(path, limit_per_domain=20).fingerprint()
    assert load(path, limit_per_domain=20, split_seed=3).fingerprint() != load(path, limit_per_domain=20).fingerprint()


def test_limit_above_the_size_keeps_everything(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    assert load(path, limit_per_domain=10_000).fingerprint() == load(path).fingerprint()


def test_limit_with_given_splits(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "splits"), limit_per_domain=20)
    summary = dataset.summary()
    for domain in DOMAINS:
        entry = summary["domains"][domain]
        assert entry["train"] + entry["dev"] + entry["test"] == 20
        assert entry["labels"] == {"negative": 10, "positive": 10}
        assert min(entry[s] for s in SPLITS) > 0


def test_limit_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="positive"):
        load(write_toy_dataset(tmp_path, "jsonl"), limit_per_domain=0)


def test_a_limit_too_small_to_split_names_the_flag_not_the_file(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    message = data_error(path, limit_per_domain=3)
    assert message.startswith("--limit-per-domain 3 leaves domain 'books' 4 rows of its 40: too few to split")
    assert str(path) not in message and "add rows" not in message


def test_a_domain_too_small_without_the_limit_still_names_the_file(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": "good", "label": "positive", "domain": "kitchn"}), at=9)
    assert data_error(path, limit_per_domain=20).startswith(f"{path}:9: domain 'kitchn'")


# --------------------------------------------------------------------------- Dataset


def test_fingerprint_changes_with_any_text(tmp_path):
    rows = toy_rows()
    before = load(write_jsonl(tmp_path / "a.jsonl", rows)).fingerprint()
    rows[7] = dict(rows[7], text=rows[7]["text"] + " indeed")
    after = load(write_jsonl(tmp_path / "b.jsonl", rows)).fingerprint()
    assert before != after
    assert len(before) == 64 and int(before, 16) >= 0


def test_summary(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "jsonl"))
    per_domain = {"train": 32, "dev": 4, "test": 4, "labels": {"negative": 20, "positive": 20}}
    assert dataset.summary() == {"total": N_TOY, "labels": LABELS, "domains": {d: per_domain for d in DOMAINS}}
    json.dumps(dataset.summary())  # the `metakd data --json` object


def test_select_and_ids(tmp_path):
    dataset = load(write_toy_dataset(tmp_path, "jsonl"))
    assert {ex.domain for ex in dataset.select("train", ["kitchen"])} == {"kitchen"}
    assert len(dataset.select("dev")) == len(dataset.dev) == 12
    assert [dataset.domain_id(d) for d in DOMAINS] == [0, 1, 2]
    assert dataset.check_domains(["books"]) == ["books"]
    with pytest.raises(UserError, match="unknown domain 'dvd'.*books, electronics, kitchen"):
        dataset.check_domains(["dvd"])


def test_example_dataset_loads():
    dataset = load(EXAMPLES)
    assert dataset.layout == "file-per-domain"
    assert dataset.domains == DOMAINS
    assert dataset.labels == LABELS
    for entry in dataset.summary()["domains"].values():
        assert entry["labels"] == {"negative": 45, "positive": 45}
        assert [entry[s] for s in SPLITS] == [70, 10, 10]


# --------------------------------------------------------------------------- bad input


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def with_line(tmp_path: Path, line: str, at: int = 3, name: str = "bad.jsonl") -> Path:
    """The toy rows as JSONL with ``line`` as line number ``at``."""
    lines = [json.dumps(r) for r in toy_rows()]
    lines.insert(at - 1, line)
    return write_bytes(tmp_path / name, ("\n".join(lines) + "\n").encode("utf-8"))


def test_empty_file(tmp_path):
    path = write_bytes(tmp_path / "empty.jsonl", b"  \n\n")
    assert data_error(path) == f"{path}: the file is empty"


def test_header_only_csv(tmp_path):
    path = write_bytes(tmp_path / "header.csv", b"text,label,domain\n")
    assert data_error(path) == f"{path}: no rows"


def test_row_without_text(tmp_path):
    path = with_line(tmp_path, json.dumps({"label": "positive", "domain": "books"}))
    message = data_error(path)
    assert message.startswith(f"{path}:3: no column 'text'")
    assert "columns: label, domain" in message


def test_row_with_empty_text(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": "  ", "label": "positive", "domain": "books"}), at=5)
    assert data_error(path).startswith(f"{path}:5: field 'text' is empty")


def test_row_with_non_string_text(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": 5, "label": "positive", "domain": "books"}))
    assert data_error(path).startswith(f"{path}:3: field 'text': expected a string, got int")


def test_row_without_label(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": "good", "domain": "books"}), at=4)
    assert data_error(path).startswith(f"{path}:4: no column 'label'")


@pytest.mark.parametrize("label", [None, "", " ", [1]])
def test_row_with_invalid_label(tmp_path, label):
    path = with_line(tmp_path, json.dumps({"text": "good", "label": label, "domain": "books"}), at=4)
    assert data_error(path).startswith(f"{path}:4: field 'label': missing or invalid label")


def test_row_with_empty_domain(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": "good", "label": "positive", "domain": ""}), at=2)
    assert data_error(path).startswith(f"{path}:2: field 'domain': missing or invalid domain")


def test_unknown_column_name(tmp_path):
    path = write_toy_dataset(tmp_path, "csv")
    message = data_error(path, text_column="body")
    assert message.startswith(f"{path}:2: no column 'body' (columns: text, label, domain)")
    assert "--text-column" in message


def test_missing_domain_column_suggests_a_folder(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": r["text"], "label": r["label"]} for r in toy_rows()])
    message = data_error(path)
    assert message.startswith(f"{path}:1: no column 'domain'")
    assert "--domain-column" in message and "one file per domain" in message


def test_label_seen_in_one_domain_only(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": "meh", "label": "neutral", "domain": "kitchen"}), at=7)
    message = data_error(path)
    assert message.startswith(f"{path}:7: label 'neutral' appears only in domain 'kitchen'")


def test_domain_with_one_example(tmp_path):
    path = with_line(tmp_path, json.dumps({"text": "good", "label": "positive", "domain": "kitchn"}), at=9)
    message = data_error(path)
    assert message.startswith(f"{path}:9: domain 'kitchn'")
    assert "1 row:" in message and "too few" in message


def test_non_utf8_bytes(tmp_path):
    good = [json.dumps(r).encode() for r in toy_rows()[:4]]
    bad = '{"text": "caf'.encode() + "é".encode("latin-1") + b'", "label": "positive", "domain": "books"}'
    path = write_bytes(tmp_path / "latin1.jsonl", b"\n".join(good[:2] + [bad] + good[2:]) + b"\n")
    message = data_error(path)
    column = len('{"text": "caf') + 1
    assert message.startswith(f"{path}:3:{column}: not valid UTF-8 (byte 0xe9)")
    assert "UTF-8" in message


def test_utf8_bom_is_accepted(tmp_path):
    path = write_toy_dataset(tmp_path, "csv")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load(path).summary()["total"] == N_TOY


def test_path_that_does_not_exist(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    assert data_error(path) == f"{path}: no such file or folder"


def test_unknown_file_type(tmp_path):
    path = write_bytes(tmp_path / "data.txt", b"hello\n")
    assert data_error(path).startswith(f"{path}: unknown file type")


def test_folder_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    assert data_error(tmp_path).startswith(f"{tmp_path}: no data found")


def test_malformed_json_line(tmp_path):
    path = with_line(tmp_path, '{"text": "good", "label": ', at=4)
    assert data_error(path).startswith(f"{path}:4:27: not valid JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = with_line(tmp_path, '["good", "positive", "books"]', at=2)
    assert data_error(path) == f"{path}:2: expected a JSON object per line"


def test_csv_row_with_wrong_field_count(tmp_path):
    path = write_toy_dataset(tmp_path, "csv")
    lines = path.read_text().splitlines()
    lines[2] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    assert data_error(path) == f"{path}:3: 4 fields, but the header has 3 (text, label, domain)"


def test_tsv_row_with_wrong_field_count(tmp_path):
    path = write_toy_dataset(tmp_path, "tsv")
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    assert data_error(path).startswith(f"{path}:6: 2 fields, but the header has 3")


def test_csv_duplicate_header(tmp_path):
    path = write_bytes(tmp_path / "dup.csv", b"text,label,text\na,b,c\n")
    assert data_error(path).startswith(f"{path}:1: duplicate column names")


def toy_csv_lines(tmp_path: Path) -> tuple[Path, list[str]]:
    path = write_toy_dataset(tmp_path, "csv")
    return path, path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_quote_never_closed_names_the_line_it_opens(tmp_path):
    path, lines = toy_csv_lines(tmp_path)
    lines[3] = '"the pan is good,positive,books'  # line 4; no other quote in the file
    message = data_error(write_lines(path, lines))
    assert message.startswith(f"{path}:4: a quoted field opened on this line is never closed")


def test_csv_quote_that_swallows_rows_is_refused(tmp_path):
    path, lines = toy_csv_lines(tmp_path)
    lines[3] = '"the pan is good,positive,books'
    text, rest = lines[6].split(",", 1)
    lines[6] = f'{text}",{rest}'  # a stray quote closes it three lines on: once one row of 3 fields, silently
    message = data_error(write_lines(path, lines))
    assert message.startswith(f"{path}:4: field 'text' of this row is quoted over lines 4-7")
    assert "quote is probably not closed" in message


def test_csv_text_after_a_closing_quote_is_refused(tmp_path):
    path, lines = toy_csv_lines(tmp_path)
    lines[3] = '"the pan is good,positive,books'
    lines[6] = 'she said "wow",positive,books'  # was read as one row whose text ran from line 4 to 'wow"'
    message = data_error(write_lines(path, lines))
    assert message.startswith(f"{path}:7: malformed CSV")
    assert "row that starts on line 4" in message


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_quoted_text_over_several_lines_still_loads(tmp_path, delimiter):
    """Multi-line quoted fields are legitimate CSV, commas and whole sentences included."""
    rows = toy_rows()
    rows[2] = dict(rows[2], text="the pan, I mean it, works,\nand well\ntruly")
    rows[5] = dict(rows[5], text='a "fine" pan\r\nreally')
    path = write_rows(tmp_path / ("multi.csv" if delimiter == "," else "multi.tsv"), rows)
    dataset = load(path)
    every = {ex.text: ex for split in SPLITS for ex in dataset.splits[split]}
    assert every[rows[2]["text"]].where == f"{path}:4"  # the line the row starts on
    assert rows[5]["text"] in every
    assert dataset.summary()["total"] == N_TOY


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_named_pair_column_that_no_row_has(tmp_path, fmt):
    path = write_toy_dataset(tmp_path, fmt, pairs=True)
    message = data_error(path, text_pair_column="question")
    assert message.startswith(f"{path}: no column 'question' in any row (columns: text, label, domain, text_pair)")
    assert "--text-pair-column" in message
    assert load(write_toy_dataset(tmp_path / "plain", fmt)).summary()["total"] == N_TOY  # the default is optional


def write_review_domain(root: Path, positive: str, negative: str | None = None) -> Path:
    (root / "books").mkdir(parents=True, exist_ok=True)
    (root / "books" / "positive.review").write_text(positive, encoding="utf-8")
    (root / "books" / "negative.review").write_text(negative or review_xml(["bad"] * 10), encoding="utf-8")
    return root / "books" / "positive.review"


def test_review_without_closing_tag(tmp_path):
    xml = review_xml(["good"] * 10)
    lines = xml.splitlines()
    opening = [i + 1 for i, line in enumerate(lines) if line == "<review>"]
    del lines[[i for i, line in enumerate(lines) if line == "</review>"][2]]  # the third review's
    path = write_review_domain(tmp_path, "\n".join(lines) + "\n")
    message = data_error(tmp_path)
    third, fourth = opening[2], opening[3] - 1  # one line fewer before the fourth
    assert (third, fourth) == (30, 43)
    assert message.startswith(f"{path}:{third}: <review> is not closed before the next <review> (line {fourth})")


def test_review_with_stray_closing_tag(tmp_path):
    path = write_review_domain(tmp_path, review_xml(["good"] * 10).replace("<reviews>\n", "<reviews>\n</review>\n"))
    assert data_error(tmp_path) == f"{path}:2: </review> without an opening <review>"


def test_review_never_closed_at_the_end(tmp_path):
    xml = review_xml(["good"] * 10).replace("</reviews>\n", "<review>\n<review_text>\nlast\n")
    path = write_review_domain(tmp_path, xml)
    last = xml.splitlines().index("<review>", 130) + 1
    assert data_error(tmp_path).startswith(f"{path}:{last}: <review> is never closed")


def test_review_without_review_text(tmp_path):
    xml = review_xml(["good"] * 10).replace("</review_text>", "</reviewtext>", 1)
    path = write_review_domain(tmp_path, xml)
    assert data_error(tmp_path).startswith(f"{path}:2: <review> without a <review_text>")


def test_review_file_without_reviews(tmp_path):
    path = write_review_domain(tmp_path, "<reviews>\n</reviews>\n")
    assert data_error(tmp_path) == f"{path}: no <review> elements found"


# --------------------------------------------------------------------------- `metakd data`


def run_data(*args: str):
    return CliRunner().invoke(cli, ["data", *map(str, args)], catch_exceptions=False)


BAD_INPUTS = {
    "empty": lambda tmp: write_bytes(tmp / "empty.jsonl", b""),
    "no-text": lambda tmp: with_line(tmp, json.dumps({"label": "positive", "domain": "books"})),
    "latin-1": lambda tmp: write_bytes(tmp / "l1.csv", "text,label,domain\ncaf\u00e9,positive,books\n".encode("latin-1")),
    "bad-json": lambda tmp: with_line(tmp, "{oops"),
    "csv-fields": lambda tmp: write_bytes(tmp / "f.csv", b"text,label,domain\ngood,positive\n"),
    "missing": lambda tmp: tmp / "missing.jsonl",
    "one-domain-label": lambda tmp: with_line(tmp, json.dumps({"text": "x", "label": "odd", "domain": "books"})),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_reports_bad_data_as_one_line(tmp_path, case):
    path = BAD_INPUTS[case](tmp_path)
    result = run_data(path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in result.output


def test_cli_reports_an_unknown_column_flag(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    result = run_data(path, "--text-column", "body")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:1: no column 'body'")


def test_cli_data_json(tmp_path):
    result = run_data(write_toy_dataset(tmp_path, "folder"), "--json", "--split-seed", "7")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["total"] == N_TOY
    assert summary["labels"] == LABELS
    assert list(summary["domains"]) == DOMAINS


def test_cli_data_table(tmp_path):
    path = write_toy_dataset(tmp_path, "splits")
    result = run_data(path)
    assert result.exit_code == 0, result.output
    for word in (*DOMAINS, "total", "given splits", "label negative"):
        assert word in result.stdout
    assert result.stderr == ""


def test_cli_data_custom_columns(tmp_path):
    rows = [{"body": r["text"], "y": r["label"], "site": r["domain"]} for r in toy_rows()]
    path = write_rows(tmp_path / "c.tsv", rows)
    result = run_data(path, "--text-column", "body", "--label-column", "y", "--domain-column", "site",
                      "--limit-per-domain", "20", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == 60


# --------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_amazon_multi_domain_sentiment(shared_data):
    dataset = load(shared_data)
    summary = dataset.summary()
    assert dataset.layout == "amazon"
    assert summary["total"] == 8000
    assert summary["labels"] == ["negative", "positive"]
    assert list(summary["domains"]) == ["books", "dvd", "electronics", "kitchen"]
    for entry in summary["domains"].values():
        assert entry["labels"] == {"negative": 1000, "positive": 1000}
        assert [entry[s] for s in SPLITS] == [1600, 200, 200]
    assert all(ex.text and "<" not in ex.text[:1] for ex in dataset.train)


# --------------------------------------------------------------------------- tokenisation


def test_encode_and_collate(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = load(write_toy_dataset(tmp_path, "jsonl", pairs=True))
    encoded = encode(dataset.train, dataset, tokenizer, max_length=12)
    assert len(encoded) == len(dataset.train)
    assert max(len(ids) for ids in encoded.input_ids) == 12  # truncated
    assert all(ids[0] == tokenizer.cls_token_id for ids in encoded.input_ids)
    assert tokenizer.unk_token_id not in {i for ids in encoded.input_ids for i in ids}
    assert encoded.token_type_ids is not None and any(1 in t for t in encoded.token_type_ids)
    assert encoded.labels == [dataset.label_id(ex.label) for ex in dataset.train]
    assert encoded.domains == [dataset.domain_id(ex.domain) for ex in dataset.train]

    single = encode(dataset.dev, dataset, tokenizer, max_length=64)
    indices = [3, 0, 5]
    batch = collate(single, indices, tokenizer.pad_token_id)
    lengths = [len(single.input_ids[i]) for i in indices]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [single.labels[i] for i in indices]
    assert batch["index"].tolist() == indices

    model = AutoModel.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 32
    model_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hidden = model(**model_inputs).last_hidden_state
    assert hidden.shape == (3, max(lengths), 32)


def test_tiny_tokenizer_covers_the_example_dataset(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = load(EXAMPLES)
    encoded = encode(dataset.train, dataset, tokenizer, max_length=128)
    assert tokenizer.unk_token_id not in {i for ids in encoded.input_ids for i in ids}


def test_toy_given_splits_helper():
    assert [toy_split(i) for i in range(5)] == ["train", "train", "train", "dev", "test"]
    assert Counter(toy_split(i) for i in range(TOY_PER_LABEL)) == {"train": 12, "dev": 4, "test": 4}


# --------------------------------------------------------------------------- domain filter


def test_domains_filter_keeps_the_named_domains_before_splitting(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    full = load(path)
    kept = load(path, domains=["books", "kitchen"])
    assert kept.domains == ["books", "kitchen"]
    for split in SPLITS:  # the split of a kept domain does not depend on the others
        assert texts(kept.splits[split]) == texts([ex for ex in full.splits[split] if ex.domain != "electronics"])
    assert "no domain 'garden' in the data (domains: books, electronics, kitchen)" in data_error(path, domains=["garden"])
    result = CliRunner().invoke(cli, ["data", str(path), "--domains", "books,kitchen", "--json"])
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["domains"]) == ["books", "kitchen"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_huge_line_is_a_user_error_naming_the_line(tmp_path, suffix):
    from metakd_cli.data.rows import MAX_FIELD_CHARS

    huge = "word " * (MAX_FIELD_CHARS // 5 + 10)
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        lines = [json.dumps({"text": "fine", "label": "a", "domain": "x"}), json.dumps({"text": huge, "label": "b", "domain": "x"})]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text(f"text,label,domain\nfine,a,x\n{huge},b,x\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"data{suffix}:(2|3)\b.*(characters long|malformed|field larger)"):
        load_dataset(DataConfig(path=str(path)))


def test_batch_rows_lands_on_the_batchs_device():
    """Per-row tensors (t, lambda, soft labels) stay on the CPU; a batch's rows of them follow the batch."""
    import torch

    from metakd_cli.data.encode import batch_rows

    values = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    index = torch.tensor([2, 0])
    assert batch_rows(values, index).tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert batch_rows(values, index).device == index.device
    assert batch_rows(values, index, "meta").device.type == "meta"  # a device other than the values'
    if torch.cuda.is_available():  # where a GPU exists: a CUDA batch index, CPU values (values[index] raises)
        rows = batch_rows(values, index.cuda())
        assert rows.device.type == "cuda" and rows.cpu().tolist() == [[4.0, 5.0], [0.0, 1.0]]
