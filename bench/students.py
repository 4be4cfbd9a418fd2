"""Full-data Amazon students from the bench teachers: one all-domain student per system.

    python -m bench.students [--systems ...] [--set KEY=VALUE ...]

Each system is bench/recipes/amazon.yaml plus its teacher's --set overrides (bench/common.py TEACHERS) and its own;
its run folder bench/runs/<system> starts as a copy of the teacher's (hard links), so `metakd run --steps
fit,distill` there skips the fit (fitting the teacher first when bench/teachers.py has not) and distils. Test
accuracy per domain, metakd's own minutes and the student's size go to bench/results/students.json and a table is
printed. Not part of CI.
"""

from __future__ import annotations

import argparse

from bench.common import (
    RESULTS, RUNS, TEACHERS, data_missing, metakd_run, recipe, run_command, start_from,
)
from metakd_cli.run_dir import atomic_write_json, read_json_object

SYSTEMS = {  # system -> (teacher system, --set overrides)
    "mix->tinybert": ("teacher-mix", ["distill.method=tinybert"]),
    "meta->tinybert": ("teacher-meta", ["distill.method=tinybert"]),
    "meta->meta": ("teacher-meta", ["distill.method=meta"]),
    "meta->meta-tinybert4-random": ("teacher-meta", ["distill.method=meta", "distill.student=tinybert4",
                                                     "distill.student_init=random"]),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="A --set for every run, after the systems' own (repeatable).")
    args = parser.parse_args(argv)
    config = recipe(args.sets)
    if data_missing(config):
        print(data_missing(config))
        return
    out = RESULTS / "students.json"
    results = read_json_object(out) or {"results": {}}
    distill = config.distill
    results["setup"] = {"intermediate_epochs": distill.intermediate_epochs, "epochs": distill.epochs,
                        "seed": distill.seed, "batch_size": distill.batch_size,
                        "students": "one all-domain student per system"}
    for name in args.systems:
        teacher, sets = SYSTEMS[name]
        teacher_dir, teacher_sets = RUNS / TEACHERS[teacher][0], [*TEACHERS[teacher][1], *args.sets]
        metakd_run(teacher_dir, teacher_sets, "fit")  # skipped when bench/teachers.py fitted it
        run_dir, sets = RUNS / name.replace(">", "").replace("/", "-"), [*TEACHERS[teacher][1], *sets, *args.sets]
        start_from(teacher_dir, run_dir)
        metakd_run(run_dir, sets, "fit,distill")
        metrics = read_json_object(run_dir / "metrics" / "distill.json")
        stages = metrics["stages"]
        results["results"][name] = {
            **{k: round(v, 2) for k, v in metrics["test_accuracy"].items()},
            "teacher_average": round(metrics["teacher_test_accuracy"]["average"], 2),
            "agreement": round(metrics["test_agreement_with_teacher"], 2),
            "minutes": round(metrics["seconds"] / 60, 1),
            "stage_minutes": {k: round(v["seconds"] / 60, 1) for k, v in stages.items()},
            "stage_examples_per_second": {k: round(v["examples_per_second"], 1) for k, v in stages.items()},
            "parameters": metrics["parameters"]["student"],
            "command": run_command(run_dir, sets, "fit,distill"),
        }
        atomic_write_json(out, results)
    domains = ["books", "dvd", "electronics", "kitchen", "average"]
    print(f"{'system':30}" + "".join(f"{d:>12}" for d in domains))
    for name, row in results["results"].items():
        print(f"{name:30}" + "".join(f"{row.get(d, float('nan')):12.1f}" for d in domains))


if __name__ == "__main__":
    main()
