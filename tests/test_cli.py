"""The `metakd` group: version, help on every command, lazy imports, `python -m`, `data --json`."""

from __future__ import annotations

import json
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
    from metakd_cli import console

    console.log("teacher [bold]x[/bold] [/x]")
    console.warn("label [pos] [/y]")
    assert capsys.readouterr().err == "teacher [bold]x[/bold] [/x]\nwarning: label [pos] [/y]\n"
