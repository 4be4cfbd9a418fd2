"""A bench suite declared as data: systems, each a set of recipe overrides and the `metakd run` steps it adds to a
copy of the folder it starts from, run in order and skipped when finished; the metrics of finished folders; paired
tests of two systems on the same test rows; targets with their pass / fail / not measured status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.common import Scored, done, metakd_run, recipe, scored_rows, selection, start_from
from bench.stats import compare
from metakd_cli.pipeline import STEPS
from metakd_cli.run_dir import read_json_object

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class System:
    sets: tuple[str, ...]  # --set overrides on the recipe
    steps: tuple[str, ...]  # the steps this system adds to those of the folder it starts from
    start: str | None  # the system whose finished folder this one starts as a copy of
    what: str


@dataclass(frozen=True)
class Suite:
    """Systems over one recipe, each in its own folder under ``runs``."""

    recipe: Path
    runs: Path
    systems: dict[str, System]

    def folder(self, system: str) -> Path:
        return self.runs / system

    def declared(self) -> dict[str, dict]:
        """The systems as the results files record them: what each is, its own --set, the system it starts from."""
        return {name: {"what": s.what, "sets": list(s.sets), "start": s.start} for name, s in self.systems.items()}

    def shipped(self, results: dict[str, object]) -> list[str]:
        """The students (systems with a start; not a peer's row) whose row holds a shipped student: measured or
        kept, with an int8."""
        return [s for s, row in results.items() if s in self.systems and self.systems[s].start is not None
                and isinstance(row, dict) and "not_shipped" not in row]

    def scored_all(self, systems: list[str], model: str = "int8") -> dict[str, Scored]:
        """``model``'s test rows of each of ``systems`` whose folder has them."""
        return {s: rows for s in systems if (rows := self.scored(s, model)) is not None}

    def sets_of(self, system: str, extra: tuple[str, ...] = ()) -> list[str]:
        """Every --set a system's run gets: those of the systems it starts from (their steps, copied, are finished
        only with their settings), its own, then the caller's (a mode's, the command line's)."""
        start = self.systems[system].start
        return [*(self.sets_of(start) if start is not None else ()), *self.systems[system].sets, *extra]

    def chain(self, system: str, built: bool = False) -> str:
        """The steps a system's folder holds, in `metakd run` order: its own and those of the folders it was copied
        from (a student: fit,distill,export,eval); ``built``: those that make models, without eval."""
        start = self.systems[system].start
        held = {*self.systems[system].steps, *(self.chain(start, built=True).split(",") if start else ())}
        return ",".join(step for step in STEPS if step in held and not (built and step == "eval"))

    def build(self, system: str, extra: tuple[str, ...], steps: str) -> bool:
        """`metakd run RECIPE --resume --steps STEPS` in the system's folder, a copy of its start's folder first;
        False when it is done already."""
        run_dir, sets = self.folder(system), self.sets_of(system, extra)
        config = recipe(sets, self.recipe)
        if done(run_dir, config, steps, selection(config) if "eval" in steps else None):
            return False
        if self.systems[system].start is not None:
            start_from(self.folder(self.systems[system].start), run_dir)
        metakd_run(run_dir, sets, steps, self.recipe)
        return True

    def run(self, systems: list[str], extra: tuple[str, ...] = (), after=lambda: None) -> None:
        """Each named system not finished yet, in the order given, the systems they start from first; ``after``
        each one that ran."""
        ordered: list[str] = []
        for system in systems:
            line, start = [system], self.systems[system].start
            while start is not None:
                line.insert(0, start)
                start = self.systems[start].start
            ordered += [s for s in line if s not in ordered]
        for system in ordered:
            if self.build(system, extra, self.chain(system)):
                after()

    def finished_metrics(self, system: str, extra: tuple[str, ...] = (), steps: str | None = None,
                         run_dir: Path | None = None) -> dict[str, dict] | None:
        """{step: metrics/<step>.json, eval: its record of this system's selection} when the folder is done with
        this system's settings (``steps``: default its chain) and its eval written after them; None otherwise."""
        run_dir = run_dir or self.folder(system)
        steps = steps or self.chain(system)
        config = recipe(self.sets_of(system, extra), self.recipe)
        key = selection(config) if "eval" in steps else None
        if not done(run_dir, config, steps, key):
            return None
        metrics = {step: read_json_object(run_dir / "metrics" / f"{step}.json") for step in steps.split(",")}
        if key is not None:
            metrics["eval"] = metrics["eval"]["selections"][key]
        return metrics

    def scored(self, system: str, model: str, extra: tuple[str, ...] = ()) -> Scored | None:
        """``model``'s test rows in the system's folder (bench.common.scored_rows)."""
        return scored_rows(self.folder(system), recipe(self.sets_of(system, extra), self.recipe), model)


def paired_test(one: Scored, other: Scored, seed: int, first: str, second: str) -> dict:
    """A vs B on the same test rows (bench.stats.compare: a paired bootstrap stratified by domain, and exact
    McNemar), A minus B in points; ``first`` names A and ``second`` B (its folder) for the refusal when the rows
    differ."""
    if one.where != other.where:
        raise SystemExit(f"{second}: its test rows are not those of {first}")
    domains = list(one.correct)
    strata = [domain for domain in domains for _ in one.correct[domain]]
    a, b = ({str(seed): sum((rows.correct[d] for d in domains), [])} for rows in (one, other))
    return compare(a, b, strata)


def target(what: str, value: float | None, threshold: float, at_least: bool, source: str) -> dict:
    """One target and where it lands: pass / fail against ``threshold`` (``at_least``: value >= threshold, else
    value <= threshold), or not measured when there is no value."""
    if value is None:
        status = NOT_MEASURED
    else:
        status = "pass" if (value >= threshold if at_least else value <= threshold) else "fail"
    return {"target": what, "threshold": threshold, "value": value, "status": status,
            "source": source if value is not None else None}


def kept(figures: object, same_settings: bool = True) -> dict | None:
    """Figures the results file holds from runs whose folders are gone (another machine, a cleaned disk), measured
    with the same settings: kept, and marked so; None when there are none."""
    if not (same_settings and isinstance(figures, dict)):
        return None
    return {**figures, "kept": figures.get("kept") or "from the results file: its run folders are gone"}
