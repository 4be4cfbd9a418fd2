"""amazon_cpu's table: `metakd run amazon-cpu` end to end on this machine, from the run's own records: minutes per
step, the span from fit's start to eval's end against the 60-minute target, accuracy and batch-32 throughput."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from bench.common import run_command, shown
from bench.suite import Suite

STEPS = ("fit", "distill", "export", "eval")
TARGET_MINUTES = 60


def summarize(run_dir: Path) -> dict:
    """The run folder's step times (metakd's own), its span from fit's start (fit.json written - fit's seconds) to
    eval's end (eval.json written), and the eval table's accuracy and batch-32 throughput per model."""
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
        "wall_minutes": None,  # the span is read from the run's own records, not timed around it
        "target_minutes": TARGET_MINUTES,
        "met": span < TARGET_MINUTES,
        "accuracy": {m["name"]: {k: round(v, 2) for k, v in m["accuracy"].items()} for m in models},
        "throughput_b32": {m["name"]: round(m["throughput"], 1) for m in models if m.get("throughput")},
    }


def table(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    from metakd_cli.core.cpu import cpu_info

    (system,) = suite.systems
    if suite.finished(system, {}, extra) is None:
        return previous
    command = run_command(Path("RUN"), list(extra), ",".join(STEPS), suite.recipe)
    return {"setup": {"cpu": cpu_info().to_json(), "python": platform.python_version(),
                      "run_dir": shown(suite.folder(system)), "recipe": shown(suite.recipe),
                      "command": command.replace(shown(suite.recipe), "amazon-cpu"), "resumed": True},
            **summarize(suite.folder(system))}
