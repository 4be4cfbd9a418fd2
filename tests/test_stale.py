"""A run folder whose teacher was fitted again (or whose student was distilled again) keeps the older
student/ and onnx/ on disk, but metakd no longer scores, exports or serves them as if they were current."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from export_fixtures import build_tiny_run, copy_run
from metakd_cli.cli import cli
from metakd_cli.core.run_dir import Manifest, RunDir, stale_artifacts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny run with its student exported to ONNX (fp32, so the test stays quick)."""
    folder = build_tiny_run(tmp_path_factory.mktemp("stale") / "run")
    result = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(folder), "export"])
    assert result.exit_code == 0, result.output
    return folder


def _invoke(folder, *args):
    return CliRunner().invoke(cli, ["--run-dir", str(folder), *args])


def test_a_fresh_chain_is_not_stale(exported):
    manifest = RunDir(exported).load()
    assert stale_artifacts(manifest) == {}
    assert manifest.steps["export"]["source_id"] == manifest.steps["distill"]["id"]


def test_refit_makes_student_and_onnx_stale(exported, tmp_path):
    folder = copy_run(exported, tmp_path / "run")
    run = RunDir(folder)
    run.record_step("fit", {**run.load().steps["fit"]})  # fit ran again: a new teacher
    stale = stale_artifacts(run.load())
    assert set(stale) == {"student", "onnx"}
    assert "re-run `metakd distill`" in stale["student"]

    explicit = _invoke(folder, "eval", "--model", "student")
    assert explicit.exit_code == 2 and "student/ was distilled from an earlier teacher" in explicit.output
    every = _invoke(folder, "eval", "--json")  # the teacher alone, saying why the others are left out
    assert every.exit_code == 0, every.output
    assert [m["name"] for m in json.loads(every.stdout)["models"]] == ["teacher"]
    assert "not scored: student/ was distilled from an earlier teacher" in every.output
    export = _invoke(folder, "export")
    assert export.exit_code == 2 and "re-run `metakd distill` before exporting it" in export.output
    predict = _invoke(folder, "predict", "a very good pan")
    assert predict.exit_code == 2  # nothing current to predict with: no student, no onnx
    assert (folder / "student" / "config.json").is_file() and (folder / "onnx").is_dir()  # kept on disk


def test_redistill_makes_onnx_stale_and_predict_falls_back_to_the_student(exported, tmp_path):
    folder = copy_run(exported, tmp_path / "run")
    run = RunDir(folder)
    run.record_step("distill", {**run.load().steps["distill"], "fit_id": run.step_id("fit")})
    assert set(stale_artifacts(run.load())) == {"onnx"}
    result = _invoke(folder, "predict", "--json", "a very good pan")
    assert result.exit_code == 0, result.output
    assert "not used: onnx/ was exported from an earlier version of the student" in result.output
    assert "predicting with student" in result.output
    asked = _invoke(folder, "predict", "--model", "onnx", "a very good pan")
    assert asked.exit_code == 2 and "re-run `metakd export`" in asked.output


def test_manifests_from_before_step_ids_compare_times():
    """Steps recorded by an older metakd have no ids: a source that finished later makes them stale."""
    steps = {"fit": {"finished": "2026-01-02T00:00:00+00:00"}, "distill": {"finished": "2026-01-01T00:00:00+00:00"},
             "export": {"finished": "2026-01-03T00:00:00+00:00", "model": "student"}}
    assert set(stale_artifacts(Manifest(steps=steps))) == {"student", "onnx"}
    steps["distill"]["finished"] = "2026-01-02T12:00:00+00:00"
    assert stale_artifacts(Manifest(steps=steps)) == {}
    steps["export"]["model"] = "teacher"  # an exported teacher depends on fit only
    steps["fit"]["finished"] = "2026-01-04T00:00:00+00:00"
    assert set(stale_artifacts(Manifest(steps=steps))) == {"student", "onnx"}


def test_predict_names_the_stale_student_and_onnx(exported, tmp_path):
    # it said "no onnx/ or student/ to predict with" while both were on disk, made from an earlier teacher
    folder = copy_run(exported, tmp_path / "run")
    run = RunDir(folder)
    run.record_step("fit", {**run.load().steps["fit"]})
    result = _invoke(folder, "predict", "a very good pan")
    assert result.exit_code == 2
    assert "no onnx/ or student/" not in result.stderr
    assert result.stderr.startswith(f"error: {folder}: nothing current to predict with: student/ was distilled "
                                    "from an earlier teacher")
    assert "re-run `metakd distill`" in result.stderr and "re-run `metakd export`" in result.stderr
