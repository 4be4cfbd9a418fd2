"""Parquet files, row by row (needs pyarrow: ``pip install 'metakd-cli[datasets]'``); a ClassLabel column's
integers become its names."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from metakd_cli.core.errors import UserError

INSTALL = "pip install 'metakd-cli[datasets]'"
BATCH_ROWS = 4096  # rows converted to Python objects at a time


def require(module: str, what: str):
    """Import ``module`` (an optional dependency), or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the optional dependency `{module.split('.')[0]}`: {INSTALL}") from None


# --------------------------------------------------------------------------- Parquet


def class_label_names(metadata: dict | None) -> dict[str, list[str]]:
    """{column: names} of the ClassLabel columns that `datasets` records in a Parquet schema's metadata."""
    try:
        info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
        features = info.get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    if not isinstance(features, dict):
        return {}
    return {column: list(spec["names"]) for column, spec in features.items()
            if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and isinstance(spec.get("names"), list)}


def named(record: dict, names: dict[str, list[str]]) -> dict:
    """The record with each ClassLabel column's integer replaced by its name (other values as they are)."""
    for column, labels in names.items():
        value = record.get(column)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
            record[column] = labels[value]
    return record


def parquet_records(path: Path) -> Iterable[tuple[int, dict]]:
    """(row number from 1, row mapping) of a Parquet file, a batch of rows at a time."""
    pq = require("pyarrow.parquet", f"{path}: reading Parquet")
    import pyarrow as pa

    try:
        handle = pq.ParquetFile(str(path))
        names = class_label_names(handle.schema_arrow.metadata)
        batches = handle.iter_batches(batch_size=BATCH_ROWS)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield number, named(record, names)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    if number == 0:
        raise UserError(f"{path}: no rows")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --------------------------------------------------------------------------- `datasets` objects
