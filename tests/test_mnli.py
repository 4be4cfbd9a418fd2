"""MultiNLI as distributed (.jsonl and tab-separated .txt), on a few made-up rows in its format:
genre -> domain, sentence1/sentence2 -> pair, gold_label -> label, '-' rows skipped and counted,
train file -> train, dev_matched -> test, dev carved from train; the `domains` filter."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig, load_recipe
from metakd_cli.data.rows import MNLI_NO_LABEL
from metakd_cli.data.dataset import load_dataset
from metakd_cli.core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
GENRES = ["fiction", "government", "slate", "telephone", "travel"]
LABELS = ["contradiction", "entailment", "neutral"]
TXT_HEADER = [
    "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
    "sentence1", "sentence2", "promptID", "pairID", "genre", "label1", "label2", "label3", "label4", "label5",
]


def mnli_rows(genres: list[str], per_label: int, unlabelled: int, part: str) -> list[dict]:
    """Made-up MNLI records with every field the distribution has; ``unlabelled`` rows get '-'."""
    rows = []
    for genre in genres:
        for i in range(per_label):
            for label in LABELS:
                first = f'The {genre} clerk said "{label} {i}" twice.'
                rows.append({"gold_label": label, "sentence1": first, "sentence2": f"A {genre} sentence {i}.",
                             "genre": genre, "annotator_labels": [label], "pairID": f"{part}-{genre}-{label}-{i}",
                             "promptID": str(i), "sentence1_binary_parse": "( x )", "sentence2_binary_parse": "( y )",
                             "sentence1_parse": "(ROOT x)", "sentence2_parse": "(ROOT y)"})
        for i in range(unlabelled):
            rows.append({**rows[-1], "gold_label": "-", "pairID": f"{part}-{genre}-none-{i}",
                         "annotator_labels": ["neutral", "entailment", "contradiction"]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_txt(path: Path, rows: list[dict]) -> Path:
    """Tab-separated with a header, quotes written literally (as multinli_1.0_*.txt is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(TXT_HEADER)]
    for row in rows:
        labels = row["annotator_labels"] + [""] * (5 - len(row["annotator_labels"]))
        values = {**row, **{f"label{k + 1}": labels[k] for k in range(5)}}
        lines.append("\t".join(str(values[name]) for name in TXT_HEADER))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_mnli(root: Path, fmt: str = "jsonl", extra_dev_genre: bool = True) -> Path:
    """A MultiNLI folder: train (10 rows per genre and label, 2 '-' per genre) and dev_matched
    (4 per genre and label, 1 '-' per genre; with a genre not in train when ``extra_dev_genre``)."""
    write = write_jsonl if fmt == "jsonl" else write_txt
    write(root / f"multinli_1.0_train.{fmt}", mnli_rows(GENRES, 10, 2, "train"))
    dev_genres = GENRES + (["letters"] if extra_dev_genre else [])
    write(root / f"multinli_1.0_dev_matched.{fmt}", mnli_rows(dev_genres, 4, 1, "dev"))
    write(root / f"multinli_1.0_dev_mismatched.{fmt}", mnli_rows(["oup", "verbatim"], 4, 1, "mm"))
    return root


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_mnli_folder_maps_train_and_dev_matched(tmp_path, fmt):
    root = write_mnli(tmp_path / "multinli_1.0", fmt)
    dataset = load_dataset(DataConfig(path=str(root), domains=GENRES))
    assert dataset.layout == "mnli" and dataset.given_splits
    assert dataset.domains == GENRES and dataset.labels == LABELS
    # dev_matched is the test split, as it is in the paper; dev_mismatched is not read
    assert len(dataset.test) == len(GENRES) * len(LABELS) * 4
    assert {ex.where.split(":")[0].rsplit("/", 1)[-1] for ex in dataset.test} == {f"multinli_1.0_dev_matched.{fmt}"}
    # dev carved from train: 10% of each (genre, label) group, seeded; nothing lost
    assert len(dataset.train) + len(dataset.dev) == len(GENRES) * len(LABELS) * 10
    assert Counter((ex.domain, ex.label) for ex in dataset.dev) == {(g, lab): 1 for g in GENRES for lab in LABELS}
    assert not {ex.where for ex in dataset.dev} & {ex.where for ex in dataset.train}
    # the pair and the label come from their own fields, quotes kept literally
    first = dataset.train[0]
    assert first.text.startswith("The fiction clerk said \"") and first.text_pair.startswith("A fiction sentence")
    assert first.label in LABELS and first.domain == "fiction"
    # '-' rows are skipped and counted: 2 per genre in train, 1 per kept dev_matched genre (+ letters)
    assert dataset.skipped == {MNLI_NO_LABEL: 2 * len(GENRES) + len(GENRES) + 1}
    assert dataset.summary()["skipped"] == {MNLI_NO_LABEL: 16}
    again = load_dataset(DataConfig(path=str(root), domains=GENRES))
    assert again.fingerprint() == dataset.fingerprint()
    other_seed = load_dataset(DataConfig(path=str(root), domains=GENRES, split_seed=7))
    assert {ex.where for ex in other_seed.dev} != {ex.where for ex in dataset.dev}


def test_jsonl_is_preferred_when_both_forms_ship(tmp_path):
    root = write_mnli(tmp_path / "mnli", "jsonl")
    write_txt(root / "multinli_1.0_train.txt", mnli_rows(["fiction"], 1, 0, "txt"))  # fiction only: reading it would fail
    write_txt(root / "multinli_1.0_dev_matched.txt", mnli_rows(["fiction"], 1, 0, "txt"))
    dataset = load_dataset(DataConfig(path=str(root), domains=GENRES))
    assert all(".jsonl:" in ex.where for split in dataset.splits.values() for ex in split)


def test_a_dev_genre_missing_from_train_names_the_filter(tmp_path):
    root = write_mnli(tmp_path / "mnli", "jsonl")
    with pytest.raises(UserError, match=r"letters are in dev_matched but not in the train file; .*--domains "
                                        r"fiction,government,slate,telephone,travel"):
        load_dataset(DataConfig(path=str(root)))
    with pytest.raises(UserError, match=r"no domain 'poetry' in the data \(domains: fiction, "):
        load_dataset(DataConfig(path=str(root), domains=["fiction", "poetry"]))


def test_domains_filter_keeps_only_the_named_domains(tmp_path):
    root = write_mnli(tmp_path / "mnli", "txt", extra_dev_genre=False)
    dataset = load_dataset(DataConfig(path=str(root), domains=["fiction", "travel"]))
    assert dataset.domains == ["fiction", "travel"]
    assert {ex.domain for split in dataset.splits.values() for ex in split} == {"fiction", "travel"}


def test_a_single_mnli_file_is_split_like_any_table(tmp_path):
    path = write_jsonl(tmp_path / "multinli_1.0_train.jsonl", mnli_rows(GENRES[:2], 10, 3, "train"))
    dataset = load_dataset(DataConfig(path=str(path)))
    assert dataset.layout == "mnli-file" and not dataset.given_splits
    assert dataset.domains == GENRES[:2]
    assert dataset.summary()["total"] == 2 * 3 * 10
    assert dataset.skipped == {MNLI_NO_LABEL: 6}


def test_mnli_errors_name_the_file_and_line(tmp_path):
    root = tmp_path / "bad"
    write_mnli(root, "txt", extra_dev_genre=False)
    train = root / "multinli_1.0_train.txt"
    lines = train.read_text().splitlines()
    lines[3] = "entailment\tonly two fields"
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"multinli_1.0_train.txt:4: 2 tab-separated fields"):
        load_dataset(DataConfig(path=str(root)))
    (root / "multinli_1.0_train.txt").unlink()
    with pytest.raises(UserError, match=r"needs multinli_1.0_train.jsonl \(or .txt\)"):
        load_dataset(DataConfig(path=str(root)))


def test_metakd_data_shows_the_skipped_rows(tmp_path):
    root = write_mnli(tmp_path / "mnli", "jsonl")
    result = CliRunner().invoke(cli, ["data", str(root), "--domains", ",".join(GENRES), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == {MNLI_NO_LABEL: 16}
    table = CliRunner().invoke(cli, ["data", str(root), "--domains", ",".join(GENRES)])
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "16 rows skipped" in text and "dev_matched -> test" in text


def test_the_mnli_recipe_keeps_the_papers_five_genres():
    path = REPO_ROOT / "recipes" / "mnli-paper.yaml"
    recipe = load_recipe(path)
    assert recipe.data.domains == GENRES
    assert path.read_text(encoding="utf-8").startswith("#")
    assert "metakd run mnli-paper" in path.read_text(encoding="utf-8")
