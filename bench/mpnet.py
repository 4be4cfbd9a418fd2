"""Issue 26's bench on Amazon: the 110M MPNet-base meta-teacher, its ~19M minilm4 student by Meta-KD, by
TinyBERT-KD and by logit-only KD (a control: what stage 1 across tokenizers adds), the int8 student's speed against
the teacher's PyTorch and ONNX fp32, and its file size with and without --trim-vocab.

    python -m bench.mpnet run [--systems teacher-meta meta ...]   # the full recipe: many hours on 2 cores
    python -m bench.mpnet speed                                   # speed and sizes on an under-trained pipeline
    python -m bench.mpnet fit-speed                               # the teacher's training rows/s (3 timed steps)
    python -m bench.mpnet table                                   # bench/results/mpnet.json from the run folders

Every system is recipes/amazon-mpnet.yaml plus the --set overrides in SYSTEMS, run by `metakd run RECIPE --resume
--steps ...` in its own run folder under --runs (default bench/runs/mpnet; $METAKD_BENCH_DIR moves bench/). A
system that starts from another's work (a student from the teacher, the trimmed export from the student) starts as
a copy of that folder (bench.common.start_from: weights hard-linked; copied again once that folder's steps are
redone), so `metakd run` finds the earlier steps done and skips them. One seed (42): the issue allows one here.
`run` goes on from where it stopped and skips finished systems; after each it rewrites the table. OPTIONAL systems
(teacher-mix, kd-lr, meta-lr) are left out unless named (--systems).

`speed` builds the same systems under <runs>/speed with SPEED_SETS: the whole data (2% dev and 4% test rows, so
that each 110M forward over them is short), 1% of the training rows, 1 fit epoch, 1 + 1 distill epochs. Training
changes neither a model's speed nor its size, so those figures hold for the full recipe; the accuracies of these
models are no results and are not read. The two timed evals run last, back to back: the int8 student and the
teacher's PyTorch in one `metakd eval` (the student's folder), then the teacher's ONNX fp32 and its PyTorch again
(`export --model teacher` writes onnx/, where the student's int8 lives, so one folder cannot hold both). A second
`speed` skips what is built and times again: build whenever, rerun on an idle machine for the figures. The
--trim-vocab size there is of a vocabulary trimmed to that split's training rows (94% of the data; the recipe's
80% keep a little less); the full run's meta-trim gives the recipe's own.

`fit-speed` times a few optimiser steps of the MPNet-base teacher on the recipe's rows, batch and length, and
writes rows/s (and the minutes they make for one epoch's steps) into the results: what the recipe's hours rest on.

`table` reads the run folders (and keeps, marked, the figures of the results file whose folders are gone, measured
with the same --set): a system's metrics/*.json, and its eval record in metrics/eval.json, once
`metakd run` would skip its steps with this driver's settings (give it the --set the runs had) and that eval was
written after them (bench.common.done). Results: bench/results/mpnet.json (--out). Not part of CI.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench.common import DOMAINS, PAPER, RESULTS, ROOT, RUNS as BENCH_RUNS, data_missing, metakd_run, recipe
from bench.common import data_path, scored_rows, shown
from bench.suite import NOT_MEASURED, Suite, System, kept as _kept, paired_test, target
from metakd_cli.run_dir import atomic_write_json, read_json_object

RECIPE = ROOT / "recipes" / "amazon-mpnet.yaml"
RUNS = BENCH_RUNS / "mpnet"
OUT = RESULTS / "mpnet.json"
SEED = 42


SYSTEMS: dict[str, System] = {
    "teacher-meta": System((), ("fit",), None, "the MPNet-base meta-teacher"),
    "meta": System((), ("distill", "export", "eval"), "teacher-meta",
                   "minilm4 by Meta-KD from the meta-teacher, exported as static int8"),
    "tinybert": System(("distill.method=tinybert",), ("distill", "export", "eval"), "teacher-meta",
                       "minilm4 by TinyBERT-KD (lambda = 1, no domain-feature term), static int8"),
    "kd": System(("distill.method=kd",), ("distill", "export", "eval"), "teacher-meta",
                 "minilm4 by logit-only KD (stage 2 alone, no stage 1 across tokenizers): what stage 1 adds"),
    "kd-lr": System(("distill.method=kd", "distill.lr=1e-4"), ("distill", "export", "eval"), "teacher-meta",
                    "logit-only KD at a stage-2 rate of 1e-4 (the default 3e-5): whether the student is under-trained"),
    "meta-lr": System(("distill.lr=1e-4",), ("distill", "export", "eval"), "teacher-meta",
                      "Meta-KD at kd-lr's stage-2 rate of 1e-4: the method once the student is trained longer"),
    "meta-trim": System(("export.trim_vocab=true", "eval.models=int8"), ("export", "eval"), "meta",
                        "the Meta-KD student exported with --trim-vocab (the training texts' word pieces only)"),
    "teacher-onnx": System(("export.model=teacher", "export.int8=false", "eval.models=teacher,onnx"),
                           ("export", "eval"), "teacher-meta",
                           "the meta-teacher exported as ONNX fp32, timed beside its PyTorch"),
    "teacher-mix": System(("fit.teacher_mode=mix",), ("fit",), None,
                          "the MPNet-base mix teacher: plain fine-tuning on all domains"),
}
SUITE = Suite(RECIPE, RUNS, SYSTEMS)
RUN_DEFAULT = ("teacher-meta", "meta", "tinybert", "kd", "meta-trim", "teacher-onnx")
OPTIONAL = ("teacher-mix", "kd-lr", "meta-lr")  # run when named (--systems): the mix teacher when the CPU allows,
# and the stage-2 rate's diagnosis
SPEED_SYSTEMS = ("teacher-meta", "meta", "meta-trim", "teacher-onnx")
# the under-trained pipeline of `speed`: the recipe's models, lengths and export, little training. 80 test rows a
# domain (320) cover eval's 8 timed batches of 32 and its 64 rows at batch 1; the dev rows are what the fit, export
# and distill score (a few, since each costs a 110M forward); no accuracy check can stop it (max_drop)
SPEED_SETS = ("data.dev_fraction=0.02", "data.test_fraction=0.04", "fit.epochs=1", "fit.train_fraction=0.01",
              "distill.train_fraction=0.01", "distill.intermediate_epochs=1", "distill.epochs=1",
              "export.max_drop=100")
SPEED_LABEL = ("measured on an under-trained pipeline (bench.mpnet speed: 1% of the training rows, 1 fit epoch, "
               "1 + 1 distill epochs): speed and size only, its models' accuracy is no result")

# each system's row in the paper's Amazon table (bench.common.PAPER: BERT-base teachers, TinyBERT-4 students)
PAPER_ROWS = {"teacher-meta": "teacher-meta", "teacher-mix": "teacher-mix", "meta": "meta->meta",
              "tinybert": "meta->tinybert"}
# the targets: the paper's meta-teacher and fp32 Meta-KD student, 1 point, 25x, 20 MB
TARGETS = {"teacher": 89.9, "int8": 89.4, "int8_gap": 1.0, "speedup": 25.0, "int8_mb": 20.0}
# the students compared on the same test rows, each as shipped (static int8): (A, B) gives "A vs B", A minus B. The
# method at the recipe's stage-2 rate, the rate itself, and the method at the higher rate
PAIRS = (("meta", "tinybert"), ("meta", "kd"), ("kd-lr", "kd"), ("meta-lr", "meta"), ("meta-lr", "kd-lr"))


# --------------------------------------------------------------------------- run folders (bench.suite)


def _suite(runs: Path) -> Suite:
    return replace(SUITE, runs=runs)


def folder(runs: Path, system: str) -> Path:
    return _suite(runs).folder(system)


def sets_of(system: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Every --set a system's run gets: its own, then the mode's (SPEED_SETS) and the command line's."""
    return SUITE.sets_of(system, extra)


def chain(system: str, built: bool = False) -> str:
    return SUITE.chain(system, built)


def build(runs: Path, system: str, extra: tuple[str, ...], steps: str) -> bool:
    return _suite(runs).build(system, extra, steps)


def run_systems(runs: Path, systems: list[str], extra: tuple[str, ...], after=lambda: None) -> None:
    """Each system not finished yet, in SYSTEMS order, the systems they start from first; ``after`` each one."""
    _suite(runs).run([s for s in SYSTEMS if s in systems], extra, after)


def speed(runs: Path, extra: tuple[str, ...]) -> None:
    """Build the under-trained systems under ``runs``/speed (no eval), then run the two timed evals back to back."""
    speed_runs, sets = runs / "speed", (*SPEED_SETS, *extra)
    for system in SPEED_SYSTEMS:
        build(speed_runs, system, sets, chain(system, built=True))
    for system in ("meta", "teacher-onnx"):  # timed: always again, so that the two evals are one sitting
        metakd_run(folder(speed_runs, system), sets_of(system, sets), "eval", RECIPE)


def finished_metrics(run_dir: Path, system: str, extra: tuple[str, ...] = (),
                     steps: str | None = None) -> dict[str, dict] | None:
    return SUITE.finished_metrics(system, extra, steps, run_dir)


# --------------------------------------------------------------------------- the table


def _models(eval_metrics: dict) -> dict[str, dict]:
    return {m["name"]: m for m in eval_metrics.get("models") or [] if isinstance(m, dict) and "name" in m}


def _round(value: object, digits: int = 2) -> float | None:
    return round(float(value), digits) if isinstance(value, (int, float)) else None


def _accuracy(values: object) -> dict[str, float] | None:
    return {k: _round(v) for k, v in values.items()} if isinstance(values, dict) and values else None


def _speed_of(model: dict) -> dict:
    """An eval record's speed of one model: medians over its timing rounds, each with its [fastest, slowest] round
    beside it (None from an eval before rounds)."""
    return {"throughput_rows_per_s": _round(model.get("throughput"), 1), "latency_ms": _round(model.get("latency_ms")),
            "size_mb": _round(model.get("size_mb"), 1), "timed_rows": model.get("timed_rows"),
            "throughput_spread": _spread(model.get("throughput_spread"), 1),
            "latency_ms_spread": _spread(model.get("latency_ms_spread"))}


def _spread(values: object, digits: int = 2) -> list[float] | None:
    return [_round(v, digits) for v in values] if isinstance(values, list) and len(values) == 2 else None


def _hours(step: dict, parts: object) -> float | None:
    """A step's ``seconds`` in hours when they are its whole time: each training part (fit's teachers, distill's
    stages) records ``resumed_from`` (a metakd that counts a resumed run's earlier training time) and none was
    resumed from a checkpoint that did not record its time. Otherwise None: the seconds may be a last run's alone."""
    parts = list(parts.values() if isinstance(parts, dict) else parts or [])
    whole = bool(parts) and all(isinstance(p, dict) and "resumed_from" in p for p in parts)
    if not whole or any(isinstance(p["resumed_from"], dict) and p["resumed_from"].get("earlier_seconds") is None
                        for p in parts):
        return None
    return _round(float(step.get("seconds") or 0) / 3600, 1)


def read_teacher(metrics: dict[str, dict]) -> dict:
    fit = metrics["fit"]
    return {"test_accuracy": _accuracy(fit.get("test_accuracy")), "dev_accuracy": _accuracy(fit.get("dev_accuracy")),
            "fit_hours": _hours(fit, fit.get("teachers")), "cpu": fit.get("cpu")}


def read_student(metrics: dict[str, dict]) -> dict:
    models, distill, export = _models(metrics["eval"]), metrics["distill"], metrics["export"]
    check = export.get("int8_check") or {}
    return {
        "test_accuracy": {name: _accuracy(models[name].get("accuracy")) for name in models},
        "teacher_minus_int8": _gap(models),
        "int8_check": {"dev_drop": _round(check.get("drop")), "attempt": check.get("attempt"),
                       "mode": check.get("mode")},
        "alignment": distill.get("alignment"),
        "parameters": distill.get("parameters"),
        "distill_hours": _hours(distill, distill.get("stages")),
        "size_mb": _sizes(export),
        "speed": {name: _speed_of(model) for name, model in models.items()},
    }


def _gap(models: dict[str, dict]) -> float | None:
    teacher, int8 = ((_of(models, name, "accuracy") or {}).get("average") for name in ("teacher", "int8"))
    return _round(teacher - int8) if isinstance(teacher, (int, float)) and isinstance(int8, (int, float)) else None


def read_trim(export: dict) -> dict:
    trim = export.get("trim") or {}
    return {"size_mb": _sizes(export), "vocab_before": trim.get("vocab_before"), "vocab_after": trim.get("vocab_after"),
            "training_texts": trim.get("texts"), "dev_accuracy": export.get("dev_accuracy")}


def read_speed(runs: Path, extra: tuple[str, ...]) -> dict | None:
    """The speed and size figures of the under-trained pipeline, or None until both timed evals are done."""
    sets = (*SPEED_SETS, *extra)
    student = finished_metrics(folder(runs, "meta"), "meta", sets)
    teacher = finished_metrics(folder(runs, "teacher-onnx"), "teacher-onnx", sets)
    if student is None or teacher is None:
        return None
    trimmed = finished_metrics(folder(runs, "meta-trim"), "meta-trim", sets, chain("meta-trim", built=True))
    first, second = _models(student["eval"]), _models(teacher["eval"])  # the two timed evals, in order
    throughput = {  # rows/s, unrounded for the ratios
        "teacher_pytorch": _of(first, "teacher", "throughput"), "teacher_onnx_fp32": _of(second, "onnx", "throughput"),
        "student_pytorch": _of(first, "student", "throughput"), "student_onnx_fp32": _of(first, "onnx", "throughput"),
        "int8_student": _of(first, "int8", "throughput"),
    }
    sizes, teacher_sizes = _sizes(student["export"]), _sizes(teacher["export"])
    return {
        "measured_on": SPEED_LABEL,
        "sets": list(sets),
        "batch_size": (student["eval"].get("config") or {}).get("batch_size"),
        "throughput_rows_per_s": {k: _round(v, 1) for k, v in throughput.items()},  # at eval's batch size
        "latency_ms_batch_1": {"teacher_pytorch": _round(_of(first, "teacher", "latency_ms")),
                               "teacher_onnx_fp32": _round(_of(second, "onnx", "latency_ms")),
                               "int8_student": _round(_of(first, "int8", "latency_ms"))},
        "int8_speedup": {"vs_teacher_pytorch": _ratio(throughput["int8_student"], throughput["teacher_pytorch"]),
                         "vs_teacher_onnx_fp32": _ratio(throughput["int8_student"], throughput["teacher_onnx_fp32"])},
        # the teacher's PyTorch is timed in both evals: how far apart two timings of one model are on this machine
        "teacher_pytorch_in_second_eval": _round(_of(second, "teacher", "throughput"), 1),
        "timed_rows": _of(first, "int8", "timed_rows"),
        "evals_written": [student["eval"].get("written"), teacher["eval"].get("written")],
        # each eval's timing rounds: how many, the load average, and why they were unsteady (if so)
        "evals_timing": [student["eval"].get("timing"), teacher["eval"].get("timing")],
        "threads": student["eval"].get("threads"),
        "cpu": student["eval"].get("cpu"),
        "size_mb": {
            "int8_student": sizes.get("model_quantized.onnx"),
            "int8_student_trimmed": _sizes(trimmed["export"]).get("model_quantized.onnx") if trimmed else None,
            "student_onnx_fp32": sizes.get("model.onnx"), "student_pytorch": sizes.get("pytorch"),
            "teacher_onnx_fp32": teacher_sizes.get("model.onnx"), "teacher_pytorch": teacher_sizes.get("pytorch"),
        },
        "trim": read_trim(trimmed["export"]) if trimmed else NOT_MEASURED,
    }


def _of(models: dict[str, dict], name: str, key: str) -> object:
    return (models.get(name) or {}).get(key)


def _sizes(export: dict) -> dict[str, float | None]:
    return {name: _round(size, 1) for name, size in (export.get("size_mb") or {}).items()}


def _ratio(a: object, b: object) -> float | None:
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return round(a / b, 1) if numbers and b else None


_target = target


def targets(results: dict, speed_figures: dict | None) -> list[dict]:
    """The issue's targets (the file size with and without --trim-vocab) and where each lands; a figure that
    no finished folder gives is not measured."""
    teacher = results.get("teacher-meta") or {}
    student = results.get("meta") or {}
    trimmed = results.get("meta-trim") or {}
    int8 = ((student.get("test_accuracy") or {}).get("int8") or {}).get("average")
    speedup, speed_source = None, "speed (under-trained pipeline; speed does not depend on training)"
    if speed_figures:
        speedup = speed_figures["int8_speedup"]["vs_teacher_pytorch"]
    elif student:  # the full run's own eval timed both too
        timed = student["speed"]
        speedup = _ratio((timed.get("int8") or {}).get("throughput_rows_per_s"),
                         (timed.get("teacher") or {}).get("throughput_rows_per_s"))
        speed_source = "meta (the full run's eval)"
    size = (student.get("size_mb") or {}).get("model_quantized.onnx")
    size_source = "meta (export.json)"
    if size is None and speed_figures:
        size, size_source = speed_figures["size_mb"]["int8_student"], "speed (the same architecture)"
    trimmed_size = ((trimmed.get("size_mb") or {}) if trimmed else {}).get("model_quantized.onnx")
    trimmed_source = "meta-trim (export.json)"
    if trimmed_size is None and speed_figures:
        trimmed_size = speed_figures["size_mb"]["int8_student_trimmed"]
        trimmed_source = "speed (trimmed to the speed split's training rows: a little more than the recipe keeps)"
    return [
        _target("MPNet meta-teacher test accuracy >= the paper's BERT-base meta-teacher",
                (teacher.get("test_accuracy") or {}).get("average"), TARGETS["teacher"], True,
                "teacher-meta (fit.json)"),
        _target("int8 student test accuracy >= the paper's fp32 student", int8, TARGETS["int8"], True,
                "meta (eval.json)"),
        _target("int8 student within 1.0 point of its teacher (teacher - int8, same eval)",
                student.get("teacher_minus_int8"), TARGETS["int8_gap"], False, "meta (eval.json)"),
        _target("int8 student throughput >= 25x the teacher's PyTorch (timed in one eval)", speedup,
                TARGETS["speedup"], True, speed_source),
        _target("int8 student file <= 20 MB", size, TARGETS["int8_mb"], False, size_source),
        _target("int8 student file with --trim-vocab <= 20 MB", trimmed_size, TARGETS["int8_mb"], False,
                trimmed_source),
    ]


def read_trimmed_student(metrics: dict[str, dict]) -> dict:
    int8 = _models(metrics["eval"]).get("int8") or {}
    return {**read_trim(metrics["export"]), "test_accuracy": {"int8": _accuracy(int8.get("accuracy"))}}


def read_teacher_onnx(metrics: dict[str, dict]) -> dict:
    return {"speed": {name: _speed_of(model) for name, model in _models(metrics["eval"]).items()},
            "size_mb": _sizes(metrics["export"])}


def paired_tests(runs: Path, finished: set[str], extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """"A vs B" for each of PAIRS whose two students are ``finished`` (as table() found them): their int8 correctness
    on the same test rows (bench.stats.compare: a paired bootstrap stratified by domain, and exact McNemar), A minus B
    in points. One seed: what they test is the difference on these rows, not over seeds."""
    scored = {}
    for system in dict.fromkeys(name for pair in PAIRS for name in pair):
        if system in finished:
            rows = scored_rows(folder(runs, system), recipe(sets_of(system, extra), RECIPE), "int8")
            if rows is not None:
                scored[system] = rows
    return {f"{first} vs {second}": {**paired_test(scored[first], scored[second], SEED, first, shown(folder(runs, second))),
                                      "model": "int8"}
            for first, second in PAIRS if first in scored and second in scored}


READERS = {"teacher-meta": read_teacher, "teacher-mix": read_teacher, "meta": read_student, "tinybert": read_student,
           "kd": read_student, "kd-lr": read_student, "meta-lr": read_student,
           "meta-trim": read_trimmed_student, "teacher-onnx": read_teacher_onnx}


def table(runs: Path, extra: tuple[str, ...] = (), out: Path = OUT) -> dict:
    """The results JSON from the run folders as they stand: finished systems only, the rest not measured."""
    previous = read_json_object(out)
    same_settings = (previous.get("setup") or {}).get("extra_sets") == list(extra)
    results: dict[str, object] = {}
    measured = set()  # the systems whose folders are finished with these settings
    for system in SYSTEMS:
        metrics = finished_metrics(folder(runs, system), system, extra)
        if metrics:
            measured.add(system)
        kept = _kept((previous.get("results") or {}).get(system), same_settings)
        results[system] = READERS[system](metrics) if metrics else kept or NOT_MEASURED
    speed_figures = read_speed(runs / "speed", extra) or _kept(previous.get("speed"), same_settings)
    fit_figures = previous.get("fit_speed") if isinstance(previous.get("fit_speed"), dict) else None  # fit-speed's
    tests = paired_tests(runs, measured, extra)
    for name, test in ((previous.get("tests") or {}) if same_settings else {}).items():
        if name not in tests and isinstance(test, dict):  # the folders are gone: kept, marked
            tests[name] = _kept(test, True)
    finished = {k: v for k, v in results.items() if isinstance(v, dict)}
    document = {
        "setup": {
            "recipe": shown(RECIPE), "runs": shown(runs), "extra_sets": list(extra), "seed": SEED,
            "seeds": "one seed (42): the issue allows one here; the paired tests compare two students on the same "
                     "test rows, not over seeds",
            "systems": {name: {"what": s.what, "sets": list(s.sets), "steps": list(s.steps), "start": s.start}
                        for name, s in SYSTEMS.items()},
            "paper": {system: {"row": PAPER[row][0], "test_accuracy": dict(zip([*DOMAINS, "average"], PAPER[row][1]))}
                      for system, row in PAPER_ROWS.items()},
        },
        "results": results,
        "tests": tests,
        "speed": speed_figures or NOT_MEASURED,
        "fit_speed": fit_figures or NOT_MEASURED,
        "targets": targets(finished, speed_figures),
    }
    atomic_write_json(out, document)
    return document


def fit_speed(out: Path = OUT, steps: int = 3) -> dict:
    """The MPNet-base teacher's training speed on the recipe's own rows, lengths and batch size: ``steps`` timed
    optimiser steps (forward, backward, clipping, AdamW) of a sequence classifier on a seeded sample of the
    training rows, after one untimed step; the one figure behind the recipe's hours, written into the results."""
    import random
    import time

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.cpu import cpu_info
    from metakd_cli.data import load_dataset
    from metakd_cli.packaged import mpnet_base

    config = recipe([], RECIPE)
    dataset = load_dataset(replace(config.data, path=str(data_path(config))))
    batch, length = config.fit.batch_size, config.fit.max_length
    rows = random.Random(SEED).sample(dataset.splits["train"], batch * (steps + 1))
    model_dir = mpnet_base()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(dataset.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.fit.lr)
    model.train()
    seconds, padded = [], []
    for step in range(steps + 1):
        part = rows[step * batch:(step + 1) * batch]
        inputs = tokenizer([r.text for r in part], truncation=True, max_length=length, padding=True,
                           return_tensors="pt")
        labels = torch.tensor([dataset.labels.index(r.label) for r in part])
        started = time.perf_counter()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms the allocator and kernels up
            seconds.append(time.perf_counter() - started)
            padded.append(int(inputs["input_ids"].shape[1]))
    rows_per_s = batch * steps / sum(seconds)
    train_rows = len(dataset.splits["train"])
    figures = {"batch_size": batch, "max_length": length, "padded_lengths": padded, "timed_steps": steps,
               "step_seconds": [round(x, 1) for x in seconds], "rows_per_s": round(rows_per_s, 2),
               "train_rows": train_rows, "threads": torch.get_num_threads(),
               "epoch_minutes_of_optimiser_steps": round(train_rows / rows_per_s / 60, 1),
               "cpu": cpu_info().to_json()}
    document = read_json_object(out)
    document["fit_speed"] = figures
    atomic_write_json(out, document)
    return figures


def print_table(document: dict) -> None:
    for row in document["targets"]:
        value = "-" if row["value"] is None else f"{row['value']:g}"
        print(f"{row['status']:>13}  {value:>8}  {row['target']} ({row['threshold']:g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "speed", "fit-speed", "table"))
    parser.add_argument("--systems", nargs="*", default=list(RUN_DEFAULT), choices=list(SYSTEMS))
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="the run folders' root [$METAKD_BENCH_DIR/runs/mpnet, else bench/runs/mpnet]")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="one more override for every run (a smoke test's small settings); recorded in the JSON")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="the results JSON [$METAKD_BENCH_DIR/results/mpnet.json, else bench/results/mpnet.json]")
    args = parser.parse_args()
    extra = tuple(args.sets)
    missing = data_missing(recipe([], RECIPE))
    if args.action != "table" and missing:
        print(missing)
        return
    if args.action == "run":
        run_systems(args.runs, args.systems, extra, lambda: print_table(table(args.runs, extra, args.out)))
    elif args.action == "speed":
        speed(args.runs, extra)
    elif args.action == "fit-speed":
        print(fit_speed(args.out))
        return
    print_table(table(args.runs, extra, args.out))


if __name__ == "__main__":
    main()
