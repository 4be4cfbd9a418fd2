"""The bench driver. Every suite is declared in bench/suites/<name>.yaml (its systems: a recipe, --set overrides,
the `metakd run` steps they add to a copy of the folder they start from, a one-line what; its seeds, paired tests,
targets and results file); this one driver runs any of them.

    python -m bench list                              # the suites and what each measures
    python -m bench run SUITE [--systems NAME ...] [--seeds N ...] [--domains D ...] [--held-out D ...]
                              [--fractions F ...] [--mpnet] [--set SECTION.KEY=VALUE ...] [--dry-run]
    python -m bench table SUITE [--set ...]           # bench/results/<suite>.json from the run folders
    python -m bench COMMAND SUITE                     # a suite's own command (its hooks.commands)

`run` starts each system not finished yet (its folder bench/runs/<runs>/<system> done with these settings is
skipped; an interrupted one continues, `metakd run --resume`), each in a copy of the folder it starts from, and
rewrites the suite's results file after each one. `table` reads the finished folders; a figure whose folder is gone
is kept from the results file, marked, and a file none of whose folders is finished is left as it stands. --set adds
overrides to every run (after the systems' own; recorded as extra_sets where the suite's setup shows them). A suite
whose data is not on this machine is skipped with a reason. Quote names with `>` in the shell: 'meta->meta'.

The MPNet path (bench/runs/mpnet/teacher-meta, about 3.5 h on 2 cores, is fitted first when not finished):

    python -m bench run mpnet --systems teacher-meta   # the MPNet-base meta-teacher alone
    python -m bench run keep --mpnet                   # keep-kd and keep-meta, from mpnet's teacher-meta
    python -m bench run transfer --mpnet               # keep-kd and transfer-kd-aug4, from the same teacher
    python -m bench run mpnet                          # meta, tinybert, kd, meta-trim, teacher-onnx
"""

from __future__ import annotations

import argparse
import sys

from bench.suite import SuiteError, Suite, load, names, resolve, table, write
from metakd_cli.core.run_dir import atomic_write_json, read_json_object

def systems_named(suite: Suite, wanted: list[str]) -> list[str]:
    """The systems a --systems list names: each by its name, or a group by the name's first part (held-out)."""
    chosen = []
    for name in wanted:
        found = [s for s in suite.systems if s == name or s.startswith(f"{name}/")]
        if not found:
            raise SuiteError(f"{suite.file}: --systems {name}: not a system of the suite (the systems: "
                             f"{', '.join(suite.systems)})")
        chosen += [s for s in found if s not in chosen]
    return chosen


def show(document: dict) -> None:
    """What the results file says, briefly: each row's average test accuracy, each paired test, each target."""
    for name, row in (document.get("results") or {}).items():
        accuracy = (row.get("test_accuracy") or row) if isinstance(row, dict) else {}
        figure = (accuracy.get("int8") or accuracy).get("average") if isinstance(accuracy, dict) else None
        print(f"{name:32} {row if not isinstance(row, dict) else figure if figure is not None else 'measured'}")
    for name, test in (document.get("tests") or {}).items():
        if isinstance(test, dict) and "diff" in test:
            print(f"{name:44} {test['diff']:+.2f} (95% CI {test['ci95'][0]:+.2f}..{test['ci95'][1]:+.2f}, "
                  f"p {test['p_value']})")
    for row in document.get("targets") or []:
        print(f"{row['status']:13} {row['target']}: {row['value']} (threshold {row['threshold']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("command", help="list, run, table, or one of the suite's own commands")
    parser.add_argument("suite", nargs="?", help="a suite: a file bench/suites/SUITE.yaml")
    parser.add_argument("--systems", nargs="+", help="the systems to run [the suite's default]")
    for flag, kind in (("--seeds", int), ("--domains", str), ("--held-out", str), ("--fractions", float)):
        parser.add_argument(flag, nargs="+", type=kind, help="instead of the suite file's")
    parser.add_argument("--mpnet", action="store_true", help="run the suite's MPNet path instead")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="one more override for every run (a smoke test's small settings)")
    parser.add_argument("--dry-run", action="store_true", help="print the metakd commands; run and write nothing")
    args, rest = parser.parse_known_args(argv)
    if args.command == "list":
        for name in names():
            print(f"{name:14} {load(name).spec['what']}")
        return 0
    try:
        suite = load(args.suite or parser.error("which suite? (python -m bench list)"))
        if suite.hook("run"):  # a timing suite: bench.timing reads its own command line and writes its results
            if args.command != "run":
                raise SuiteError(f"{suite.file}: {args.command}: a timing suite has only `run` (--run-dir R)")
            from bench.timing import main as timed

            return timed(suite, suite.hook("run"), [args.command, *(sys.argv[1:] if argv is None else argv)[2:]])
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        for key in ("seeds", "domains", "held_out", "fractions"):  # what the suite's runs range over
            suite.values[key] = getattr(args, key) or suite.values[key]
        extra, target = tuple(args.sets), suite.mpnet if args.mpnet else suite
        if target is None:
            raise SuiteError(f"{suite.file}: mpnet: the suite has no MPNet path")
        if args.command != "table" and (missing := target.data_missing(extra)):
            print(missing)
            return 0

        def rewrite() -> None:
            document = table(suite, extra)
            if not write(suite, document, extra):
                print(f"no run folder of {suite.name} is finished: {suite.out} is left as it stands", file=sys.stderr)
            show(document)
        if args.command == "run":
            target.run(systems_named(target, args.systems or target.spec.get("default") or list(target.systems)),
                       extra, rewrite, args.dry_run)
        elif args.command != "table":
            commands = (suite.spec.get("hooks") or {}).get("commands") or {}
            if args.command not in commands:
                raise SuiteError(f"{suite.file}: {args.command}: not a command of the suite (its commands: "
                                 f"{', '.join(['run', 'table', *commands])})")
            sections = resolve(commands[args.command])(suite, extra)
            if sections:  # a command's own figures, kept by every later table
                atomic_write_json(suite.out, {**read_json_object(suite.out), **sections})
        if not args.dry_run:
            rewrite()
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
