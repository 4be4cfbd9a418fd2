"""mpnet's hooks: its speed and sizes measured on an under-trained pipeline (training changes neither a model's
speed nor its size), the teacher's training speed, and the figures its targets read."""

from __future__ import annotations

from dataclasses import replace

from bench.common import data_path, metakd_run, recipe
from bench.rows import models, of, rounded, sizes, read_trim
from bench.suite import NOT_MEASURED, Suite, kept


def speed(suite: Suite, extra: tuple[str, ...] = ()) -> None:
    """Build the under-trained systems (the suite file's ``speed``) under <runs>/speed (no eval), then run the two
    timed evals back to back (again each time, so that the two are one sitting: build whenever, rerun on an idle
    machine for the figures)."""
    under, sets = replace(suite, runs=suite.runs / "speed"), (*suite.spec["speed"]["sets"], *extra)
    under.run(suite.spec["speed"]["systems"], sets, built=True)
    for system in ("meta", "teacher-onnx"):
        metakd_run(under.folder(system), under.sets_of(system, {}, sets), "eval", suite.recipe)


def read_speed(suite: Suite, extra: tuple[str, ...]) -> dict | None:
    """The speed and size figures of the under-trained pipeline, or None until both timed evals are done."""
    under, sets = replace(suite, runs=suite.runs / "speed"), (*suite.spec["speed"]["sets"], *extra)
    student, teacher = (under.finished(system, {}, sets) for system in ("meta", "teacher-onnx"))
    if student is None or teacher is None:
        return None
    trimmed = under.finished("meta-trim", {}, sets, under.chain("meta-trim", built=True))
    first, second = models(student["eval"]), models(teacher["eval"])  # the two timed evals, in order
    throughput = {  # rows/s, unrounded for the ratios
        "teacher_pytorch": of(first, "teacher", "throughput"), "teacher_onnx_fp32": of(second, "onnx", "throughput"),
        "student_pytorch": of(first, "student", "throughput"), "student_onnx_fp32": of(first, "onnx", "throughput"),
        "int8_student": of(first, "int8", "throughput"),
    }
    student_sizes, teacher_sizes = sizes(student["export"]), sizes(teacher["export"])
    return {
        "measured_on": suite.spec["speed"]["label"],
        "sets": list(sets),
        "batch_size": (student["eval"].get("config") or {}).get("batch_size"),
        "throughput_rows_per_s": {k: rounded(v, 1) for k, v in throughput.items()},  # at eval's batch size
        "latency_ms_batch_1": {"teacher_pytorch": rounded(of(first, "teacher", "latency_ms")),
                               "teacher_onnx_fp32": rounded(of(second, "onnx", "latency_ms")),
                               "int8_student": rounded(of(first, "int8", "latency_ms"))},
        "int8_speedup": {"vs_teacher_pytorch": _ratio(throughput["int8_student"], throughput["teacher_pytorch"]),
                         "vs_teacher_onnx_fp32": _ratio(throughput["int8_student"], throughput["teacher_onnx_fp32"])},
        # the teacher's PyTorch is timed in both evals: how far apart two timings of one model are on this machine
        "teacher_pytorch_in_second_eval": rounded(of(second, "teacher", "throughput"), 1),
        "timed_rows": of(first, "int8", "timed_rows"),
        "evals_written": [student["eval"].get("written"), teacher["eval"].get("written")],
        # each eval's timing rounds: how many, the load average, and why they were unsteady (if so)
        "evals_timing": [student["eval"].get("timing"), teacher["eval"].get("timing")],
        "threads": student["eval"].get("threads"),
        "cpu": student["eval"].get("cpu"),
        "size_mb": {
            "int8_student": student_sizes.get("model_quantized.onnx"),
            "int8_student_trimmed": sizes(trimmed["export"]).get("model_quantized.onnx") if trimmed else None,
            "student_onnx_fp32": student_sizes.get("model.onnx"), "student_pytorch": student_sizes.get("pytorch"),
            "teacher_onnx_fp32": teacher_sizes.get("model.onnx"), "teacher_pytorch": teacher_sizes.get("pytorch"),
        },
        "trim": read_trim(trimmed["export"]) if trimmed else NOT_MEASURED,
    }


def speed_section(suite: Suite, extra: tuple[str, ...], before: object) -> object:
    return read_speed(suite, extra) or kept(before) or NOT_MEASURED


def _ratio(a: object, b: object) -> float | None:
    return round(a / b, 1) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def figures(sections: dict) -> dict:
    """The targets' values, each with where it comes from: the meta-teacher's and the Meta-KD student's figures;
    the speed-up and sizes from the speed run when there is one, else from the full run."""
    results = {k: v for k, v in sections["results"].items() if isinstance(v, dict)}
    teacher, student, trimmed = (results.get(name) or {} for name in ("teacher-meta", "meta", "meta-trim"))
    timed = sections["speed"] if isinstance(sections["speed"], dict) else None
    speedup = (timed["int8_speedup"]["vs_teacher_pytorch"], "speed (under-trained pipeline; speed does not depend "
               "on training)") if timed else (None, "")
    if not timed and student:  # the full run's own eval timed both too
        runs = student["speed"]
        speedup = (_ratio((runs.get("int8") or {}).get("throughput_rows_per_s"),
                          (runs.get("teacher") or {}).get("throughput_rows_per_s")), "meta (the full run's eval)")
    size = ((student.get("size_mb") or {}).get("model_quantized.onnx"), "meta (export.json)")
    if size[0] is None and timed:
        size = (timed["size_mb"]["int8_student"], "speed (the same architecture)")
    trimmed_size = ((trimmed.get("size_mb") or {}).get("model_quantized.onnx"), "meta-trim (export.json)")
    if trimmed_size[0] is None and timed:
        trimmed_size = (timed["size_mb"]["int8_student_trimmed"], "speed (trimmed to the speed split's training "
                        "rows: a little more than the recipe keeps)")
    return {"teacher": ((teacher.get("test_accuracy") or {}).get("average"), "teacher-meta (fit.json)"),
            "int8": ((((student.get("test_accuracy") or {}).get("int8") or {}).get("average")), "meta (eval.json)"),
            "gap": (student.get("teacher_minus_int8"), "meta (eval.json)"),
            "speedup": speedup, "size": size, "trimmed_size": trimmed_size}


def fit_speed(suite: Suite, extra: tuple[str, ...] = (), steps: int = 3, seed: int = 42) -> dict:
    """{"fit_speed": the MPNet-base teacher's training speed on the recipe's own rows, lengths and batch size}:
    ``steps`` timed optimiser steps (forward, backward, clipping, AdamW) of a sequence classifier on a seeded sample
    of the training rows, after one untimed step; the one figure behind the recipe's hours."""
    import random
    import time

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.core.cpu import cpu_info
    from metakd_cli.data.dataset import load_dataset
    from metakd_cli.models.packaged import mpnet_base

    config = recipe(list(extra), suite.recipe)
    dataset = load_dataset(replace(config.data, path=str(data_path(config))))
    batch, length = config.fit.batch_size, config.fit.max_length
    rows = random.Random(seed).sample(dataset.splits["train"], batch * (steps + 1))
    model_dir = mpnet_base()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
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
        model(**inputs, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms the allocator and kernels up
            seconds.append(time.perf_counter() - started)
            padded.append(int(inputs["input_ids"].shape[1]))
    rows_per_s = batch * steps / sum(seconds)
    train_rows = len(dataset.splits["train"])
    return {"fit_speed": {"batch_size": batch, "max_length": length, "padded_lengths": padded, "timed_steps": steps,
                          "step_seconds": [round(x, 1) for x in seconds], "rows_per_s": round(rows_per_s, 2),
                          "train_rows": train_rows, "threads": torch.get_num_threads(),
                          "epoch_minutes_of_optimiser_steps": round(train_rows / rows_per_s / 60, 1),
                          "cpu": cpu_info().to_json()}}
