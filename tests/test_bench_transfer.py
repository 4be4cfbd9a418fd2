"""The transfer bench (bench/transfer.py): its systems are valid overrides of the recipe; the all-labels teacher
and student are bench.keep's systems (so they are borrowed, not trained twice); the 80% unlabelled file holds
exactly the training texts that --train-fraction 0.2 leaves out; the table pairs the 20% students."""

from __future__ import annotations

import json

from bench import keep, transfer
from bench.common import recipe
from conftest import check_bench_system


def test_every_system_is_a_valid_override_of_the_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    systems = transfer.systems(tmp_path)
    for name, system in systems.items():
        check_bench_system(transfer.RECIPE, name, system)
    few = recipe(list(systems["s20-transfer"].sets), transfer.RECIPE)
    assert few.distill.train_fraction == 0.2 and few.distill.transfer[0].endswith(transfer.UNLABELLED)
    teacher20 = recipe(list(systems["teacher20"].sets), transfer.RECIPE).fit
    assert teacher20.train_fraction == 0.2 and teacher20.epochs is None
    suite = transfer.Suite(transfer.RECIPE, tmp_path, systems)
    for student in ("s20", "s20-transfer", "s20-aug4", "s20-meta-transfer", "s20-meta-transfer-s1"):
        # its copied fit is teacher20's: finished only with teacher20's fit settings, which it inherits
        assert recipe(suite.sets_of(student), transfer.RECIPE).fit == teacher20, student
    for ours, theirs in transfer.BORROWED.items():  # the same settings: a finished keep folder is this system
        assert list(systems[ours].sets) == list(keep.SYSTEMS[theirs].sets)
        assert transfer.RECIPE == keep.RECIPE
    assert set(transfer.DEFAULT_ORDER) <= set(systems)
    assert {a for pair in transfer.PAIRS for a in pair} <= set(systems)


def test_the_unlabelled_file_is_what_the_fraction_leaves_out(tmp_path, monkeypatch):
    from conftest import write_toy_dataset
    from metakd_cli.data import fraction_indices, load_dataset

    data = write_toy_dataset(tmp_path / "data")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"data:\n  path: {data}\n", encoding="utf-8")
    monkeypatch.setattr(transfer, "RECIPE", recipe_file)
    path = transfer.write_unlabelled(tmp_path / "runs")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    config = recipe([], recipe_file)
    dataset = load_dataset(config.data)
    kept = set(fraction_indices(dataset.train, 0.2, dataset.split_seed))
    expected = [{"text": ex.text, "domain": ex.domain} for i, ex in enumerate(dataset.train) if i not in kept]
    assert rows == expected and 0 < len(rows) < len(dataset.train)
    assert all(set(row) == {"text", "domain"} for row in rows)  # no label travels with them


def test_nothing_finished_is_not_measured(tmp_path):
    document = transfer.table(tmp_path / "runs", tmp_path / "transfer.json")
    assert set(document["results"].values()) == {"not measured"}
    assert document["tests"] == {} and document["label_speed"] == "not measured"
    assert all(t["status"] == "not measured" for t in document["targets"])


def test_the_mpnet_paths_systems_are_valid_overrides_of_its_recipe(monkeypatch):
    from bench import mpnet

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert set(keep.MPNET_SYSTEMS) < set(transfer.MPNET_SYSTEMS)
    for name, system in transfer.MPNET_SYSTEMS.items():
        check_bench_system(mpnet.RECIPE, name, system)
        assert system.start in (None, "teacher-meta"), name  # every student starts from bench.mpnet's teacher
    assert transfer.MPNET_SUITE.runs == mpnet.RUNS and transfer.MPNET_SUITE.recipe == mpnet.RECIPE
    assert transfer.MPNET_SYSTEMS["teacher-meta"] == mpnet.SYSTEMS["teacher-meta"]  # the same folder, not a refit
