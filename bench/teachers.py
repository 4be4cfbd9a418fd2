"""Full-data Amazon teachers with the offline default model: mix, meta+confusion, meta+reversal.

    python bench/teachers.py [--epochs 2] [--lr 5e-5] [--max-length 128]

Each teacher is a `metakd fit` run in bench/runs/<name>; per-domain test accuracy goes to
bench/results/teachers.json and a table is printed. Not part of CI (about 15 min a teacher
on a 2-core CPU). Skips with a reason when ../shared/data/amazon-mds is absent.
"""

from __future__ import annotations

import argparse
import json

from common import DATA, NO_DATA, RESULTS, ROOT, RUNS, metakd

SYSTEMS = {
    "teacher-mix": ["--teacher-mode", "mix"],
    "teacher-meta-confusion": ["--teacher-mode", "meta", "--domain-loss", "confusion"],
    "teacher-meta-reversal": ["--teacher-mode", "meta", "--domain-loss", "reversal"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    parser.add_argument("--skip-existing", action="store_true", help="Keep results already in the JSON file.")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(NO_DATA)
        return
    out = RESULTS / "teachers.json"
    results = json.loads(out.read_text()) if out.is_file() else {"setup": {}, "results": {}}
    results["setup"] = {
        "data": str(DATA), "teacher": "all-MiniLM-L6-v2", "epochs": args.epochs, "lr": args.lr,
        "max_length": args.max_length, "seed": args.seed, "batch_size": 32,
    }
    for name in args.systems:
        run_dir = RUNS / name
        if args.skip_existing and name in results["results"]:
            continue
        command = ["fit", str(DATA), *SYSTEMS[name], "--epochs", str(args.epochs), "--lr", str(args.lr),
                   "--max-length", str(args.max_length), "--seed", str(args.seed)]
        _, seconds = metakd(run_dir, *command)
        metrics = json.loads((run_dir / "metrics" / "fit.json").read_text())
        results["results"][name] = {
            **{k: round(v, 2) for k, v in metrics["test_accuracy"].items()},
            "dev_average": round(metrics["dev_accuracy"]["average"], 2),
            "minutes": round(seconds / 60, 1),
            "command": f"metakd --run-dir {run_dir.relative_to(ROOT)} " + " ".join(command),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    domains = ["books", "dvd", "electronics", "kitchen", "average"]
    print(f"{'system':28}" + "".join(f"{d:>12}" for d in domains))
    for name, row in results["results"].items():
        print(f"{name:28}" + "".join(f"{row.get(d, float('nan')):12.1f}" for d in domains))


if __name__ == "__main__":
    main()
