"""bench/amazon.py's bookkeeping on made-up runs: seed means, teacher rows, the held-out table and its
paired tests (no model is trained; the figures are invented and only the arithmetic is checked)."""

from __future__ import annotations

import argparse

import pytest

from conftest import load_bench


@pytest.fixture(scope="module")
def amazon():
    return load_bench("amazon")


def _bench(amazon, **overrides):
    values = dict(systems=amazon.SYSTEMS, seeds=[1, 2], domains=amazon.DOMAINS, held_out=["books"],
                  intermediate_epochs=2, epochs=3, resamples=200, resume=False, dry_run=True)
    values.update(overrides)
    return amazon.Bench(argparse.Namespace(**values))


def _run(accuracy: dict) -> dict:
    return {"accuracy": accuracy, "minutes": {"distill": 1.0}}


def test_held_out_systems_for_one_domain(amazon):
    teachers, students = amazon.held_out_systems("dvd")
    assert teachers == {"held-out/dvd/meta-teacher-without": (
        "teacher-meta-without-dvd", [*amazon.META_FLAGS, "--hold-out", "dvd"])}
    assert students["held-out/dvd/books-teacher->tinybert"] == (
        "teacher-single", "tinybert", True, ["--teacher-domain", "books"])
    assert "held-out/dvd/dvd-teacher->tinybert" not in students  # the in-domain student is single->tinybert's
    assert students["held-out/dvd/meta-without->meta"][:2] == ("held-out/dvd/meta-teacher-without", "meta")


def test_results_and_held_out_table(amazon):
    bench = _bench(amazon)
    assert "held-out/books/meta-teacher-without" in bench.teacher_defs
    domains = amazon.DOMAINS
    bench.runs = {
        "teacher-single": {"all": {"42": _run({d: 90.0 for d in domains})}},
        "single->tinybert": {d: {"1": _run({d: 84.0}), "2": _run({d: 86.0})} for d in domains},
        "held-out/books/meta-teacher-without": {"all": {"42": _run({"books": 88.0})}},
        "held-out/books/dvd-teacher->tinybert": {"books": {"1": _run({"books": 80.0}), "2": _run({"books": 82.0}),
                                                           "3": _run({"books": 10.0})}},  # seed 3 not asked for
        "held-out/books/meta-without->tinybert": {"books": {"1": _run({"books": 83.0})}},
        "held-out/books/meta-without->meta": {"books": {"1": _run({"books": 84.0})}},
    }
    results = bench.results()
    assert set(results) == {"teacher-single", "single->tinybert"}  # held-out systems stay out of the main table
    assert results["single->tinybert"]["average"] == 85.0 and results["single->tinybert"]["std"] == 1.41
    assert results["teacher-single"]["seeds"] == [42]  # a teacher's own seed is kept whatever --seeds says

    rows = 10
    bench.rows_setup = {"rows": {"books": rows}}
    bench.correct = {
        "held-out/books/meta-without->meta": {"books": {"1": {"domains": {"books": [1] * 9 + [0]}}}},
        "held-out/books/meta-without->tinybert": {"books": {"1": {"domains": {"books": [1] * 7 + [0] * 3}}}},
    }
    table = bench.held_out()["books"]
    got = table["results"]
    assert got["in-domain teacher"]["accuracy"] == 90.0
    assert got["in-domain teacher -> tinybert"] == {"accuracy": 85.0, "std": 1.41, "seeds": [1, 2],
                                                     "system": "single->tinybert", "paper": 78.8}
    assert got["dvd teacher -> tinybert"]["accuracy"] == 81.0 and got["dvd teacher -> tinybert"]["seeds"] == [1, 2]
    # each row carries the paper's MNLI figure (DESIGN.md): the other genres' teachers give a range; the paper
    # has no held-out Meta-KD row
    assert got["dvd teacher -> tinybert"]["paper"] == "74.1 to 77.1"
    assert got["meta-teacher without H -> meta"]["paper"] is None
    assert got["meta-teacher without H"]["accuracy"] == 88.0 and got["meta-teacher without H"]["paper"] == 81.6
    assert "electronics teacher -> tinybert" not in got  # no runs: no row
    test = table["tests"]["held-out/books/meta-without->meta vs held-out/books/meta-without->tinybert"]
    assert test["diff"] == pytest.approx(20.0) and test["rows"] == rows


def test_seeds_pick_the_runs_of_the_systems_asked_for_only(amazon):
    bench = _bench(amazon, systems=["single->tinybert"], seeds=[1])
    domains = amazon.DOMAINS
    bench.runs = {
        "single->tinybert": {d: {"1": _run({d: 84.0}), "2": _run({d: 86.0})} for d in domains},
        "meta->meta": {d: {"1": _run({d: 80.0}), "2": _run({d: 82.0}), "3": _run({d: 84.0})} for d in domains},
    }
    results = bench.results()
    assert results["single->tinybert"]["seeds"] == [1] and results["single->tinybert"]["average"] == 84.0
    assert results["meta->meta"]["seeds"] == [1, 2, 3] and results["meta->meta"]["average"] == 82.0


def test_a_paired_test_of_two_students_uses_the_seeds_both_have(amazon):
    bench = _bench(amazon, systems=["meta->meta-int8-pc"], seeds=[1], domains=["books"])
    bench.rows_setup = {"rows": {"books": 4}}
    rows = {"1": [1, 1, 0, 0], "2": [1, 1, 1, 1], "3": [1, 1, 1, 1]}
    bench.correct = {
        "meta->meta": {"books": {s: {"domains": {"books": v}} for s, v in rows.items()}},
        "meta->meta-int8-pc": {"books": {"1": {"domains": {"books": [1, 1, 0, 0]}}}},
    }
    test = bench.tests([("meta->meta-int8-pc", "meta->meta")], ["books"])["meta->meta-int8-pc vs meta->meta"]
    assert test["diff"] == 0.0  # seed 1 against seed 1, not against the mean of seeds 1 to 3 (-33.3)


def test_held_out_needs_the_system(amazon):
    bench = _bench(amazon, systems=["meta->meta"])
    assert not any(name.startswith("held-out/") for name in bench.teacher_defs)


def test_linked_student_run_shares_the_student_and_leaves_the_source_alone(amazon, tmp_path):
    common = load_bench("common")
    source = tmp_path / "meta-to-meta" / "books-s1"
    (source / "student").mkdir(parents=True)
    (source / "metrics").mkdir()
    (source / "student" / "model.safetensors").write_bytes(b"weights")
    (source / "manifest.json").write_text('{"steps": {}}')
    (source / "metrics" / "distill.json").write_text("{}")
    (source / "onnx").mkdir()
    target = tmp_path / "meta-to-meta-int8-pc" / "books-s1"
    (target / "onnx").mkdir(parents=True)  # a stale export is removed
    common.linked_student_run(source, target)
    linked = target / "student" / "model.safetensors"
    assert linked.stat().st_ino == (source / "student" / "model.safetensors").stat().st_ino
    assert (target / "metrics" / "distill.json").is_file() and not (target / "onnx").exists()
    (target / "manifest.json").write_text('{"steps": {"export": {}}}')  # export rewrites its own copy
    assert (source / "manifest.json").read_text() == '{"steps": {}}'


def test_the_matched_single_teacher_makes_the_all_domain_teachers_steps(amazon):
    # one domain's rows in each single teacher: 4 domains -> 4x the epochs of bench/teachers.py's
    settings = amazon.teacher_settings("teacher-single-matched")
    assert settings == {**amazon.TEACHER_SETTINGS, "epochs": amazon.TEACHER_SETTINGS["epochs"] * len(amazon.DOMAINS)}
    flags = amazon.fit_flags(settings)
    assert flags[flags.index("--epochs") + 1] == "8"
    assert amazon.teacher_settings("teacher-single") == amazon.TEACHER_SETTINGS
    assert amazon.STUDENTS["single-matched->tinybert"][0] == "teacher-single-matched"
