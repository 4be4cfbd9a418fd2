"""`metakd run amazon-cpu` end to end on this machine: minutes per step, the whole run, accuracy.

    python -m bench.amazon_cpu [--run-dir bench/runs/amazon-cpu] [--resume]

Runs the bundled recipe (fit, distill, export --int8, eval) on ../shared/data/amazon-mds in a fresh
run folder and times it (target: under 60 minutes on a 2-core CPU). With --resume, a run folder
whose four steps have finished is reported instead of run again: its span is then read from the
run's own records (fit started = fit.json written - fit's seconds; ended = eval.json written).
Writes bench/results/amazon_cpu.json:

    {"setup": {"cpu": .., "recipe": .., "command": .., "resumed": ..}, "started": ..,
     "steps": {"fit": {"seconds": ..}, "distill": {..}, "export": {..}, "eval": {..}},
     "minutes": .., "wall_minutes": .. (null when resumed), "target_minutes": 60, "met": ..,
     "accuracy": {"teacher": {"books": .., .., "average": ..}, "student": .., "onnx": .., "int8": ..},
     "throughput_b32": {"teacher": .., ..}}
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import RESULTS, RUNS, data_missing, metakd_run, recipe, run_command, shown

OUT = RESULTS / "amazon_cpu.json"
STEPS = ("fit", "distill", "export", "eval")
TARGET_MINUTES = 60


def finished(run_dir: Path) -> bool:
    return all((run_dir / "metrics" / f"{step}.json").is_file() for step in STEPS)


def summarize(run_dir: Path, wall_seconds: float | None) -> dict:
    """The run folder's step times (metakd's own), its span from fit's start to eval's end, and the
    eval table's accuracy and batch-32 throughput per model."""
    metrics = {step: json.loads((run_dir / "metrics" / f"{step}.json").read_text()) for step in STEPS}
    written = {step: (run_dir / "metrics" / f"{step}.json").stat().st_mtime for step in STEPS}
    if not written["fit"] <= written["distill"] <= written["export"] <= written["eval"]:
        raise SystemExit(f"{run_dir}: its metrics were not written in the order fit, distill, export, eval "
                         "(a step was redone on its own): time a fresh run")
    started = written["fit"] - metrics["fit"]["seconds"]
    steps = {step: {"seconds": round(metrics[step]["seconds"], 1)} for step in STEPS[:3]}
    steps["eval"] = {"seconds": round(written["eval"] - written["export"], 1),
                     "note": "from the files' times: eval.json written - export.json written"}
    span = (written["eval"] - started) / 60
    models = metrics["eval"]["models"]
    return {
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "steps": steps,
        "minutes": round(span, 2),
        "wall_minutes": round(wall_seconds / 60, 2) if wall_seconds is not None else None,
        "target_minutes": TARGET_MINUTES,
        "met": span < TARGET_MINUTES,
        "accuracy": {m["name"]: {k: round(v, 2) for k, v in m["accuracy"].items()} for m in models},
        "throughput_b32": {m["name"]: round(m["throughput"], 1) for m in models if m.get("throughput")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=RUNS / "amazon-cpu")
    parser.add_argument("--resume", action="store_true", help="Report a finished run in --run-dir instead of rerunning.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="A --set for the recipe (repeatable); the timing is the bundled recipe's only without.")
    args = parser.parse_args(argv)
    from metakd_cli.config import find_recipe
    from metakd_cli.cpu import cpu_info
    from metakd_cli.run_dir import atomic_write_json

    path = find_recipe("amazon-cpu")
    if data_missing(recipe(args.sets, path)):
        print(data_missing(recipe(args.sets, path)))
        return
    resumed = args.resume and finished(args.run_dir)
    wall = None
    if not resumed:
        shutil.rmtree(args.run_dir, ignore_errors=True)  # a fresh run: every step timed
        began = time.time()
        metakd_run(args.run_dir, args.sets, ",".join(STEPS), path)
        wall = time.time() - began
    result = {
        "setup": {"cpu": cpu_info().to_json(), "python": platform.python_version(), "run_dir": shown(args.run_dir),
                  "recipe": "recipes/amazon-cpu.yaml", "command": run_command(Path("RUN"), args.sets, ",".join(STEPS),
                                                                              path).replace(shown(path), "amazon-cpu"),
                  "resumed": resumed},
        **summarize(args.run_dir, wall),
    }
    atomic_write_json(OUT, result)
    steps = ", ".join(f"{k} {v['seconds'] / 60:.1f}" for k, v in result["steps"].items())
    print(f"amazon-cpu end to end: {result['minutes']:.1f} min ({steps}); "
          f"target < {TARGET_MINUTES}: {'met' if result['met'] else 'not met'}")
    for name, accuracy in result["accuracy"].items():
        print(f"  {name:8s} average {accuracy['average']:.2f}")
    print(f"wrote {shown(OUT)}")

if __name__ == "__main__":
    main()
