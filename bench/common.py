"""What every bench suite shares: where runs and results go, the paper's figures, running `metakd run` in a run
folder, run folders that start as a copy of another, and the rows eval scored there."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from metakd_cli.core.config import Recipe, apply_overrides, load_recipe, resolve_data_path
from metakd_cli.core.run_dir import RunDir, read_json_object

ROOT = Path(__file__).resolve().parent.parent
# runs/ and results/ live here; METAKD_BENCH_DIR moves both (a smoke run into a temporary folder)
HOME = Path(os.environ.get("METAKD_BENCH_DIR") or ROOT / "bench")
RUNS = HOME / "runs"
RESULTS = HOME / "results"
DOMAINS = ["books", "dvd", "electronics", "kitchen"]
_PAPER = yaml.safe_load((ROOT / "bench" / "paper.yaml").read_text(encoding="utf-8"))
PAPER, PAPER_HELD_OUT = _PAPER["table"], _PAPER["held_out"]  # the paper's rows, its held-out (MNLI) table


def recipe(sets: list[str], path: Path) -> Recipe:
    """The recipe as `metakd run PATH --set ...` resolves it."""
    config = load_recipe(path)
    apply_overrides(config, "fit", {}, tuple(sets))
    return config


def data_path(config: Recipe) -> Path:
    """The recipe's data, as `metakd run` (started in ROOT) reads it."""
    path = Path(resolve_data_path(config.data.path)).expanduser()
    return (path if path.is_absolute() else ROOT / path).resolve()


def shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_command(run_dir: Path, sets: list[str], steps: str, path: Path) -> str:
    """`metakd run` as the bench runs it in ``run_dir``, for the results files."""
    return shlex.join(["metakd", "--run-dir", shown(run_dir), "run", shown(path), "--resume", "--steps", steps,
                       *[arg for item in sets for arg in ("--set", item)]])


def metakd_run(run_dir: Path, sets: list[str], steps: str, path: Path, dry_run: bool = False) -> None:
    """`metakd run PATH --resume --steps STEPS --set ...` in ``run_dir``: it skips the steps recorded with the same
    settings and continues interrupted ones; a second writer of the folder stops with metakd's lock error. Exits
    when metakd fails (its one-line error is above, on stderr)."""
    print(f"{time.strftime('%H:%M:%S')} $ {run_command(run_dir, sets, steps, path)}", flush=True)
    if dry_run:
        return
    command = [sys.executable, "-m", "metakd_cli", "--quiet", "--run-dir", str(run_dir), "run", str(path), "--resume",
               "--steps", steps, *[arg for item in sets for arg in ("--set", item)]]
    status = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL).returncode  # eval's table: not ours
    if status:
        raise SystemExit(f"{run_dir}: `metakd run` failed (exit status {status}); its message is above")


def done(run_dir: Path, config: Recipe, steps: str, selection: str | None = None) -> bool:
    """Whether `metakd run` would skip ``steps`` in ``run_dir`` (metakd_cli.steps.pipeline.finished) and, with
    ``selection``, eval's rows for it were written after them: then the driver need not start it (eval runs every
    time)."""
    from metakd_cli.steps.pipeline import finished

    run = RunDir(run_dir)
    trained = [step for step in steps.split(",") if step != "eval"]
    if not all(finished(run, step, config) for step in trained):
        return False
    if selection is None:
        return True
    recorded = read_json_object(Path(run_dir) / "manifest.json").get("steps") or {}
    last = max((str(recorded[step].get("finished", "")) for step in trained), default="")
    entry = (read_json_object(Path(run_dir) / "metrics" / "eval.json").get("selections") or {}).get(selection)
    return isinstance(entry, dict) and str(entry.get("written", "")) >= last


def selection(config: Recipe) -> str:
    """The key of eval's rows in metrics/predictions.json (``split=test domains=books models=student``)."""
    from metakd_cli.steps.evaluate import selection_key

    cfg = config.eval
    return selection_key({"config": asdict(cfg), "split": cfg.split, "domains": cfg.domains, "bucketing": cfg.bucketing})


def start_from(source: Path, run_dir: Path, dry_run: bool = False) -> None:
    """``run_dir`` as a copy of the run folder ``source`` (weights hard-linked: metakd replaces files by rename,
    never in place), so that `metakd run` there finds source's steps finished and skips them. A copy of an earlier
    fit or distill of ``source`` (another step id) is made again."""
    ids = {step: entry.get("id") for step, entry in (read_json_object(source / "manifest.json").get("steps") or {}).items()}
    copied = read_json_object(run_dir / "manifest.json").get("steps") or {}
    if ids and all(copied.get(step, {}).get("id") == value for step, value in ids.items()):
        return
    print(f"# {shown(run_dir)} <- a copy of {shown(source)}", flush=True)
    if dry_run:
        return
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with RunDir(source).lock("bench copy"):  # a process writing the source now: metakd's lock error
        shutil.copytree(source, partial, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(".metakd.lock", "checkpoints", "*.log", "*.partial"))
    shutil.rmtree(run_dir, ignore_errors=True)
    partial.rename(run_dir)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


@dataclass
class Scored:
    """One model's rows of one eval selection, per domain in the data's order."""

    correct: dict[str, list[int]]  # 1 = the model predicts the gold label
    where: dict[str, list[str]]  # each row's place in the data (file:line): paired rows must be the same rows


def relative_where(where: str, data: Path) -> str:
    """A row's place (``file:line``) relative to the data's root, so that records made on one machine compare with
    runs on another where the data lives elsewhere; a place outside the root is left as it is."""
    file, sep, line = str(where).rpartition(":")
    path = Path(file)
    if not sep or not path.is_absolute() or not path.is_relative_to(data):
        return str(where)
    return f"{path.relative_to(data).as_posix()}:{line}"


def scored_rows(run_dir: Path, config: Recipe, model: str) -> Scored | None:
    """``model``'s rows of ``config``'s eval selection in ``run_dir``'s metrics/predictions.json, each row's place
    relative to the recipe's data root; None when absent."""
    entry = read_json_object(Path(run_dir) / "metrics" / "predictions.json").get(selection(config))
    if not isinstance(entry, dict) or model not in (entry.get("models") or {}):
        return None
    scored, data = Scored({}, {}), data_path(config)
    for domain, where, gold, got in zip(entry["domain"], entry["where"], entry["label"], entry["models"][model]):
        scored.correct.setdefault(domain, []).append(int(got == gold))
        scored.where.setdefault(domain, []).append(relative_where(where, data))
    return scored
