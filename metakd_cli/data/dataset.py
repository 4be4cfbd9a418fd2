"""Domain-tagged datasets: the layouts a path may have, validation, seeded stratified splits (the rows themselves:
metakd_cli/data/rows.py; tokenisation: metakd_cli/data/encode.py).

Accepted layouts (DESIGN.md "Data"):

* one JSONL / CSV / TSV file with ``text``, optional ``text_pair``, ``label`` and
  ``domain`` columns (names configurable);
* a folder with one such file per domain (domain = file stem);
* a folder with ``train`` / ``dev`` / ``test`` files (domain column), or per-domain
  folders each holding such files: given splits are kept as they are;
* the Amazon multi-domain sentiment folders ``<domain>/{positive,negative}.review``;
* Parquet files in the layouts above (``train-00000-of-00002.parquet`` counts as ``train``), and
  `datasets` save_to_disk folders and hub ids: metakd_cli/data/arrow.py (optional extra ``datasets``);
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

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from metakd_cli.core.config import DataConfig, resolve_data_path
from metakd_cli.core.errors import UserError
from metakd_cli.data.rows import (
    AMAZON_FILES,
    SHARD_SUFFIX,
    SPLIT_ALIASES,
    SPLITS,
    TABLE_SUFFIXES,
    Dataset,
    Example,
    read_mnli_folder,
    is_mnli_file,
    read_mnli_file,
    read_review_file,
    read_table,
)

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
        from metakd_cli.data.arrow import read_hub_dataset

        return read_hub_dataset(cfg.path, cfg)  # a `datasets` hub id, or "no such file or folder"
    if path.is_file():
        if is_mnli_file(path):
            return ("mnli-file", *read_mnli_file(path))
        return "table", read_table(path, cfg), Counter()
    if any(is_mnli_file(p) for p in path.iterdir() if p.is_file()):
        return ("mnli", *read_mnli_folder(path))
    from metakd_cli.data.arrow import read_arrow_folder

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


def reload_dataset(run) -> tuple[DataConfig, Dataset]:
    """(DataConfig, Dataset) of a run folder's fit step (``run``: a RunDir), read again and checked against the
    fingerprint the manifest recorded: every step after fit reads the rows the teacher was fitted on, or refuses."""
    manifest = run.load()
    if "fit" not in manifest.steps or not manifest.data:
        raise UserError(f"{run.path}: no `fit` step recorded yet; run `metakd fit DATA` first")
    data_cfg = DataConfig(**manifest.data["config"])
    dataset = load_dataset(data_cfg)
    if dataset.fingerprint() != manifest.data["fingerprint"]:
        raise UserError(
            f"the data at {data_cfg.path} changed since `metakd fit` (fingerprint differs); re-run fit"
        )
    return data_cfg, dataset
