"""bench/amazon.py: its systems as recipe overrides, and the tables it builds from run folders' records (made-up
runs: no model is trained; the figures are invented and only the arithmetic is checked)."""

from __future__ import annotations

import pytest

from bench import amazon
from bench.common import RUNS, TEACHERS, recipe


def _table(held_out: list[str] | None = None, domains: list[str] | None = None) -> amazon.Table:
    table = amazon.Table.__new__(amazon.Table)  # no run folders read: the records are set by hand
    table.plan, table.domains, table.resamples = amazon.Plan(held_out or ["books"]), domains or amazon.DOMAINS, 200
    table.runs, table.correct, table.rows_setup = {}, {}, {}
    return table


def _run(accuracy: dict) -> dict:
    return {"accuracy": accuracy, "minutes": {"distill": 1.0}}


def test_held_out_systems_for_one_domain():
    teachers, students = amazon.held_out_systems("dvd")
    assert teachers == {"held-out/dvd/meta-teacher-without": ("teacher-meta-without-dvd", ["fit.hold_out=dvd"])}
    assert students["held-out/dvd/books-teacher->tinybert"] == (
        "teacher-single", ["distill.method=tinybert", "distill.teacher_domain=books"], True)
    assert "held-out/dvd/dvd-teacher->tinybert" not in students  # the in-domain student is single->tinybert's
    assert students["held-out/dvd/meta-without->meta"][:2] == ("held-out/dvd/meta-teacher-without",
                                                               ["distill.method=meta"])


def test_each_system_is_the_recipe_plus_overrides():
    plan = amazon.Plan(["books"], ["fit.epochs=1"])
    folder, sets = plan.student("held-out/books/dvd-teacher->tinybert", "books", 2)
    assert folder == RUNS / "amazon" / "held-out-books-dvd-teacher-to-tinybert" / "books-s2"
    config = recipe(sets)
    assert (config.fit.teacher_mode, config.fit.epochs) == ("single", 1)  # the teacher's, then the driver's --set
    assert (config.distill.method, config.distill.teacher_domain, config.distill.domain, config.distill.seed) == (
        "tinybert", "dvd", "books", 2)
    assert (config.eval.models, config.eval.domains) == (["student"], ["books"])
    assert plan.source("held-out/books/dvd-teacher->tinybert", "books", 2) == RUNS / "paper-teacher-single"

    folder, sets = plan.student("meta->meta-int8-pc", "kitchen", 1)  # meta->meta's student, exported
    config = recipe(sets)
    assert (config.distill.method, config.export.per_channel, config.export.int8_kind, config.eval.models) == (
        "meta", True, "dynamic", ["int8"])
    assert plan.source("meta->meta-int8-pc", "kitchen", 1) == RUNS / "amazon" / "meta-to-meta" / "kitchen-s1"
    assert amazon.steps("meta->meta-int8-pc") == "fit,distill,export,eval"

    folder, sets = plan.teacher("teacher-single")
    config = recipe(sets)
    assert folder == RUNS / "paper-teacher-single" and config.eval.models == ["teacher"] and config.eval.domains is None
    assert config.distill.method == "mtn"  # what a single-mode teacher serves without a domain: `metakd run` checks it
    assert recipe(plan.student("meta->meta-all", None, 3)[1]).distill.domain is None


def test_the_matched_single_teacher_makes_the_all_domain_teachers_steps():
    # one domain's rows in each single teacher: 4 domains -> 4x the epochs of bench/teachers.py's
    base = recipe([]).fit
    matched = recipe(TEACHERS["teacher-single-matched"][1]).fit
    assert matched.epochs == base.epochs * len(amazon.DOMAINS) and matched.teacher_mode == "single"
    assert amazon.STUDENTS["single-matched->tinybert"][0] == "teacher-single-matched"
    setup = amazon.setup(amazon.Plan(), amazon.DOMAINS, [1], 100)
    assert setup["teacher_overrides"] == {"teacher-single-matched": {"epochs": 8}}
    assert setup["distill"] == {"intermediate_epochs": 2, "epochs": 3, "batch_size": 32}


def test_results_and_held_out_table():
    table = _table()
    assert "held-out/books/meta-teacher-without" in table.plan.teachers
    domains = amazon.DOMAINS
    table.runs = {
        "teacher-single": {"all": {"42": _run({d: 90.0 for d in domains})}},
        "single->tinybert": {d: {"1": _run({d: 84.0}), "2": _run({d: 86.0})} for d in domains},
        "held-out/books/meta-teacher-without": {"all": {"42": _run({"books": 88.0})}},
        "held-out/books/dvd-teacher->tinybert": {"books": {"1": _run({"books": 80.0}), "2": _run({"books": 82.0})}},
        "held-out/books/meta-without->tinybert": {"books": {"1": _run({"books": 83.0})}},
        "held-out/books/meta-without->meta": {"books": {"1": _run({"books": 84.0})}},
    }
    results = table.results()
    assert set(results) == {"teacher-single", "single->tinybert"}  # held-out systems stay out of the main table
    assert results["single->tinybert"]["average"] == 85.0 and results["single->tinybert"]["std"] == 1.41
    assert results["teacher-single"]["seeds"] == [42]

    rows = 10
    table.rows_setup = {"rows": {"books": rows}}
    table.correct = {
        "held-out/books/meta-without->meta": {"books": {"1": {"domains": {"books": [1] * 9 + [0]}}}},
        "held-out/books/meta-without->tinybert": {"books": {"1": {"domains": {"books": [1] * 7 + [0] * 3}}}},
    }
    held_out = table.held_out()["books"]
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


def test_the_held_out_rows_read_the_held_out_domain_outside_the_tables_domains():
    table = _table(domains=["kitchen"])
    table.runs = {"teacher-single": {"all": {"42": _run({"books": 91.0, "kitchen": 90.0})}},
                  "held-out/books/meta-teacher-without": {"all": {"42": _run({"books": 88.0, "kitchen": 89.0})}}}
    got = table.held_out()["books"]["results"]
    assert got["in-domain teacher"]["accuracy"] == 91.0 and got["meta-teacher without H"]["accuracy"] == 88.0


def test_a_paired_test_of_two_students_uses_the_seeds_both_have():
    table = _table(domains=["books"])
    table.rows_setup = {"rows": {"books": 4}}
    rows = {"1": [1, 1, 0, 0], "2": [1, 1, 1, 1], "3": [1, 1, 1, 1]}
    table.correct = {
        "meta->meta": {"books": {s: {"domains": {"books": v}} for s, v in rows.items()}},
        "meta->meta-int8-pc": {"books": {"1": {"domains": {"books": [1, 1, 0, 0]}}}},
    }
    test = table.tests([("meta->meta-int8-pc", "meta->meta")], ["books"])["meta->meta-int8-pc vs meta->meta"]
    assert test["diff"] == 0.0  # seed 1 against seed 1, not against the mean of seeds 1 to 3 (-33.3)


def test_held_out_needs_the_system():
    assert not any(name.startswith("held-out/") for name in amazon.Plan().teachers)
