"""The paper's full Amazon table on one machine, with several student seeds and paired tests.

    python -m bench.amazon [--systems ...] [--seeds 1 2 3] [--domains books dvd electronics kitchen]
                           [--held-out books dvd electronics kitchen] [--set KEY=VALUE ...]
                           [--resamples 10000] [--table] [--dry-run]

Quote system names in the shell: --systems 'meta->meta' 'meta->tinybert' (an unquoted `>`
redirects). The default is every system: many hours on a 2-core CPU; pick a few with --systems.

Every system is bench/recipes/amazon.yaml plus --set overrides (the teachers' in bench/common.py
TEACHERS, the students' in STUDENTS and INT8 here), run by `metakd run` in its own run folder:

    teacher-single    one teacher per domain (fit.teacher_mode=single)   bench/runs/paper-teacher-single
    teacher-single-matched  the same with 4x the epochs (8), so that each single teacher makes
                      the optimizer steps the all-domain teachers make    bench/runs/paper-teacher-single-matched
    teacher-mix       the mix teacher                                     bench/runs/teacher-mix
    teacher-mtl       shared encoder, a head per domain                   bench/runs/paper-teacher-mtl
    teacher-meta      the meta-teacher (the recipe's own fit)             bench/runs/teacher-meta-confusion
    single->tinybert  D's single teacher -> TinyBERT-KD student for D
    single-matched->tinybert  the same from teacher-single-matched
    mix->tinybert     mix teacher -> TinyBERT-KD student, one per domain
    mtl->tinybert     mtl teacher -> TinyBERT-KD student, one per domain
    multi->mtn        every single teacher -> MTN-KD student (mean of their softmax outputs)
    meta->tinybert    meta-teacher -> TinyBERT-KD student, one per domain
    meta->meta        meta-teacher -> Meta-KD student, one per domain
    meta->meta-int8   each meta->meta student exported to dynamic int8 with one weight scale per
                      matrix (export.per_channel=false; export.max_drop=100: the dev drop is recorded)
    meta->meta-int8-pc  the same with a weight scale per output column (export.per_channel=true)
    meta->meta-all    one all-domain meta-teacher -> Meta-KD student per seed (an extra row)
    held-out          the paper's held-out table for each --held-out domain H, scored on H: H's
                      single teacher and its student (teacher-single, single->tinybert), the
                      meta-teacher fitted without H (fit.hold_out=H, bench/runs/teacher-meta-
                      without-H), every other domain's single teacher -> TinyBERT-KD on H
                      (distill.teacher_domain=D), and the meta-teacher without H -> TinyBERT-KD
                      (the paper's row) and -> Meta-KD on H

A teacher's folder gets `--steps fit,eval` (eval: the teacher on every domain's test rows). A
student's folder, bench/runs/amazon/<system>/<domain or all>-s<seed>/, starts as a copy of its
teacher's (hard links), so `metakd run --steps fit,distill,eval` there skips the fit, distils on
D's rows (distill.domain=D: four students cost what one all-domain student costs) and scores the
student on D's test rows. An int8 folder starts as a copy of the meta->meta student's and adds
export. `metakd run --resume` skips finished steps and continues interrupted ones; a folder
whose steps are recorded with these settings and whose eval came after them is not started at
all. A re-fitted teacher or re-distilled student (another step id) makes the copies made from it
start again. A run folder has one writer: a second bench, or any metakd command, writing the same
folder stops with metakd's lock error. --set adds overrides to every run (after the systems' own).

The table is read from the run folders only (--table: nothing is run): each model's accuracy and
0/1 correctness per test row from metrics/predictions.json (written by eval: the same rows for
every system, checked by each row's place in the data), minutes from metrics/fit.json,
distill.json and export.json. A vs B is a paired bootstrap over test rows (stratified by domain,
on each row's correctness averaged over seeds) and exact McNemar per seed (bench/stats.py). Writes
bench/results/amazon.json, and every row's correctness to bench/results/amazon_predictions.json so
that the tests can be recomputed without the run folders:

    {"setup": {...},
     "results": {"<system>": {"books": .., "dvd": .., "electronics": .., "kitchen": ..,
                              "average": .., "std": .., "std_per_domain": {..}, "seeds": [..],
                              "minutes": {"<step>": mean minutes per run}}},
     "tests": {"meta->meta vs meta->tinybert": {"diff": .., "p_value": .., "ci95": [..], ..}},
     "held_out": {"<H>": {"results": {"<row>": {"accuracy": .., "std": .., "seeds": [..]}}, "tests": {..}}},
     "runs": {"<system>": {"<domain or all>": {"<seed>": {...}}}},
     "paper": {...}}

Per-domain values are means over seeds, "average" their mean, "std" the sample standard
deviation over seeds of each seed's average (null with one seed). Each row has every seed its
folders hold; a paired test of two students uses the seeds both have. Not part of CI: hours on
a 2-core CPU. Skips with a reason when the recipe's data (../shared/data/amazon-mds) is absent.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    DOMAINS, PAPER, PAPER_HELD_OUT, RESULTS, RUNS, TEACHERS, cell, data_missing, data_path, done, metakd_run, recipe,
    run_command, scored_rows, selection, shown, slug, start_from,
)
from bench.stats import compare
from metakd_cli.run_dir import atomic_write_json, atomic_write_text, read_json_object

STUDENT_RUNS = RUNS / "amazon"
OUT = RESULTS / "amazon.json"
PREDICTIONS = RESULTS / "amazon_predictions.json"
PAPER_COLUMNS = ["books", "dvd", "electronics", "kitchen", "average"]
STUDENTS = {  # system -> (teacher system, --set overrides, one student per domain?)
    "single->tinybert": ("teacher-single", ["distill.method=tinybert"], True),  # D's own single teacher
    "single-matched->tinybert": ("teacher-single-matched", ["distill.method=tinybert"], True),
    "mix->tinybert": ("teacher-mix", ["distill.method=tinybert"], True),
    "mtl->tinybert": ("teacher-mtl", ["distill.method=tinybert"], True),
    "multi->mtn": ("teacher-single", ["distill.method=mtn"], True),  # every single teacher at once
    "meta->tinybert": ("teacher-meta", ["distill.method=tinybert"], True),
    "meta->meta": ("teacher-meta", ["distill.method=meta"], True),
    "meta->meta-all": ("teacher-meta", ["distill.method=meta"], False),
}
INT8_SOURCE = "meta->meta"  # the students the int8 systems export, each in a copy of its folder
INT8 = {"meta->meta-int8": ["export.per_channel=false"], "meta->meta-int8-pc": ["export.per_channel=true"]}
HELD_OUT = "held-out"  # the paper's held-out table, for each --held-out domain (systems named held-out/H/...)
SYSTEMS = ["teacher-single", "teacher-single-matched", "teacher-mix", "teacher-mtl", "teacher-meta",
           "single->tinybert", "single-matched->tinybert", "mix->tinybert", "mtl->tinybert", "multi->mtn",
           "meta->tinybert", "meta->meta", *INT8, "meta->meta-all", HELD_OUT]
TEACHER_FIT_KEYS = ("teacher", "teacher_mode", "domain_loss", "epochs", "lr", "max_length", "seed")
TESTS = [  # (A, B): A - B
    ("meta->meta", "meta->tinybert"),
    ("meta->tinybert", "mix->tinybert"),
    ("meta->meta", "mtl->tinybert"),
    ("meta->meta", "single->tinybert"),
    ("mix->tinybert", "single->tinybert"),
    ("mtl->tinybert", "single->tinybert"),
    ("multi->mtn", "single->tinybert"),
    ("teacher-meta", "teacher-mix"),
    ("teacher-single-matched", "teacher-single"),
    ("teacher-meta", "teacher-single-matched"),
    ("meta->meta", "single-matched->tinybert"),
    ("meta->meta-int8", "meta->meta"),
    ("meta->meta-int8-pc", "meta->meta"),
    ("meta->meta-int8-pc", "meta->meta-int8"),
    ("meta->meta-all", "meta->meta"),
]


def held_out_systems(h: str) -> tuple[dict, dict]:
    """The held-out table's teacher and student systems for domain ``h`` (added to TEACHERS / STUDENTS):
    the meta-teacher fitted without h, every other domain's single teacher distilled on h (TinyBERT-KD), and
    the meta-teacher without h distilled on h (TinyBERT-KD, as the paper, and Meta-KD). The in-domain rows
    (h's single teacher and its student) are teacher-single's and single->tinybert's h column."""
    without = f"{HELD_OUT}/{h}/meta-teacher-without"
    teachers = {without: (f"teacher-meta-without-{h}", [f"fit.hold_out={h}"])}
    students = {f"{HELD_OUT}/{h}/meta-without->tinybert": (without, ["distill.method=tinybert"], True),  # run first:
                f"{HELD_OUT}/{h}/meta-without->meta": (without, ["distill.method=meta"], True)}  # the table's rows
    students.update({f"{HELD_OUT}/{h}/{d}-teacher->tinybert": (
        "teacher-single", ["distill.method=tinybert", f"distill.teacher_domain={d}"], True) for d in DOMAINS if d != h})
    return teachers, students


@dataclass
class Plan:
    """Which systems exist in this invocation (with the held-out ones) and the --set added to every run."""

    held_out: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    dry_run: bool = False
    teachers: dict[str, tuple[str, list[str]]] = field(init=False)  # system -> (run folder, --set items)
    students: dict[str, tuple[str, list[str], bool]] = field(init=False)  # system -> (teacher, --set, per domain?)

    def __post_init__(self):
        self.teachers, self.students = dict(TEACHERS), dict(STUDENTS)
        for h in self.held_out:
            teachers, students = held_out_systems(h)
            self.teachers.update(teachers)
            self.students.update(students)

    def teacher(self, system: str) -> tuple[Path, list[str]]:
        """The teacher's run folder and --set items: the teacher scored on every domain's test rows."""
        folder, sets = self.teachers[system]
        # `metakd run` checks the distill section against the teacher even when it does not distil: mtn is the
        # method a single-mode teacher serves without a domain
        single = ["distill.method=mtn"] if "fit.teacher_mode=single" in sets else []
        return RUNS / folder, [*sets, *single, "eval.models=teacher", *self.extra]

    def student(self, system: str, domain: str | None, seed: int) -> tuple[Path, list[str]]:
        """A student's run folder and --set items (an int8 system: its meta->meta student's, then export)."""
        source = INT8_SOURCE if system in INT8 else system
        teacher, sets, _ = self.students[source]
        where = [f"distill.domain={domain}", f"eval.domains={domain}"] if domain else []
        scored = ["eval.models=int8", *INT8[system]] if system in INT8 else []
        return (STUDENT_RUNS / slug(system) / f"{domain or 'all'}-s{seed}",
                [*self.teachers[teacher][1], *sets, *where, f"distill.seed={seed}", *scored, *self.extra])

    def source(self, system: str, domain: str | None, seed: int) -> Path:
        """The run folder a student's starts as a copy of: its teacher's (an int8 system: its student's)."""
        if system in INT8:
            return self.student(INT8_SOURCE, domain, seed)[0]
        return self.teacher(self.students[system][0])[0]


def steps(system: str) -> str:
    return "fit,distill,export,eval" if system in INT8 else "fit,distill,eval"


# ---------------------------------------------------------------------------------------- running


def run_teacher(plan: Plan, system: str) -> bool:
    """Fit and score the teacher unless its folder holds both with these settings; whether metakd ran."""
    folder, sets = plan.teacher(system)
    config = recipe(sets)
    if done(folder, config, "fit,eval", selection(config)):
        return False
    metakd_run(folder, sets, "fit,eval", dry_run=plan.dry_run)
    return True


def run_student(plan: Plan, system: str, domain: str | None, seed: int) -> bool:
    """Distil (and, for an int8 system, export) and score one student in its folder; whether metakd ran."""
    folder, sets = plan.student(system, domain, seed)
    start_from(plan.source(system, domain, seed), folder, plan.dry_run)
    config = recipe(sets)
    if done(folder, config, steps(system), selection(config)):
        return False
    metakd_run(folder, sets, steps(system), dry_run=plan.dry_run)
    return True


# ---------------------------------------------------------------------------------------- reading


class Table:
    """Every finished run folder of the plan's systems, read into amazon.json's "runs", the rows each model got
    right, and the tables and paired tests built from them."""

    def __init__(self, plan: Plan, domains: list[str], resamples: int):
        self.plan, self.domains, self.resamples = plan, domains, resamples
        self.runs: dict = {}  # system -> domain or "all" -> seed -> record
        self.correct: dict = {}  # system -> domain or "all" -> seed -> {"domains": {domain: [0/1 per row]}}
        self.rows_setup: dict = {}
        self.where: dict[str, list[str]] = {}  # domain -> its test rows' places: every model's must be these
        for system in plan.teachers:
            folder, sets = plan.teacher(system)
            self._teacher(system, folder, sets)
        for system in [*plan.students, *INT8]:
            for folder in sorted((STUDENT_RUNS / slug(system)).glob("*-s*")):
                key, seed = folder.name.rsplit("-s", 1)
                if seed.isdigit() and (key == "all" or key in DOMAINS):
                    self._student(system, key, int(seed))

    def _scored(self, system: str, key: str, seed: str, folder: Path, sets: list[str], steps: str, model: str
                ) -> dict[str, list[int]] | None:
        """The rows ``model`` got right in a folder whose steps are done with these settings, kept for the tests."""
        config = recipe(sets)
        if not done(folder, config, steps, selection(config)):
            return None
        scored = scored_rows(folder, config, model)
        if scored is None:
            return None
        data = read_json_object(folder / "manifest.json").get("data") or {}
        for domain, where in scored.where.items():
            if self.where.setdefault(domain, where) != where:
                raise SystemExit(f"{folder}: other {domain} test rows than the earlier runs' (other data or split); "
                                 "paired tests need the same rows")
            self.rows_setup.setdefault("rows", {})[domain] = len(where)
        self.rows_setup.update(data_fingerprint=data.get("fingerprint"),
                               split_seed=(data.get("config") or {}).get("split_seed"))
        self.correct.setdefault(system, {}).setdefault(key, {})[seed] = {"domains": scored.correct}
        return scored.correct

    def _teacher(self, system: str, folder: Path, sets: list[str]) -> None:
        fit = read_json_object(folder / "metrics" / "fit.json")
        seed = str((fit.get("config") or {}).get("seed"))
        correct = self._scored(system, "all", seed, folder, sets, "fit,eval", "teacher")
        if correct is None:
            return
        self.runs.setdefault(system, {})["all"] = {seed: {
            "accuracy": {d: 100.0 * sum(v) / len(v) for d, v in correct.items() if v},
            "minutes": {"fit": fit["seconds"] / 60},
            "run_dir": shown(folder),
            "config": {k: fit["config"].get(k) for k in TEACHER_FIT_KEYS},
        }}

    def _student(self, system: str, key: str, seed: int) -> None:
        domain = None if key == "all" else key
        folder, sets = self.plan.student(system, domain, seed)
        model = "int8" if system in INT8 else "student"
        correct = self._scored(system, key, str(seed), folder, sets, steps(system), model)
        if correct is None:
            return
        scored = [domain] if domain else self.domains
        record = {"accuracy": {d: 100.0 * sum(correct[d]) / len(correct[d]) for d in scored if correct.get(d)}}
        if system in INT8:
            export = read_json_object(folder / "metrics" / "export.json")
            check = export.get("int8_check") or {}
            record.update({
                "dev_drop": check.get("drop"), "attempt": check.get("attempt"), "per_channel": check.get("per_channel"),
                "target": export.get("target"), "size_mb": export.get("size_mb"),
                "export_failures": export.get("failures", []), "minutes": {"export": export["seconds"] / 60}})
        else:
            metrics = read_json_object(folder / "metrics" / "distill.json")
            record.update({
                "teacher_accuracy": {d: metrics["teacher_test_accuracy"][d] for d in scored},
                "agreement_with_teacher": metrics["test_agreement_with_teacher"],
                "lambda_mean": metrics["lambda"]["mean"],
                "minutes": {"distill": metrics["seconds"] / 60},
                "stage_minutes": {k: v["seconds"] / 60 for k, v in metrics["stages"].items()},
                "teacher_cache_minutes": metrics["teacher_cache_seconds"] / 60,
                "train_rows": metrics["train_rows"]})
        record.update(run_dir=shown(folder), command=run_command(folder, sets, steps(system)))
        self.runs.setdefault(system, {}).setdefault(key, {})[str(seed)] = record

    # ------------------------------------------------------------------------------------ tables

    def per_seed(self, system: str, domains: list[str] | None = None) -> dict[str, dict[str, float]]:
        """{seed: {domain: accuracy}} over ``domains`` (the table's)."""
        domains = domains or self.domains
        out: dict[str, dict[str, float]] = {}
        for key, seeds in self.runs.get(system, {}).items():
            for seed, record in seeds.items():
                for domain, value in record["accuracy"].items():
                    if domain in domains and (key == "all" or key == domain):
                        out.setdefault(seed, {})[domain] = value
        return out

    def correctness(self, system: str, domains: list[str] | None = None) -> dict[str, list[int]]:
        """{seed: 0/1 per test row, the domains concatenated in order}, for seeds complete on every domain."""
        out = {}
        for seed in sorted({s for runs in self.correct.get(system, {}).values() for s in runs}):
            rows = []
            for domain in domains or self.domains:
                kept = self.correct[system].get(domain, {}).get(seed) or self.correct[system].get("all", {}).get(seed)
                if not kept or domain not in kept["domains"]:
                    break
                rows += kept["domains"][domain]
            else:
                out[seed] = rows
        return out

    def results(self) -> dict:
        import numpy as np

        table = {}
        for system in SYSTEMS:
            seeds = self.per_seed(system)
            if not seeds:
                continue
            row: dict = {}
            for domain in self.domains:
                values = [accuracy[domain] for accuracy in seeds.values() if domain in accuracy]
                row[domain] = round(float(np.mean(values)), 2) if values else None
            complete = [a for a in seeds.values() if all(d in a for d in self.domains)]
            averages = [float(np.mean([a[d] for d in self.domains])) for a in complete]
            row["average"] = round(float(np.mean(averages)), 2) if averages else None
            row["std"] = round(float(np.std(averages, ddof=1)), 2) if len(averages) > 1 else None
            row["std_per_domain"] = {
                d: round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None
                for d in self.domains for v in [[a[d] for a in seeds.values() if d in a]]
            }
            row["seeds"] = sorted(int(s) for s in seeds)
            row["complete_seeds"] = len(averages)
            records = [record for key, runs in self.runs[system].items() if key == "all" or key in self.domains
                       for seed, record in runs.items() if seed in seeds]
            minutes: dict[str, list[float]] = {}
            for record in records:
                for step, value in record["minutes"].items():
                    minutes.setdefault(step, []).append(value)
            row["minutes"] = {step: round(float(np.mean(v)), 2) for step, v in minutes.items()}
            row["runs"] = max(len(v) for v in minutes.values())
            if system in INT8:
                row["dev_drop_vs_fp32"] = round(float(np.mean([r["dev_drop"] for r in records])), 2)
            table[system] = row
        return table

    def tests(self, pairs: list[tuple[str, str]] = TESTS, domains: list[str] | None = None) -> dict:
        domains = domains or self.domains
        strata = [d for d in domains for _ in range(self.rows_setup.get("rows", {}).get(d, 0))]
        out = {}
        for a, b in pairs:
            a_runs, b_runs = self.correctness(a, domains), self.correctness(b, domains)
            if not (_is_teacher(a) or _is_teacher(b)):  # two students: the same seeds on both sides
                common = a_runs.keys() & b_runs.keys()
                a_runs = {s: v for s, v in a_runs.items() if s in common}
                b_runs = {s: v for s, v in b_runs.items() if s in common}
            if a_runs and b_runs:
                out[f"{a} vs {b}"] = compare(a_runs, b_runs, strata, self.resamples, seed=0)
        return out

    def held_out(self) -> dict:
        """{H: {"results": {row: {"accuracy", "std", "seeds"}}, "tests": {..}}}: the held-out table per domain H
        (accuracy on H's test rows; mean and sample standard deviation over seeds)."""
        import numpy as np

        out = {}
        for h in self.plan.held_out:
            prefix = f"{HELD_OUT}/{h}/"
            if not any(s.startswith(prefix) for s in self.runs):
                continue
            rows = {"in-domain teacher": "teacher-single", "meta-teacher without H": f"{prefix}meta-teacher-without",
                    "in-domain teacher -> tinybert": "single->tinybert",
                    **{f"{d} teacher -> tinybert": f"{prefix}{d}-teacher->tinybert" for d in DOMAINS if d != h},
                    "meta-teacher without H -> tinybert": f"{prefix}meta-without->tinybert",
                    "meta-teacher without H -> meta": f"{prefix}meta-without->meta"}
            others = PAPER_HELD_OUT["other domains' teachers -> tinybert"]
            table = {}
            for name, system in rows.items():
                values = {seed: a[h] for seed, a in self.per_seed(system, [h]).items()}
                if values:
                    v = list(values.values())
                    paper = others if name.split(" ")[0] in DOMAINS else PAPER_HELD_OUT.get(name)
                    table[name] = {"accuracy": round(float(np.mean(v)), 2),
                                   "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None,
                                   "seeds": sorted(int(s) for s in values), "system": system, "paper": paper}
            pairs = [(f"{prefix}meta-without->meta", f"{prefix}meta-without->tinybert"),
                     (f"{prefix}meta-without->tinybert", "single->tinybert"),
                     *[(f"{prefix}meta-without->tinybert", f"{prefix}{d}-teacher->tinybert") for d in DOMAINS if d != h]]
            out[h] = {"results": table, "tests": self.tests(pairs, [h])}
        return out

    def save(self, setup: dict) -> dict:
        paper = {"source": "DESIGN.md Reference figures: the authors' slides, BERT-base teacher, TinyBERT-4 student",
                 "results": {s: {"name": n, **dict(zip(PAPER_COLUMNS, v))} for s, (n, v) in PAPER.items()},
                 "held_out": {"source": "DESIGN.md Reference figures: MNLI, fiction held out, tested on fiction",
                              "results": PAPER_HELD_OUT}}
        teachers = {system: runs["all"][seed]["config"] for system, runs in self.runs.items()
                    if _is_teacher(system) for seed in runs.get("all", {})}
        out = {"setup": {**setup, "teachers": teachers}, "results": self.results(), "tests": self.tests(),
               "held_out": self.held_out(), "runs": self.runs, "paper": paper}
        atomic_write_json(OUT, out)
        rows = {**self.rows_setup, "order": "per domain, the test rows of dataset.select('test', [domain]) in order",
                "value": "1 = the model predicts the gold label"}
        atomic_write_text(PREDICTIONS, json.dumps({"setup": rows, "correct": self.correct}, separators=(",", ":")) + "\n")
        return out


def _is_teacher(system: str) -> bool:
    """A teacher row: one run at the teacher's own seed, not one per student seed."""
    return system in TEACHERS or system.endswith("/meta-teacher-without")


def setup(plan: Plan, domains: list[str], seeds: list[int], resamples: int) -> dict:
    config = recipe(plan.extra)
    fit = config.fit
    overrides = {}  # fit settings a teacher changes from the recipe's (besides its mode)
    for system in (s for s in SYSTEMS if s in TEACHERS):
        changed = recipe([*TEACHERS[system][1], *plan.extra]).fit
        differs = {k: getattr(changed, k) for k in ("epochs", "lr", "max_length", "seed", "batch_size")
                   if getattr(changed, k) != getattr(fit, k)}
        if differs:
            overrides[system] = differs
    return {
        "data": str(data_path(config)), "teacher_fit": f"bench/recipes/amazon.yaml fit: {fit.teacher}, epochs "
        f"{fit.epochs}, lr {fit.lr:g}, max_length {fit.max_length}, seed {fit.seed} (as bench/teachers.py)",
        "teacher_overrides": overrides,
        "student": f"{config.distill.student} (4 of the teacher's layers)",
        "distill": {"intermediate_epochs": config.distill.intermediate_epochs, "epochs": config.distill.epochs,
                    "batch_size": config.distill.batch_size},
        "seeds": seeds, "domains": domains,
        "seeds_note": "the student seeds of the last invocation; each row lists its own seeds, and a paired "
                      "test of two students uses the seeds both have",
        "students": "one per domain (distill.domain=D), scored on D's test rows; meta->meta-all: one "
                    "all-domain student per seed, scored per domain",
        "int8": "bench/recipes/amazon.yaml export (dynamic int8, max_drop 100, target auto) of each meta->meta "
                "student with export.per_channel=false; meta->meta-int8-pc: export.per_channel=true",
        "split": f"seeded 80/10/10 per domain and label (split seed {config.data.split_seed})",
        "metric": "test accuracy %",
        "std": "sample standard deviation over seeds of each seed's average",
        "tests": f"paired bootstrap over test rows ({resamples} resamples, stratified by domain, seed-"
                 "averaged correctness) and exact McNemar per seed; bench/stats.py",
    }


def print_table(results: dict, domains: list[str]) -> None:
    columns = [*domains, "average"]
    models = sorted({str(c.get("teacher")) for c in results.get("setup", {}).get("teachers", {}).values()})
    print(f"\nours: teacher {', '.join(models) or '?'}, tiny student; test accuracy %, mean±std over seeds")
    print(f"{'system':18}" + "".join(f"{c:>13}" for c in columns) + f"{'seeds':>7}{'min/run':>9}")
    for system, row in results["results"].items():
        cells = [cell(row.get(c), row["std"] if c == "average" else row["std_per_domain"].get(c)) for c in columns]
        print(f"{system:18}" + "".join(f"{c:>13}" for c in cells)
              + f"{len(row['seeds']):>7}{sum(row['minutes'].values()):>9.1f}")
    print("\npaper (authors' slides: BERT-base teacher, TinyBERT-4 student; their split)")
    print(f"{'system':18}" + "".join(f"{c:>13}" for c in PAPER_COLUMNS) + "   paper's row")
    for system, (name, values) in PAPER.items():
        print(f"{system:18}" + "".join(f"{v:>13.1f}" for v in values) + f"   {name}")
    print("\npaired tests (A - B, points; bootstrap over test rows of the seed-averaged correctness)")
    for name, test in results["tests"].items():
        mcnemar = ", ".join(f"s{s} {m['p_value']:.3f} ({m['a_only']}/{m['b_only']})"
                            for s, m in test["mcnemar_exact_per_seed"].items())
        print(f"{name:34} diff {test['diff']:+.2f}  95% CI [{test['ci95'][0]:+.2f}, {test['ci95'][1]:+.2f}]"
              f"  p {test['p_value']:.3f}  McNemar p per seed (A-only/B-only rows): {mcnemar}")
    for h, section in results.get("held_out", {}).items():
        print(f"\nheld out: {h} (its teachers never saw it; students distilled and scored on {h}), mean±std")
        for name, row in section["results"].items():
            print(f"{name.replace('H', h):42}{cell(row['accuracy'], row['std']):>13}{len(row['seeds']):>7}")
        for name, test in section["tests"].items():
            print(f"  {name.replace(f'{HELD_OUT}/{h}/', '')}: diff {test['diff']:+.2f}, p {test['p_value']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Student seeds [1 2 3].")
    parser.add_argument("--domains", nargs="+", default=DOMAINS, choices=DOMAINS)
    parser.add_argument("--held-out", nargs="+", default=DOMAINS, choices=DOMAINS,
                        help="Domains the held-out table leaves out, one at a time [all four].")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="A --set for every metakd run, after the systems' own (repeatable).")
    parser.add_argument("--resamples", type=int, default=10_000, help="Bootstrap resamples [10000].")
    parser.add_argument("--table", action="store_true", help="Only rebuild the results from the run folders.")
    parser.add_argument("--dry-run", action="store_true", help="Print the metakd commands; run and write nothing.")
    args = parser.parse_args(argv)
    missing = data_missing(recipe(args.sets))
    if missing:
        print(missing)
        return
    held_out = args.held_out if HELD_OUT in args.systems else []
    plan = Plan(held_out, args.sets, args.dry_run)

    def rebuild() -> dict:
        table = Table(plan, args.domains, args.resamples)
        return table.save(setup(plan, args.domains, args.seeds, args.resamples))

    if not args.table:
        students = [s for s in args.systems if s in STUDENTS] + [s for h in held_out for s in held_out_systems(h)[1]]
        teachers = {s for s in args.systems if s in TEACHERS} | {plan.students[s][0] for s in students}
        if held_out:  # the held-out table's in-domain teacher and student
            teachers.add("teacher-single")
        if set(INT8) & set(args.systems):
            teachers.add("teacher-meta")
        for system in plan.teachers:
            if system in teachers and run_teacher(plan, system) and not args.dry_run:
                rebuild()
        for seed in args.seeds:  # seed outermost: an interrupted bench has every system's first seeds
            for system in [s for s in SYSTEMS if s in args.systems and s not in TEACHERS]:
                if system == HELD_OUT:
                    jobs = [(s, h) for h in held_out for s in ["single->tinybert", *held_out_systems(h)[1]]]
                elif system in INT8:
                    jobs = [(s, d) for d in args.domains for s in (INT8_SOURCE, system)]
                else:
                    jobs = [(system, d) for d in args.domains] if STUDENTS[system][2] else [(system, None)]
                for name, domain in jobs:
                    if run_student(plan, name, domain, seed) and not args.dry_run:
                        rebuild()
    if not args.dry_run:
        print_table(rebuild(), args.domains)


if __name__ == "__main__":
    main()
