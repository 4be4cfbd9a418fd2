"""Inference speed of a run's teacher and student on this CPU, against a BERT-base reference.

    python -m bench.speed --run-dir bench/runs/meta-meta [--threads N] [--quick]

The run folder holds teacher/, student/ and onnx/ (model.onnx + model_quantized.onnx of the
student, from `metakd export --int8`); the texts are its test split (reload_dataset). Everything is measured in ONE process, with the thread count
pinned (torch intra-op = ONNX Runtime intra-op = N, inter-op 1) and recorded:

* models: teacher-torch-fp32, teacher-onnx-fp32 (exported here with optimum into a temporary
  folder unless --teacher-onnx is given), bert-base-torch-fp32 (BertConfig() with random
  weights: the cost of the paper's teacher, timing only), student-torch-fp32,
  student-onnx-fp32, student-onnx-int8;
* fixed shape, same inputs for every model: real test texts tokenised and truncated or padded
  to exactly --seq-len tokens; latency p50/p90 at batch 1 and throughput at --batch, every model
  loaded at once and timed in --rounds interleaved rounds (`metakd eval`'s timing,
  metakd_cli.timing: each round times every model in turn, so a slow spell of the machine lands
  on every model), each figure a median over rounds with its fastest and slowest round;
* end to end on the real test texts (`metakd predict`'s pipeline: tokenisation included,
  batched_logits, softmax) with length bucketing (sorted, dynamically padded) and without
  (input order, padded to the model's max_length);
* the int8 matmul ceiling: one MxK @ KxN MatMul (default 4096x384x1536, MiniLM's FFN at
  batch 32 x seq 128) as a one-node ONNX graph, quantised with onnxruntime's
  quantize_dynamic in the run's int8 format, plus the fp32 MatMul and a bare MatMulInteger;
  every model's effective multiply-accumulates per second (MACs per example x throughput),
  the int8 student's as a share of the int8 ceiling, the fp32 ONNX student's of the fp32 one.

MACs per example at sequence length L, from the model's config (H hidden, F FFN, C labels):
layers * (4*H*H*L + 2*H*F*L + 2*L*L*H) + H*H + H*C (QKV and output projections, the FFN,
attention scores and context; then pooler and classifier). Embedding lookups, layer norms,
softmax and GELU are not multiply-accumulates of a matmul and are left out.

Writes bench/results/speed.json (--out) and prints a table and the targets, met or not.
Not part of CI: a few minutes on an idle 2-core CPU, most of them in the teacher's export, the
teacher rows and the BERT-base reference (about 4 s a batch of 32). `--quick` uses tiny repeat counts for smoke runs (numbers then mean little).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.common import RESULTS
from bench.timing import FixedShape, fixed_inputs, fixed_shape_rounds, pin_threads, pinned_session, time_calls
from metakd_cli.cpu import cpu_info, int8_target, target_mismatch
from metakd_cli.data import Encoded, encode
from metakd_cli.errors import UserError
from metakd_cli.evaluate import exported_target, onnx_files, run_artifacts
from metakd_cli.export import WEIGHT_TYPES, quiet_tools, _versions
from metakd_cli.inference import (
    EXPORT_JSON, INT8_FILE, ONNX_FILE, batched_logits, onnx_forward, size_mb, torch_forward, weights_size_mb,
)
from metakd_cli.run_dir import RunDir, atomic_write_json
from metakd_cli.timing import Steadiness, available_cpus, per_round, why_unsteady

MODELS = ("teacher-torch-fp32", "teacher-onnx-fp32", "bert-base-torch-fp32",
          "student-torch-fp32", "student-onnx-fp32", "student-onnx-int8")
MAC_FORMULA = ("layers * (4*H*H*L + 2*H*F*L + 2*L*L*H) + H*H + H*C; L sequence length, H hidden, F FFN, "
               "C labels: QKV + output projections, FFN, attention scores + context, then pooler + classifier")
TARGETS = (  # (target, reference model, minimum ratio of the int8 student's throughput to the reference's)
    ("int8 student >= 5x teacher PyTorch fp32", "teacher-torch-fp32", 5.0),
    ("int8 student >= 2.5x teacher ONNX fp32", "teacher-onnx-fp32", 2.5),
    ("int8 student >= 30x BERT-base PyTorch fp32", "bert-base-torch-fp32", 30.0),
)


# Counts for a full run and for --quick (smoke runs: the numbers then mean little); explicit flags win.
FULL = {"rounds": 10, "repeats": 100, "batches": 10, "reference_batches": 3, "warmup": 1, "ceiling_repeats": 30,
        "predict_rows": None}  # None: the whole test split
QUICK = {"rounds": 2, "repeats": 3, "batches": 1, "reference_batches": 1, "warmup": 1, "ceiling_repeats": 3,
         "predict_rows": 64}


class Skip(Exception):
    """The run folder lacks something the benchmark needs: printed as one line, exit 0."""


@dataclass
class Settings:
    threads: int
    seq_len: int
    batch: int
    rounds: int  # interleaved timing rounds: each times every model in turn
    repeats: int  # batch-1 calls timed per model, split over the rounds
    batches: int  # batches timed per model for throughput, split over the rounds
    warmup: int  # untimed rounds before the timed ones (and untimed predict passes)
    reference_batches: int  # batches for the slow BERT-base reference, split over the rounds
    ceiling_repeats: int
    predict_rows: int | None  # None: the whole test split


@dataclass
class Model:
    """One model to time: how to call it, where its tokenizer is, what it costs."""

    name: str
    load: Callable[[], Callable[[dict], np.ndarray]]  # -> a batched_logits forward (a dict of torch tensors)
    tokenizer_dir: Path
    max_length: int  # what `metakd predict` truncates and pads to
    config: Callable[[], object]  # -> its transformers config (geometry for the MAC count)
    size_mb: float
    size_note: str = ""
    clip_ids_to: int | None = None  # the reference's vocabulary size (ids above it are clipped)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the models of a run


def find_models(run: RunDir, threads: int, teacher_onnx: Path | None, scratch: Path,
                reference_layers: int) -> tuple[list[Model], dict]:
    """The six models, lazily loadable, or ``Skip`` naming what the run folder lacks."""
    from metakd_cli.models import load_classifier

    try:
        found = run_artifacts(run)
    except (UserError, OSError, ValueError) as exc:
        raise Skip(f"{run.path}: cannot read the run folder ({exc})") from None
    hints = {"teacher": "metakd fit", "student": "metakd distill", "onnx": "metakd export --int8",
             "int8": "metakd export --int8"}
    missing = [f"{name} (run `{hint}`)" for name, hint in hints.items() if name not in found]
    if missing:
        raise Skip(f"{run.path} lacks: {', '.join(missing)}")
    export_json = run.onnx / EXPORT_JSON
    exported = json.loads(export_json.read_text(encoding="utf-8")) if export_json.is_file() else {}
    if exported.get("model", "student") != "student":
        raise Skip(f"{run.onnx} holds the {exported['model']}'s export; run `metakd export --int8` (the student)")
    teacher, student = found["teacher"], found["student"]
    teacher_dir = next(iter(teacher.per_domain.values())) if teacher.per_domain else teacher.path
    notes = {"teacher_dir": str(teacher_dir), "student_dir": str(student.path), "onnx_dir": str(run.onnx)}
    if teacher.per_domain:
        notes["teacher_note"] = f"single-mode teacher: timed {teacher_dir.name}'s model (all have one geometry)"

    if teacher_onnx is None:
        teacher_onnx = export_teacher_onnx(teacher_dir, scratch / "teacher-onnx")
        notes["teacher_onnx"] = "exported here with optimum main_export (opset 18) into a temporary folder"
    elif not teacher_onnx.is_file():
        raise Skip(f"--teacher-onnx {teacher_onnx}: no such file")
    else:
        notes["teacher_onnx"] = str(teacher_onnx)

    def torch_loader(folder: Path):
        return lambda: torch_forward(load_classifier(str(folder)))

    def onnx_loader(path: Path):
        return lambda: onnx_forward(pinned_session(path, threads))

    def config_of(folder: Path):
        from transformers import AutoConfig

        return lambda: AutoConfig.from_pretrained(str(folder))

    teacher_config, student_config = config_of(teacher_dir), config_of(student.path)
    models = [
        Model("teacher-torch-fp32", torch_loader(teacher_dir), teacher_dir, teacher.max_length, teacher_config,
              weights_size_mb(teacher_dir), "safetensors weights"),
        Model("teacher-onnx-fp32", onnx_loader(teacher_onnx), teacher_dir, teacher.max_length, teacher_config,
              size_mb(*onnx_files(teacher_onnx)), "model.onnx (+ external data)"),
        reference_model(teacher_dir, reference_layers),
        Model("student-torch-fp32", torch_loader(student.path), student.path, student.max_length, student_config,
              weights_size_mb(student.path), "safetensors weights"),
        Model("student-onnx-fp32", onnx_loader(found["onnx"].path), run.onnx, found["onnx"].max_length,
              student_config, found["onnx"].size_mb, ONNX_FILE),
        Model("student-onnx-int8", onnx_loader(found["int8"].path), run.onnx, found["int8"].max_length,
              student_config, found["int8"].size_mb, INT8_FILE),
    ]
    return models, notes


def export_teacher_onnx(teacher_dir: Path, out: Path) -> Path:
    """The teacher as fp32 ONNX (optimum, opset 18), as `metakd export --model teacher` would write it."""
    from optimum.exporters.onnx import main_export

    log(f"exporting the teacher {teacher_dir} to ONNX (opset 18) for the teacher-onnx-fp32 row")
    with quiet_tools():
        try:
            main_export(str(teacher_dir), out, task="text-classification", opset=18, do_validation=False,
                        local_files_only=True)
        except ValueError as exc:  # an architecture or opset optimum cannot export
            raise Skip(f"cannot export the teacher {teacher_dir} to ONNX: {str(exc).splitlines()[0]}") from None
    return out / ONNX_FILE


def reference_model(teacher_dir: Path, layers: int) -> Model:
    """BERT-base (BertConfig() defaults: 12 layers, H768, FFN 3072) with random weights: timing only."""
    from transformers import BertConfig

    config = BertConfig(num_hidden_layers=layers)
    parameters = _bert_parameters(config)

    def load():
        import torch
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        return torch_forward(BertForSequenceClassification(config))

    note = f"random weights, not saved: {parameters:,} parameters x 4 bytes"
    if layers != 12:
        note += f"; {layers} layers instead of 12 (--reference-layers)"
    return Model("bert-base-torch-fp32", load, teacher_dir, config.max_position_embeddings, lambda: config,
                 parameters * 4 / 1e6, note, clip_ids_to=config.vocab_size)


def _bert_parameters(config) -> int:
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
    return embeddings + layers * layer + (h * h + h) + (h * 2 + 2)


# --------------------------------------------------------------------------- multiply-accumulates


def macs_per_example(config, seq_len: int) -> int:
    """layers * (4*H*H*L + 2*H*F*L + 2*L*L*H) + H*H + H*C (see MAC_FORMULA)."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n_labels = getattr(config, "num_labels", 2)
    per_layer = 4 * h * h * seq_len + 2 * h * f * seq_len + 2 * seq_len * seq_len * h
    return layers * per_layer + h * h + h * n_labels


# --------------------------------------------------------------------------- measurements


def predict_speed(forward: Callable[[dict], np.ndarray], tokenizer_dir: Path, examples: list, dataset,
                  max_length: int, batch: int, warmup: int) -> dict:
    """Texts/s of `metakd predict`'s pipeline on ``examples``: tokenise, batch, run, softmax; with
    length bucketing and without (input order, every row padded to ``max_length``)."""
    from metakd_cli.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    pad_id = tokenizer.pad_token_id or 0

    def run(subset: list, bucketing: bool) -> None:
        encoded: Encoded = encode(subset, dataset, tokenizer, max_length)
        logits = batched_logits(encoded, pad_id, batch, forward, bucketing, max_length)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        shifted /= shifted.sum(axis=-1, keepdims=True)  # predict's softmax, part of its cost

    out = {"texts": len(examples), "batch": batch, "max_length": max_length}
    for key, bucketing in (("bucketed_texts_per_s", True), ("padded_texts_per_s", False)):
        for _ in range(warmup):
            run(examples[: 2 * batch], bucketing)
        started = time.perf_counter()
        run(examples, bucketing)
        out[key] = len(examples) / (time.perf_counter() - started)
    out["bucketing_speedup"] = out["bucketed_texts_per_s"] / out["padded_texts_per_s"]
    return out


def load_models(models: list[Model], examples: list, settings: Settings) -> tuple[dict[str, FixedShape], dict]:
    """Every model loaded at once with its fixed-shape inputs and its work in each round, and the inputs by
    tokenizer. The BERT-base reference, some 30x the student's cost, asks for at most 10 batch-1 calls and
    ``reference_batches`` batches over all rounds; every round makes at least one of each, so more rounds time
    more of it."""
    inputs_cache: dict = {}
    loaded: dict[str, FixedShape] = {}
    for model in models:
        key = (str(model.tokenizer_dir), model.clip_ids_to)
        if key not in inputs_cache:
            inputs_cache[key] = fixed_inputs(model.tokenizer_dir, examples, settings.batch, settings.seq_len,
                                             model.clip_ids_to)
        reference = model.name == "bert-base-torch-fp32"
        repeats = min(settings.repeats, 10) if reference else settings.repeats
        batches = settings.reference_batches if reference else settings.batches
        log(f"loading {model.name}")
        loaded[model.name] = FixedShape(model.load(), inputs_cache[key], per_round(repeats, settings.rounds),
                                        per_round(batches, settings.rounds))
    return loaded, inputs_cache


def measure_models(models: list[Model], examples: list, dataset,
                   settings: Settings) -> tuple[dict[str, dict], Steadiness, dict]:
    """Fixed-shape speed of every model in interleaved rounds, then each one's end-to-end predict speed (real
    models only), size and MACs; how steady the rounds were; the inputs by tokenizer."""
    loaded, inputs_cache = load_models(models, examples, settings)
    log(f"timing {', '.join(loaded)} in {settings.rounds} interleaved rounds")
    timed, steadiness = fixed_shape_rounds(loaded, settings.batch, settings.rounds, settings.warmup)
    results = {}
    for model in models:
        result = timed[model.name]
        macs = macs_per_example(model.config(), settings.seq_len)
        result.update({
            "size_mb": model.size_mb, "size_note": model.size_note, "macs_per_example": macs,
            "effective_gmacs_per_s": macs * result[f"throughput_b{settings.batch}"] / 1e9,
        })
        if model.name == "bert-base-torch-fp32":
            result["note"] = "BertForSequenceClassification(BertConfig()) with random weights: timing only"
        else:
            log(f"timing {model.name}'s predict pipeline")
            predict_rows = examples if settings.predict_rows is None else examples[: settings.predict_rows]
            result["predict"] = predict_speed(loaded[model.name].forward, model.tokenizer_dir, predict_rows, dataset,
                                              model.max_length, settings.batch, min(settings.warmup, 1))
        results[model.name] = result
    del loaded
    gc.collect()
    return results, steadiness, inputs_cache


def matmul_ceiling(m: int, k: int, n: int, target: str, threads: int, repeats: int, scratch: Path) -> dict:
    """G multiply-accumulates/s of one MxK @ KxN MatMul in onnxruntime: fp32, dynamically quantised int8
    (quantize_dynamic in ``target``'s weight format: what the student's MatMuls run), and a bare
    MatMulInteger on uint8 x int8 inputs (the integer kernel alone, no activation quantisation)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = (rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(k)).astype(np.float32)

    def graph(op: str, a_type: int, b_array: np.ndarray, y_type: int):
        node = helper.make_node(op, ["A", "B"], ["Y"])
        g = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])],
                              [numpy_helper.from_array(b_array, "B")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    fp32_path, int8_path, integer_path = (scratch / f"matmul-{s}.onnx" for s in ("fp32", "int8", "integer"))
    onnx.save(graph("MatMul", TensorProto.FLOAT, b, TensorProto.FLOAT), str(fp32_path))
    weight_type = WEIGHT_TYPES.get(target, "QInt8")
    with quiet_tools():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=getattr(QuantType, weight_type))
    b_int8 = rng.integers(-128, 128, (k, n), dtype=np.int8)
    onnx.save(graph("MatMulInteger", TensorProto.UINT8, b_int8, TensorProto.INT32), str(integer_path))
    a_uint8 = rng.integers(0, 256, (m, k), dtype=np.uint8)

    macs = m * k * n
    out = {"shape": [m, k, n], "macs": macs, "repeats": repeats, "target": target,
           "int8_method": f"onnxruntime.quantization.quantize_dynamic(weight_type={weight_type}), "
                          "activations quantised per call (DynamicQuantizeLinear)",
           "int8_ops": [node.op_type for node in onnx.load(str(int8_path)).graph.node]}
    for name, path, feed in (("fp32", fp32_path, a), ("int8", int8_path, a), ("int8_integer_only", integer_path,
                                                                                 a_uint8)):
        session = pinned_session(path, threads)
        seconds = time_calls(lambda: session.run(None, {"A": feed}), repeats, 2)
        out[f"{name}_ms_p50"] = float(np.median(seconds) * 1000.0)
        out[f"{name}_gmacs_per_s"] = macs / float(np.median(seconds)) / 1e9
        del session
    return out


# --------------------------------------------------------------------------- verdicts and table


def targets(results: dict, ceiling: dict, batch: int) -> list[dict]:
    """The issue's targets, each with its measured value, threshold and whether it is met."""
    key = f"throughput_b{batch}"
    int8 = results["student-onnx-int8"]
    out = []
    for name, reference, minimum in TARGETS:
        ratio = int8[key] / results[reference][key]
        out.append({"target": name, "value": ratio, "threshold": minimum, "met": ratio >= minimum})
    share = int8["size_mb"] / results["student-onnx-fp32"]["size_mb"]
    out.append({"target": "int8 file <= 30% of the fp32 student's (model.onnx)", "value": share,
                "threshold": 0.30, "met": share <= 0.30})
    share = ceiling["student_int8_share_of_int8_ceiling"]
    out.append({"target": "int8 student >= 50% of the int8 matmul ceiling (effective MAC/s)", "value": share,
                "threshold": 0.50, "met": share >= 0.50})
    return out


def print_report(report: dict) -> None:
    setup, results, ceiling = report["setup"], report["results"], report["ceiling"]
    batch = setup["batch"]
    print(f"CPU {setup['cpu']['model']} ({', '.join(setup['cpu']['flags'])}); {setup['threads']['torch_intra_op']} "
          f"threads; seq {setup['seq_len']}; batch {batch}")
    header = (f"{'model':22}{'b1 p50 ms':>11}{'b1 p90 ms':>11}{f'ex/s b{batch}':>11}{'GMAC/s':>9}{'size MB':>9}"
              f"{'predict/s':>11}{'no-bucket':>11}{'speedup':>9}")
    print(header)
    for name, row in results.items():
        predict = row.get("predict") or {}
        extra = (f"{predict['bucketed_texts_per_s']:11.1f}{predict['padded_texts_per_s']:11.1f}"
                 f"{predict['bucketing_speedup']:8.2f}x") if predict else f"{'-':>11}{'-':>11}{'-':>9}"
        print(f"{name:22}{row['latency_b1_p50_ms']:11.2f}{row['latency_b1_p90_ms']:11.2f}"
              f"{row[f'throughput_b{batch}']:11.1f}{row['effective_gmacs_per_s']:9.1f}{row['size_mb']:9.1f}{extra}")
    m, k, n = ceiling["shape"]
    print(f"matmul ceiling {m}x{k} @ {k}x{n}: int8 {ceiling['int8_gmacs_per_s']:.0f} GMAC/s "
          f"(bare MatMulInteger {ceiling['int8_integer_only_gmacs_per_s']:.0f}), fp32 {ceiling['fp32_gmacs_per_s']:.0f}; "
          f"int8 student {ceiling['student_int8_gmacs_per_s']:.0f} GMAC/s = "
          f"{ceiling['student_int8_share_of_int8_ceiling']:.0%} of the int8 ceiling")
    for target in report["targets"]:
        value = f"{target['value']:.0%}" if target["threshold"] < 1 else f"{target['value']:.1f}x"
        print(f"{'met    ' if target['met'] else 'NOT met'}  {target['target']}: {value}")
    for warning in setup.get("warnings", []):
        print(f"warning: {warning}")
    timing = setup.get("timing") or {}
    if timing.get("unsteady"):
        print(f"unsteady: {why_unsteady(timing['why'])} (medians of {timing['rounds']} rounds; ratios hold better "
              "than absolute times)")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="Run folder with teacher/, student/, onnx/.")
    parser.add_argument("--threads", type=int, default=len(available_cpus()),
                        help="torch and ONNX Runtime intra-op threads (default: every CPU this process may use).")
    parser.add_argument("--seq-len", type=int, default=128, help="Tokens per row of the fixed-shape inputs.")
    parser.add_argument("--batch", type=int, default=32, help="Batch size for throughput and predict.")
    parser.add_argument("--rounds", type=int,
                        help="Interleaved timing rounds, every model in turn; the figures are medians over them.")
    parser.add_argument("--repeats", type=int,
                        help="Batch-1 calls timed per model, split over the rounds (at most 10 for BERT-base).")
    parser.add_argument("--batches", type=int, help="Batches timed per model for throughput, split over the rounds.")
    parser.add_argument("--reference-batches", type=int, help="Batches timed for the (slow) BERT-base reference.")
    parser.add_argument("--reference-layers", type=int, default=12,
                        help="Layers of the BERT-base reference (fewer only for smoke tests; recorded).")
    parser.add_argument("--warmup", type=int, help="Untimed rounds before the timed ones.")
    parser.add_argument("--predict-rows", type=int, help="Test rows for predict (default: all; 64 with --quick).")
    parser.add_argument("--ceiling-shape", default="4096,384,1536", help="M,K,N of the ceiling MatMul.")
    parser.add_argument("--ceiling-repeats", type=int, help="Timed calls of each ceiling MatMul.")
    parser.add_argument("--teacher-onnx", type=Path, default=None,
                        help="An fp32 ONNX file of the teacher (default: export one into a temporary folder).")
    parser.add_argument("--quick", action="store_true", help="Tiny repeat counts, for smoke runs.")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("threads", "seq_len", "batch", "rounds", "repeats", "batches", "reference_batches",
                 "reference_layers", "ceiling_repeats", "predict_rows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        shape = tuple(int(x) for x in args.ceiling_shape.split(","))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--ceiling-shape wants three positive integers M,K,N, got {args.ceiling_shape!r}")
    args.ceiling_shape = shape
    return args


def benchmark(args: argparse.Namespace) -> dict:
    """Every measurement, in one process; returns the speed.json object (``Skip`` when it cannot run)."""

    settings = Settings(threads=args.threads, seq_len=args.seq_len, batch=args.batch, rounds=args.rounds,
                        repeats=args.repeats,
                        batches=args.batches, warmup=args.warmup, reference_batches=args.reference_batches,
                        ceiling_repeats=args.ceiling_repeats, predict_rows=args.predict_rows)
    run = RunDir(args.run_dir)
    if not run.manifest_path.is_file():
        raise Skip(f"{run.path}: no manifest.json (not a metakd run folder; run `metakd fit` first)")
    try:
        _, dataset = run.reload_dataset()
    except UserError as exc:
        raise Skip(str(exc)) from None
    examples = dataset.select("test")
    if not examples:
        raise Skip(f"{run.path}: the test split is empty")
    threads = pin_threads(settings.threads)
    cpu = cpu_info()
    target = exported_target(run) or int8_target(cpu)[0]
    m, k, n = args.ceiling_shape
    with tempfile.TemporaryDirectory(prefix="metakd-speed-") as scratch:
        models, notes = find_models(run, settings.threads, args.teacher_onnx, Path(scratch), args.reference_layers)
        positions = {mo.name: getattr(mo.config(), "max_position_embeddings", None) for mo in models}
        too_long = [f"{name} ({p})" for name, p in positions.items() if p is not None and p < settings.seq_len]
        if too_long:
            raise Skip(f"--seq-len {settings.seq_len} exceeds the position embeddings of {', '.join(too_long)}")
        results, steadiness, inputs_cache = measure_models(models, examples, dataset, settings)
        log(f"timing the {m}x{k} @ {k}x{n} MatMul ceiling ({target} int8 format)")
        ceiling = matmul_ceiling(m, k, n, target, settings.threads, settings.ceiling_repeats, Path(scratch))
    ceiling["student_int8_gmacs_per_s"] = results["student-onnx-int8"]["effective_gmacs_per_s"]
    ceiling["student_int8_share_of_int8_ceiling"] = ceiling["student_int8_gmacs_per_s"] / ceiling["int8_gmacs_per_s"]
    ceiling["student_fp32_onnx_share_of_fp32_ceiling"] = (
        results["student-onnx-fp32"]["effective_gmacs_per_s"] / ceiling["fp32_gmacs_per_s"])
    ceiling["mac_formula"] = MAC_FORMULA

    shapes = {key: tuple(batch["input_ids"].shape) for key, batch in inputs_cache.items()}
    reference_ids = inputs_cache[next(iter(inputs_cache))]["input_ids"]
    same_ids = all(batch["input_ids"].shape == reference_ids.shape and bool((batch["input_ids"] == reference_ids).all())
                   for batch in inputs_cache.values())
    mismatch = target_mismatch(exported_target(run), cpu)
    setup = {
        "run_dir": str(run.path), "cpu": cpu.to_json(), "threads": threads, "seq_len": settings.seq_len,
        "batch": settings.batch, "rounds": settings.rounds, "timing": asdict(steadiness),
        "repeats": settings.repeats, "batches": settings.batches,
        "reference_batches": settings.reference_batches, "reference_layers": args.reference_layers,
        "warmup": settings.warmup, "quick": args.quick, "int8_format": target,
        "inputs": {"source": "test split", "rows": settings.batch, "padding": f"truncated/padded to {settings.seq_len}",
                   "identical_token_ids_for_all_models": same_ids, "shapes": [list(s) for s in set(shapes.values())]},
        "predict": {"source": "test split", "rows": len(examples) if settings.predict_rows is None
                    else min(settings.predict_rows, len(examples)),
                    "pipeline": "metakd predict's: encode (tokenisation), batched_logits, softmax; "
                                "bucketed = length-sorted dynamic padding, padded = input order, max_length"},
        "mac_formula": MAC_FORMULA, "versions": {**_versions(), "python": sys.version.split()[0]}, **notes,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench.speed", *args.argv]),
        "warnings": [mismatch] if mismatch else [],
    }
    report = {"setup": setup, "results": results, "ceiling": ceiling}
    report["targets"] = targets(results, ceiling, settings.batch)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = benchmark(args)
    except Skip as exc:
        print(f"skipped: {exc}")
        return 0
    atomic_write_json(args.out, report)
    print_report(report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
