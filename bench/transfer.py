"""A transfer set the teacher labels: the student's stage 2 over derived rows (--augment K) and over the user's
unlabelled texts (--transfer), on Amazon, each against the student without them on the same test rows.

    python -m bench.transfer run [--systems s20 s20-transfer ...]   # the students (and the teachers they start from)
    python -m bench.transfer table                                  # bench/results/transfer.json from the folders
    python -m bench.transfer label-speed                            # the teachers' labelling rows/s, PyTorch vs ONNX

The MiniLM default path: recipes/amazon-cpu.yaml's meta-teacher and its `tiny` student, logit-only KD with stage 2's
length chosen on dev (bench.keep's kd-cut), shipped as static int8; two Meta-KD systems ask whether stage 1 should
read the transfer set too. Every system runs in its own folder under --runs (default
bench/runs/transfer), a copy of the teacher's (bench.suite); the all-labels teacher and kd-cut student are taken
as copies of bench.keep's folders when those are finished with the same settings.

    aug0           the student on the training rows alone (bench.keep's kd-cut)
    aug4, aug10    + K derived rows per training row (windows of long texts, masking, deletion, swap, spans,
                   same-domain words), labelled by the teacher
    teacher20      the meta-teacher fitted on 20% of the training rows (seeded, label-stratified per domain), its
                   length chosen on dev: the user who labelled a fifth of their texts
    s20            its student on those 20% alone
    s20-transfer   + the other 80% of the training texts, labels dropped, given to --transfer
    s20-aug4       + 4 derived rows per labelled row (no unlabelled text)
    s20-meta-transfer     Meta-KD (stage 1 over the labelled rows, 1 epoch) with the 80% in stage 2
    s20-meta-transfer-s1  the same with stage 1 over the transfer set too (--transfer-stage1): which dev prefers

Paired tests (a paired bootstrap stratified by domain, and exact McNemar; one seed, 42) on the int8 test rows. Every
student here ships its plain static int8 whatever its dev drop (export.max_drop=100; the drop is in its row's
int8_check), so that each can be paired: the 1-point gate refused two of them. The
MPNet path (`run --mpnet`: bench.keep's keep-kd and transfer-kd-aug4) needs the fitted MPNet teacher (bench.mpnet's
teacher-meta, ~3.5 h, fitted first when missing); its targets read "not measured" until then. Not part of CI.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import RESULTS, ROOT, RUNS as BENCH_RUNS, data_path, recipe, shown, start_from
from bench import mpnet
from bench.keep import BY_DEV, MPNET_SYSTEMS as KEEP_MPNET, SEED, STUDENT, best_int8, mpnet_results, paired_tests
from bench.keep import SUITE as KEEP, print_table, significant, suite_arguments, system_results
from bench.suite import NOT_MEASURED, Suite, System, target
from metakd_cli.run_dir import atomic_write_json, read_json_object

RECIPE = ROOT / "recipes" / "amazon-cpu.yaml"
RUNS = BENCH_RUNS / "transfer"
OUT = RESULTS / "transfer.json"
LABELLED = 0.2  # the realistic case's fraction of training rows that keep their labels
UNLABELLED = "unlabelled-80.jsonl"  # the rest, written under --runs by `run`
KD = ("distill.method=kd", BY_DEV)
# every student here ships its plain static int8, whatever its dev drop (recorded in int8_check): the 1-point gate
# refused two of them (drops of 1.25 and 1.75), and a refused student has no int8 rows to pair
UNGATED = ("export.max_drop=100",)
FEW = (f"distill.train_fraction={LABELLED:g}", *UNGATED)


def systems(runs: Path) -> dict[str, System]:
    # resolved: the same string from a worktree whose bench/runs links here (the folders record it in their settings)
    unlabelled = str((runs / UNLABELLED).resolve())
    return {
        "teacher": System((), ("fit",), None, "the MiniLM-L6 meta-teacher on every training row (bench.keep's)"),
        "aug0": System(KD, STUDENT, "teacher", "logit-only KD on the training rows alone (bench.keep's kd-cut)"),
        "aug4": System((*KD, "distill.augment=4", *UNGATED), STUDENT, "teacher", "+ 4 derived rows per training row"),
        "aug10": System((*KD, "distill.augment=10", *UNGATED), STUDENT, "teacher",
                        "+ 10 derived rows per training row"),
        "teacher20": System((f"fit.train_fraction={LABELLED:g}", "fit.epochs=none", "fit.max_epochs=10"), ("fit",),
                            None, "the meta-teacher on 20% of the training rows, its length chosen on dev "
                            "(at most 10 epochs)"),
        "s20": System((*KD, *FEW), STUDENT, "teacher20", "its student on the 20% labelled rows alone"),
        "s20-transfer": System((*KD, *FEW, f"distill.transfer={unlabelled}"), STUDENT, "teacher20",
                               "+ the other 80% of the training texts as unlabelled --transfer text"),
        "s20-aug4": System((*KD, *FEW, "distill.augment=4"), STUDENT, "teacher20",
                           "+ 4 derived rows per labelled row (no unlabelled text)"),
        "s20-meta-transfer": System((BY_DEV, *FEW, f"distill.transfer={unlabelled}"), STUDENT, "teacher20",
                                    "Meta-KD (the recipe's 1 epoch of stage 1, over the labelled rows) + the 80% as "
                                    "--transfer text in stage 2"),
        "s20-meta-transfer-s1": System((BY_DEV, *FEW, f"distill.transfer={unlabelled}", "distill.transfer_stage1=true"),
                                       STUDENT, "teacher20", "the same with stage 1 over the transfer set too"),
    }


# the MPNet path: bench.keep's MPNet systems (the fitted teacher-meta under bench/runs/mpnet) and the transfer set
MPNET_SYSTEMS = {**KEEP_MPNET, "transfer-kd-aug4": System(
    ("distill.method=kd", BY_DEV, "distill.augment=4", *UNGATED), STUDENT, "teacher-meta",
    "keep-kd + 4 derived rows per training row, labelled by the MPNet teacher (its ONNX export on a CPU)")}
MPNET_SUITE = Suite(mpnet.RECIPE, mpnet.RUNS, MPNET_SYSTEMS)
MPNET_PAIRS = (("transfer-kd-aug4", "keep-kd"),)
DEFAULT_ORDER = ("s20", "s20-transfer", "aug4", "s20-aug4")  # the realistic case first
BORROWED = {"teacher": "teacher", "aug0": "kd-cut"}  # system: bench.keep's system with the same settings
PAIRS = (("s20-meta-transfer-s1", "s20-meta-transfer"), ("s20-meta-transfer", "s20-transfer"), ("s20-transfer", "s20"), ("s20-aug4", "s20"), ("s20-transfer", "s20-aug4"), ("aug0", "s20"),
         ("aug0", "s20-transfer"), ("aug4", "aug0"), ("aug10", "aug0"), ("aug10", "aug4"))
TARGETS = {"mpnet_int8": 89.4, "mpnet_gap": 1.0, "over_few": 2.0, "p": 0.05}


def write_unlabelled(runs: Path) -> Path:
    """The training texts outside the seeded 20% (the rows `--train-fraction 0.2` leaves out), labels dropped, as
    a JSON-lines table with a domain column: what a user with a fifth of their texts labelled hands --transfer."""
    import json

    from metakd_cli.data import fraction_indices, load_dataset

    config = recipe([], RECIPE)
    config.data.path = str(data_path(config))
    dataset = load_dataset(config.data)
    kept = set(fraction_indices(dataset.train, LABELLED, dataset.split_seed))
    rows = [{"text": ex.text, "domain": ex.domain} for i, ex in enumerate(dataset.train) if i not in kept]
    path = runs / UNLABELLED
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)
    return path


def borrow(suite: Suite) -> None:
    """The all-labels teacher and student as copies of bench.keep's folders when those are finished with the same
    settings (they are the same systems), so that neither is trained twice."""
    keep = Suite(KEEP.recipe, KEEP.runs, KEEP.systems)
    for system, theirs in BORROWED.items():
        assert keep.sets_of(theirs) == suite.sets_of(system), system
        if suite.finished_metrics(system) is None and keep.finished_metrics(theirs) is not None:
            start_from(keep.folder(theirs), suite.folder(system))


SPEED_ROWS, SPEED_ROUNDS = 512, 3
TEACHERS = {"MiniLM-L6 (bench.keep's teacher)": KEEP.folder("teacher") / "teacher",
            "MPNet-base (bench.mpnet's teacher-meta)": BENCH_RUNS / "mpnet" / "teacher-meta" / "teacher"}


def label_speed(runs: Path, rows: int = SPEED_ROWS, rounds: int = SPEED_ROUNDS) -> dict:
    """Rows a second at which each fitted teacher labels the first ``rows`` unlabelled texts, by PyTorch and by its
    fp32 ONNX export (metakd_cli.onnx_teacher), timed in interleaved rounds after an untimed one (medians); the
    export's own seconds beside. Stop other work first: this is a timing."""
    import json

    from metakd_cli.data import Encoded
    from metakd_cli.inference import torch_logits
    from metakd_cli.models import load_classifier, load_tokenizer
    from metakd_cli.onnx_teacher import OnnxTeacher
    from metakd_cli.timing import Spread, time_rounds

    texts = [json.loads(line)["text"] for line in (runs / UNLABELLED).read_text(encoding="utf-8").splitlines()[:rows]]
    figures = {}
    for name, folder in TEACHERS.items():
        if not (folder / "config.json").is_file():
            figures[name] = "not measured: no fitted teacher in " + shown(folder)
            continue
        tokenizer = load_tokenizer(str(folder))
        ids = tokenizer(texts, truncation=True, max_length=128)
        encoded = Encoded(ids["input_ids"], ids.get("token_type_ids"), [0] * len(texts), [0] * len(texts))
        pad_id, model = tokenizer.pad_token_id or 0, load_classifier(str(folder), None, "eager")
        started = time.perf_counter()
        onnx = OnnxTeacher(folder, runs / "scratch")
        export_seconds = time.perf_counter() - started
        try:
            seconds = time_rounds({"torch": lambda: torch_logits(model, encoded, pad_id),
                                   "onnx": lambda: onnx.logits(encoded, pad_id)}, rounds)
        finally:
            onnx.close()
        speed = {how: round(len(texts) / Spread.of(values).median, 1) for how, values in seconds.items()}
        figures[name] = {"rows": len(texts), "rounds": rounds, "rows_per_s": speed,
                         "onnx_over_torch": round(speed["onnx"] / speed["torch"], 2),
                         "export_seconds": round(export_seconds, 1)}
        print(f"{name}: torch {speed['torch']} rows/s, onnx {speed['onnx']} rows/s "
              f"({figures[name]['onnx_over_torch']}x), export {export_seconds:.0f} s")
    return figures


def table(runs: Path = RUNS, out: Path = OUT, speed: dict | None = None) -> dict:
    suite = Suite(RECIPE, runs, systems(runs))
    previous = read_json_object(out)
    results = system_results(suite, previous.get("results") or {})
    scored = suite.scored_all(suite.shipped(results))
    tests = paired_tests(scored, PAIRS, previous.get("tests") or {})
    # the same pairs as fp32 students: an int8 export's own drop (up to 2 points here) is not the transfer set's
    tests |= paired_tests(suite.scored_all(list(scored), "student"), PAIRS, previous.get("tests") or {}, "student")
    mpnet_path = mpnet_results(MPNET_SUITE, previous.get("mpnet") or {}, MPNET_PAIRS)
    document = {
        "setup": {"recipe": shown(RECIPE), "runs": shown(runs), "seed": SEED, "path": "MiniLM-L6 default path",
                  "labelled_fraction": LABELLED,
                  "systems": suite.declared()},
        "results": results,
        "tests": tests,
        "mpnet": mpnet_path,
        "targets": targets(tests, mpnet_path),
        "label_speed": speed or previous.get("label_speed") or NOT_MEASURED,
    }
    atomic_write_json(out, document)
    return document


def targets(tests: dict, mpnet_path: dict | None = None) -> list[dict]:
    int8, gap, source = best_int8(mpnet_path or {})
    return [
        target("MPNet-path int8 student test accuracy (the best on dev)", int8, TARGETS["mpnet_int8"], True, source),
        target("MPNet-path int8 student within 1.0 of its teacher (teacher - int8)", gap, TARGETS["mpnet_gap"], False,
               source),
        significant("at 20% labels, the transfer student above the 20%-labels student (int8 points, p < 0.05)",
                    tests.get("s20-transfer vs s20"), TARGETS["over_few"]),
    ]


def main() -> None:
    args = suite_arguments(__doc__, ("run", "table", "label-speed"), list(systems(RUNS)), DEFAULT_ORDER, RECIPE,
                           RUNS, OUT)
    if args is None:
        return
    suite = Suite(RECIPE, args.runs, systems(args.runs))
    if args.command == "run" and args.mpnet:
        MPNET_SUITE.run(["keep-kd", "transfer-kd-aug4"], after=lambda: print_table(table(args.runs, args.out)))
    elif args.command == "run":
        write_unlabelled(args.runs)
        borrow(suite)
        suite.run(args.systems, after=lambda: print_table(table(args.runs, args.out)))
    speed = None
    if args.command == "label-speed":
        write_unlabelled(args.runs)
        speed = label_speed(args.runs)
    print_table(table(args.runs, args.out, speed))


if __name__ == "__main__":
    main()
