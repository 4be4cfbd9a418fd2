"""The paper's data-scarce table on one Amazon domain: how much of D's training data each system needs.

    python -m bench.scarce [--domain kitchen] [--fractions 0.01 0.05 0.1 0.2 1.0] [--systems single meta]
                           [--intermediate-epochs 1] [--epochs 2] [--set KEY=VALUE ...] [--table] [--dry-run]

Every system is bench/recipes/amazon.yaml plus --set overrides, run by `metakd run` in its own run folder under
bench/runs/scarce/. For each fraction F of D's training rows (seeded and label-stratified, the same rows for the
teacher and the student):

    single    D's own teacher on F of D (data.domains=D, fit.teacher_mode=single, fit.train_fraction=F)
              -> TinyBERT-KD student on the same rows (distill.domain=D, distill.method=tinybert)
    meta      the meta-teacher on every domain, F of D and all of the others
              (fit.train_fraction=F, fit.fraction_domains=D) -> Meta-KD student on F of D
    meta-tinybert  (optional) the same meta-teacher -> TinyBERT-KD student: separates what the
              teacher brings from what meta-distillation brings

Teachers use the recipe's fit (bench/teachers.py's settings); at F = 1 the meta-teacher is
bench/runs/teacher-meta-confusion, bench/teachers.py's folder (the same settings: its fit is reused).

Equal steps, less data: epochs are counted at F = 1, and a run that trains on F of D alone (the
single teacher, every student) gets as many epochs as it takes to make at least as many optimizer
steps (batch 32) as at F = 1: at F = 0.01 (16 rows, one batch an epoch) the single teacher makes
100 one-batch epochs, not 2 steps, so the table measures data, not an untrained head. The
meta-teacher trains on every other domain's rows too (over 150 steps an epoch) and keeps its 2
epochs. `--no-match-steps` keeps the epochs as given at every F. The single teacher and every
student keep their best epoch on D's whole dev split (200 rows at every F); the meta-teacher, as
`fit` selects for every all-domain teacher, on every domain's whole dev split, D's included.

A teacher's folder gets `--steps fit,eval`, a student's (a copy of its teacher's, hard links) `--steps
fit,distill,eval`; eval scores the model on D's test rows (the same 200 rows in every run: the split is per domain
and label). `metakd run` skips what is recorded with the same settings; a folder done with them is not started.
The table is read from the run folders (--table: nothing is run) into bench/results/scarce.json:

    {"setup": {...}, "results": {"<fraction>": {"train_rows": .., "single-teacher": .., "single->tinybert": ..,
     "meta-teacher": .., "meta->meta": .., "epochs": {..}, "minutes": {..}}},
     "tests": {"<fraction>": {"meta->meta vs single->tinybert": {"diff", "ci95", "p_value", ..}, ..}},
     "correct": {"<fraction>": {"<row>": {"rows": [0/1 per test row]}}}, "test_rows": {..}}

Paired tests at each fraction (bench/stats.py: bootstrap over D's test rows and exact McNemar; one
seed): Meta-KD's student against the single teacher's, the meta-teacher against the single
teacher, and Meta-KD against TinyBERT-KD from the same meta-teacher when that system ran. Each
model's 0/1 correctness per row comes from its folder's metrics/predictions.json (eval's rows).

Not part of CI (about 2.5 h on a 2-core CPU with matched steps). Skips with a reason when the
recipe's data (../shared/data/amazon-mds) is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

from bench.common import (
    DOMAINS, RESULTS, RUNS, TEACHERS, cell, data_missing, data_path, done, metakd_run, recipe, scored_rows,
    selection, start_from,
)
from bench.stats import compare
from metakd_cli.run_dir import atomic_write_json, read_json_object

OUT = RESULTS / "scarce.json"
SYSTEMS = {  # system -> (teacher kind, distill method)
    "single": ("single", "tinybert"),
    "meta": ("meta", "meta"),
    "meta-tinybert": ("meta", "tinybert"),
}
STUDENT_ROW = {"single": "single->tinybert", "meta": "meta->meta", "meta-tinybert": "meta->tinybert"}
PAIRS = [("meta->meta", "single->tinybert"), ("meta-teacher", "single-teacher"),  # paired tests at each F
         ("meta->meta", "meta->tinybert")]
RESAMPLES = 10_000
BATCH = 32


def matched_epochs(epochs: int, rows: int, full_rows: int) -> int:
    """Epochs on ``rows`` rows that make at least the optimizer steps of ``epochs`` on ``full_rows``."""
    return max(epochs, math.ceil(epochs * math.ceil(full_rows / BATCH) / math.ceil(rows / BATCH)))


def train_rows(data, domain: str, fractions: list[float]) -> dict[float, int]:
    """{F: D's training rows at F}: the rows fit and distill keep (metakd's own sampler), F = 1 included."""
    from dataclasses import replace

    from metakd_cli.data import fraction_indices, load_dataset

    dataset = load_dataset(replace(data, domains=[domain]))
    return {f: len(fraction_indices(dataset.train, f, dataset.split_seed)) for f in (1.0, *fractions)}


class Plan:
    """Every system's run folder and --set items at each fraction, with the epochs it gets there."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rows = train_rows(recipe(args.sets).data, args.domain, args.fractions) if args.match_steps else {}

    def epochs(self, epochs: int, fraction: float) -> int:
        """``epochs`` as given, or matched to F = 1's optimizer steps (a run on F of D alone)."""
        return matched_epochs(epochs, self.rows[fraction], self.rows[1.0]) if self.args.match_steps else epochs

    def teacher(self, kind: str, fraction: float) -> tuple[Path, list[str]]:
        folder, sets = self._teacher(kind, fraction)
        return folder, [*sets, *self.args.sets]

    def _teacher(self, kind: str, fraction: float) -> tuple[Path, list[str]]:
        d = self.args.domain
        # `metakd run` checks distill.domain against a single teacher even with --steps fit,eval: D's, as distilled
        scored = [f"distill.domain={d}", "eval.models=teacher", f"eval.domains={d}"]
        if kind == "meta" and fraction == 1.0:  # bench/teachers.py's meta-teacher
            return RUNS / TEACHERS["teacher-meta"][0], [*TEACHERS["teacher-meta"][1], *scored]
        if kind == "single":
            epochs = self.epochs(recipe(self.args.sets).fit.epochs, fraction)
            sets = ["fit.teacher_mode=single", f"data.domains={d}", f"fit.epochs={epochs}"]
        else:
            sets = [f"fit.fraction_domains={d}"]
        return (RUNS / "scarce" / f"{kind}-teacher-{d}-f{fraction:g}",
                [*sets, f"fit.train_fraction={fraction:g}", *scored])

    def student(self, name: str, fraction: float) -> tuple[Path, list[str]]:
        kind, method = SYSTEMS[name]
        a = self.args
        stage1, stage2 = self.epochs(a.intermediate_epochs, fraction), self.epochs(a.epochs, fraction)
        sets = [f"distill.method={method}", f"distill.train_fraction={fraction:g}", f"distill.seed={a.seed}",
                f"distill.intermediate_epochs={stage1}", f"distill.epochs={stage2}", "eval.models=student"]
        return (RUNS / "scarce" / f"{name}-student-{a.domain}-f{fraction:g}",
                [*self._teacher(kind, fraction)[1], *sets, *a.sets])


def run_system(plan: Plan, name: str, fraction: float) -> None:
    kind = SYSTEMS[name][0]
    for folder, sets, steps, source in (
            (*plan.teacher(kind, fraction), "fit,eval", None),
            (*plan.student(name, fraction), "fit,distill,eval", plan.teacher(kind, fraction)[0])):
        if source is not None:
            start_from(source, folder, plan.args.dry_run)
        config = recipe(sets)
        if not done(folder, config, steps, selection(config)):
            metakd_run(folder, sets, steps, dry_run=plan.args.dry_run)


def table(plan: Plan) -> dict:
    """scarce.json from the run folders done with this plan's settings."""
    a = plan.args
    d = a.domain
    config = recipe(a.sets)
    results: dict = {"setup": {
        "data": str(data_path(config)), "domain": d, "teacher": config.fit.teacher,
        "fit": {k: getattr(config.fit, k) for k in ("epochs", "lr", "max_length", "seed", "batch_size")},
        "distill": {"intermediate_epochs": a.intermediate_epochs, "epochs": a.epochs, "batch_size": BATCH,
                    "seed": a.seed, "student": "tiny (4 of the teacher's layers)"},
        "epochs": "as many as make the optimizer steps of F = 1 for runs on F of D alone (single teacher, "
                  "students); the meta-teacher keeps its epochs" if a.match_steps else "as given at every F",
        "dev": f"the single teacher and every student keep their best epoch on {d}'s whole dev split (200 rows) at "
               f"every F; the meta-teacher on every domain's whole dev split, {d}'s included",
        "fraction": "seeded, label-stratified share of the domain's training rows (split seed 42); "
                    "the meta-teacher keeps every row of the other domains",
        "metric": f"test accuracy % on {d}'s test rows",
    }, "results": {}, "correct": {}}
    for fraction in sorted(a.fractions, reverse=True):
        row, kept = {}, {}
        for name in SYSTEMS:
            kind = SYSTEMS[name][0]
            for label, (folder, sets), steps, model, step in (
                    (f"{kind}-teacher", plan.teacher(kind, fraction), "fit,eval", "teacher", "fit"),
                    (STUDENT_ROW[name], plan.student(name, fraction), "fit,distill,eval", "student", "distill")):
                config = recipe(sets)
                scored = scored_rows(folder, config, model) if done(folder, config, steps,
                                                                    selection(config)) else None
                if scored is None or label in kept:
                    continue
                where = json.dumps(scored.where[d])
                digest = {"domain": d, "rows": len(scored.where[d]), "sha256": hashlib.sha256(where.encode()).hexdigest()}
                if results.setdefault("test_rows", digest) != digest:
                    raise SystemExit(f"{folder}: {d}'s test rows differ from the other runs'; the paired tests need the "
                                     "same rows (same data and split seed)")
                correct = scored.correct[d]
                kept[label] = {"rows": correct}
                metrics = read_json_object(folder / "metrics" / f"{step}.json")
                row[label] = round(100 * sum(correct) / len(correct), 2)
                row.setdefault("minutes", {})[label] = round(metrics["seconds"] / 60, 1)
                if model == "teacher":
                    row["train_rows"] = metrics["train_rows"][d]
                    row.setdefault("epochs", {})[label] = config.fit.epochs
                else:
                    row.setdefault("student_train_rows", {})[label] = metrics["train_rows"][d]
                    row.setdefault("epochs", {})[label] = [config.distill.intermediate_epochs, config.distill.epochs]
        if kept:
            results["results"][f"{fraction:g}"], results["correct"][f"{fraction:g}"] = row, kept
    results["tests"] = {}
    for fraction, scored in results["correct"].items():
        pairs = {f"{x} vs {y}": compare({"1": scored[x]["rows"]}, {"1": scored[y]["rows"]}, None, RESAMPLES)
                 for x, y in PAIRS if x in scored and y in scored}
        if pairs:
            results["tests"][fraction] = pairs
    atomic_write_json(OUT, results)
    return results


def print_table(results: dict, systems: list[str]) -> None:
    columns = list(dict.fromkeys(["train_rows", *[c for name in systems
                                                  for c in (f"{SYSTEMS[name][0]}-teacher", STUDENT_ROW[name])]]))
    print(f"\n{results['setup']['domain']}: test accuracy % by share of its training data")
    print(f"{'fraction':>9}" + "".join(f"{c:>18}" for c in columns))
    for fraction, row in sorted(results["results"].items(), key=lambda kv: float(kv[0])):
        print(f"{fraction:>9}" + "".join(f"{cell(row.get(c)) if c != 'train_rows' else row.get(c, '-'):>18}"
                                         for c in columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="kitchen", choices=DOMAINS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.2, 1.0])
    parser.add_argument("--systems", nargs="+", default=["single", "meta"], choices=list(SYSTEMS))
    parser.add_argument("--intermediate-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2, help="Stage 2 (soft labels) epochs [2].")
    parser.add_argument("--seed", type=int, default=42, help="Student seed [42].")
    parser.add_argument("--match-steps", action=argparse.BooleanOptionalAction, default=True,
                        help="Runs on F of D alone get the optimizer steps they would make at F = 1 [on].")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="A --set for every run, after the systems' own (repeatable).")
    parser.add_argument("--table", action="store_true", help="Only rebuild the results from the run folders.")
    parser.add_argument("--dry-run", action="store_true", help="Print the metakd commands; run and write nothing.")
    args = parser.parse_args(argv)
    if data_missing(recipe(args.sets)):
        print(data_missing(recipe(args.sets)))
        return
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("fractions must be above 0 and at most 1")
    plan = Plan(args)
    if not args.table:
        for fraction in sorted(args.fractions, reverse=True):  # the costly full-data rows first
            for name in args.systems:
                run_system(plan, name, fraction)
                if not args.dry_run:
                    table(plan)
    if not args.dry_run:
        print_table(table(plan), args.systems)


if __name__ == "__main__":
    main()
