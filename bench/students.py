"""Full-data Amazon students from the bench teachers (run bench/teachers.py first).

    python bench/students.py [--intermediate-epochs 2] [--epochs 3] [--systems ...]

Each system copies its teacher's run folder (bench/runs/teacher-*) to bench/runs/<system>
and runs `metakd distill` there: one all-domain student, scored per domain on the test
split. Results go to bench/results/students.json and a table is printed. Not part of CI.
"""

from __future__ import annotations

import argparse
import json

from common import DATA, NO_DATA, RESULTS, ROOT, RUNS, fresh_student_run, metakd

SYSTEMS = {
    "mix->tinybert": ("teacher-mix", ["--method", "tinybert"]),
    "meta->tinybert": ("teacher-meta-confusion", ["--method", "tinybert"]),
    "meta->meta": ("teacher-meta-confusion", ["--method", "meta"]),
    "meta->meta-tinybert4-random": (
        "teacher-meta-confusion", ["--method", "meta", "--student", "tinybert4", "--student-init", "random"],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intermediate-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    args = parser.parse_args()
    if not DATA.is_dir():
        print(NO_DATA)
        return
    out = RESULTS / "students.json"
    results = json.loads(out.read_text()) if out.is_file() else {"setup": {}, "results": {}}
    results["setup"] = {"intermediate_epochs": args.intermediate_epochs, "epochs": args.epochs, "seed": args.seed,
                        "batch_size": 32, "students": "one all-domain student per system"}
    for name in args.systems:
        teacher_name, flags = SYSTEMS[name]
        teacher_run = RUNS / teacher_name
        if not (teacher_run / "teacher").is_dir():
            print(f"skipped {name}: {teacher_run}/teacher missing (run bench/teachers.py first)")
            continue
        run_dir = RUNS / name.replace(">", "").replace("/", "-")
        fresh_student_run(teacher_run, run_dir)
        command = ["distill", *flags, "--intermediate-epochs", str(args.intermediate_epochs),
                   "--epochs", str(args.epochs), "--seed", str(args.seed)]
        _, seconds = metakd(run_dir, *command)
        metrics = json.loads((run_dir / "metrics" / "distill.json").read_text())
        stages = metrics["stages"]
        results["results"][name] = {
            **{k: round(v, 2) for k, v in metrics["test_accuracy"].items()},
            "teacher_average": round(metrics["teacher_test_accuracy"]["average"], 2),
            "agreement": round(metrics["test_agreement_with_teacher"], 2),
            "minutes": round(seconds / 60, 1),
            "stage_minutes": {k: round(v["seconds"] / 60, 1) for k, v in stages.items()},
            "stage_examples_per_second": {k: round(v["examples_per_second"], 1) for k, v in stages.items()},
            "parameters": metrics["parameters"]["student"],
            "command": f"metakd --run-dir {run_dir.relative_to(ROOT)} " + " ".join(command),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    domains = ["books", "dvd", "electronics", "kitchen", "average"]
    print(f"{'system':30}" + "".join(f"{d:>12}" for d in domains))
    for name, row in results["results"].items():
        print(f"{name:30}" + "".join(f"{row.get(d, float('nan')):12.1f}" for d in domains))


if __name__ == "__main__":
    main()
