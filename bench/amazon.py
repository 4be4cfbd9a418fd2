"""The paper's full Amazon table on one machine, with several student seeds and paired tests.

    python bench/amazon.py [--seeds 1 2 3] [--intermediate-epochs 2] [--epochs 3]
                           [--domains books dvd electronics kitchen] [--systems ...]
                           [--held-out books dvd electronics kitchen]
                           [--resamples 10000] [--resume] [--dry-run]

Quote system names in the shell: --systems 'meta->meta' 'meta->tinybert' (an unquoted `>`
redirects). The default is every system: many hours on a 2-core CPU; pick a few with --systems.

Systems (test accuracy per domain, %):

    teacher-single    one teacher per domain      bench/runs/paper-teacher-single (fit --teacher-mode single)
    teacher-single-matched  the same with 4x the epochs (8), so that each single teacher makes
                      the optimizer steps the all-domain teachers make (400 at batch 32)
                      bench/runs/paper-teacher-single-matched
    teacher-mix       the mix teacher             bench/runs/teacher-mix
    teacher-mtl       shared encoder, a head per domain  bench/runs/paper-teacher-mtl
    teacher-meta      the meta-teacher            bench/runs/teacher-meta-confusion
    single->tinybert  D's single teacher -> TinyBERT-KD student for D
    single-matched->tinybert  the same from teacher-single-matched
    mix->tinybert     mix teacher -> TinyBERT-KD student, one per domain
    mtl->tinybert     mtl teacher -> TinyBERT-KD student, one per domain
    multi->mtn        every single teacher -> MTN-KD student (mean of their softmax outputs)
    meta->tinybert    meta-teacher -> TinyBERT-KD student, one per domain
    meta->meta        meta-teacher -> Meta-KD student, one per domain
    meta->meta-int8   each meta->meta student exported to ONNX dynamic int8 with one weight scale
                      per matrix (export --int8 --per-tensor; the gate is off, --max-drop 100; the
                      dev drop is recorded): export's default until per-channel measured better
    meta->meta-int8-pc  the same students exported with per-channel weight scales, export's default
                      (export --int8 --per-channel --max-drop 100), in a sibling run folder that
                      links the student
    meta->meta-all    one all-domain meta-teacher -> Meta-KD student per seed (an extra row)
    held-out          the paper's held-out table for each --held-out domain H, scored on H: H's
                      single teacher and its student (teacher-single, single->tinybert), the
                      meta-teacher fitted without H (fit --hold-out H, bench/runs/teacher-meta-
                      without-H), every other domain's single teacher -> TinyBERT-KD on H
                      (distill --teacher-domain D), and the meta-teacher without H -> TinyBERT-KD
                      (the paper's row) and -> Meta-KD on H

As in the paper, a student is distilled on one domain's rows (`distill --domain D`) and scored
on D's test rows: four students cost what one all-domain student costs. The teachers are the
runs bench/teachers.py makes (`fit --epochs 2 --lr 5e-5 --max-length 128 --seed 42`); they are
reused when their metrics/fit.json exists and fitted here otherwise (do not run this while
bench/teachers.py is fitting the same teacher). Each student is a fresh run folder,
bench/runs/amazon/<system>/<domain>-s<seed>/, holding the teacher's teacher/ (hard links,
read only by distill) and manifest.json, in which `metakd distill` runs.

Every model is also scored here, row by row, on its domains' test rows (same rows for every
system: one data fingerprint, one split seed), and the 0/1 correctness is kept in
bench/results/amazon_predictions.json, so that paired tests can be recomputed: A vs B by a
paired bootstrap over test rows (stratified by domain, on each row's correctness averaged over
seeds) and exact McNemar per seed (bench/stats.py gives the definitions).

Writes bench/results/amazon.json after every finished run (an interrupted bench keeps what it
measured; --resume then skips what is done):

    {"setup": {...},
     "results": {"<system>": {"books": .., "dvd": .., "electronics": .., "kitchen": ..,
                              "average": .., "std": .., "std_per_domain": {..}, "seeds": [..],
                              "minutes": {"<step>": mean minutes per run}}},
     "tests": {"meta->meta vs meta->tinybert": {"diff": .., "p_value": .., "ci95": [..], ..}},
     "held_out": {"<H>": {"results": {"<row>": {"accuracy": .., "std": .., "seeds": [..]}}, "tests": {..}}},
     "runs": {"<system>": {"<domain or all>": {"<seed>": {...}}}},
     "paper": {...}}

Per-domain values are means over seeds, "average" their mean, "std" the sample standard
deviation over seeds of each seed's average (null with one seed). --seeds picks the seeds run
and reported for the systems asked for; the rows of other systems keep every seed they have.
Not part of CI: hours on a 2-core CPU. Skips with a reason when ../shared/data/amazon-mds is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, bench/stats.py (bench/ is no package)
from common import (  # noqa: E402
    DATA, DOMAINS, NO_DATA, PAPER, PAPER_HELD_OUT, ROOT, RUNS, TEACHER_FIT_FLAGS, TEACHER_SETTINGS, cell,
    fit_flags, fresh_student_run, linked_student_run, metakd, slug, student_finished, test_correctness,
)

STUDENT_RUNS = RUNS / "amazon"
OUT = ROOT / "bench" / "results" / "amazon.json"
PREDICTIONS = ROOT / "bench" / "results" / "amazon_predictions.json"
PAPER_COLUMNS = ["books", "dvd", "electronics", "kitchen", "average"]
META_FLAGS = ["--teacher-mode", "meta", "--domain-loss", "confusion"]
TEACHERS = {  # system -> (run folder under bench/runs, fit flags); bench/teachers.py makes two
    "teacher-single": ("paper-teacher-single", ["--teacher-mode", "single"]),
    "teacher-single-matched": ("paper-teacher-single-matched", ["--teacher-mode", "single"]),
    "teacher-mix": ("teacher-mix", ["--teacher-mode", "mix"]),
    "teacher-mtl": ("paper-teacher-mtl", ["--teacher-mode", "mtl"]),
    "teacher-meta": ("teacher-meta-confusion", META_FLAGS),
}
# fit settings a teacher changes from bench/teachers.py's: a single teacher sees one domain's rows, so
# it takes len(DOMAINS) times the epochs to make the optimizer steps of a teacher of every domain
TEACHER_OVERRIDES = {"teacher-single-matched": {"epochs": TEACHER_SETTINGS["epochs"] * len(DOMAINS)}}
STUDENTS = {  # system -> (teacher system, --method, one student per domain?, more distill flags)
    "single->tinybert": ("teacher-single", "tinybert", True, []),  # D's own single teacher
    "single-matched->tinybert": ("teacher-single-matched", "tinybert", True, []),
    "mix->tinybert": ("teacher-mix", "tinybert", True, []),
    "mtl->tinybert": ("teacher-mtl", "tinybert", True, []),
    "multi->mtn": ("teacher-single", "mtn", True, []),  # every single teacher at once
    "meta->tinybert": ("teacher-meta", "tinybert", True, []),
    "meta->meta": ("teacher-meta", "meta", True, []),
    "meta->meta-all": ("teacher-meta", "meta", False, []),
}
INT8 = "meta->meta-int8"  # exported from meta->meta's run folders
INT8_PC = "meta->meta-int8-pc"  # the same, per-channel, in bench/runs/amazon/meta-to-meta-int8-pc/ (student/ linked)
INT8_FLAGS = {INT8: ["--per-tensor"], INT8_PC: ["--per-channel"]}
HELD_OUT = "held-out"  # the paper's held-out table, for each --held-out domain (systems named held-out/H/...)
SYSTEMS = ["teacher-single", "teacher-single-matched", "teacher-mix", "teacher-mtl", "teacher-meta",
           "single->tinybert", "single-matched->tinybert", "mix->tinybert", "mtl->tinybert", "multi->mtn", "meta->tinybert", "meta->meta", INT8, INT8_PC, "meta->meta-all", HELD_OUT]
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
    (INT8, "meta->meta"),
    (INT8_PC, "meta->meta"),
    (INT8_PC, INT8),
    ("meta->meta-all", "meta->meta"),
]


def teacher_settings(system: str) -> dict:
    """The fit settings of a teacher system: bench/teachers.py's, with its TEACHER_OVERRIDES."""
    return {**TEACHER_SETTINGS, **TEACHER_OVERRIDES.get(system, {})}


def held_out_systems(h: str) -> tuple[dict, dict]:
    """The held-out table's teacher and student systems for domain ``h`` (added to TEACHERS / STUDENTS):
    the meta-teacher fitted without h, every other domain's single teacher distilled on h (TinyBERT-KD), and
    the meta-teacher without h distilled on h (TinyBERT-KD, as the paper, and Meta-KD). The in-domain rows
    (h's single teacher and its student) are teacher-single's and single->tinybert's h column."""
    without = f"{HELD_OUT}/{h}/meta-teacher-without"
    teachers = {without: (f"teacher-meta-without-{h}", [*META_FLAGS, "--hold-out", h])}
    students = {f"{HELD_OUT}/{h}/meta-without->tinybert": (without, "tinybert", True, []),  # run first: the
                f"{HELD_OUT}/{h}/meta-without->meta": (without, "meta", True, [])}  # rows the table is about
    students.update({f"{HELD_OUT}/{h}/{d}-teacher->tinybert": ("teacher-single", "tinybert", True,
                                                               ["--teacher-domain", d]) for d in DOMAINS if d != h})
    return teachers, students


def _mtime(path: Path) -> str:
    """A stamp of a file's version: predictions made from an older file are redone."""
    return f"{path.name}@{path.stat().st_mtime_ns}"


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.domains: list[str] = args.domains
        self.teacher_defs, self.student_defs = dict(TEACHERS), dict(STUDENTS)
        for h in args.held_out if HELD_OUT in args.systems else []:
            teachers, students = held_out_systems(h)
            self.teacher_defs.update(teachers)
            self.student_defs.update(students)
        self.datasets: dict[str, object] = {}  # data fingerprint -> Dataset, loaded once
        self.setup = {
            "data": str(DATA), "teacher_fit": " ".join(TEACHER_FIT_FLAGS) + " (as bench/teachers.py)",
            "teacher_overrides": TEACHER_OVERRIDES,
            "student": "tiny (4 of the teacher's layers)",
            "distill": {"intermediate_epochs": args.intermediate_epochs, "epochs": args.epochs, "batch_size": 32},
            "seeds": args.seeds, "domains": self.domains,
            "seeds_note": "the student seeds of the last invocation; each row lists its own seeds, and a paired "
                          "test of two students uses the seeds both have",
            "students": "one per domain (distill --domain D), scored on D's test rows; meta->meta-all: one "
                        "all-domain student per seed, scored per domain",
            "int8": "metakd export --int8 --per-tensor --max-drop 100 (target auto) of each meta->meta "
                    f"student; {INT8_PC}: the same with --per-channel (export's default)",
            "split": "seeded 80/10/10 per domain and label (split seed 42)", "metric": "test accuracy %",
            "std": "sample standard deviation over seeds of each seed's average",
            "tests": f"paired bootstrap over test rows ({args.resamples} resamples, stratified by domain, seed-"
                     "averaged correctness) and exact McNemar per seed; bench/stats.py",
        }
        self.teachers: dict[str, dict] = {}  # system -> the fit settings its run recorded
        self.runs: dict = {}
        self.correct: dict = {}
        self.rows_setup: dict = {}
        if OUT.is_file() and not args.dry_run:
            old = json.loads(OUT.read_text())
            if old.get("setup", {}).get("distill") == self.setup["distill"]:
                self.runs = old.get("runs", {})
            else:
                print(f"note: {OUT} was made with other distill settings; its runs are not kept", flush=True)
            if PREDICTIONS.is_file() and self.runs:
                kept = json.loads(PREDICTIONS.read_text())
                self.correct, self.rows_setup = kept.get("correct", {}), kept.get("setup", {})

    # ------------------------------------------------------------------ commands

    def metakd(self, run_dir: Path, *args: str, check: bool = True) -> tuple[int, float]:
        return metakd(run_dir, *args, dry_run=self.args.dry_run, check=check)

    def teacher(self, system: str) -> Path | None:
        """The teacher's run folder, fitted when its fit metrics are missing (None: dry run, not there yet)."""
        name, flags = self.teacher_defs[system]
        run_dir = RUNS / name
        if (run_dir / "metrics" / "fit.json").is_file() and (run_dir / "teacher").is_dir():
            config = json.loads((run_dir / "metrics" / "fit.json").read_text())["config"]
            wanted = teacher_settings(system)
            differs = {k: config.get(k) for k, v in wanted.items() if config.get(k) != v}
            if differs and system not in self.teachers:
                print(f"note: {run_dir} was fitted with {differs}, not bench/teachers.py's settings", flush=True)
            self.teachers[system] = {k: config.get(k) for k in ("teacher", "teacher_mode", "domain_loss", *wanted)}
            return run_dir
        busy = _fitting(run_dir)
        if busy is not None:
            message = f"{run_dir}: process {busy} is fitting this teacher now; wait for it to finish"
            if not self.args.dry_run:
                raise SystemExit(message)
            print(f"# note: {message}")
        resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
        self.metakd(run_dir, "fit", str(DATA), *flags, *fit_flags(teacher_settings(system)), *resume)
        if self.args.dry_run:
            return None
        if not (run_dir / "metrics" / "fit.json").is_file():
            raise SystemExit(f"{run_dir}: the fit finished without metrics/fit.json")
        return self.teacher(system)  # records its settings

    def teacher_row(self, system: str) -> None:
        run_dir = self.teacher(system)
        if run_dir is None or self.args.dry_run:
            if run_dir is not None:
                print(f"# {system}: reuse {run_dir.relative_to(ROOT)}; score teacher/ on the test rows (in-process)")
            return
        metrics = json.loads((run_dir / "metrics" / "fit.json").read_text())
        seed = str(metrics["seed"])
        domains = [system.split("/")[1]] if system.startswith(f"{HELD_OUT}/") else self.domains
        self.runs.setdefault(system, {})["all"] = {seed: {
            "accuracy": {d: metrics["test_accuracy"][d] for d in domains},
            "minutes": {"fit": metrics["seconds"] / 60},
            "run_dir": str(run_dir.relative_to(ROOT)),
            "config": self.teachers[system],
        }}
        correct = self.score(system, "all", seed, run_dir, "teacher", domains, run_dir / "metrics" / "fit.json")
        _check_rescored(self.runs[system]["all"][seed], correct)
        self.save()

    def _finished(self, run_dir: Path, teacher_run: Path, method: str, domain: str | None, seed: int,
                  teacher_domain: str | None) -> bool:
        """A student run that matches these settings and the teacher's current fit."""
        return student_finished(run_dir, teacher_run, {
            "method": method, "domain": domain, "seed": seed, "teacher_domain": teacher_domain,
            "intermediate_epochs": self.args.intermediate_epochs, "epochs": self.args.epochs})

    def student(self, system: str, domain: str | None, seed: int, reuse: bool = False) -> None:
        """Distil one student in a fresh run folder (or reuse a finished one with --resume / ``reuse``), read its
        metrics and score it row by row."""
        teacher_system, method, _, extra = self.student_defs[system]
        teacher_domain = extra[extra.index("--teacher-domain") + 1] if "--teacher-domain" in extra else None
        teacher_run = RUNS / self.teacher_defs[teacher_system][0]
        key = domain or "all"
        run_dir = STUDENT_RUNS / slug(system) / f"{key}-s{seed}"
        flags = ["--method", method, *(["--domain", domain] if domain else []), *extra, "--seed", str(seed),
                 "--intermediate-epochs", str(self.args.intermediate_epochs), "--epochs", str(self.args.epochs)]
        previous = self.runs.get(system, {}).get(key, {}).get(str(seed), {})
        if (self.args.resume or reuse) and self._finished(run_dir, teacher_run, method, domain, seed, teacher_domain):
            print(f"# {system} {key} seed {seed}: done in {run_dir.relative_to(ROOT)}", flush=True)
            if self.args.dry_run:
                return
            process_minutes = previous.get("process_minutes")  # measured when it ran, if by this bench
        else:
            if self.args.dry_run:
                print(f"# fresh {run_dir.relative_to(ROOT)} <- {teacher_run.relative_to(ROOT)}/teacher, manifest.json")
            else:
                fresh_student_run(teacher_run, run_dir)
            _, process_seconds = self.metakd(run_dir, "distill", *flags)
            if self.args.dry_run:
                return
            process_minutes = process_seconds / 60
        metrics_path = run_dir / "metrics" / "distill.json"
        metrics = json.loads(metrics_path.read_text())
        scored = [domain] if domain else self.domains
        self.runs.setdefault(system, {}).setdefault(key, {})[str(seed)] = {
            "accuracy": {d: metrics["test_accuracy"][d] for d in scored},
            "teacher_accuracy": {d: metrics["teacher_test_accuracy"][d] for d in scored},
            "agreement_with_teacher": metrics["test_agreement_with_teacher"],
            "lambda_mean": metrics["lambda"]["mean"],
            "minutes": {"distill": metrics["seconds"] / 60},
            "process_minutes": process_minutes,
            "stage_minutes": {k: v["seconds"] / 60 for k, v in metrics["stages"].items()},
            "teacher_cache_minutes": metrics["teacher_cache_seconds"] / 60,
            "train_rows": metrics["train_rows"],
            "run_dir": str(run_dir.relative_to(ROOT)),
            "command": "metakd distill " + " ".join(flags),
        }
        correct = self.score(system, key, str(seed), run_dir, "student", scored, metrics_path)
        _check_rescored(self.runs[system][key][str(seed)], correct)
        self.save()

    def int8(self, domain: str, seed: int, system: str = INT8) -> None:
        """Export one meta->meta student to int8 (``system``: INT8 or INT8_PC) and score it row by row."""
        student_dir = STUDENT_RUNS / slug("meta->meta") / f"{domain}-s{seed}"
        run_dir = student_dir if system == INT8 else STUDENT_RUNS / slug(system) / f"{domain}-s{seed}"
        metrics_path = run_dir / "metrics" / "export.json"
        distilled = student_dir / "metrics" / "distill.json"
        if not self.args.dry_run and not distilled.is_file():
            print(f"skipped {system} {domain} seed {seed}: no meta->meta student in {student_dir}", flush=True)
            return
        done = (self.args.resume and metrics_path.is_file() and distilled.is_file()
                and (run_dir / "onnx" / "model_quantized.onnx").is_file()
                and metrics_path.stat().st_mtime_ns >= distilled.stat().st_mtime_ns
                and json.loads(metrics_path.read_text()).get("int8_check", {}).get("per_channel")
                == ("--per-channel" in INT8_FLAGS[system]))
        previous = self.runs.get(system, {}).get(domain, {}).get(str(seed), {})
        command = ["export", "--int8", *INT8_FLAGS[system], "--max-drop", "100"]
        if done:
            print(f"# {system} {domain} seed {seed}: done in {run_dir.relative_to(ROOT)}/onnx", flush=True)
            if self.args.dry_run:
                return
            status, process_minutes = 0, previous.get("process_minutes")
        else:
            if run_dir != student_dir:
                if self.args.dry_run:
                    print(f"# fresh {run_dir.relative_to(ROOT)} <- {student_dir.relative_to(ROOT)}/student (links)")
                else:
                    linked_student_run(student_dir, run_dir)
            status, process_seconds = self.metakd(run_dir, *command, check=False)
            process_minutes = process_seconds / 60
        if self.args.dry_run:
            return
        folder = run_dir / ("onnx" if status == 0 else "onnx.failed")  # another check failed: score it anyway
        export = json.loads((folder / "metakd_export.json").read_text())
        model = folder / "model_quantized.onnx"
        if not model.is_file():
            print(f"skipped {system} {domain} seed {seed}: export failed ({'; '.join(export.get('failures', []))})")
            return
        correct = self.score(system, domain, str(seed), run_dir, "int8", [domain], model, folder=folder)
        check = export["int8_check"]
        self.runs.setdefault(system, {}).setdefault(domain, {})[str(seed)] = {
            "accuracy": {domain: 100.0 * sum(correct[domain]) / len(correct[domain])},
            "dev_drop": check["drop"], "attempt": check["attempt"], "per_channel": check["per_channel"],
            "target": export["target"], "size_mb": export["size_mb"], "export_failures": export.get("failures", []),
            "minutes": {"export": export["seconds"] / 60,
                        "score": (self.correct[system][domain][str(seed)].get("seconds") or 0.0) / 60},
            "process_minutes": process_minutes,
            "run_dir": str(folder.relative_to(ROOT)),
            "command": "metakd " + " ".join(command),
        }
        self.save()

    # ------------------------------------------------------------------ row-by-row scores

    def _dataset(self, run):
        """The run's dataset, loaded once per data fingerprint; the test rows must be everyone's."""

        data = run.load().data
        key = data["fingerprint"]
        if key not in self.datasets:
            self.datasets[key] = run.reload_dataset()[1]
        rows = {"data_fingerprint": key, "split_seed": data["config"].get("split_seed")}
        if self.rows_setup and {k: self.rows_setup.get(k) for k in rows} != rows:
            raise SystemExit(f"{run.path}: other data or split than the earlier runs ({rows} vs "
                             f"{self.rows_setup}); paired tests need the same test rows: start over without --resume")
        self.rows_setup.update(rows)
        return self.datasets[key]

    def score(
        self, system: str, key: str, seed: str, run_dir: Path, model: str, domains: list[str], source: Path,
        folder: Path | None = None,
    ) -> dict[str, list[int]]:
        """0/1 correctness of one model on each domain's test rows (in the dataset's order), kept with a stamp of
        ``source`` so that a re-made model is re-scored. ``folder`` holds an int8 model outside onnx/."""
        stamp = _mtime(source)
        kept = self.correct.get(system, {}).get(key, {}).get(seed)
        if kept and kept.get("stamp") == stamp and all(d in kept["domains"] for d in domains):
            return kept["domains"]
        started = time.time()
        from metakd_cli.run_dir import RunDir

        correct = test_correctness(run_dir, model, domains, self._dataset(RunDir(run_dir)), folder)
        for domain in domains:
            self.rows_setup.setdefault("rows", {})[domain] = len(correct[domain])
        self.correct.setdefault(system, {}).setdefault(key, {})[seed] = {
            "stamp": stamp, "seconds": round(time.time() - started, 2), "domains": correct}
        return correct

    # ------------------------------------------------------------------ results

    def reported(self, system: str, seed: str) -> bool:
        """Whether a run of ``system`` at ``seed`` counts in the tables: --seeds picks the seeds of the systems this
        invocation runs; a teacher keeps its own seed, and a system not asked for keeps every seed it has, so that
        running other systems at fewer seeds leaves its row as it was."""
        if _is_teacher(system):
            return True
        running = system in self.args.systems or (system.startswith(f"{HELD_OUT}/") and HELD_OUT in self.args.systems)
        return not running or int(seed) in self.args.seeds

    def per_seed(self, system: str) -> dict[str, dict[str, float]]:
        """{seed: {domain: accuracy}} over the requested seeds (a teacher's own seed) and domains."""
        out: dict[str, dict[str, float]] = {}
        for key, seeds in self.runs.get(system, {}).items():
            for seed, record in seeds.items():
                if not self.reported(system, seed):
                    continue
                for domain, value in record["accuracy"].items():
                    if domain in self.domains and (key == "all" or key == domain):
                        out.setdefault(seed, {})[domain] = value
        return out

    def correctness(self, system: str, domains: list[str] | None = None) -> dict[str, list[int]]:
        """{seed: 0/1 per test row, the domains concatenated in order}, for seeds complete on every domain."""
        out = {}
        for seed in sorted({s for runs in self.correct.get(system, {}).values() for s in runs}):
            if not self.reported(system, seed):
                continue
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
            if system in INT8_FLAGS:
                row["dev_drop_vs_fp32"] = round(float(np.mean([r["dev_drop"] for r in records])), 2)
            table[system] = row
        return table

    def tests(self, pairs: list[tuple[str, str]] = TESTS, domains: list[str] | None = None) -> dict:
        from stats import compare

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
                out[f"{a} vs {b}"] = compare(a_runs, b_runs, strata, self.args.resamples, seed=0)
        return out

    def held_out(self) -> dict:
        """{H: {"results": {row: {"accuracy", "std", "seeds"}}, "tests": {..}}}: the held-out table per domain H
        (accuracy on H's test rows; mean and sample standard deviation over seeds)."""
        import numpy as np

        out = {}
        for h in sorted({s.split("/")[1] for s in self.runs if s.startswith(f"{HELD_OUT}/")}):
            if h not in self.args.held_out:
                continue
            prefix = f"{HELD_OUT}/{h}/"
            rows = {"in-domain teacher": "teacher-single", "meta-teacher without H": f"{prefix}meta-teacher-without",
                    "in-domain teacher -> tinybert": "single->tinybert",
                    **{f"{d} teacher -> tinybert": f"{prefix}{d}-teacher->tinybert" for d in DOMAINS if d != h},
                    "meta-teacher without H -> tinybert": f"{prefix}meta-without->tinybert",
                    "meta-teacher without H -> meta": f"{prefix}meta-without->meta"}
            others = PAPER_HELD_OUT["other domains' teachers -> tinybert"]
            table = {}
            for name, system in rows.items():
                values = {seed: a[h] for seed, a in self.per_seed(system).items() if h in a}
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

    def save(self) -> None:
        from metakd_cli.run_dir import atomic_write_json, atomic_write_text

        paper = {"source": "DESIGN.md Reference figures: the authors' slides, BERT-base teacher, TinyBERT-4 student",
                 "results": {s: {"name": n, **dict(zip(PAPER_COLUMNS, v))} for s, (n, v) in PAPER.items()}}
        setup = {**self.setup, "teachers": self.teachers}  # the fit settings the teacher runs recorded
        paper["held_out"] = {"source": "DESIGN.md Reference figures: MNLI, fiction held out, tested on fiction",
                             "results": PAPER_HELD_OUT}
        atomic_write_json(OUT, {"setup": setup, "results": self.results(), "tests": self.tests(),
                                "held_out": self.held_out(), "runs": self.runs, "paper": paper})
        rows = {**self.rows_setup, "order": "per domain, the test rows of dataset.select('test', [domain]) in order",
                 "value": "1 = the model predicts the gold label"}
        atomic_write_text(PREDICTIONS, json.dumps({"setup": rows, "correct": self.correct},
                                                  separators=(",", ":")) + "\n")

    def print_table(self) -> None:
        results = json.loads(OUT.read_text()) if OUT.is_file() else {"results": {}, "tests": {}}
        columns = [*self.domains, "average"]
        models = sorted({str(c.get("teacher")) for c in results.get("setup", {}).get("teachers", {}).values()})
        print(f"\nours: teacher {', '.join(models) or '?'}, tiny student; test accuracy %, mean±std over seeds")
        print(f"{'system':18}" + "".join(f"{c:>13}" for c in columns) + f"{'seeds':>7}{'min/run':>9}")
        for system, row in results["results"].items():
            cells = []
            for column in columns:
                spread = row["std"] if column == "average" else row["std_per_domain"].get(column)
                cells.append(cell(row.get(column), spread))
            step_minutes = sum(row["minutes"].values())
            print(f"{system:18}" + "".join(f"{c:>13}" for c in cells) + f"{len(row['seeds']):>7}{step_minutes:>9.1f}")
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


def _is_teacher(system: str) -> bool:
    """A teacher row: one run at the teacher's own seed, not one per student seed."""
    return system in TEACHERS or system.endswith("/meta-teacher-without")


def _check_rescored(record: dict, correct: dict[str, list[int]]) -> None:
    """The row-by-row scores (reloaded model) should give the accuracy the step itself reported."""
    rescored = {d: 100.0 * sum(v) / len(v) for d, v in correct.items() if v}
    if any(abs(rescored[d] - record["accuracy"][d]) > 1e-6 for d in rescored):
        record["rescored_accuracy"] = rescored
        print(f"warning: {record['run_dir']}: reloaded model scores {rescored}, the step reported "
              f"{record['accuracy']} (the paired tests use the reloaded model's rows)", flush=True)


def _fitting(run_dir: Path) -> int | None:
    """The id of a live process running `metakd ... --run-dir RUN_DIR ... fit` (Linux /proc), else None."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "fit" not in argv:
                continue
            cwd = Path(os.readlink(entry / "cwd"))  # where the process's relative paths start
        except OSError:
            continue
        if any(a == "--run-dir" and i + 1 < len(argv) and (cwd / argv[i + 1]).resolve() == run_dir.resolve()
               for i, a in enumerate(argv)):
            return int(entry.name)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Student seeds [1 2 3].")
    parser.add_argument("--domains", nargs="+", default=DOMAINS, choices=DOMAINS)
    parser.add_argument("--held-out", nargs="+", default=DOMAINS, choices=DOMAINS,
                        help="Domains the held-out table leaves out, one at a time [all four].")
    parser.add_argument("--intermediate-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="Stage 2 (soft labels) epochs [3].")
    parser.add_argument("--resamples", type=int, default=10_000, help="Bootstrap resamples [10000].")
    parser.add_argument("--resume", action="store_true",
                        help="Skip a (system, domain, seed) whose run folder already holds matching metrics.")
    parser.add_argument("--dry-run", action="store_true", help="Print the metakd commands; run and write nothing.")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(NO_DATA)
        return
    bench = Bench(args)
    held_out = args.held_out if HELD_OUT in args.systems else []
    students = [s for s in args.systems if s in STUDENTS] + [s for h in held_out for s in held_out_systems(h)[1]]
    teacher_rows = [s for s in args.systems if s in TEACHERS]
    if held_out:  # the held-out table's in-domain teacher, and each meta-teacher fitted without H
        teacher_rows += ["teacher-single"] + [t for h in held_out for t in held_out_systems(h)[0]]
    needed = {bench.student_defs[s][0] for s in students} | ({"teacher-meta"} if set(INT8_FLAGS) & set(args.systems)
                                                             else set())
    for system in bench.teacher_defs:
        if system in teacher_rows:
            bench.teacher_row(system)
        elif system in needed:
            bench.teacher(system)
    for seed in args.seeds:  # seed outermost: an interrupted bench has every system's first seeds
        for system in SYSTEMS:
            if system not in args.systems or system in TEACHERS:
                continue
            if system in INT8_FLAGS:
                for domain in args.domains:
                    if "meta->meta" not in args.systems:  # the students it exports: reused when finished
                        bench.student("meta->meta", domain, seed, reuse=True)
                    bench.int8(domain, seed, system)
            elif system == HELD_OUT:
                for h in held_out:
                    if "single->tinybert" not in args.systems or h not in args.domains:
                        bench.student("single->tinybert", h, seed, reuse=True)  # the in-domain student
                    for student in held_out_systems(h)[1]:
                        bench.student(student, h, seed)
            elif STUDENTS[system][2]:
                for domain in args.domains:
                    bench.student(system, domain, seed)
            else:
                bench.student(system, None, seed)
    if not args.dry_run:
        bench.print_table()


if __name__ == "__main__":
    main()
