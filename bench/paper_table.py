"""The paper's baseline rows on the Amazon data, with the offline default teacher, and its held-out table.

    python bench/paper_table.py [--systems ...] [--held-out books] [--skip-existing] [--dry-run]

Systems (test accuracy per domain; students are one per domain, distilled with --domain D and
scored on D, as in the paper):

    teacher-single     one teacher per domain (fit --teacher-mode single)
    teacher-mtl        shared encoder, one head per domain (fit --teacher-mode mtl)
    single->tinybert   D's single teacher -> TinyBERT-KD student for D
    mtl->tinybert      the mtl teacher -> TinyBERT-KD student for D
    multi->mtn         all single teachers -> MTN-KD student for D (mean of their softmax outputs)

Held-out table (`--held-out H`, default books; the paper's is MNLI fiction), scored on H only:
H's own teacher, the meta-teacher fitted without H (fit --hold-out H), H's teacher -> TinyBERT-KD,
every other domain's teacher -> TinyBERT-KD on H (distill --teacher-domain), and the meta-teacher
without H -> TinyBERT-KD on H.

Runs go to bench/runs/paper-*; results to bench/results/paper_table.json:
    {"setup": {...}, "results": {"<system>": {"books": .., "dvd": .., "electronics": .., "kitchen": ..,
     "average": ..}}, "held_out": {"domain": H, "results": {"<system>": {H: ..}}}}
and a table is printed. Not part of CI: hours on a 2-core CPU. Skips with a reason when
../shared/data/amazon-mds is absent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import DATA, DOMAINS, NO_DATA, RESULTS, RUNS, cell, fresh_student_run, metakd, slug

OUT = RESULTS / "paper_table.json"
TEACHERS = {  # run folder -> fit flags
    "paper-teacher-single": ["--teacher-mode", "single"],
    "paper-teacher-mtl": ["--teacher-mode", "mtl"],
}
STUDENTS = {  # system -> (teacher run folder, distill flags); one student per domain
    "single->tinybert": ("paper-teacher-single", ["--method", "tinybert"]),
    "mtl->tinybert": ("paper-teacher-mtl", ["--method", "tinybert"]),
    "multi->mtn": ("paper-teacher-single", ["--method", "mtn"]),
}
SYSTEMS = ["teacher-single", "teacher-mtl", *STUDENTS, "held-out"]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.fitted: set[str] = set()
        self.results = json.loads(OUT.read_text()) if OUT.is_file() else {}
        self.results.setdefault("results", {})
        self.results.setdefault("held_out", {"domain": args.held_out, "results": {}})
        if self.results["held_out"].get("domain") != args.held_out:
            self.results["held_out"] = {"domain": args.held_out, "results": {}}
        self.results["setup"] = {
            "data": str(DATA), "teacher": "all-MiniLM-L6-v2", "student": "tiny (4 of the teacher's layers)",
            "fit": {"epochs": args.epochs, "lr": args.lr, "max_length": args.max_length, "batch_size": 32},
            "distill": {"intermediate_epochs": args.intermediate_epochs, "epochs": args.distill_epochs,
                        "batch_size": 32},
            "seed": args.seed, "split": "seeded 80/10/10 per domain and label (seed 42)", "metric": "test accuracy %",
            "students": "one per domain (distill --domain D), scored on D", "held_out": args.held_out,
        }

    def metakd(self, run_dir: Path, *args: str) -> None:
        metakd(run_dir, *args, dry_run=self.args.dry_run)

    def fit(self, name: str, *flags: str) -> Path:
        """A teacher run: fitted once per invocation, and reused when its fit metrics exist and --skip-existing."""
        run_dir = RUNS / name
        if name in self.fitted or (self.args.skip_existing and (run_dir / "metrics" / "fit.json").is_file()):
            return run_dir
        a = self.args
        self.metakd(run_dir, "fit", str(DATA), *flags, "--epochs", str(a.epochs), "--lr", str(a.lr),
                    "--max-length", str(a.max_length), "--seed", str(a.seed))
        self.fitted.add(name)
        return run_dir

    def distill(self, teacher_run: Path, name: str, *flags: str) -> dict:
        """A student in a fresh copy of ``teacher_run`` (so that students do not overwrite each other)."""
        run_dir = RUNS / name
        a = self.args
        if not self.args.dry_run:
            fresh_student_run(teacher_run, run_dir)
        self.metakd(run_dir, "distill", *flags, "--intermediate-epochs", str(a.intermediate_epochs),
                    "--epochs", str(a.distill_epochs), "--seed", str(a.seed))
        return {} if self.args.dry_run else json.loads((run_dir / "metrics" / "distill.json").read_text())

    def save(self, table: dict, system: str, row: dict) -> None:
        table[system] = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        if not self.args.dry_run:
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(self.results, indent=2) + "\n")

    def teacher_row(self, name: str) -> dict:
        if self.args.dry_run:
            return {}
        return dict(json.loads((RUNS / name / "metrics" / "fit.json").read_text())["test_accuracy"])

    def students(self, system: str) -> None:
        teacher_name, flags = STUDENTS[system]
        teacher_run = self.fit(teacher_name, *TEACHERS[teacher_name])
        started, row = time.time(), {}
        for domain in DOMAINS:
            metrics = self.distill(teacher_run, f"paper-{slug(system)}-{domain}", *flags, "--domain", domain)
            row[domain] = metrics.get("test_accuracy", {}).get(domain)
        if not self.args.dry_run:
            row["average"] = sum(row[d] for d in DOMAINS) / len(DOMAINS)
        row["minutes"] = round((time.time() - started) / 60, 1)
        self.save(self.results["results"], system, row)

    def held_out(self) -> None:
        """The paper's "no fiction data for the meta-teacher" table, for one Amazon domain."""
        h = self.args.held_out
        table = self.results["held_out"]["results"]
        single = self.fit("paper-teacher-single", *TEACHERS["paper-teacher-single"])
        without = self.fit(f"paper-teacher-meta-without-{h}", "--teacher-mode", "meta", "--hold-out", h)
        self.save(table, f"{h} teacher", {h: self.teacher_row("paper-teacher-single").get(h)})
        self.save(table, f"meta-teacher without {h}", {h: self.teacher_row(f"paper-teacher-meta-without-{h}").get(h)})
        for source in [h, *[d for d in DOMAINS if d != h]]:
            known = self.results["results"].get("single->tinybert", {}).get(h)
            if source == h and known is not None:  # the same student as single->tinybert's for h
                self.save(table, f"{h} teacher -> tinybert", {h: known})
                continue
            metrics = self.distill(single, f"paper-heldout-{source}-to-{h}", "--method", "tinybert", "--domain", h,
                                   "--teacher-domain", source)
            self.save(table, f"{source} teacher -> tinybert", {h: metrics.get("test_accuracy", {}).get(h)})
        metrics = self.distill(without, f"paper-heldout-meta-without-{h}", "--method", "tinybert", "--domain", h)
        self.save(table, f"meta-teacher without {h} -> tinybert", {h: metrics.get("test_accuracy", {}).get(h)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="*", default=SYSTEMS, choices=SYSTEMS)
    parser.add_argument("--held-out", default="books", choices=DOMAINS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--intermediate-epochs", type=int, default=2)
    parser.add_argument("--distill-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-existing", action="store_true",
                        help="Reuse teacher runs that finished, and keep results already in the JSON file.")
    parser.add_argument("--dry-run", action="store_true", help="Print the metakd commands; run and write nothing.")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(NO_DATA)
        return
    bench = Bench(args)
    done = bench.results["results"]
    for system in args.systems:
        if args.skip_existing and system in done:
            continue
        if system in ("teacher-single", "teacher-mtl"):
            name = f"paper-{system}"
            started = time.time()
            bench.fit(name, *TEACHERS[name])
            bench.save(done, system, {**bench.teacher_row(name), "minutes": round((time.time() - started) / 60, 1)})
        elif system == "held-out":
            bench.held_out()
        else:
            bench.students(system)
    columns = [*DOMAINS, "average"]
    print(f"{'system':24}" + "".join(f"{d:>12}" for d in columns))
    for name, row in done.items():
        print(f"{name:24}" + "".join(f"{cell(row.get(d)):>12}" for d in columns))
    h = args.held_out
    print(f"\nheld out: {h} (teachers never saw it; students distilled and scored on {h})")
    for name, row in bench.results["held_out"]["results"].items():
        print(f"{name:40}{cell(row.get(h)):>12}")


if __name__ == "__main__":
    main()
