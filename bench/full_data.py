"""teachers' and students' tables: the full-data Amazon teachers (metakd's fit.json) and one all-domain student per
system (distill.json), each row with the `metakd run` command that made it."""

from __future__ import annotations

from bench.common import run_command
from bench.suite import Suite, row, setup


def _table(suite: Suite, extra: tuple[str, ...], before: dict, systems, read) -> dict:
    """Each of ``systems``' row (``read`` from its metrics, with its command) or the row the results file kept."""
    def reader(name: str):
        return lambda metrics: {**read(metrics), "command": run_command(
            suite.folder(name), suite.sets_of(name, {}, extra), suite.chain(name), suite.recipe)}
    rows = {name: row(suite, name, reader(name), before.get("results") or {}, extra, missing=None) for name in systems}
    return {"setup": setup(suite, extra), "results": {name: r for name, r in rows.items() if r}}


def teachers(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    return _table(suite, extra, before, suite.systems, lambda metrics: {
        **{k: round(v, 2) for k, v in metrics["fit"]["test_accuracy"].items()},
        "dev_average": round(metrics["fit"]["dev_accuracy"]["average"], 2),
        "minutes": round(metrics["fit"]["seconds"] / 60, 1)})


def students(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    def read(metrics: dict) -> dict:
        distill, stages = metrics["distill"], metrics["distill"]["stages"]
        return {**{k: round(v, 2) for k, v in distill["test_accuracy"].items()},
                "teacher_average": round(distill["teacher_test_accuracy"]["average"], 2),
                "agreement": round(distill["test_agreement_with_teacher"], 2),
                "minutes": round(distill["seconds"] / 60, 1),
                "stage_minutes": {k: round(v["seconds"] / 60, 1) for k, v in stages.items()},
                "stage_examples_per_second": {k: round(v["examples_per_second"], 1) for k, v in stages.items()},
                "parameters": distill["parameters"]["student"]}
    return _table(suite, extra, before, [name for name, system in suite.systems.items() if system.start], read)
