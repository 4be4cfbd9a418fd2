"""The run folder's integrity (issue 23): names from data never reach a path unescaped, one writer at a
time (tested with real processes), provenance read at a step's start, damaged files refused in one line
with nothing replaced, and `tiny` cut from a shallow teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import toy_rows, write_jsonl
from export_fixtures import copy_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli
from metakd_cli.core.errors import UserError
from metakd_cli.core.run_dir import LOCK_FILE, RunDir, domain_paths, folder_name, folder_names, stale_artifacts

FAST_FIT = ["--epochs", "1", "--batch-size", "16", "--max-length", "16"]


def invoke(run: Path, *args: str):
    return CliRunner().invoke(cli, ["--run-dir", str(run), *args])


@pytest.fixture(scope="module")
def fitted_run(tiny_model_dir, tmp_path_factory, one_torch_thread) -> Path:  # noqa: F811
    """A run made by the real commands: a meta teacher (with its head file), a kd student, onnx/ with int8.
    Copy it before changing it."""
    folder = tmp_path_factory.mktemp("fitted")
    data = write_jsonl(folder / "data.jsonl", toy_rows())
    run = folder / "run"
    for args in (["fit", str(data), "--teacher", str(tiny_model_dir), *FAST_FIT],
                 ["distill", "--method", "kd", "--epochs", "1", "--batch-size", "16"],
                 ["export", "--int8", "--max-drop", "100"]):
        result = invoke(run, "--quiet", *args)
        assert result.exit_code == 0, result.output
    return run


def one_line_error(result, *fragments: str) -> str:
    """The command failed with exit 2 and one `error:` line holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. names from data


def test_plain_domain_names_keep_their_folder():
    assert folder_names(["books", "dvd", "kitchen_2", "a.b-c"]) == {
        "books": "books", "dvd": "dvd", "kitchen_2": "kitchen_2", "a.b-c": "a.b-c"}


@pytest.mark.parametrize("name", ["/srv/victim", "../../escape", "..", ".", ".hidden", "a/b", "a\\b", "",
                                  "CON", "nul.txt", "x" * 80, "teacher.tmp", "café", "a b"])
def test_other_domain_names_become_one_safe_folder_name(name):
    folder = folder_name(name, [name, "books"])
    assert folder != name
    assert "/" not in folder and "\\" not in folder and ".." not in folder and not folder.startswith(".")
    assert Path(folder).name == folder and len(folder) <= 64
    assert folder == folder_name(name, [name, "books"])  # the same name always gives the same folder


def test_names_that_differ_only_in_case_get_two_folders():
    folders = folder_names(["Books", "books", "dvd"])
    assert len({f.casefold() for f in folders.values()}) == 3
    assert folders["dvd"] == "dvd"


def test_teacher_folders_of_runs_made_before_names_were_escaped_are_still_found(tmp_path):
    """An older metakd wrote teacher/<domain> as it was: such a folder is used when it is one ordinary path part
    inside teacher/ and no escaped folder exists; a name with a separator or `..` never is."""
    teacher = tmp_path / "run" / "teacher"
    (teacher / "home kitchen").mkdir(parents=True)
    (tmp_path / "run" / "outside").mkdir()
    paths = domain_paths(teacher, ["home kitchen", "books", "../outside", "Books"])
    assert paths["home kitchen"] == teacher / "home kitchen"
    assert paths["books"].parent == teacher and paths["books"].name != "books"  # 'Books' too: both escaped
    assert paths["../outside"].parent == teacher and ".." not in paths["../outside"].name
    escaped = teacher / folder_name("home kitchen", ["home kitchen"])
    escaped.mkdir()
    assert domain_paths(teacher, ["home kitchen"])["home kitchen"] == escaped  # a new run's folder wins


def test_single_teachers_named_by_path_like_domains_stay_inside_the_run(tiny_model_dir, tmp_path):
    victim = tmp_path / "srv" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    rows = toy_rows()
    attacks = {"books": str(victim), "electronics": "../../escape", "kitchen": "kitchen"}
    data = write_jsonl(tmp_path / "data.jsonl", [{**r, "domain": attacks[r["domain"]]} for r in rows])
    run = work / "run"
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(run)}

    result = invoke(run, "fit", str(data), "--teacher", str(tiny_model_dir), "--teacher-mode", "single", *FAST_FIT)
    assert result.exit_code == 0, result.output
    assert (victim / "precious.txt").read_text() == "keep me"
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(run)}
    assert after == before, sorted(map(str, after - before))  # nothing written outside the run folder
    teachers = sorted(p.name for p in (run / "teacher").iterdir() if p.is_dir())
    assert len(teachers) == 3 and "kitchen" in teachers
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["domain_folders"][str(victim)] in teachers

    # every later step finds those teachers by the same escaped names
    distill = invoke(run, "--quiet", "distill", "--domain", str(victim), "--method", "kd", "--epochs", "1",
                     "--batch-size", "16")
    assert distill.exit_code == 0, distill.output
    scored = invoke(run, "--quiet", "eval", "--model", "teacher", "--json")
    assert scored.exit_code == 0, scored.output
    assert (victim / "precious.txt").read_text() == "keep me"
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(run)} == before


# --------------------------------------------------------------------------- 2. one writer at a time

HOLD = ("import sys; from metakd_cli.core.run_dir import RunDir\n"
        "with RunDir(sys.argv[1]).lock('distill'):\n"
        "    print('locked', flush=True); sys.stdin.readline()\n")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _holder(run: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock until its stdin closes."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=_env())
    assert process.stdout.readline().strip() == "locked"
    return process


@pytest.mark.parametrize("command", [["export"], ["eval", "--model", "student"], ["distill", "--method", "kd"],
                                     ["fit", "DATA"]])
def test_a_second_writer_is_refused_naming_the_holder(tiny_run, tmp_path, command):
    run = copy_run(tiny_run, tmp_path / "run")
    before = snapshot(run)
    holder = _holder(run)
    try:
        args = [str(run / "data" / "toy.jsonl") if a == "DATA" else a for a in command]
        result = invoke(run, *args)
        one_line_error(result, f"pid {holder.pid}", "one command writes a run folder at a time")
    finally:
        holder.communicate("\n", timeout=60)
    after = snapshot(run)
    after.pop(LOCK_FILE, None)
    before.pop(LOCK_FILE, None)
    assert after == before  # the refused command changed nothing


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_note(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    holder = _holder(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    logged: list[str] = []
    with RunDir(run).lock("export", logged.append):
        pass
    assert any(f"left by pid {holder.pid}" in line and "no longer running" in line for line in logged), logged
    assert (run / LOCK_FILE).read_text() == ""  # released cleanly: the next writer sees no holder


def test_the_lock_is_reentrant_within_a_process_and_released_after(tiny_run, tmp_path):
    run = RunDir(copy_run(tiny_run, tmp_path / "run"))
    with run.lock("run"):
        with run.lock("fit"):  # `metakd run` holds it; its steps take it again
            holder = json.loads((run.path / LOCK_FILE).read_text())
            assert holder["pid"] == os.getpid() and holder["command"] == "run"
        assert (run.path / LOCK_FILE).read_text()  # still held by the outer step
    _holder(run.path).communicate("\n", timeout=60)  # another process can take it now


def test_a_lock_file_replaced_while_it_was_taken_is_not_trusted(tmp_path, monkeypatch):
    """Between opening the lock file and locking it, another process may remove it (a failed first command
    removes its new run folder): _take_lock then gives None and the lock is taken again, on the file now there."""
    import metakd_cli.core.run_dir as run_dir

    run = RunDir(tmp_path / "run")
    real, calls = run_dir._take_lock, []

    def replaced_once(path, folder):
        calls.append(path)
        return None if len(calls) == 1 else real(path, folder)

    monkeypatch.setattr(run_dir, "_take_lock", replaced_once)
    with run.lock("fit", create=True):
        assert len(calls) == 2
        holder = json.loads((run.path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()


def test_take_lock_refuses_a_file_replaced_after_it_was_opened(tmp_path, monkeypatch):
    import fcntl

    import metakd_cli.core.run_dir as run_dir

    path = tmp_path / LOCK_FILE
    real_flock = fcntl.flock

    def flock_then_replace(fd, op):
        real_flock(fd, op)
        path.unlink()
        path.write_text("")  # a new file at the same name: not the one this handle locked

    monkeypatch.setattr(fcntl, "flock", flock_then_replace)
    assert run_dir._take_lock(path, tmp_path) is None


def test_a_failed_first_command_leaves_no_run_folder(tmp_path):
    run = RunDir(tmp_path / "new-run")
    with pytest.raises(UserError):
        with run.lock("fit", create=True):
            raise UserError("bad data")
    assert not run.path.exists()


def test_two_real_fits_into_one_run_folder(tiny_model_dir, tmp_path):
    """A long `metakd fit` holds the folder; a second `metakd fit` exits 2 naming it and writes nothing;
    the first finishes as if alone."""
    data = write_jsonl(tmp_path / "data.jsonl", toy_rows())
    run = tmp_path / "run"
    base = [sys.executable, "-m", "metakd_cli", "--run-dir", str(run), "fit", str(data), "--teacher",
            str(tiny_model_dir), "--batch-size", "4", "--max-length", "16"]
    first = subprocess.Popen([*base, "--epochs", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env())
    deadline = time.monotonic() + 300
    while not (run / LOCK_FILE).is_file() or not (run / LOCK_FILE).read_text():
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run([*base, "--epochs", "1"], capture_output=True, text=True, env=_env(), timeout=300)
    still_running = first.poll() is None
    out, err = first.communicate(timeout=600)
    assert still_running, "the first fit ended before the second started: the test proved nothing"
    assert second.returncode == 2, second.stderr
    assert f"in use by pid {first.pid}" in second.stderr and "fit" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"]["fit"]["config"]["epochs"] == 30


# --------------------------------------------------------------------------- 2b. provenance at the start


class RefitDuringTraining:
    """A progress callback that records a new `fit` step while distill trains: what a writer that
    ignored the lock would do. The student must stay tied to the teacher it read at its start."""

    def __init__(self, run: RunDir):
        self.run, self.done = run, False

    def start(self, *args, **kwargs):
        if not self.done:
            self.done = True
            self.run.record_step("fit", {"config": {"teacher_mode": "mix"}, "teacher": str(self.run.teacher)})

    def advance(self, *args, **kwargs):
        pass

    def stop(self):
        pass


def test_distill_records_the_teacher_it_read_at_its_start(fitted_run, tmp_path):
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.steps.distill import distill

    run = RunDir(copy_run(fitted_run, tmp_path / "run"))
    started_from = run.step_id("fit")
    distill(DistillConfig(method="kd", epochs=1, batch_size=16), run, progress=RefitDuringTraining(run),
            log=lambda _: None, warn=lambda _: None)
    manifest = run.load()
    assert manifest.steps["distill"]["fit_id"] == started_from != manifest.steps["fit"]["id"]
    assert "student" in stale_artifacts(manifest)


# --------------------------------------------------------------------------- 3. damaged files


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("file, command, rerun", [
    ("student/model.safetensors", ["eval", "--model", "student"], "metakd distill"),
    ("student/model.safetensors", ["export"], "metakd distill"),
    ("student/model.safetensors", ["predict", "great kettle"], "metakd distill"),
    ("teacher/model.safetensors", ["eval", "--model", "teacher"], "metakd fit"),
    ("teacher/model.safetensors", ["distill", "--method", "kd", "--epochs", "1"], "metakd fit"),
    ("teacher/metakd_head.safetensors", ["distill", "--method", "kd", "--epochs", "1"], "metakd fit"),
    ("onnx/onnx/model.onnx", ["eval", "--model", "onnx"], "metakd export"),
    ("onnx/onnx/model_quantized.onnx", ["predict", "great kettle"], "metakd export"),  # predict's first choice
    ("onnx/onnx/model_quantized.onnx", ["eval", "--model", "int8"], "metakd export"),
])
def test_a_damaged_file_is_one_line_naming_it_and_nothing_is_replaced(fitted_run, tmp_path, file, command, rerun):
    run = copy_run(fitted_run, tmp_path / "run")
    if command[0] == "predict":  # predict prefers onnx/ when there is one: make the damaged file the one it reads
        if file.startswith("student"):
            import shutil

            shutil.rmtree(run / "onnx")
    truncate(run / file)
    before = snapshot(run)
    result = invoke(run, *command)
    one_line_error(result, str(run / file), "damaged or truncated", rerun)
    after = snapshot(run)
    for name in (LOCK_FILE,):
        after.pop(name, None)
        before.pop(name, None)
    assert after == before


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.update(steps=[]), "`steps` is list"),
    (lambda m: m["steps"].update(distill=None), "`steps.distill` is null"),
    (lambda m: m["steps"]["fit"].update(config=[1]), "`steps.fit.config` is list"),
    (lambda m: m["data"].update(labels="negative"), "`data.labels` is str"),
])
@pytest.mark.parametrize("command", [["export"], ["eval"], ["distill", "--method", "kd"], ["predict", "great"]])
def test_a_manifest_of_the_wrong_shape_is_refused_before_anything_is_replaced(fitted_run, tmp_path, edit, key,
                                                                               command):
    run = copy_run(fitted_run, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    edit(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run)
    result = invoke(run, *command)
    one_line_error(result, "manifest.json", key, "re-run")
    after = snapshot(run)
    after.pop(LOCK_FILE, None)
    before.pop(LOCK_FILE, None)
    assert after == before


# --------------------------------------------------------------------------- 4. tiny from a shallow teacher


def test_tiny_from_a_teacher_of_three_layers_trains_and_saves(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

    shallow = tmp_path / "shallow"
    config = BertConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 3
    torch.manual_seed(0)
    BertModel(config).save_pretrained(shallow)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(shallow)
    data = write_jsonl(tmp_path / "data.jsonl", toy_rows())
    run = tmp_path / "run"
    assert invoke(run, "--quiet", "fit", str(data), "--teacher", str(shallow), "--teacher-mode", "mix",
                  *FAST_FIT).exit_code == 0
    result = invoke(run, "distill", "--student", "tiny", "--intermediate-epochs", "1", "--epochs", "1",
                    "--batch-size", "16")
    assert result.exit_code == 0, result.output
    assert "only 3 layers" in result.output
    student = AutoModelForSequenceClassification.from_pretrained(run / "student")
    assert student.config.num_hidden_layers == 3
    layers = student.base_model.encoder.layer
    assert len({id(p) for layer in layers for p in layer.parameters()}) == sum(
        len(list(layer.parameters())) for layer in layers)  # no two layers share a weight
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
