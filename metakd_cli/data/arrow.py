"""Arrow-backed data: Parquet files and Hugging Face `datasets` folders and hub ids.

Sources (the column flags and the checks are data.py's, row by row, through ``read_records``):

* a ``.parquet`` file, alone, one per domain, or as given splits (``train.parquet``,
  ``train-00000-of-00002.parquet`` ...: datasets' shard names count as the split's name; shards
  of one split are read in order) — data.py's layouts, with ``.parquet`` among the table suffixes;
* a folder of split folders holding Parquet shards (``train/0000.parquet``, ``test/...``), as the
  hub's Parquet conversion lays them out;
* a folder written by ``Dataset.save_to_disk`` (rows still to be split) or
  ``DatasetDict.save_to_disk`` (its splits kept as given splits; train / validation (dev, valid,
  val) / test; a dict without a validation split gets dev carved from train, seeded; other
  splits, such as IMDb's ``unsupervised``, are skipped and counted);
* a hub id (``imdb``, ``owner/name``, ``owner/name:config``), through ``datasets.load_dataset``, for users
  online.

A ``ClassLabel`` column's integers become its names. Parquet needs ``pyarrow``; saved folders and
hub ids need ``datasets``: both come with ``pip install 'metakd-cli[datasets]'``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from metakd_cli.core.config import DataConfig
from metakd_cli.core.errors import UserError
from metakd_cli.data.parquet import BATCH_ROWS, INSTALL, first_line, named, require

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?(:[A-Za-z0-9][A-Za-z0-9_.-]*)?")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".review", ".txt", ".arrow")

def dataset_records(dataset) -> Iterable[tuple[int, dict]]:
    """(row number from 1, row mapping) of a `datasets.Dataset`, ClassLabel columns as names."""
    names = {column: list(feature.names) for column, feature in dataset.features.items()
             if type(feature).__name__ == "ClassLabel"}
    number = 0
    for batch in dataset.with_format(None).iter(batch_size=BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            number += 1
            yield number, named(dict(zip(columns, values)), names)


def _from_datasets(obj, where: str, cfg: DataConfig, layout: str) -> tuple[str, dict | list, Counter[str]]:
    """(layout, rows, skipped) of a Dataset (rows still to be split) or a DatasetDict (given splits)."""
    from metakd_cli.data.rows import SPLIT_ALIASES, SPLITS, read_records

    skipped: Counter[str] = Counter()
    if not hasattr(obj, "keys"):  # a Dataset: one table, split by metakd
        return layout, read_records(where, "arrow", dataset_records(obj), cfg), skipped
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for name in obj.keys():
        split = SPLIT_ALIASES.get(name.lower())
        if split is None:
            skipped[f"split '{name}' (not train / validation / test)"] += len(obj[name])
            continue
        splits[split].extend(read_records(f"{where}/{name}", "arrow", dataset_records(obj[name]), cfg))
    return _given(splits, where, sorted(obj.keys()), f"{layout}-splits", skipped)


def _given(splits: dict[str, list], where: str, names: list[str], layout: str,
           skipped: Counter[str]) -> tuple[str, dict | list, Counter[str]]:
    """Given splits; a train split alone is rows to split; a missing test split is refused."""
    if splits["train"] and not splits["dev"] and not splits["test"]:
        return layout.removesuffix("-splits"), splits["train"], skipped
    for split in ("train", "test"):
        if not splits[split]:
            raise UserError(f"{where}: no '{split}' split with rows (splits: {', '.join(names) or 'none'}); given "
                            "splits need train and test (validation is carved from train when missing)")
    return layout, splits, skipped


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def _parquet_split_folders(folder: Path) -> dict[str, list[Path]]:
    """{split: its .parquet files, in order} for a folder of split folders (``train/0000.parquet`` ...)."""
    from metakd_cli.data.rows import SPLIT_ALIASES

    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() == ".parquet")
        if files and sub.name.lower() in SPLIT_ALIASES:
            found.setdefault(SPLIT_ALIASES[sub.name.lower()], []).extend(files)
    return found


def read_arrow_folder(folder: Path, cfg: DataConfig) -> tuple[str, dict | list, Counter[str]] | None:
    """A saved `datasets` folder or a folder of Parquet split folders as (layout, rows, skipped); None for
    any other folder (data.py's layouts read it)."""
    if is_saved_dataset(folder):
        datasets = require("datasets", f"{folder}: reading a `datasets` save_to_disk folder")
        try:
            obj = datasets.load_from_disk(str(folder))
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a damaged folder
            raise UserError(f"{folder}: cannot load the saved dataset ({first_line(exc)}); save it again with "
                            "save_to_disk") from None
        return _from_datasets(obj, str(folder), cfg, "datasets")
    split_files = _parquet_split_folders(folder)
    if not split_files:
        return None
    from metakd_cli.data.rows import SPLITS, read_table

    splits: dict[str, list] = {s: [] for s in SPLITS}
    for split, files in split_files.items():
        for path in files:
            splits[split].extend(read_table(path, cfg))
    return _given(splits, str(folder), sorted(split_files), "parquet-splits", Counter())


def looks_like_hub_id(name: str) -> bool:
    """``imdb``, ``owner/name`` or ``owner/name:config``: not a path (no leading ``.``/``/``/``~``, no data file
    suffix)."""
    return HUB_ID.fullmatch(name) is not None and not name.lower().endswith(DATA_SUFFIXES)


def read_hub_dataset(name: str, cfg: DataConfig) -> tuple[str, dict | list, Counter[str]]:
    """A dataset from the Hugging Face hub by id (online, or offline from the `datasets` cache), or the "no such
    file or folder" line."""
    missing = f"{Path(name).expanduser()}: no such file or folder"
    if not looks_like_hub_id(name):
        raise UserError(missing)
    try:
        import datasets
    except ImportError:
        raise UserError(f"{missing} (as a Hugging Face dataset id it needs the optional dependency `datasets`: "
                        f"{INSTALL})") from None
    offline = _datasets_offline()
    try:
        from huggingface_hub import HfApi

        repo, _, config = name.partition(":")
        if offline is None:  # one request first: with no network it fails at once, where load_dataset retries
            HfApi().dataset_info(repo, timeout=15)
        # offline, load_dataset reads its cache at once: every step after fit reloads a hub dataset this way
        datasets.utils.logging.set_verbosity_error()
        obj = datasets.load_dataset(repo, config or None)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated: one line either way
        reason = _hub_reason(exc)
        if offline is not None and (reason == "the hub is unreachable" or "OfflineMode" in str(exc)):
            reason = f"the hub is off ({offline}) and the datasets cache does not hold it"
        raise UserError(f"{missing}, nor a Hugging Face dataset id that loads ({reason}); offline, "
                        "give a folder saved with save_to_disk, or Parquet files") from None
    return _from_datasets(obj, name, cfg, "hub")


def _datasets_offline() -> str | None:
    """``NAME=value`` of the variable that puts `datasets` offline, None when online; datasets' own rule:
    HF_DATASETS_OFFLINE, when set, decides, else HF_HUB_OFFLINE."""
    import os

    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        value = os.environ.get(variable)
        if value is not None:
            return f"{variable}={value}" if value.strip().upper() in {"1", "ON", "YES", "TRUE"} else None
    return None


def _hub_reason(exc: BaseException) -> str:
    kind = type(exc).__name__
    if kind in ("RepositoryNotFoundError", "DatasetNotFoundError", "EntryNotFoundError"):
        return "the hub has no dataset of that id"
    if kind == "GatedRepoError":
        return "the dataset is gated: log in with `hf auth login` and accept its terms"
    if "Connection" in kind or "Timeout" in kind or "NameResolution" in str(exc):
        return "the hub is unreachable"
    return first_line(exc)[:200]
