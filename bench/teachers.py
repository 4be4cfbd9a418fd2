"""Full-data Amazon teachers with the offline default model: mix, meta+confusion, meta+reversal.

    python -m bench.teachers [--systems teacher-mix ...] [--set KEY=VALUE ...]

Each teacher is bench/recipes/amazon.yaml plus its --set overrides (bench/common.py TEACHERS), fitted by
`metakd run --steps fit` in bench/runs/<name> (a fit recorded with the same settings is skipped; bench/amazon.py
uses the same folders). Per-domain test accuracy and metakd's own minutes go to bench/results/teachers.json and a
table is printed. Not part of CI (about 15 min a teacher on a 2-core CPU). Skips with a reason when the recipe's
data (../shared/data/amazon-mds) is absent.
"""

from __future__ import annotations

import argparse

from bench.common import RESULTS, RUNS, TEACHERS, data_missing, data_path, metakd_run, recipe, run_command
from metakd_cli.run_dir import atomic_write_json, read_json_object

FOLDERS = {folder: sets for folder, sets in TEACHERS.values()}  # teachers.json names each teacher by its folder
SYSTEMS = ["teacher-mix", "teacher-meta-confusion", "teacher-meta-reversal"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="*", default=SYSTEMS, choices=list(FOLDERS))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="A --set for every teacher, after the systems' own (repeatable).")
    args = parser.parse_args(argv)
    config = recipe(args.sets)
    if data_missing(config):
        print(data_missing(config))
        return
    out = RESULTS / "teachers.json"
    results = read_json_object(out) or {"results": {}}
    fit = config.fit
    results["setup"] = {"data": str(data_path(config)), "teacher": fit.teacher, "epochs": fit.epochs, "lr": fit.lr,
                        "max_length": fit.max_length, "seed": fit.seed, "batch_size": fit.batch_size}
    for name in args.systems:
        run_dir, sets = RUNS / name, [*FOLDERS[name], *args.sets]
        metakd_run(run_dir, sets, "fit")
        metrics = read_json_object(run_dir / "metrics" / "fit.json")
        results["results"][name] = {
            **{k: round(v, 2) for k, v in metrics["test_accuracy"].items()},
            "dev_average": round(metrics["dev_accuracy"]["average"], 2),
            "minutes": round(metrics["seconds"] / 60, 1),
            "command": run_command(run_dir, sets, "fit"),
        }
        atomic_write_json(out, results)
    domains = ["books", "dvd", "electronics", "kitchen", "average"]
    print(f"{'system':28}" + "".join(f"{d:>12}" for d in domains))
    for name, row in results["results"].items():
        print(f"{name:28}" + "".join(f"{row.get(d, float('nan')):12.1f}" for d in domains))


if __name__ == "__main__":
    main()
