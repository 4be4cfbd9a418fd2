"""Parquet files and `datasets` folders / hub ids (metakd_cli/data/arrow.py), on files the tests write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import toy_rows, toy_split, write_toy_dataset
from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig
from metakd_cli.core.errors import UserError
from metakd_cli.data.dataset import load_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

DOMAINS = ["books", "electronics", "kitchen"]
LABELS = ["negative", "positive"]


def load(path, **kwargs):
    return load_dataset(DataConfig(path=str(path), **kwargs))


def error(path, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load(path, **kwargs)
    return str(info.value)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def given_splits(rows: list[dict]) -> dict[str, list[dict]]:
    """The toy rows split 60/20/20 per (domain, label), as conftest's ``splits`` layout."""
    seen: dict[tuple, int] = {}
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        group = (row["domain"], row["label"])
        split = toy_split(seen.get(group, 0))
        seen[group] = seen.get(group, 0) + 1
        out["validation" if split == "dev" else split].append(row)
    return out


def rows_of(dataset) -> list[tuple]:
    return [(s, ex.text, ex.text_pair, ex.label, ex.domain) for s, rows in dataset.splits.items() for ex in rows]


# --------------------------------------------------------------------------- Parquet


def test_a_parquet_file_reads_as_the_same_jsonl_file(tmp_path):
    rows = toy_rows(pairs=True)
    from_parquet = load(write_parquet(tmp_path / "toy.parquet", rows))
    from_jsonl = load(write_toy_dataset(tmp_path, "jsonl", pairs=True))
    assert from_parquet.layout == "table" and not from_parquet.given_splits
    assert from_parquet.domains == DOMAINS and from_parquet.labels == LABELS
    assert from_parquet.fingerprint() == from_jsonl.fingerprint()
    assert from_parquet.train[0].where == f"{tmp_path / 'toy.parquet'}: row {from_parquet.train[0].where.split()[-1]}"


def test_sharded_split_files_as_datasets_writes_them_are_given_splits(tmp_path):
    folder = tmp_path / "data"
    splits = given_splits(toy_rows())
    half = len(splits["train"]) // 2
    write_parquet(folder / "train-00000-of-00002.parquet", splits["train"][:half])
    write_parquet(folder / "train-00001-of-00002.parquet", splits["train"][half:])
    write_parquet(folder / "validation-00000-of-00001.parquet", splits["validation"])
    write_parquet(folder / "test-00000-of-00001.parquet", splits["test"])
    dataset = load(folder)
    assert dataset.given_splits
    assert [ex.text for ex in dataset.train] == [r["text"] for r in splits["train"]]  # shards in order
    assert len(dataset.dev) == len(splits["validation"]) and len(dataset.test) == len(splits["test"])


def test_parquet_folder_without_a_validation_split_gets_dev_carved_from_train(tmp_path):
    folder = tmp_path / "data"
    splits = given_splits(toy_rows())
    write_parquet(folder / "train-00000-of-00001.parquet", splits["train"])
    write_parquet(folder / "test-00000-of-00001.parquet", splits["test"])
    dataset = load(folder)
    assert len(dataset.test) == len(splits["test"])
    assert len(dataset.train) + len(dataset.dev) == len(splits["train"]) and dataset.dev


def test_split_folders_of_parquet_shards(tmp_path):
    splits = given_splits(toy_rows())
    for name, rows in splits.items():
        write_parquet(tmp_path / "repo" / name / "0000.parquet", rows)
    dataset = load(tmp_path / "repo")
    assert dataset.layout == "parquet-splits" and dataset.given_splits
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [len(splits[s]) for s in splits]


def test_one_parquet_file_per_domain(tmp_path):
    rows = toy_rows()
    for domain in DOMAINS:
        write_parquet(tmp_path / "by-domain" / f"{domain}-00000-of-00001.parquet",
                      [{"text": r["text"], "label": r["label"]} for r in rows if r["domain"] == domain])
    dataset = load(tmp_path / "by-domain")
    assert dataset.layout == "file-per-domain" and dataset.domains == DOMAINS


def test_class_label_integers_become_their_names(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"]),
                                  "domain": datasets.Value("string")})
    rows = [{**r, "label": LABELS.index(r["label"])} for r in toy_rows()]
    path = tmp_path / "toy.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    assert pq.read_table(str(path)).column("label").type == pa.int64()  # integers on disk
    assert load(path).labels == LABELS


def test_the_column_flags_apply(tmp_path):
    rows = [{"review": r["text"], "stars": r["label"], "category": r["domain"]} for r in toy_rows()]
    dataset = load(write_parquet(tmp_path / "x.parquet", rows), text_column="review", label_column="stars",
                   domain_column="category")
    assert dataset.domains == DOMAINS and dataset.labels == LABELS


def test_errors_name_the_file_row_and_column(tmp_path):
    rows = toy_rows()
    rows[4] = {**rows[4], "text": " "}
    path = write_parquet(tmp_path / "bad.parquet", rows)
    assert error(path) == f"{path}: row 5: field 'text' is empty; every row needs a text"
    path = write_parquet(tmp_path / "cols.parquet", [{"body": r["text"], "label": r["label"], "domain": r["domain"]}
                                                     for r in rows])
    message = error(path)
    assert message.startswith(f"{path}: row 1: no column 'text' (columns: body, label, domain)")
    assert "--text-column" in message
    path = write_parquet(tmp_path / "nums.parquet", [{**r, "text": 7} for r in toy_rows()])
    assert error(path) == f"{path}: row 1: field 'text': expected a string, got int"
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    assert error(junk).startswith(f"{junk}: not a readable Parquet file (")


def test_without_pyarrow_one_line_gives_the_pip_command(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "toy.parquet", toy_rows())
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` raises ImportError
    assert error(path) == (f"{path}: reading Parquet needs the optional dependency `pyarrow`: "
                           "pip install 'metakd-cli[datasets]'")


# --------------------------------------------------------------------------- datasets folders


def test_dataset_save_to_disk_is_rows_to_split(tmp_path):
    datasets.Dataset.from_list(toy_rows()).save_to_disk(str(tmp_path / "saved"))
    dataset = load(tmp_path / "saved")
    assert dataset.layout == "datasets" and not dataset.given_splits
    assert dataset.fingerprint() == load(write_toy_dataset(tmp_path, "jsonl")).fingerprint()


def test_dataset_dict_splits_are_kept_as_given_splits(tmp_path):
    splits = given_splits(toy_rows())
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
        str(tmp_path / "dict"))
    dataset = load(tmp_path / "dict")
    assert dataset.layout == "datasets-splits" and dataset.given_splits
    assert [ex.text for ex in dataset.dev] == [r["text"] for r in splits["validation"]]
    assert [ex.text for ex in dataset.test] == [r["text"] for r in splits["test"]]
    assert dataset.train[0].where == f"{tmp_path / 'dict'}/train: row 1"


def test_dataset_dict_without_validation_carves_dev_and_skips_other_splits(tmp_path):
    splits = given_splits(toy_rows())
    extra = [{**r, "label": "unlabelled"} for r in splits["test"]]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(splits["train"]),
                          "test": datasets.Dataset.from_list(splits["test"]),
                          "unsupervised": datasets.Dataset.from_list(extra)}).save_to_disk(str(tmp_path / "dict"))
    dataset = load(tmp_path / "dict")
    assert dataset.dev and len(dataset.train) + len(dataset.dev) == len(splits["train"])
    assert dataset.skipped == {"split 'unsupervised' (not train / validation / test)": len(extra)}


def test_dataset_dict_errors_name_the_split_row_and_column(tmp_path):
    splits = given_splits(toy_rows())
    splits["test"][2] = {**splits["test"][2], "label": None}
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
        str(tmp_path / "dict"))
    assert error(tmp_path / "dict") == f"{tmp_path / 'dict'}/test: row 3: field 'label': missing or invalid label None"


def test_without_datasets_a_saved_folder_gives_the_pip_command(tmp_path, monkeypatch):
    datasets.Dataset.from_list(toy_rows()).save_to_disk(str(tmp_path / "saved"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert error(tmp_path / "saved") == (f"{tmp_path / 'saved'}: reading a `datasets` save_to_disk folder needs the "
                                         "optional dependency `datasets`: pip install 'metakd-cli[datasets]'")


# --------------------------------------------------------------------------- hub ids


def test_a_hub_id_loads_through_datasets(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: the tests set it, and the hub is mocked here
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    splits = given_splits(toy_rows())
    calls = []
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", lambda self, name, timeout=None: calls.append(name))
    loaded = []

    def load_dataset(name, config=None):
        loaded.append((name, config))
        return datasets.DatasetDict({n: datasets.Dataset.from_list(r) for n, r in splits.items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(tmp_path)
    dataset = load("someone/reviews")
    assert calls == ["someone/reviews"] and loaded == [("someone/reviews", None)]
    assert dataset.source == "someone/reviews" and dataset.layout == "hub-splits" and dataset.given_splits
    assert load("someone/reviews:books").source == "someone/reviews:books"
    assert loaded[-1] == ("someone/reviews", "books")


def test_an_unreachable_hub_or_a_missing_path_is_one_line(tmp_path, monkeypatch):
    def offline(self, name, timeout=None):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online in name, no network in fact
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", offline)
    monkeypatch.chdir(tmp_path)
    assert error("someone/reviews") == ("someone/reviews: no such file or folder, nor a Hugging Face dataset id that "
                                        "loads (the hub is unreachable); offline, give a folder saved with "
                                        "save_to_disk, or Parquet files")
    assert error(tmp_path / "missing.parquet") == f"{tmp_path / 'missing.parquet'}: no such file or folder"
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert error("reviews") == ("reviews: no such file or folder (as a Hugging Face dataset id it needs the optional "
                                "dependency `datasets`: pip install 'metakd-cli[datasets]')")


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_a_hub_id_loads_from_the_datasets_cache(tmp_path, monkeypatch, variable):
    # a run fitted on a hub id could not be distilled, evaluated or reported on a plane: the hub look-up before
    # load_dataset failed offline, before the datasets cache was tried
    splits = given_splits(toy_rows())
    cached = {"someone/reviews"}

    def no_network(self, name, timeout=None):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    def load_dataset(name, config=None):  # datasets offline: its cache, or "Couldn't reach" at once
        if name not in cached:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")
        return datasets.DatasetDict({n: datasets.Dataset.from_list(r) for n, r in splits.items()})

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", lambda self, name, timeout=None: None)
    monkeypatch.chdir(tmp_path)
    fitted = load("someone/reviews")  # fit, online
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", no_network)
    monkeypatch.setenv(variable, "1")
    reloaded = load("someone/reviews")  # distill, eval, report: reload_dataset, offline
    assert reloaded.fingerprint() == fitted.fingerprint() and reloaded.layout == "hub-splits"
    assert error("someone/other") == ("someone/other: no such file or folder, nor a Hugging Face dataset id that "
                                      f"loads (the hub is off ({variable}=1) and the datasets cache does not hold it); "
                                      "offline, give a folder saved with save_to_disk, or Parquet files")


def test_metakd_data_shows_a_parquet_source(tmp_path):
    path = write_parquet(tmp_path / "toy.parquet", toy_rows())
    result = CliRunner().invoke(cli, ["data", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary["domains"]) == DOMAINS and summary["total"] == len(toy_rows())
    table = CliRunner().invoke(cli, ["data", str(path)])
    assert "table, 3 domains, 2 labels" in table.stdout
