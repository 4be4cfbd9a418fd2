"""teachers' and students' tables: the full-data Amazon teachers (metakd's fit.json) and one all-domain student per
system (distill.json), each row with the `metakd run` command that made it."""

from __future__ import annotations

from bench.common import run_command
from bench.suite import Suite, row, setup


def _command(suite: Suite, system: str, extra: tuple[str, ...]) -> str:
    return run_command(suite.folder(system), suite.sets_of(system, {}, extra), suite.chain(system), suite.recipe)


def teachers(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    def read(name: str):
        def reader(metrics: dict) -> dict:
            fit = metrics["fit"]
            return {**{k: round(v, 2) for k, v in fit["test_accuracy"].items()},
                    "dev_average": round(fit["dev_accuracy"]["average"], 2), "minutes": round(fit["seconds"] / 60, 1),
                    "command": _command(suite, name, extra)}
        return reader
    rows = {name: row(suite, name, read(name), before.get("results") or {}, extra, missing=None) for name in suite.systems}
    return {"setup": setup(suite, extra), "results": {name: r for name, r in rows.items() if r}}


def students(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    def read(name: str):
        def reader(metrics: dict) -> dict:
            distill, stages = metrics["distill"], metrics["distill"]["stages"]
            return {**{k: round(v, 2) for k, v in distill["test_accuracy"].items()},
                    "teacher_average": round(distill["teacher_test_accuracy"]["average"], 2),
                    "agreement": round(distill["test_agreement_with_teacher"], 2),
                    "minutes": round(distill["seconds"] / 60, 1),
                    "stage_minutes": {k: round(v["seconds"] / 60, 1) for k, v in stages.items()},
                    "stage_examples_per_second": {k: round(v["examples_per_second"], 1) for k, v in stages.items()},
                    "parameters": distill["parameters"]["student"], "command": _command(suite, name, extra)}
        return reader
    rows = {name: row(suite, name, read(name), before.get("results") or {}, extra, missing=None)
            for name, system in suite.systems.items() if system.start}
    return {"setup": setup(suite, extra), "results": {name: r for name, r in rows.items() if r}}
