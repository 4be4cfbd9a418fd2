"""The bench driver (python -m bench) end to end on a tiny random teacher and the toy rows, into a temporary folder
(METAKD_BENCH_DIR): each runs `metakd run` on its recipe and writes a results file with the keys of the
committed one in bench/results/ (the figures mean nothing and are not checked). About a minute on 2 busy cores, so
marked slow: python -m pytest -m slow tests/test_bench_smoke.py"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_toy_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "bench" / "results"
DOMAINS = {"books", "dvd", "electronics", "kitchen"}  # the smoke run's table has books only
INT8 = ("meta->meta-int8", "meta->meta-int8-pc")
GONE = {"process_minutes", "rescored_accuracy"}  # the bench's own wall time of a step: metakd's seconds are kept
TINY = ["fit.epochs=1", "fit.max_length=16", "fit.lr=1e-3", "distill.intermediate_epochs=1", "distill.epochs=1",
        "eval.latency_rows=2"]


def bench(home: Path, *args: str) -> str:
    """`python -m bench ARGS` with its runs/ and results/ under ``home``."""
    env = {**os.environ, "METAKD_BENCH_DIR": str(home), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def keys(value, depth: int) -> set:
    """Every key down to ``depth`` levels, as paths; lists and the names of systems and seeds are looked into."""
    if depth == 0 or not isinstance(value, dict):
        return set()
    return {key for k, v in value.items() for key in ({k} | {f"{k}/{sub}" for sub in keys(v, depth - 1)})}


@pytest.fixture(scope="module")
def tiny_sets(tiny_model_dir: Path, tmp_path_factory) -> list[str]:
    data = write_toy_dataset(tmp_path_factory.mktemp("toy"), "jsonl")
    return [arg for item in [f"data.path={data}", f"fit.teacher={tiny_model_dir}", *TINY] for arg in ("--set", item)]


def test_amazon_writes_the_committed_files_keys(tiny_sets: list[str], tmp_path: Path):
    printed = bench(tmp_path, "run", "amazon", "--systems", "teacher-meta", "meta->meta", "meta->meta-int8",
                    "--seeds", "1", "--domains", "books", *tiny_sets)
    assert "meta->meta" in printed
    made, committed = (json.loads((folder / "amazon.json").read_text()) for folder in (tmp_path / "results", COMMITTED))
    assert set(made) == set(committed)
    for system in ("teacher-meta", "meta->meta", "meta->meta-int8"):
        assert set(made["results"][system]) - DOMAINS == set(committed["results"][system]) - DOMAINS, system
        sources = INT8 if system in INT8 else (system,)  # the older int8 records lack per_channel
        old = {k for s in sources for runs in committed["runs"][s].values() for r in runs.values() for k in r}
        (record,) = (r for runs in made["runs"][system].values() for r in runs.values())
        assert set(record) <= old and set(record) >= old - GONE, system
    assert set(made["tests"]["meta->meta-int8 vs meta->meta"]) == set(committed["tests"]["meta->meta-int8 vs meta->meta"])
    rows = json.loads((tmp_path / "results" / "amazon_predictions.json").read_text())
    old_rows = json.loads((COMMITTED / "amazon_predictions.json").read_text())
    assert set(rows) == set(old_rows) and set(rows["setup"]) == set(old_rows["setup"])
    assert rows["correct"]["meta->meta"]["books"]["1"]["domains"]["books"]

    again = bench(tmp_path, "run", "amazon", "--systems", "teacher-meta", "meta->meta", "--seeds", "1", "--domains",
                  "books", *tiny_sets)
    assert " $ metakd" not in again  # every folder done with these settings: nothing started


def test_teachers_and_students_write_the_committed_files_keys(tiny_sets: list[str], tmp_path: Path):
    bench(tmp_path, "run", "teachers", "--systems", "teacher-mix", *tiny_sets)
    bench(tmp_path, "run", "students", "--systems", "mix->tinybert", *tiny_sets)
    for name in ("teachers", "students"):
        made, committed = (json.loads((folder / f"{name}.json").read_text()) for folder in (tmp_path / "results",
                                                                                            COMMITTED))
        assert keys(made, 1) == keys(committed, 1) and set(made["setup"]) == set(committed["setup"]), name
        row = next(iter(made["results"].values()))
        assert set(row) - {"dvd"} == set(next(iter(committed["results"].values()))) - {"dvd"}, name  # no dvd rows
