"""metakd_cli.core.run_dir: atomic files and folders, the manifest and its errors."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from metakd_cli import __version__
from metakd_cli.core.errors import UserError
from metakd_cli.core.run_dir import MANIFEST_VERSION, Manifest, RunDir, atomic_dir, atomic_write_json, atomic_write_text
from metakd_cli.core.run_dir import saved_or_old


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic files


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    path = tmp_path / "metrics" / "fit.json"
    atomic_write_json(path, {"accuracy": 0.5})
    atomic_write_json(path, {"accuracy": 0.75, "domains": ["books"]})
    assert json.loads(path.read_text()) == {"accuracy": 0.75, "domains": ["books"]}
    assert names(path.parent) == ["fit.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "fit.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"not json": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert names(tmp_path) == ["fit.json"]


def test_atomic_write_text_is_utf8(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "café\n")
    assert (tmp_path / "a.txt").read_bytes() == "café\n".encode()


# --------------------------------------------------------------------------- atomic folders


def make_old(final: Path) -> None:
    final.mkdir(parents=True)
    (final / "config.json").write_text("old")
    (final / "only-in-old.bin").write_text("old")


def test_atomic_dir_creates_the_folder(tmp_path):
    final = tmp_path / "run" / "teacher"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        assert not final.exists()  # nothing visible until the body is done
        (tmp / "config.json").write_text("new")
    assert names(final) == ["config.json"]
    assert names(final.parent) == ["teacher"]


def test_atomic_dir_replaces_the_folder_whole(tmp_path):
    final = tmp_path / "student"
    make_old(final)
    with atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "model.safetensors").write_text("new")
        assert (final / "config.json").read_text() == "old"  # old one intact meanwhile
    assert names(final) == ["config.json", "model.safetensors"]  # no file of the old folder left
    assert (final / "config.json").read_text() == "new"
    assert names(tmp_path) == ["student"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), UserError("bad")])
def test_atomic_dir_keeps_the_old_folder_when_the_body_raises(tmp_path, error):
    final = tmp_path / "student"
    make_old(final)
    with pytest.raises(type(error)):
        with atomic_dir(final) as tmp:
            (tmp / "config.json").write_text("half")
            raise error
    assert names(final) == ["config.json", "only-in-old.bin"]
    assert (final / "config.json").read_text() == "old"
    assert names(tmp_path) == ["student"]  # no temporary folder left behind


def test_atomic_dir_without_an_old_folder_leaves_nothing_when_the_body_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "onnx") as tmp:
            (tmp / "model.onnx").write_text("half")
            raise KeyboardInterrupt
    assert names(tmp_path) == []


def test_atomic_dir_recovers_from_a_stale_old_folder(tmp_path):
    final = tmp_path / "teacher"
    make_old(final)
    (tmp_path / ".teacher.old").mkdir()  # left by a crash between the two renames
    with atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("new")
    assert names(tmp_path) == ["teacher"]
    assert (final / "config.json").read_text() == "new"


def test_saved_or_old_prefers_the_folder_then_the_old_sibling_a_kill_left(tmp_path):
    final, old = tmp_path / "fit-scores", tmp_path / ".fit-scores.old"
    assert saved_or_old(final) is None and saved_or_old(final, "loop.json") is None
    old.mkdir()
    assert saved_or_old(final) == old and saved_or_old(final, "loop.json") is None
    (old / "loop.json").write_text("{}")
    assert saved_or_old(final, "loop.json") == old
    final.mkdir()  # a folder without the marker: the old one still holds the save
    assert saved_or_old(final) == final and saved_or_old(final, "loop.json") == old
    (final / "loop.json").write_text("{}")
    assert saved_or_old(final, "loop.json") == final


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_atomic_files_and_folders_get_the_modes_of_a_plain_write(tmp_path, umask):
    # mkstemp / mkdtemp make 0600 / 0700, which the rename kept: run folders became private
    run = RunDir(tmp_path / "run")
    run.record_step("fit", {"teacher": "teacher"})
    with atomic_dir(run.teacher) as tmp:
        (tmp / "config.json").write_text("{}")
    assert stat.S_IMODE(run.manifest_path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(run.teacher.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((run.teacher / "config.json").stat().st_mode) == 0o666 & ~umask


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "manifest.json"
    atomic_write_text(path, "{}")
    path.chmod(0o640)
    atomic_write_text(path, "{}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- RunDir


def write_manifest(folder: Path, obj: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def load_error(folder: Path) -> str:
    with pytest.raises(UserError) as info:
        RunDir(folder).load()
    return str(info.value)


def test_load_missing_folder(tmp_path):
    message = load_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message
    assert "metakd fit" in message and "--run-dir" in message


def test_load_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "other").mkdir()
    message = load_error(tmp_path / "other")
    assert str(tmp_path / "other") in message and "not a metakd run folder" in message


@pytest.mark.parametrize("version", [MANIFEST_VERSION + 1, MANIFEST_VERSION - 1, None, "1"])
def test_load_manifest_from_another_version(tmp_path, version):
    path = write_manifest(tmp_path / "run", {"version": version, "steps": {}})
    message = load_error(tmp_path / "run")
    assert message.startswith(f"{path}: manifest version {version!r} is not supported")
    assert "new run folder" in message


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\"text\""])
def test_load_broken_manifest(tmp_path, content):
    path = write_manifest(tmp_path / "run", content)
    assert load_error(tmp_path / "run").startswith(f"{path}: ")


def test_load_ignores_unknown_manifest_keys(tmp_path):
    write_manifest(tmp_path / "run", {"version": MANIFEST_VERSION, "steps": {"fit": {}}, "later": 1})
    assert RunDir(tmp_path / "run").load().steps == {"fit": {}}


def test_record_step_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["metakd", "fit", "data/"])
    run = RunDir(tmp_path / "run")
    assert not run.exists()
    assert run.load_or_new() == Manifest()
    data = {"source": "/data", "fingerprint": "abc", "labels": ["negative", "positive"]}
    run.record_step("fit", {"teacher": "teacher", "dev_accuracy": 0.9}, data=data)
    run.record_step("distill", {"student": "student"})
    assert run.exists()

    manifest = RunDir(tmp_path / "run").load()
    assert manifest.version == MANIFEST_VERSION
    assert manifest.metakd_version == __version__
    assert manifest.data == data  # kept when a later step gives none
    assert list(manifest.steps) == ["fit", "distill"]
    fit = manifest.steps["fit"]
    assert fit["teacher"] == "teacher" and fit["dev_accuracy"] == 0.9
    assert fit["command"] == "metakd fit data/"
    assert fit["finished"] and manifest.updated
    assert names(run.path) == ["manifest.json"]  # no temporary files


def test_record_step_replaces_a_step(tmp_path):
    run = RunDir(tmp_path)
    run.record_step("fit", {"epochs": 1})
    run.record_step("fit", {"epochs": 2})
    assert run.load().steps["fit"]["epochs"] == 2


def test_require_step(tmp_path):
    run = RunDir(tmp_path)
    run.record_step("fit", {"teacher": "teacher"})
    assert run.require_step("fit", "run `metakd fit` first")["teacher"] == "teacher"
    with pytest.raises(UserError, match=r"no `distill` step recorded yet; run `metakd distill` first"):
        run.require_step("distill", "run `metakd distill` first")


def test_write_metrics_and_paths(tmp_path):
    run = RunDir(tmp_path)
    path = run.write_metrics("eval", {"books": 0.9})
    assert path == tmp_path / "metrics" / "eval.json"
    assert json.loads(path.read_text()) == {"books": 0.9}
    assert (run.teacher, run.student, run.onnx) == (tmp_path / "teacher", tmp_path / "student", tmp_path / "onnx")
