"""The `metakd` group: version, help on every command, lazy imports, `python -m`, `data --json`."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT, toy_rows, write_jsonl, write_toy_dataset
from metakd_cli import __version__
from metakd_cli.cli import COMMANDS, cli

EXPECTED_COMMANDS = ["data", "fit", "distill", "export", "eval", "predict", "run"]
HEAVY_MODULES = ("torch", "transformers", "optimum", "onnxruntime")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"metakd, version {__version__}"


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    listed = result.stdout.split("Commands:", 1)[1].split()
    for name in EXPECTED_COMMANDS:
        assert name in listed, name
    assert "--run-dir" in result.stdout and "METAKD_RUN_DIR" in result.stdout


def test_short_help_flag():
    assert invoke("-h").stdout == invoke("--help").stdout


@pytest.mark.parametrize("name", sorted(set(EXPECTED_COMMANDS) | set(COMMANDS)))
def test_help_on_every_command(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {name}") or result.stdout.startswith(f"Usage: metakd {name}")


def test_unknown_command():
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.stderr


HELP_WITHOUT_HEAVY_IMPORTS = f"""
import sys
from metakd_cli.cli import COMMANDS, cli

for args in [["--help"], *[[name, "--help"] for name in COMMANDS]]:
    try:
        cli.main(args, prog_name="metakd", standalone_mode=False)
    except SystemExit:
        pass
heavy = sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)
print("HEAVY", ",".join(heavy))
"""


def test_help_does_not_import_torch():
    """`metakd --help` (and each command's) must answer without importing torch and friends."""
    result = python("-c", HELP_WITHOUT_HEAVY_IMPORTS)
    assert result.returncode == 0, result.stderr
    heavy = result.stdout.strip().splitlines()[-1]
    assert heavy == "HEAVY", f"--help imported {heavy.split()[1:]}: import them inside the command bodies"


def test_importing_the_cli_does_not_import_torch():
    result = python("-c", "import sys, metakd_cli.cli; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_python_dash_m():
    result = python("-m", "metakd_cli", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: metakd")
    assert all(name in result.stdout for name in EXPECTED_COMMANDS)


def test_data_json(tmp_path):
    path = write_toy_dataset(tmp_path, "jsonl")
    result = invoke("data", str(path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["total"] == 120
    assert summary["labels"] == ["negative", "positive"]
    assert {name: [d["train"], d["dev"], d["test"]] for name, d in summary["domains"].items()} == {
        "books": [32, 4, 4],
        "electronics": [32, 4, 4],
        "kitchen": [32, 4, 4],
    }


def test_data_json_in_a_subprocess_keeps_stdout_clean(tmp_path):
    path = write_toy_dataset(tmp_path, "csv")
    result = python("-m", "metakd_cli", "data", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 120


def test_user_error_exit_code_in_a_subprocess(tmp_path):
    result = python("-m", "metakd_cli", "data", str(tmp_path / "missing.csv"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'missing.csv'}: no such file or folder"]


def test_user_text_with_square_brackets_prints_literally(tmp_path, monkeypatch):
    # rich read "[old]" and "[pos]" as markup tags and dropped them; "[/x]" crashed with a MarkupError
    rows = [{**row, "label": "[pos]" if row["label"] == "positive" else row["label"]} for row in toy_rows()]
    write_jsonl(tmp_path / "reviews[old].jsonl", rows)
    monkeypatch.chdir(tmp_path)
    result = invoke("data", "reviews[old].jsonl")
    assert result.exit_code == 0, result.output
    assert "reviews[old].jsonl — " in result.stdout.splitlines()[0]
    assert "label [pos]" in result.stdout

    result = invoke("data", "missing[x].jsonl")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.endswith("missing[x].jsonl: no such file or folder\n")

    result = invoke("--run-dir", str(tmp_path / "run"), "run", "quickstart", "--set", "fit.[/x]=1")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --set fit.[/x]: unknown key '[/x]'")


def test_log_and_warning_lines_print_markup_literally(capsys):
    from metakd_cli.commands import console

    console.log("teacher [bold]x[/bold] [/x]")
    console.warn("label [pos] [/y]")
    assert capsys.readouterr().err == "teacher [bold]x[/bold] [/x]\nwarning: label [pos] [/y]\n"


def test_run_dir_after_the_command_wins_over_before_and_the_environment(tmp_path, monkeypatch):
    # `metakd fit DATA --run-dir X` said "No such option '--run-dir'"
    monkeypatch.setenv("METAKD_RUN_DIR", str(tmp_path / "from-env"))
    for args, used in ([["eval"], "from-env"], [["--run-dir", str(tmp_path / "before"), "eval"], "before"],
                       [["--run-dir", str(tmp_path / "before"), "eval", "--run-dir", str(tmp_path / "after")], "after"],
                       [["eval", "--run-dir", str(tmp_path / "after")], "after"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert f"run folder {tmp_path / used} does not exist" in result.stderr, (args, result.stderr)
    for name in ("fit", "distill", "export", "eval", "predict", "run"):
        assert "--run-dir" in invoke(name, "--help").stdout, name
    assert "--run-dir" not in invoke("data", "--help").stdout  # it reads no run folder


def test_config_is_logged_as_the_keys_that_differ_from_the_defaults(tmp_path):
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run"), "fit", str(tmp_path / "missing.jsonl"),
                                      "--epochs", "1", "--lr", "1e-4"])
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("fit config: epochs=1 lr=0.0001, the rest default"), first
    assert "{" not in first
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  path: {tmp_path / 'missing.jsonl'}\nfit:\n  epochs: 2\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run"), "run", str(recipe), "--set",
                                      "distill.method=kd"])
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert first == (f"recipe {recipe}: data.path={tmp_path / 'missing.jsonl'} fit.epochs=2 distill.method=kd, "
                     "the rest default (all of it goes to manifest.json)")


def test_training_progress_without_a_terminal_logs_one_plain_line_per_epoch(capsys):
    # redirected to a file, rich bars were cut off mid-line
    from metakd_cli.commands import console

    progress = console.TrainingProgress()
    progress.start("fit-teacher", total=4)
    for epoch in (1, 2):
        progress.advance(1, "epoch loss")
        progress.advance(1, "epoch loss")
        progress.epoch_end(epoch, 2, 0.5 / epoch, 75.0 + epoch, 12.34)
    progress.stop()
    progress.start("distill-intermediate", total=2)
    progress.epoch_end(1, 1, 0.25, None, 8.0)
    progress.stop()
    assert capsys.readouterr().err.splitlines() == [
        "fit-teacher: epoch 1/2 loss 0.5000 dev acc 76.00% 12.3 ex/s",
        "fit-teacher: epoch 2/2 loss 0.2500 dev acc 77.00% 12.3 ex/s",
        "distill-intermediate: epoch 1/1 loss 0.2500 8.0 ex/s",
    ]


def test_training_calls_the_progress_once_per_epoch(tmp_path):
    import torch
    from torch import nn

    from metakd_cli.training.loop import PhaseSpec, PhaseSteps, run_phase

    class Recorder:
        def __init__(self):
            self.epochs = []

        def start(self, *args, **kwargs):
            pass

        def advance(self, steps=1, info=""):
            pass

        def epoch_end(self, epoch, epochs, loss, dev_score, examples_per_second):
            self.epochs.append((epoch, epochs, dev_score))

        def stop(self):
            pass

    model = nn.Linear(2, 1)
    recorder = Recorder()
    steps = PhaseSteps(10, lambda idx: {"x": torch.ones(len(idx), 2), "index": torch.tensor(idx)},
                       lambda batch, generator: {"loss": model(batch["x"]).pow(2).mean()}, lambda: 50.0)
    run_phase(PhaseSpec(name="p", epochs=2, batch_size=4, lr=0.01, seed=0), model, steps, tmp_path, False, recorder)
    assert recorder.epochs == [(1, 2, 50.0), (2, 2, 50.0)]


def test_ctrl_c_says_what_was_saved_and_the_command_that_resumes(tiny_model_dir, tmp_path, monkeypatch):
    from conftest import InterruptAfter
    from metakd_cli.commands import console

    data = write_toy_dataset(tmp_path, "jsonl")
    run_dir = tmp_path / "run"
    argv = ["metakd", "--run-dir", str(run_dir), "fit", str(data), "--teacher", str(tiny_model_dir), "--epochs", "3",
            "--batch-size", "8", "--max-length", "16"]
    monkeypatch.setattr(sys, "argv", argv)
    steps_per_epoch = 96 // 8
    monkeypatch.setattr(console, "TrainingProgress", lambda: InterruptAfter(steps_per_epoch + 2))
    result = CliRunner().invoke(cli, argv[1:])
    assert result.exit_code == 130, result.output
    message = result.stderr.splitlines()[-1]
    assert message == (f"error: interrupted; training state saved in {run_dir / 'checkpoints' / 'fit-teacher'} "
                       f"(stopped in epoch 2 after 2 steps); continue with: {shlex.join([*argv, '--resume'])}")


@pytest.mark.parametrize("mode", ["meta", "mix"])
def test_ctrl_c_after_the_transferability_pass_says_resume_reuses_it(tiny_model_dir, tmp_path, monkeypatch, mode):
    from metakd_cli.steps import fit

    def interrupted(*args, **kwargs):  # Ctrl-C before the first training step could be saved
        raise KeyboardInterrupt

    data = write_toy_dataset(tmp_path, "jsonl")
    run_dir = tmp_path / "run"
    argv = ["metakd", "--run-dir", str(run_dir), "fit", str(data), "--teacher", str(tiny_model_dir),
            "--max-length", "16", "--teacher-mode", mode]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(fit, "run_phase", interrupted)
    result = CliRunner().invoke(cli, argv[1:])
    assert result.exit_code == 130, result.output
    if mode == "mix":  # no pass, nothing saved
        assert result.stderr.splitlines()[-1] == ("error: interrupted before any training state was saved; nothing "
                                                  "was changed, so run the same command again to start over")
        return
    assert result.stderr.splitlines()[-1] == (
        f"error: interrupted before any training state was saved; the transferability scores are saved in "
        f"{run_dir / 'checkpoints' / 'fit-scores'}, and the same command with --resume reuses them: "
        f"{shlex.join([*argv, '--resume'])}")


def test_ctrl_c_after_the_teachers_pass_in_distill_says_resume_reuses_it(tiny_model_dir, tmp_path, monkeypatch):
    from metakd_cli.steps import distill

    data = write_toy_dataset(tmp_path, "jsonl")
    run_dir = tmp_path / "run"
    fitted = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(run_dir), "fit", str(data), "--teacher",
                                      str(tiny_model_dir), "--max-length", "16", "--epochs", "1"])
    assert fitted.exit_code == 0, fitted.output

    def interrupted(*args, **kwargs):  # Ctrl-C before the first training step could be saved
        raise KeyboardInterrupt

    argv = ["metakd", "--run-dir", str(run_dir), "distill", "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(distill, "run_phase", interrupted)
    result = CliRunner().invoke(cli, argv[1:])
    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1] == (
        f"error: interrupted before any training state was saved; the teacher's logits are saved in "
        f"{run_dir / 'checkpoints' / 'distill-teacher'}, and the same command with --resume reuses them: "
        f"{shlex.join([*argv, '--resume'])}")


def test_ctrl_c_in_a_command_without_resume_says_nothing_changed(tmp_path, monkeypatch):
    from metakd_cli.steps import evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_run", interrupted)
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path), "eval"])
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted; nothing was changed (files are written whole or not at all)\n"


def test_data_with_one_label_warns(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{**row, "label": "positive"} for row in toy_rows()])
    result = CliRunner().invoke(cli, ["--quiet", "data", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning: every row has the same label ('positive')" in result.stderr


def test_recipes_ls_left_aligns_the_purpose():
    result = invoke("recipes", "ls")
    assert result.exit_code == 0, result.output
    cells = [line.split("│")[2] for line in result.stdout.splitlines() if line.startswith("│")]
    assert cells and all(not cell.startswith("  ") for cell in cells if cell.strip()), cells


def test_run_takes_resume_and_ctrl_c_names_the_checkpoint(tmp_path, monkeypatch):
    seen = []
    checkpoint = tmp_path / "run" / "checkpoints" / "distill-prediction"

    def interrupted_pipeline(config, run, progress, log, warn, resume=False, steps=None):
        seen.append(resume)
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "loop.json").write_text(json.dumps({"epoch": 1, "step": 0}))
        raise KeyboardInterrupt

    monkeypatch.setattr("metakd_cli.steps.pipeline.run_pipeline", interrupted_pipeline)
    argv = ["metakd", "--run-dir", str(tmp_path / "run"), "run", "quickstart"]
    monkeypatch.setattr(sys, "argv", argv)
    result = CliRunner().invoke(cli, ["--quiet", *argv[1:]])
    assert result.exit_code == 130 and seen == [False]
    assert result.stderr == (f"error: interrupted; training state saved in {checkpoint} (1 epoch done); continue "
                             f"with: {shlex.join([*argv, '--resume'])}\n")
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    result = CliRunner().invoke(cli, ["--quiet", *argv[1:], "--resume"])
    assert result.exit_code == 130 and seen == [False, True]
    assert result.stderr.endswith(f"continue with: {shlex.join([*argv, '--resume'])}\n")  # --resume once
