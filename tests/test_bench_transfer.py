"""The transfer suite (bench/suites/transfer.yaml): its systems are valid overrides of the recipe; the all-labels
teacher and student are keep's systems (so they are borrowed, not trained twice); the 80% unlabelled file holds
exactly the training texts that --train-fraction 0.2 leaves out; the MPNet path starts from mpnet's teacher."""

from __future__ import annotations

import json

from bench import transfer_set
from bench.common import recipe
from bench.suite import load, table
from conftest import check_bench_system


def test_every_system_is_a_valid_override_of_the_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite, keep = load("transfer", tmp_path), load("keep", tmp_path)
    for name in suite.systems:
        check_bench_system(suite, name)
    few = recipe(suite.sets_of("s20-transfer"), suite.recipe)
    assert few.distill.train_fraction == 0.2 and few.distill.transfer[0] == str(
        (tmp_path / "runs" / "transfer" / transfer_set.UNLABELLED).resolve())
    teacher20 = recipe(suite.sets_of("teacher20"), suite.recipe).fit
    assert teacher20.train_fraction == 0.2 and teacher20.epochs is None
    for student in ("s20", "s20-transfer", "s20-aug4", "s20-meta-transfer", "s20-meta-transfer-s1"):
        # its copied fit is teacher20's: finished only with teacher20's fit settings, which it inherits
        assert recipe(suite.sets_of(student), suite.recipe).fit == teacher20, student
    for ours, theirs in suite.spec["borrow"].items():  # the same settings: a finished keep folder is this system
        assert suite.sets_of(ours) == keep.sets_of(theirs.split("/")[1]) and suite.recipe == keep.recipe


def test_the_unlabelled_file_is_what_the_fraction_leaves_out(tmp_path):
    from conftest import write_toy_dataset
    from metakd_cli.data.dataset import fraction_indices, load_dataset

    data = write_toy_dataset(tmp_path / "data")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"data:\n  path: {data}\n", encoding="utf-8")
    suite = load("transfer", tmp_path)
    suite.recipe = recipe_file
    rows = [json.loads(line) for line in transfer_set.write_unlabelled(suite).read_text(encoding="utf-8").splitlines()]
    dataset = load_dataset(recipe([], recipe_file).data)
    labelled = set(fraction_indices(dataset.train, 0.2, dataset.split_seed))
    expected = [{"text": ex.text, "domain": ex.domain} for i, ex in enumerate(dataset.train) if i not in labelled]
    assert rows == expected and 0 < len(rows) < len(dataset.train)
    assert all(set(row) == {"text", "domain"} for row in rows)  # no label travels with them


def test_nothing_finished_is_not_measured(tmp_path):
    document = table(load("transfer", tmp_path))
    assert set(document["results"].values()) == {"not measured"}
    assert document["tests"] == {} and document["label_speed"] == "not measured"
    assert all(t["status"] == "not measured" for t in document["targets"])
    assert list(document) == ["setup", "results", "tests", "mpnet", "targets", "label_speed"]


def test_the_mpnet_paths_systems_are_valid_overrides_of_its_recipe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, keep, mpnet = load("transfer").mpnet, load("keep").mpnet, load("mpnet")
    assert set(keep.systems) < set(path.systems)
    for name in path.systems:
        check_bench_system(path, name)
        assert path.systems[name].start in (None, "teacher-meta"), name  # every student starts from mpnet's teacher
    assert path.runs == mpnet.runs and path.recipe == mpnet.recipe
    assert path.systems["teacher-meta"] == mpnet.systems["teacher-meta"]  # the same folder, not a refit
    assert path.systems["keep-kd"] == keep.systems["keep-kd"]
