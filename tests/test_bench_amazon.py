"""The amazon suite (bench/suites/amazon.yaml, its table in bench/amazon.py): its systems as recipe overrides, and
the tables it builds from run records (made-up runs: no model is trained; the figures are invented and only the
arithmetic is checked), the records of the results files counting for runs whose folders are gone."""

from __future__ import annotations

import json

import pytest

from bench import amazon
from bench.common import recipe
from bench.suite import load, table

HELD = "held-out/{held}/{other}-teacher->tinybert"


@pytest.fixture
def suite(tmp_path):
    return load("amazon", tmp_path)


def _table(suite, domains: list[str] | None = None) -> amazon.Table:
    found = amazon.Table.__new__(amazon.Table)  # no run folders read: the records are set by hand
    found.suite, found.domains, found.extra = suite, domains or suite.values["domains"], ()
    found.runs, found.correct, found.rows_setup, found.where = {}, {}, {}, {}
    found.teachers = {"teacher-single", "held-out/books/meta-teacher-without"}
    suite.values["held_out"] = ["books"]
    return found


def _run(accuracy: dict) -> dict:
    return {"accuracy": accuracy, "minutes": {"distill": 1.0}}


def test_each_system_is_the_recipe_plus_overrides(suite):
    at = {"held": "books", "other": "dvd", "seed": 2}
    assert suite.fill(HELD, at) == "held-out/books/dvd-teacher->tinybert"
    assert suite.folder(HELD, at) == suite.runs / "amazon" / "held-out-books-dvd-teacher-to-tinybert" / "books-s2"
    config = recipe(suite.sets_of(HELD, at, ("fit.epochs=1",)), suite.recipe)
    assert (config.fit.teacher_mode, config.fit.epochs) == ("single", 1)  # the teacher's, then the driver's --set
    assert (config.distill.method, config.distill.teacher_domain, config.distill.domain, config.distill.seed) == (
        "tinybert", "dvd", "books", 2)
    assert (config.eval.models, config.eval.domains) == (["student"], ["books"])
    assert suite.folder(*suite.start_of(HELD, at)) == suite.runs / "paper-teacher-single"
    assert {b["other"] for b in suite.bindings(HELD) if b["held"] == "dvd"} == {"books", "electronics", "kitchen"}

    at = {"domain": "kitchen", "seed": 1}  # meta->meta's student, exported
    config = recipe(suite.sets_of("meta->meta-int8-pc", at), suite.recipe)
    assert (config.distill.method, config.export.per_channel, config.export.int8_kind, config.eval.models) == (
        "meta", True, "dynamic", ["int8"])
    assert suite.folder(*suite.start_of("meta->meta-int8-pc", at)) == suite.runs / "amazon" / "meta-to-meta" / "kitchen-s1"
    assert suite.chain("meta->meta-int8-pc") == "fit,distill,export,eval"

    config = recipe(suite.sets_of("teacher-single"), suite.recipe)
    assert suite.folder("teacher-single") == suite.runs / "paper-teacher-single"
    assert config.eval.models == ["teacher"] and config.eval.domains is None
    assert recipe(suite.sets_of("meta->meta-all", {"seed": 3}), suite.recipe).distill.domain is None


def test_the_matched_single_teacher_makes_the_all_domain_teachers_steps(suite):
    # one domain's rows in each single teacher: 4 domains -> 4x the epochs of the teachers suite's
    base = recipe([], suite.recipe).fit
    matched = recipe(suite.sets_of("teacher-single-matched"), suite.recipe).fit
    assert matched.epochs == base.epochs * len(suite.values["domains"]) and matched.teacher_mode == "single"
    assert suite.systems["single-matched->tinybert"].start == "teacher-single-matched"
    document = table(suite)
    assert document["setup"]["teacher_overrides"] == {"teacher-single-matched": {"epochs": 8}}
    assert document["setup"]["distill"] == {"intermediate_epochs": 2, "epochs": 3, "batch_size": 32}


def test_results_and_held_out_table(suite):
    found = _table(suite)
    domains = suite.values["domains"]
    found.runs = {
        "teacher-single": {"all": {"42": _run({d: 90.0 for d in domains})}},
        "single->tinybert": {d: {"1": _run({d: 84.0}), "2": _run({d: 86.0})} for d in domains},
        "held-out/books/meta-teacher-without": {"all": {"42": _run({"books": 88.0})}},
        "held-out/books/dvd-teacher->tinybert": {"books": {"1": _run({"books": 80.0}), "2": _run({"books": 82.0})}},
        "held-out/books/meta-without->tinybert": {"books": {"1": _run({"books": 83.0})}},
        "held-out/books/meta-without->meta": {"books": {"1": _run({"books": 84.0})}},
    }
    results = found.results()
    assert set(results) == {"teacher-single", "single->tinybert"}  # held-out systems stay out of the main table
    assert results["single->tinybert"]["average"] == 85.0 and results["single->tinybert"]["std"] == 1.41
    assert results["teacher-single"]["seeds"] == [42]

    rows = 10
    found.rows_setup = {"rows": {"books": rows}}
    found.correct = {
        "held-out/books/meta-without->meta": {"books": {"1": {"domains": {"books": [1] * 9 + [0]}}}},
        "held-out/books/meta-without->tinybert": {"books": {"1": {"domains": {"books": [1] * 7 + [0] * 3}}}},
    }
    held_out = found.held_out()["books"]
    got = held_out["results"]
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
    test = held_out["tests"]["held-out/books/meta-without->meta vs held-out/books/meta-without->tinybert"]
    assert test["diff"] == pytest.approx(20.0) and test["rows"] == rows


def test_the_held_out_rows_read_the_held_out_domain_outside_the_tables_domains(suite):
    found = _table(suite, domains=["kitchen"])
    found.runs = {"teacher-single": {"all": {"42": _run({"books": 91.0, "kitchen": 90.0})}},
                  "held-out/books/meta-teacher-without": {"all": {"42": _run({"books": 88.0, "kitchen": 89.0})}}}
    got = found.held_out()["books"]["results"]
    assert got["in-domain teacher"]["accuracy"] == 91.0 and got["meta-teacher without H"]["accuracy"] == 88.0


def test_a_paired_test_of_two_students_uses_the_seeds_both_have(suite):
    found = _table(suite, domains=["books"])
    found.rows_setup = {"rows": {"books": 4}}
    rows = {"1": [1, 1, 0, 0], "2": [1, 1, 1, 1], "3": [1, 1, 1, 1]}
    found.correct = {
        "meta->meta": {"books": {s: {"domains": {"books": v}} for s, v in rows.items()}},
        "meta->meta-int8-pc": {"books": {"1": {"domains": {"books": [1, 1, 0, 0]}}}},
    }
    test = found.tests([("meta->meta-int8-pc", "meta->meta")], ["books"])["meta->meta-int8-pc vs meta->meta"]
    assert test["diff"] == 0.0  # seed 1 against seed 1, not against the mean of seeds 1 to 3 (-33.3)


def test_runs_whose_folders_are_gone_count_by_the_results_files_records(suite):
    record = {"accuracy": {"books": 75.0}, "minutes": {"distill": 2.0}}
    suite.out.parent.mkdir(parents=True)
    suite.out.write_text(json.dumps({"runs": {"meta->meta": {"books": {"1": record}}}}))
    suite.out.with_name("amazon_predictions.json").write_text(json.dumps({
        "setup": {"rows": {"books": 4}}, "correct": {"meta->meta": {"books": {"1": {"domains": {"books": [1, 1, 1, 0]}}}}}}))
    document = table(suite)
    assert document["runs"]["meta->meta"]["books"]["1"] == record
    assert document["results"]["meta->meta"]["books"] == 75.0 and document["results"]["meta->meta"]["seeds"] == [1]
    written = json.loads(suite.files[suite.out.with_name("amazon_predictions.json")])
    assert written["correct"]["meta->meta"]["books"]["1"]["domains"]["books"] == [1, 1, 1, 0]
