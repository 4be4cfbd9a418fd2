"""The paper's data-scarce table on one Amazon domain: how much of D's training data each system needs.

    python bench/scarce.py [--domain kitchen] [--fractions 0.01 0.05 0.1 0.2 1.0]
                           [--systems single meta] [--intermediate-epochs 1] [--epochs 2] [--dry-run]

For each fraction F of D's training rows (seeded and label-stratified: `--train-fraction F`, the
same rows for the teacher and the student):

    single    D's own teacher on F of D (fit --domains D --teacher-mode single --train-fraction F)
              -> TinyBERT-KD student on the same rows (distill --domain D --method tinybert)
    meta      the meta-teacher on every domain, F of D and all of the others
              (fit --teacher-mode meta --train-fraction F --fraction-domains D)
              -> Meta-KD student on F of D (distill --domain D --method meta)
    meta-tinybert  (optional) the same meta-teacher -> TinyBERT-KD student: separates what the
              teacher brings from what meta-distillation brings

Teachers use bench/teachers.py's settings (--epochs 2 --lr 5e-5 --max-length 128 --seed 42); at
F = 1 the meta-teacher is bench/runs/teacher-meta-confusion when it was fitted with them.

Equal steps, less data: epochs are counted at F = 1, and a run that trains on F of D alone (the
single teacher, every student) gets as many epochs as it takes to make at least as many optimizer
steps (batch 32) as at F = 1: at F = 0.01 (16 rows, one batch an epoch) the single teacher makes
100 one-batch epochs, not 2 steps, so the table measures data, not an untrained head. The
meta-teacher trains on every other domain's rows too (over 150 steps an epoch) and keeps its 2
epochs. `--no-match-steps` keeps the epochs as given at every F. The single teacher and every
student keep their best epoch on D's whole dev split (200 rows at every F); the meta-teacher, as
`fit` selects for every all-domain teacher, on every domain's whole dev split, D's included.

Every model is scored on D's test rows (the same 200 rows in every run: the split is per domain
and label). Runs go to bench/runs/scarce/; a finished step with the same settings is reused.
Writes bench/results/scarce.json after every step:

    {"setup": {...}, "results": {"<fraction>": {"train_rows": .., "single-teacher": .., "single->tinybert": ..,
     "meta-teacher": .., "meta->meta": .., "epochs": {..}, "minutes": {..}}},
     "tests": {"<fraction>": {"meta->meta vs single->tinybert": {"diff", "ci95", "p_value", ..}, ..}},
     "correct": {"<fraction>": {"<row>": {"stamp", "rows": [0/1 per test row]}}}, "test_rows": {..}}

Paired tests at each fraction (bench/stats.py: bootstrap over D's test rows and exact McNemar; one
seed): Meta-KD's student against the single teacher's, the meta-teacher against the single
teacher, and Meta-KD against TinyBERT-KD from the same meta-teacher when that system ran. Models
are scored on the test rows in this process (checked against each run's own metrics); a re-run
reuses every finished step and only scores what is not scored yet.

Not part of CI (about 2.5 h on a 2-core CPU with matched steps). Run it alone: it does not check for
other benchmarks using the cores. Skips with a reason when ../shared/data/amazon-mds is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, bench/stats.py (bench/ is no package)
from common import (  # noqa: E402
    DATA, DOMAINS, NO_DATA, RESULTS, ROOT, RUNS, TEACHER_SETTINGS, cell, fit_flags, fresh_student_run, metakd,
    student_finished, test_correctness,
)

OUT = RESULTS / "scarce.json"
FULL_META = RUNS / "teacher-meta-confusion"  # bench/teachers.py's meta-teacher
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
TEACHER = "all-MiniLM-L6-v2"


def matched_epochs(epochs: int, rows: int, full_rows: int) -> int:
    """Epochs on ``rows`` rows that make at least the optimizer steps of ``epochs`` on ``full_rows``."""
    return max(epochs, math.ceil(epochs * math.ceil(full_rows / BATCH) / math.ceil(rows / BATCH)))


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.results = json.loads(OUT.read_text()) if OUT.is_file() and not args.dry_run else {}
        setup = {
            "data": str(DATA), "domain": args.domain, "teacher": TEACHER,
            "fit": {**TEACHER_SETTINGS, "batch_size": BATCH},
            "distill": {"intermediate_epochs": args.intermediate_epochs, "epochs": args.epochs, "batch_size": BATCH,
                        "seed": args.seed, "student": "tiny (4 of the teacher's layers)"},
            "epochs": "as many as make the optimizer steps of F = 1 for runs on F of D alone (single teacher, "
                      "students); the meta-teacher keeps its epochs" if args.match_steps else "as given at every F",
            "dev": f"the single teacher and every student keep their best epoch on {args.domain}'s whole dev "
                   f"split (200 rows) at every F; the meta-teacher on every domain's whole dev split, "
                   f"{args.domain}'s included",
            "fraction": "seeded, label-stratified share of the domain's training rows (split seed 42); "
                        "the meta-teacher keeps every row of the other domains",
            "metric": f"test accuracy % on {args.domain}'s test rows",
        }
        kept = ("domain", "fit", "distill", "epochs")
        if {k: self.results.get("setup", {}).get(k) for k in kept} != {k: setup[k] for k in kept}:
            self.results = {}
        self.results["setup"] = setup
        self.results.setdefault("results", {})
        self.fitted: set[Path] = set()  # fitted by this invocation (a dry run prints each fit once)
        self.rows: dict[float, int] = {}  # fraction -> D's training rows at it
        self.datasets: dict[str, object] = {}  # data fingerprint -> Dataset, loaded once

    def train_rows(self, fraction: float) -> int:
        """D's training rows at ``fraction``: the rows fit and distill keep (metakd's own sampler)."""
        if not self.rows:
            from metakd_cli.config import DataConfig
            from metakd_cli.data import fraction_indices, load_dataset

            dataset = load_dataset(DataConfig(path=str(DATA), domains=[self.args.domain]))
            self.rows = {f: len(fraction_indices(dataset.train, f, dataset.split_seed))
                         for f in (1.0, *self.args.fractions)}
        return self.rows[fraction]

    def epochs(self, epochs: int, fraction: float) -> int:
        """``epochs`` as given, or matched to F = 1's optimizer steps (a run on F of D alone)."""
        if not self.args.match_steps:
            return epochs
        return matched_epochs(epochs, self.train_rows(fraction), self.train_rows(1.0))

    def score(self, fraction: float, name: str, run_dir: Path, model: str, source: Path) -> None:
        """D's test rows scored by ``model`` of ``run_dir`` (0/1 per row, for the paired tests), kept in
        scarce.json's "correct" with a stamp of ``source`` so that a re-made model is re-scored. The rows must
        give the accuracy the run's metrics (``source``) report."""
        from metakd_cli.run_dir import RunDir

        d = self.args.domain
        stamp = f"{source.name}@{source.stat().st_mtime_ns}"
        kept = self.results.setdefault("correct", {}).setdefault(f"{fraction:g}", {})
        if kept.get(name, {}).get("stamp") == stamp:
            return
        run = RunDir(run_dir)
        fingerprint = run.load().data["fingerprint"]
        if fingerprint not in self.datasets:
            self.datasets[fingerprint] = run.reload_dataset()[1]
        dataset = self.datasets[fingerprint]
        rows = [(ex.label, ex.text, ex.text_pair) for ex in dataset.select("test", [d])]
        digest = hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()
        if self.results.setdefault("test_rows", {"domain": d, "rows": len(rows), "sha256": digest})["sha256"] != digest:
            raise SystemExit(f"{run_dir}: {d}'s test rows differ from the other runs'; the paired tests need the same "
                             "rows (same data and split seed)")
        correct = test_correctness(run_dir, model, [d], dataset)[d]
        reported = json.loads(source.read_text())["test_accuracy"][d]
        if abs(100 * sum(correct) / len(correct) - reported) > 0.01:
            raise SystemExit(f"{run_dir}: its {model} scores {100 * sum(correct) / len(correct):.2f} on {d}'s test "
                             f"rows here but {reported} in {source.name}")
        kept[name] = {"stamp": stamp, "rows": correct}

    def tests(self) -> dict:
        """{fraction: {"A vs B": bench/stats.py's compare()}} for each pair of PAIRS scored at that fraction."""
        from stats import compare

        out = {}
        for fraction, scored in self.results.get("correct", {}).items():
            pairs = {f"{a} vs {b}": compare({"1": scored[a]["rows"]}, {"1": scored[b]["rows"]}, None, RESAMPLES)
                     for a, b in PAIRS if a in scored and b in scored}
            if pairs:
                out[fraction] = pairs
        return out

    def save(self) -> None:
        if not self.args.dry_run:
            self.results["tests"] = self.tests()
            from metakd_cli.run_dir import atomic_write_json

            atomic_write_json(OUT, self.results)

    def teacher(self, kind: str, fraction: float) -> Path:
        """The teacher run folder for ``kind`` at ``fraction`` of D, fitted unless a matching fit exists."""
        d = self.args.domain
        settings = dict(TEACHER_SETTINGS)
        if kind == "meta" and fraction == 1.0 and _fitted(FULL_META, 1.0, None, "meta", settings):
            return FULL_META
        run_dir = RUNS / "scarce" / f"{kind}-teacher-{d}-f{fraction:g}"
        if kind == "single":
            flags = ["--domains", d, "--teacher-mode", "single"]
            scarce = None
            settings["epochs"] = self.epochs(settings["epochs"], fraction)
        else:
            flags = ["--teacher-mode", "meta", "--domain-loss", "confusion"]
            scarce = [d] if fraction < 1 else None
            if scarce:
                flags += ["--fraction-domains", d]
        self.row(fraction).setdefault("epochs", {})[f"{kind}-teacher"] = settings["epochs"]
        if run_dir not in self.fitted and not _fitted(run_dir, fraction, scarce, kind, settings):
            self.fitted.add(run_dir)
            _, seconds = metakd(run_dir, "fit", str(DATA), *flags, "--train-fraction", f"{fraction:g}",
                                *fit_flags(settings), dry_run=self.args.dry_run)
            self.row(fraction).setdefault("minutes", {})[f"{kind}-teacher"] = round(seconds / 60, 1)
        return run_dir

    def row(self, fraction: float) -> dict:
        return self.results["results"].setdefault(f"{fraction:g}", {})

    def system(self, name: str, fraction: float) -> None:
        kind, method = SYSTEMS[name]
        d, a = self.args.domain, self.args
        teacher_run = self.teacher(kind, fraction)
        row = self.row(fraction)
        if not a.dry_run:
            fit = json.loads((teacher_run / "metrics" / "fit.json").read_text())
            row[f"{kind}-teacher"] = round(fit["test_accuracy"][d], 2)
            row["train_rows"] = fit["train_rows"][d]
            self.score(fraction, f"{kind}-teacher", teacher_run, "teacher", teacher_run / "metrics" / "fit.json")
        run_dir = RUNS / "scarce" / f"{name}-student-{d}-f{fraction:g}"
        stage1, stage2 = self.epochs(a.intermediate_epochs, fraction), self.epochs(a.epochs, fraction)
        row.setdefault("epochs", {})[STUDENT_ROW[name]] = [stage1, stage2]
        flags = ["--method", method, "--domain", d, "--train-fraction", f"{fraction:g}", "--seed", str(a.seed),
                 "--intermediate-epochs", str(stage1), "--epochs", str(stage2)]
        wanted = {"method": method, "domain": d, "train_fraction": fraction, "seed": a.seed,
                  "intermediate_epochs": stage1, "epochs": stage2, "batch_size": BATCH}
        if not student_finished(run_dir, teacher_run, wanted):
            if a.dry_run:
                print(f"# fresh {run_dir.relative_to(ROOT)} <- {teacher_run.relative_to(ROOT)}/teacher")
            else:
                fresh_student_run(teacher_run, run_dir)
            _, seconds = metakd(run_dir, "distill", *flags, dry_run=a.dry_run)
            row.setdefault("minutes", {})[STUDENT_ROW[name]] = round(seconds / 60, 1)
        if not a.dry_run:
            metrics = json.loads((run_dir / "metrics" / "distill.json").read_text())
            row[STUDENT_ROW[name]] = round(metrics["test_accuracy"][d], 2)
            row.setdefault("student_train_rows", {})[STUDENT_ROW[name]] = metrics["train_rows"][d]
            self.score(fraction, STUDENT_ROW[name], run_dir, "student", run_dir / "metrics" / "distill.json")
        self.save()

    def print_table(self) -> None:
        columns = ["train_rows", *[c for name in self.args.systems for c in (f"{SYSTEMS[name][0]}-teacher",
                                                                            STUDENT_ROW[name])]]
        columns = list(dict.fromkeys(columns))
        print(f"\n{self.args.domain}: test accuracy % by share of its training data")
        print(f"{'fraction':>9}" + "".join(f"{c:>18}" for c in columns))
        for fraction, row in sorted(self.results["results"].items(), key=lambda kv: float(kv[0])):
            print(f"{fraction:>9}" + "".join(f"{cell(row.get(c)) if c != 'train_rows' else row.get(c, '-'):>18}"
                                             for c in columns))


def _fitted(run_dir: Path, fraction: float, scarce: list[str] | None, mode: str, settings: dict) -> bool:
    """A finished fit of the whole data (nothing held out, no other data options) with these settings and
    this data share; a meta-teacher with the domain-confusion loss."""
    path = run_dir / "metrics" / "fit.json"
    if not (path.is_file() and (run_dir / "teacher").is_dir() and (run_dir / "manifest.json").is_file()):
        return False
    config = json.loads(path.read_text())["config"]
    data = json.loads((run_dir / "manifest.json").read_text())["data"]["config"]
    wanted = {**settings, "train_fraction": fraction, "teacher_mode": mode, "teacher": TEACHER,
              "batch_size": BATCH, "hold_out": None, **({"domain_loss": "confusion"} if mode == "meta" else {})}
    return (all(config.get(k) == v for k, v in wanted.items()) and config.get("fraction_domains") == scarce
            and data.get("split_seed") == 42 and data.get("limit_per_domain") is None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="kitchen", choices=DOMAINS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.2, 1.0])
    parser.add_argument("--systems", nargs="+", default=["single", "meta"], choices=list(SYSTEMS))
    parser.add_argument("--intermediate-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2, help="Stage 2 (soft labels) epochs [2].")
    parser.add_argument("--seed", type=int, default=42, help="Student seed [42].")
    parser.add_argument("--match-steps", action=argparse.BooleanOptionalAction, default=True,
                        help="Runs on F of D alone get the optimizer steps they would make at F = 1 [on].")
    parser.add_argument("--dry-run", action="store_true", help="Print the metakd commands; run and write nothing.")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(NO_DATA)
        return
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("fractions must be above 0 and at most 1")
    bench = Bench(args)
    for fraction in sorted(args.fractions, reverse=True):  # the costly full-data rows first
        for name in args.systems:
            bench.system(name, fraction)
    if not args.dry_run:
        bench.print_table()


if __name__ == "__main__":
    main()
