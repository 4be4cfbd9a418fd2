"""The bench driver (bench/suite.py, python -m bench) and the suite files it reads (bench/suites/*.yaml): each
suite loads and every system is a valid override of its recipe; a bad file is one error line naming the file and
the key; a system inherits the settings of the steps it copies; runs go in order, each after the one it starts
from, and a finished one is skipped."""

from __future__ import annotations

import pytest

import bench.suite as suite_module
from bench.__main__ import main
from bench.suite import SuiteError, load, names, resolve
from conftest import check_bench_system

TOY = """what: a toy suite
recipe: bench/recipes/amazon.yaml
seeds: [1, 2]
domains: [books, dvd]
systems:
  teacher:
    what: the teacher, scored on every domain
    sets: [fit.epochs=1, eval.models=teacher]
    steps: [fit, eval]
  student:
    what: a student per domain and seed
    sets: ["distill.domain={domain}", "eval.domains={domain}", "distill.seed={seed}"]
    steps: [distill, eval]
    start: teacher
    folder: "students/{domain}-s{seed}"
  int8:
    what: the student exported
    sets: [eval.models=int8]
    steps: [export, eval]
    start: student
    folder: "int8/{domain}-s{seed}"
  late:
    what: a student of the seed-1 run of another
    steps: [export, eval]
    start: student
    pin: {seed: 1}
    folder: "late/{domain}"
default: [student]
"""


@pytest.fixture
def suites(tmp_path, monkeypatch):
    """A folder of suite files in place of bench/suites; write(name, text) adds one."""
    folder = tmp_path / "suites"
    folder.mkdir()
    monkeypatch.setattr(suite_module, "SUITES", folder)

    def write(name: str, text: str) -> None:
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return write


@pytest.mark.parametrize("name", names())
def test_each_suite_loads_its_hooks_resolve_and_every_system_is_a_valid_override(name, monkeypatch):
    from bench import scarce

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(scarce, "train_rows", lambda data, domain, fractions: {f: 1600 for f in (1.0, *fractions)})
    monkeypatch.setattr(scarce, "_ROWS", {})  # the rows per fraction given: no data read
    suite = load(name)
    for path in (suite, suite.mpnet) if suite.mpnet else (suite,):
        for system in path.systems:
            check_bench_system(path, system)
    hooks = suite.spec.get("hooks") or {}
    for ref in [v for k, v in hooks.items() if isinstance(v, str)] + [
            ref for key in ("sections", "commands") for ref in (hooks.get(key) or {}).values()]:
        assert callable(resolve(ref)), ref


@pytest.mark.parametrize("text, error", [
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystemz: {}\n", "bad.yaml: systemz: unknown key"),
    ("recipe: bench/recipes/amazon.yaml\n", "bad.yaml: what: missing"),
    ("what: x\nrecipe: nowhere.yaml\n", "bad.yaml: recipe: nowhere.yaml: no such file"),
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystems: {a: {what: a, steps: [fit, train]}}\n",
     "bad.yaml: systems.a.steps: expected some of fit, distill, export, eval"),
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystems: {a: {what: a, steps: [fit], sets: [epochs=2]}}\n",
     "bad.yaml: systems.a.sets: expected SECTION.KEY=VALUE"),
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystems: {a: {what: a, steps: [distill], start: b}}\n",
     "bad.yaml: systems.a.start: b is not a system of the suite"),
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystems: {a: {steps: [fit]}}\n", "bad.yaml: systems.a.what: missing"),
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystems: {a: {what: a, steps: [fit], step: [eval]}}\n",
     "bad.yaml: systems.a.step: unknown key"),
    ("what: x\nrecipe: bench/recipes/amazon.yaml\nsystems: {a: {what: a, steps: [fit]}}\ntests: [[a, b]]\n",
     "bad.yaml: tests: ['a', 'b']: expected [A, B], two systems of the suite"),
    ("what: x\nhooks: {after: a:b}\n", "bad.yaml: hooks.after: unknown hook"),
    ("what: [x\n", "bad.yaml: not YAML"),
])
def test_a_bad_suite_file_is_one_line_naming_the_file_and_the_key(suites, text, error, capsys):
    suites("bad", text)
    with pytest.raises(SuiteError) as caught:
        load("bad")
    assert error in str(caught.value) and "\n" not in str(caught.value)
    assert main(["table", "bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and error in err and err.count("\n") == 1


def test_a_system_inherits_the_settings_of_the_steps_it_copies(suites):
    suites("toy", TOY)
    toy = load("toy")
    assert toy.sets_of("student", {"domain": "dvd", "seed": 2}) == [  # the teacher's fit, not its eval
        "fit.epochs=1", "distill.domain=dvd", "eval.domains=dvd", "distill.seed=2"]
    assert toy.sets_of("int8", {"domain": "dvd", "seed": 2}, ("export.max_drop=100",)) == [
        "fit.epochs=1", "distill.domain=dvd", "distill.seed=2", "eval.models=int8", "export.max_drop=100"]
    assert toy.chain("int8") == "fit,distill,export,eval" and toy.chain("int8", built=True) == "fit,distill,export"
    assert toy.folder("int8", {"domain": "books", "seed": 1}) == toy.runs / "int8" / "books-s1"
    assert toy.start_of("late", {"domain": "dvd"}) == ("student", {"seed": 1, "domain": "dvd"})  # pinned seed


def test_runs_go_seed_by_seed_each_after_its_start_and_finished_ones_are_skipped(suites, monkeypatch):
    suites("toy", TOY)
    toy, calls, ran = load("toy"), [], []
    finished = {toy.folder("student", {"domain": "books", "seed": 1})}
    monkeypatch.setattr(suite_module, "done", lambda run_dir, *args: run_dir in finished)
    monkeypatch.setattr(suite_module, "start_from", lambda source, run_dir, dry_run=False: calls.append(
        ("copy", source.relative_to(toy.runs).as_posix(), run_dir.relative_to(toy.runs).as_posix())))
    monkeypatch.setattr(suite_module, "metakd_run", lambda run_dir, sets, steps, path, dry_run=False: calls.append(
        ("run", run_dir.relative_to(toy.runs).as_posix(), steps)))
    toy.run(["int8"], after=lambda: ran.append(1))
    assert [call[1:] for call in calls if call[0] == "run"] == [
        ("teacher", "fit,eval"), ("int8/books-s1", "fit,distill,export,eval"),  # students/books-s1: done
        ("students/dvd-s1", "fit,distill,eval"), ("int8/dvd-s1", "fit,distill,export,eval"),
        ("students/books-s2", "fit,distill,eval"), ("int8/books-s2", "fit,distill,export,eval"),
        ("students/dvd-s2", "fit,distill,eval"), ("int8/dvd-s2", "fit,distill,export,eval")]
    assert ("copy", "students/books-s1", "int8/books-s1") in calls and len(ran) == 8


def test_the_command_line_runs_a_suites_default_and_names_what_is_wrong(suites, capsys, monkeypatch):
    suites("toy", TOY)
    monkeypatch.setattr(suite_module, "done", lambda *args: False)
    monkeypatch.setattr(suite_module.Suite, "data_missing", lambda self, extra=(): None)  # CI has no Amazon data
    assert main(["run", "toy", "--seeds", "2", "--domains", "dvd", "--dry-run", "--set", "fit.lr=1e-4"]) == 0
    printed = capsys.readouterr().out
    assert "--steps fit,eval --set fit.epochs=1 --set eval.models=teacher --set fit.lr=1e-4" in printed
    assert "students/dvd-s2" in printed and "books" not in printed and "int8" not in printed
    assert main(["run", "toy", "--systems", "nothing"]) == 2
    assert "--systems nothing: not a system of the suite" in capsys.readouterr().err
    assert main(["peers", "toy"]) == 2 and "peers: not a command of the suite" in capsys.readouterr().err
    assert main(["table", "missing"]) == 2 and "no such suite" in capsys.readouterr().err


def test_the_mpnet_path_runs_from_mpnets_teacher_folder(tmp_path, monkeypatch, capsys):
    """`python -m bench run keep --mpnet` and `run transfer --mpnet`: mpnet's teacher-meta first (skipped once
    finished), then each student in a copy of its folder under bench/runs/mpnet."""
    monkeypatch.setattr(suite_module, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(suite_module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(suite_module.Suite, "data_missing", lambda self, extra=(): None)
    for suite, students in (("keep", ["keep-kd", "keep-meta"]), ("transfer", ["keep-kd", "transfer-kd-aug4"])):
        assert main(["run", suite, "--mpnet", "--dry-run"]) == 0
        runs = [line.split("--run-dir ")[1].split(" ")[0] for line in capsys.readouterr().out.splitlines() if " $ " in line]
        mpnet = (tmp_path / "runs" / "mpnet").as_posix()
        assert [run.removeprefix(mpnet + "/") for run in runs] == ["teacher-meta", *students], suite
