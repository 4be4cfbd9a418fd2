"""bench/common.py on made-up run folders: when a folder is done with a recipe's settings (so the driver need not
start `metakd run`), copies of a run folder that follow its step ids, and the rows eval scored."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.common import ROOT, data_path, done, recipe as recipe_of, relative_where, scored_rows, selection
from bench.common import start_from
from metakd_cli.core.run_dir import LOCK_FILE, RunDir

LATER = "9999-01-01T00:00:00+00:00"  # an eval written after any step finished
AMAZON = ROOT / "bench" / "recipes" / "amazon.yaml"


def recipe(sets: list[str], path: Path = AMAZON):
    return recipe_of(sets, path)


def fake_run(folder: Path, sets: list[str], steps: str, model: str, correct: list[int], domain: str = "kitchen",
             written: str = LATER, path: Path = AMAZON) -> Path:
    """A run folder whose manifest records ``steps`` with the recipe's settings, and eval's rows of ``model``
    (``correct``: 1 = the gold label) under the recipe's eval selection."""
    config = recipe(sets, path)
    run = RunDir(folder)
    data = {"config": {**asdict(config.data), "path": str(data_path(config))}, "fingerprint": "f", "domains": [domain]}
    for step in (s for s in steps.split(",") if s != "eval"):
        run.record_step(step, {"config": asdict(getattr(config, step))}, data if step == "fit" else None)
        run.write_metrics(step, {"seconds": 120.0, "train_rows": {domain: 10}})
    key = selection(config)
    run.write_metrics("eval", {"selections": {key: {"written": written}}})
    run.write_metrics("predictions", {key: {
        "where": [f"{domain}.jsonl:{i}" for i in range(len(correct))], "domain": [domain] * len(correct),
        "label": ["positive"] * len(correct), "models": {model: ["positive" if c else "negative" for c in correct]}}})
    return folder


def test_done_needs_the_same_settings_and_an_eval_after_the_steps(tmp_path: Path):
    sets = ["distill.method=tinybert", "distill.domain=kitchen", "eval.domains=kitchen"]
    folder = fake_run(tmp_path / "run", sets, "fit,distill,eval", "student", [1, 0, 1])
    config = recipe(sets)
    assert done(folder, config, "fit,distill,eval", selection(config))
    assert done(folder, config, "fit,distill")  # no eval asked for
    other = recipe([*sets, "distill.seed=7"])
    assert not done(folder, other, "fit,distill,eval", selection(other))  # `metakd run` would distil again
    assert done(folder, other, "fit,eval", selection(config))  # the fit is the same
    assert not done(folder, recipe([*sets, "data.split_seed=1"]), "fit")  # other data
    assert not done(folder, config, "fit,distill,export", None)  # a step never run
    assert not done(folder, config, "fit,distill,eval", "split=test domains=kitchen models=int8")

    stale = fake_run(tmp_path / "stale", sets, "fit,distill,eval", "student", [1], written="2000-01-01T00:00:00+00:00")
    assert not done(stale, config, "fit,distill,eval", selection(config))  # eval's rows predate the student


def test_scored_rows_per_domain(tmp_path: Path):
    sets = ["eval.models=teacher", "eval.domains=kitchen"]
    folder = fake_run(tmp_path / "run", sets, "fit,eval", "teacher", [1, 0, 0, 1])
    scored = scored_rows(folder, recipe(sets), "teacher")
    assert scored.correct == {"kitchen": [1, 0, 0, 1]}
    assert scored.where["kitchen"][1] == "kitchen.jsonl:1"
    assert scored_rows(folder, recipe(sets), "student") is None
    assert scored_rows(tmp_path / "nothing", recipe(sets), "teacher") is None


def test_a_rows_place_is_relative_to_the_data_root(tmp_path: Path):
    root = tmp_path / "data"
    assert relative_where(f"{root}/books/negative.review:12", root) == "books/negative.review:12"
    assert relative_where(f"{tmp_path}/other/books.tsv:3", root) == f"{tmp_path}/other/books.tsv:3"  # outside
    assert relative_where("books.tsv:3", root) == "books.tsv:3"  # already relative
    assert relative_where("C:/data/x.tsv", root) == "C:/data/x.tsv"  # no line: not a place metakd writes


def test_start_from_copies_a_run_once_per_version_of_its_steps(tmp_path: Path):
    teacher = fake_run(tmp_path / "teacher", [], "fit,eval", "teacher", [1, 1])
    (teacher / "teacher").mkdir()
    (teacher / "teacher" / "model.safetensors").write_bytes(b"weights")
    student = tmp_path / "students" / "books-s1"
    start_from(teacher, student)
    weights = student / "teacher" / "model.safetensors"
    assert weights.stat().st_ino == (teacher / "teacher" / "model.safetensors").stat().st_ino  # a hard link
    assert not (student / LOCK_FILE).exists() and not (tmp_path / "students" / "books-s1.partial").exists()
    RunDir(student).record_step("distill", {"config": {}})
    start_from(teacher, student)  # the same fit: the copy and its distill stay
    assert "distill" in json.loads((student / "manifest.json").read_text())["steps"]
    RunDir(teacher).record_step("fit", {"config": {}})  # the teacher fitted again: a fresh copy
    start_from(teacher, student)
    assert "distill" not in json.loads((student / "manifest.json").read_text())["steps"]


def test_a_run_folder_being_written_is_not_copied(tmp_path: Path):
    """Another process holding the source's lock (a fit running there): metakd's one-line lock error, no copy."""
    import subprocess
    import sys

    import pytest

    from metakd_cli.core.errors import UserError

    teacher = fake_run(tmp_path / "teacher", [], "fit,eval", "teacher", [1])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom metakd_cli.core.run_dir import RunDir\n"
                               f"with RunDir({str(teacher)!r}).lock('fit'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="is in use by pid"):
            start_from(teacher, tmp_path / "student")
        assert not (tmp_path / "student").exists()
    finally:
        holder.kill()
        holder.wait()
