"""Property-based: random bytes and random table shapes either load or raise the user error."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metakd_cli.core.config import DataConfig
from metakd_cli.data.dataset import load_dataset
from metakd_cli.core.errors import UserError

SUFFIXES = [".jsonl", ".csv", ".tsv"]
cells = st.one_of(st.text(max_size=12), st.integers(-3, 3), st.none(), st.booleans(), st.floats(allow_nan=True))
columns = st.sampled_from(["text", "label", "domain", "text_pair", "other", ""])


def _load(path: Path) -> None:
    try:
        load_dataset(DataConfig(path=str(path)))
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES + [".review"]))
def test_random_bytes_never_crash_a_reader(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as tmp:
        if suffix == ".review":
            folder = Path(tmp) / "books"
            folder.mkdir()
            (folder / "positive.review").write_bytes(data)
            (folder / "negative.review").write_bytes(b"<review><review_text>ok</review_text></review>")
            _load(Path(tmp))
        else:
            path = Path(tmp) / f"data{suffix}"
            path.write_bytes(data)
            _load(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.lists(columns, min_size=1, max_size=5),
    rows=st.lists(st.lists(cells, min_size=0, max_size=6), max_size=25),
    suffix=st.sampled_from(SUFFIXES),
)
def test_random_table_shapes_load_or_raise_user_error(header, rows, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        if suffix == ".jsonl":
            lines = [json.dumps(dict(zip(header, row))) for row in rows]
            path.write_text("\n".join(lines), encoding="utf-8")
        else:
            buffer = io.StringIO()
            writer = csv.writer(buffer, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writerow(header)
            for row in rows:
                writer.writerow(["" if c is None else c for c in row])
            path.write_text(buffer.getvalue(), encoding="utf-8")
        _load(path)
