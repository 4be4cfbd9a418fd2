"""The timing suites (speed, int8_static; each suite's ``hooks.run`` names its report function here): models of one
run folder measured in ONE process, the thread count pinned (torch intra-op = ONNX Runtime intra-op = N, inter-op 1;
recorded), on fixed-shape inputs from real texts (truncated or padded to exactly seq_len tokens): latency at batch 1
and throughput at batch 32, every model loaded at once and timed in interleaved rounds by `metakd eval`'s own timing
(metakd_cli.core.timing: each round times every model in turn, so a slow spell of the machine lands on every model;
each figure is a median over rounds, its fastest and slowest round beside it). Ratios matter, not absolute times. A
suite file's ``options`` are each settable as --name VALUE (``quick``: the counts --quick sets); --run-dir names the
run folder, --out the results file; ``columns`` are what is printed of each row."""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.suite import Suite
from metakd_cli.core.run_dir import RunDir, atomic_write_json
from metakd_cli.core.timing import Spread, available_cpus, measured_steadiness, per_round, time_rounds, why_unsteady


class Skip(Exception):
    """The run folder lacks what the benchmark needs: printed as one line, exit 0."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(suite: Suite, benchmark: Callable[[argparse.Namespace], dict], argv: list[str]) -> int:
    """A timing suite's `run` (``argv``: "run" and its options): ``benchmark``'s report into --out, each row's
    ``columns`` printed with the targets or the chosen default, or one line saying why it was skipped."""
    parser = argparse.ArgumentParser(prog=f"python -m bench run {suite.name}", description=suite.spec["what"])
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--run-dir", type=Path, required=True, help="the run folder whose models are timed")
    parser.add_argument("--out", type=Path, default=suite.out, help=f"the results file [{suite.out}]")
    for name, default in (suite.spec.get("options") or {}).items():
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, action="store_true") if isinstance(default, bool) else parser.add_argument(
            flag, type=type(default), default=default, help=f"[{default}]")
    args = parser.parse_args(argv)
    given = {arg.lstrip("-").split("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    for name, value in (suite.spec.get("quick") or {}).items() if getattr(args, "quick", False) else ():
        if name not in given:
            setattr(args, name, value)
    args.threads = args.threads or len(available_cpus())  # 0: every CPU this process may use
    args.command_line = shlex.join(["python", "-m", "bench", "run", suite.name, *argv[1:]])
    try:
        report = benchmark(args)
    except Skip as exc:
        print(f"skipped: {exc}")
        return 0
    atomic_write_json(args.out, report)
    columns = suite.spec["columns"]
    print(f"{'':28}" + "".join(f"{c[:16]:>18}" for c in columns))
    for name, row in report["results"].items():
        cells = [row.get(c) for c in columns] if "error" not in row else []
        print(f"{name:28}" + ("".join(f"{v:18.2f}" if isinstance(v, (int, float)) else f"{v!s:>18}" for v in cells)
                              or f"failed: {row['error'][:100]}"))
    for target in report.get("targets") or []:
        print(f"{'met    ' if target['met'] else 'NOT met'}  {target['target']}: {target['value']:.2f}")
    if "chosen" in report:
        print(f"chosen default: {report['chosen']} ({report['rule']})")
    if report["setup"].get("timing", {}).get("unsteady"):
        print(f"unsteady: {why_unsteady(report['setup']['timing']['why'])} (ratios hold better than times)")
    log(f"wrote {args.out}")
    return 0


def dataset_of(run: RunDir):
    from metakd_cli.core.errors import UserError
    from metakd_cli.data.dataset import reload_dataset

    try:
        return reload_dataset(run)[1]
    except UserError as exc:  # the run's data (the Amazon reviews, for a real run) is not on this machine
        raise Skip(f"the data of {run.path} cannot be read ({exc})") from None


def setup_of(run: RunDir, threads: dict, **more) -> dict:
    from metakd_cli.core.cpu import cpu_info

    return {"run_dir": str(run.path), "cpu": cpu_info().to_json(), "threads": threads, **more,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------- timing in interleaved rounds


def pin_threads(threads: int) -> dict:
    """torch intra-op = ``threads``, inter-op 1; ``pinned_session`` gives ONNX Runtime the same."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed once parallel work started (a second call in one process)
        pass
    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "onnxruntime_intra_op": threads, "onnxruntime_inter_op": 1, "onnxruntime_execution": "sequential",
            "cpus_available": len(available_cpus())}


def pinned_session(path: Path, threads: int):
    """A CPU session with ``threads`` intra-op threads, sequential (metakd's own sessions leave the count to ORT)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fixed_inputs(tokenizer_dir: Path, examples: list, pool: int, seq_len: int, clip_ids_to: int | None = None) -> dict:
    """``pool`` rows (cycled when the split is smaller), truncated or padded to exactly ``seq_len`` tokens."""
    from metakd_cli.models.inference import MODEL_INPUTS
    from metakd_cli.models.loading import load_tokenizer

    rows = [examples[i % len(examples)] for i in range(pool)]
    pairs = [ex.text_pair or "" for ex in rows] if any(ex.text_pair for ex in rows) else None
    out = load_tokenizer(str(tokenizer_dir))([ex.text for ex in rows], pairs, padding="max_length", truncation=True,
                                              max_length=seq_len, return_tensors="pt")
    batch = {k: v for k, v in out.items() if k in MODEL_INPUTS}
    if clip_ids_to is not None:
        batch["input_ids"] = batch["input_ids"].clamp(max=clip_ids_to - 1)
    return batch


@dataclass
class FixedShape:
    """One model's work in each timing round: ``repeats`` batch-1 calls (cycling through the rows of ``inputs``)
    and ``batches`` calls on its first 32 rows."""

    forward: Callable[[dict], object]
    inputs: dict
    repeats: int
    batches: int


def rounds_of(models: dict[str, FixedShape], rounds: int, warmup: int = 1, batch: int = 32) -> tuple[dict, object]:
    """Every model's latency at batch 1 and throughput at ``batch``, timed in ``rounds`` interleaved rounds after
    ``warmup`` untimed ones, and how steady the rounds were; each figure over rounds: its median (p50), the batch-1
    latency's p90, and the [fastest, slowest] round; ``rounds`` holds each round's figures."""
    def rows(inputs: dict, start: int, count: int) -> dict:
        return {k: v[start:start + count] for k, v in inputs.items()}
    calls = {}
    for name, model in models.items():
        pool, index = model.inputs["input_ids"].shape[0], itertools.count()
        calls[name, "batch 1"] = lambda m=model, p=pool, i=index: [
            m.forward(rows(m.inputs, next(i) % p, 1)) for _ in range(m.repeats)]
        calls[name, f"batch {batch}"] = lambda m=model: [m.forward(rows(m.inputs, 0, batch)) for _ in range(m.batches)]
    seconds = time_rounds(calls, rounds, warmup)
    figures = {}
    for name, model in models.items():
        single, full = seconds[name, "batch 1"], seconds[name, f"batch {batch}"]
        latency = [s / model.repeats * 1000.0 for s in single]  # ms per batch-1 call, each round
        batch_ms, rate = [s / model.batches * 1000.0 for s in full], [batch * model.batches / s for s in full]
        figures[name] = {
            "latency_b1_p50_ms": Spread.of(latency).median, "latency_b1_p90_ms": float(np.percentile(latency, 90)),
            "latency_b1_spread_ms": Spread.of(latency).range(), f"throughput_b{batch}": Spread.of(rate).median,
            f"throughput_b{batch}_spread": Spread.of(rate).range(), f"latency_b{batch}_p50_ms": Spread.of(batch_ms).median,
            "timed_calls": {"batch_1": model.repeats * len(single), f"batch_{batch}": model.batches * len(full)},
            "rounds": {"latency_b1_p50_ms": latency, f"throughput_b{batch}": rate, f"latency_b{batch}_p50_ms": batch_ms}}
    return figures, measured_steadiness({f"{name} at {what}": s for (name, what), s in seconds.items()})


# --------------------------------------------------------------------------- speed: a run's teacher and student


MODELS = ("teacher-torch-fp32", "teacher-onnx-fp32", "bert-base-torch-fp32",
          "student-torch-fp32", "student-onnx-fp32", "student-onnx-int8")
MAC_FORMULA = ("layers * (4*H*H*L + 2*H*F*L + 2*L*L*H) + H*H + H*C; L sequence length, H hidden, F FFN, "
               "C labels: QKV + output projections, FFN, attention scores + context, then pooler + classifier")
TARGETS = (  # (target, reference model, minimum ratio of the int8 student's throughput to the reference's)
    ("int8 student >= 5x teacher PyTorch fp32", "teacher-torch-fp32", 5.0),
    ("int8 student >= 2.5x teacher ONNX fp32", "teacher-onnx-fp32", 2.5),
    ("int8 student >= 30x BERT-base PyTorch fp32", "bert-base-torch-fp32", 30.0),
)


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


def find_models(run: RunDir, threads: int, teacher_onnx: str, scratch: Path, layers: int) -> tuple[list[Model], dict]:
    """The six models of MODELS, lazily loadable: the run's teacher (PyTorch; ONNX fp32, exported here with optimum,
    opset 18, unless given), BERT-base (BertConfig() with random weights: the cost of the paper's teacher, timing
    only), and the run's student (PyTorch, ONNX fp32, ONNX int8); ``Skip`` naming what the run folder lacks."""
    from transformers import AutoConfig, BertConfig

    from metakd_cli.core.errors import UserError
    from metakd_cli.models.inference import EXPORT_JSON, INT8_FILE, ONNX_FILE, onnx_forward, size_mb, torch_forward
    from metakd_cli.models.inference import weights_size_mb
    from metakd_cli.models.loading import load_classifier
    from metakd_cli.steps.evaluate import onnx_files, run_artifacts

    try:
        found = run_artifacts(run)
    except (UserError, OSError, ValueError) as exc:
        raise Skip(f"{run.path}: cannot read the run folder ({exc})") from None
    hints = {"teacher": "metakd fit", "student": "metakd distill", "onnx": "metakd export --int8",
             "int8": "metakd export --int8"}
    if missing := [f"{name} (run `{hint}`)" for name, hint in hints.items() if name not in found]:
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
    if teacher_onnx and not Path(teacher_onnx).is_file():
        raise Skip(f"--teacher-onnx {teacher_onnx}: no such file")
    notes["teacher_onnx"] = teacher_onnx or "exported here with optimum main_export (opset 18) into a temporary folder"
    teacher_path = Path(teacher_onnx) if teacher_onnx else export_teacher_onnx(teacher_dir, scratch / "teacher-onnx")
    bert = BertConfig(num_hidden_layers=layers)
    h, f = bert.hidden_size, bert.intermediate_size
    parameters = ((bert.vocab_size + bert.max_position_embeddings + bert.type_vocab_size) * h + 2 * h
                  + layers * (4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h) + (h * h + h) + (h * 2 + 2))

    def reference():
        import torch
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        return torch_forward(BertForSequenceClassification(bert))
    note = f"random weights, not saved: {parameters:,} parameters x 4 bytes" + (
        f"; {layers} layers instead of 12 (--reference-layers)" if layers != 12 else "")

    def torch_model(folder: Path):
        return lambda: torch_forward(load_classifier(str(folder)))

    def onnx_model(path: Path):
        return lambda: onnx_forward(pinned_session(path, threads))
    teacher_config, student_config = (partial(AutoConfig.from_pretrained, str(d)) for d in (teacher_dir, student.path))
    onnx, int8 = found["onnx"], found["int8"]
    return [Model("teacher-torch-fp32", torch_model(teacher_dir), teacher_dir, teacher.max_length, teacher_config,
                  weights_size_mb(teacher_dir), "safetensors weights"),
            Model("teacher-onnx-fp32", onnx_model(teacher_path), teacher_dir, teacher.max_length, teacher_config,
                  size_mb(*onnx_files(teacher_path)), "model.onnx (+ external data)"),
            Model("bert-base-torch-fp32", reference, teacher_dir, bert.max_position_embeddings, lambda: bert,
                  parameters * 4 / 1e6, note, clip_ids_to=bert.vocab_size),
            Model("student-torch-fp32", torch_model(student.path), student.path, student.max_length, student_config,
                  weights_size_mb(student.path), "safetensors weights"),
            Model("student-onnx-fp32", onnx_model(onnx.path), run.onnx, onnx.max_length, student_config, onnx.size_mb,
                  ONNX_FILE),
            Model("student-onnx-int8", onnx_model(int8.path), run.onnx, int8.max_length, student_config, int8.size_mb,
                  INT8_FILE)], notes


def export_teacher_onnx(teacher_dir: Path, out: Path) -> Path:
    """The teacher as fp32 ONNX (optimum, opset 18), as `metakd export --model teacher` would write it."""
    from optimum.exporters.onnx import main_export

    from metakd_cli.models.inference import ONNX_FILE
    from metakd_cli.ship.onnx_tools import quiet_tools

    log(f"exporting the teacher {teacher_dir} to ONNX (opset 18) for the teacher-onnx-fp32 row")
    with quiet_tools():
        try:
            main_export(str(teacher_dir), out, task="text-classification", opset=18, do_validation=False,
                        local_files_only=True)
        except ValueError as exc:  # an architecture or opset optimum cannot export
            raise Skip(f"cannot export the teacher {teacher_dir} to ONNX: {str(exc).splitlines()[0]}") from None
    return out / ONNX_FILE


def macs_per_example(config, seq_len: int) -> int:
    """MAC_FORMULA: embedding lookups, layer norms, softmax and GELU are not multiply-accumulates of a matmul and
    are left out."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 4 * h * h * seq_len + 2 * h * f * seq_len + 2 * seq_len * seq_len * h
    return layers * per_layer + h * h + h * getattr(config, "num_labels", 2)


def predict_speed(forward, tokenizer_dir: Path, examples: list, dataset, max_length: int, batch: int,
                  warmup: int) -> dict:
    """Texts/s of `metakd predict`'s pipeline on ``examples`` (tokenise, batch, run, softmax): with length
    bucketing (sorted, dynamically padded) and without (input order, every row padded to ``max_length``)."""
    from metakd_cli.data.encode import encode
    from metakd_cli.models.inference import batched_logits
    from metakd_cli.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))

    def run(subset: list, bucketing: bool) -> None:
        logits = batched_logits(encode(subset, dataset, tokenizer, max_length), tokenizer.pad_token_id or 0, batch,
                                forward, bucketing, max_length)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        shifted /= shifted.sum(axis=-1, keepdims=True)  # predict's softmax, part of its cost

    out = {"texts": len(examples), "batch": batch, "max_length": max_length}
    for key, bucketing in (("bucketed_texts_per_s", True), ("padded_texts_per_s", False)):
        for _ in range(warmup):
            run(examples[: 2 * batch], bucketing)
        started = time.perf_counter()
        run(examples, bucketing)
        out[key] = len(examples) / (time.perf_counter() - started)
    return {**out, "bucketing_speedup": out["bucketed_texts_per_s"] / out["padded_texts_per_s"]}


def matmul_ceiling(m: int, k: int, n: int, target: str, threads: int, repeats: int, scratch: Path) -> dict:
    """G multiply-accumulates/s of one MxK @ KxN MatMul in onnxruntime: fp32, dynamically quantised int8
    (quantize_dynamic in ``target``'s weight format: what the student's MatMuls run), and a bare MatMulInteger on
    uint8 x int8 inputs (the integer kernel alone, no activation quantisation)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from metakd_cli.ship.int8 import WEIGHT_TYPES
    from metakd_cli.ship.onnx_tools import quiet_tools

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = (rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(k)).astype(np.float32)

    def graph(op: str, a_type: int, b_array: np.ndarray, y_type: int, path: Path) -> Path:
        g = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "matmul",
                              [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], [numpy_helper.from_array(b_array, "B")])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        return path

    fp32_path = graph("MatMul", TensorProto.FLOAT, b, TensorProto.FLOAT, scratch / "matmul-fp32.onnx")
    int8_path, weight_type = scratch / "matmul-int8.onnx", WEIGHT_TYPES.get(target, "QInt8")
    with quiet_tools():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=getattr(QuantType, weight_type))
    integer_path = graph("MatMulInteger", TensorProto.UINT8, rng.integers(-128, 128, (k, n), dtype=np.int8),
                         TensorProto.INT32, scratch / "matmul-integer.onnx")
    out = {"shape": [m, k, n], "macs": m * k * n, "repeats": repeats, "target": target,
           "int8_method": f"onnxruntime.quantization.quantize_dynamic(weight_type={weight_type}), "
                          "activations quantised per call (DynamicQuantizeLinear)",
           "int8_ops": [node.op_type for node in onnx.load(str(int8_path)).graph.node]}
    for name, path, feed in (("fp32", fp32_path, a), ("int8", int8_path, a),
                             ("int8_integer_only", integer_path, rng.integers(0, 256, (m, k), dtype=np.uint8))):
        session = pinned_session(path, threads)
        median = float(np.median(time_rounds({"call": lambda: session.run(None, {"A": feed})}, repeats, 2)["call"]))
        out[f"{name}_ms_p50"], out[f"{name}_gmacs_per_s"] = median * 1000.0, m * k * n / median / 1e9
    return out


def speed_report(args: argparse.Namespace) -> dict:
    """Every measurement of `speed` (bench/suites/speed.yaml), in one process: the speed.json object."""
    from metakd_cli.core.cpu import cpu_info, int8_target, target_mismatch
    from metakd_cli.steps.evaluate import exported_target
    from metakd_cli.ship.onnx_tools import tool_versions

    run = RunDir(args.run_dir)
    if not run.manifest_path.is_file():
        raise Skip(f"{run.path}: no manifest.json (not a metakd run folder; run `metakd fit` first)")
    dataset = dataset_of(run)
    if not (examples := dataset.select("test")):
        raise Skip(f"{run.path}: the test split is empty")
    threads, cpu, batch, key = pin_threads(args.threads), cpu_info(), args.batch, f"throughput_b{args.batch}"
    target = exported_target(run) or int8_target(cpu)[0]
    m, k, n = (int(x) for x in args.ceiling_shape.split(","))
    with tempfile.TemporaryDirectory(prefix="metakd-speed-") as scratch:
        models, notes = find_models(run, args.threads, args.teacher_onnx, Path(scratch), args.reference_layers)
        too_long = [f"{mo.name} ({p})" for mo in models if (p := getattr(mo.config(), "max_position_embeddings", None))
                    is not None and p < args.seq_len]
        if too_long:
            raise Skip(f"--seq-len {args.seq_len} exceeds the position embeddings of {', '.join(too_long)}")
        inputs, loaded = {}, {}  # the BERT-base reference, some 30x the student's cost: at most 10 batch-1 calls
        for model in models:
            inputs_key, reference = (str(model.tokenizer_dir), model.clip_ids_to), model.name == "bert-base-torch-fp32"
            if inputs_key not in inputs:
                inputs[inputs_key] = fixed_inputs(model.tokenizer_dir, examples, batch, args.seq_len, model.clip_ids_to)
            log(f"loading {model.name}")
            loaded[model.name] = FixedShape(model.load(), inputs[inputs_key],
                                            per_round(min(args.repeats, 10) if reference else args.repeats, args.rounds),
                                            per_round(args.reference_batches if reference else args.batches, args.rounds))
        log(f"timing {', '.join(loaded)} in {args.rounds} interleaved rounds")
        results, steadiness = rounds_of(loaded, args.rounds, args.warmup, batch)
        rows = examples if not args.predict_rows else examples[: args.predict_rows]
        for model in models:
            macs = macs_per_example(model.config(), args.seq_len)
            results[model.name].update(size_mb=model.size_mb, size_note=model.size_note, macs_per_example=macs,
                                       effective_gmacs_per_s=macs * results[model.name][key] / 1e9)
            if model.name == "bert-base-torch-fp32":
                results[model.name]["note"] = "BertForSequenceClassification(BertConfig()) with random weights: timing only"
            else:
                log(f"timing {model.name}'s predict pipeline")
                results[model.name]["predict"] = predict_speed(loaded[model.name].forward, model.tokenizer_dir, rows,
                                                               dataset, model.max_length, batch, min(args.warmup, 1))
        log(f"timing the {m}x{k} @ {k}x{n} MatMul ceiling ({target} int8 format)")
        ceiling = matmul_ceiling(m, k, n, target, args.threads, args.ceiling_repeats, Path(scratch))
    int8, fp32 = results["student-onnx-int8"], results["student-onnx-fp32"]
    ceiling.update(student_int8_gmacs_per_s=int8["effective_gmacs_per_s"],
                   student_int8_share_of_int8_ceiling=int8["effective_gmacs_per_s"] / ceiling["int8_gmacs_per_s"],
                   student_fp32_onnx_share_of_fp32_ceiling=fp32["effective_gmacs_per_s"] / ceiling["fp32_gmacs_per_s"],
                   mac_formula=MAC_FORMULA)
    shares = [(name, int8[key] / results[reference][key], low, True) for name, reference, low in TARGETS] + [
        ("int8 file <= 30% of the fp32 student's (model.onnx)", int8["size_mb"] / fp32["size_mb"], 0.30, False),
        ("int8 student >= 50% of the int8 matmul ceiling (effective MAC/s)",
         ceiling["student_int8_share_of_int8_ceiling"], 0.50, True)]
    targets = [{"target": name, "value": share, "threshold": low, "met": share >= low if at_least else share <= low}
               for name, share, low, at_least in shares]
    first, mismatch = next(iter(inputs.values()))["input_ids"], target_mismatch(exported_target(run), cpu)
    setup = setup_of(run, threads, seq_len=args.seq_len, batch=batch, rounds=args.rounds, timing=asdict(steadiness),
                     repeats=args.repeats, batches=args.batches, reference_batches=args.reference_batches,
                     reference_layers=args.reference_layers, warmup=args.warmup, quick=args.quick, int8_format=target,
                     inputs={"source": "test split", "rows": batch, "padding": f"truncated/padded to {args.seq_len}",
                             "identical_token_ids_for_all_models": all(
                                 b["input_ids"].shape == first.shape and bool((b["input_ids"] == first).all())
                                 for b in inputs.values()),
                             "shapes": [list(s) for s in {tuple(b["input_ids"].shape) for b in inputs.values()}]},
                     predict={"source": "test split", "rows": len(rows),
                              "pipeline": "metakd predict's: encode (tokenisation), batched_logits, softmax; bucketed "
                                          "= length-sorted dynamic padding, padded = input order, max_length"},
                     mac_formula=MAC_FORMULA, versions={**tool_versions(), "python": sys.version.split()[0]}, **notes,
                     command=args.command_line, warnings=[mismatch] if mismatch else [])
    return {"setup": setup, "results": results, "ceiling": ceiling, "targets": targets}


# --------------------------------------------------------------------------- int8_static


INVARIANT_AT = 1e-6
RULE = ("invariant (max |p diff| <= 1e-6, no label change) and within --max-drop of fp32 on dev; "
        "then best dev accuracy, then fastest at batch 32")


def static_report(args: argparse.Namespace) -> dict:
    """Static int8 against dynamic int8 (bench/suites/int8_static.yaml), built from the run's fp32 ONNX file with
    metakd's own functions: each variant's dev accuracy and change against fp32 (the export gate: a drop of at
    most --max-drop), agreement, speed, and batch invariance (every dev row alone vs in input-order batches of 32
    padded to their longest row). The default the numbers point to: RULE. Test is not read."""
    from metakd_cli.data.encode import encode
    from metakd_cli.data.metrics import per_domain_accuracy
    from metakd_cli.models.inference import ONNX_FILE, onnx_forward, onnx_logits, onnx_model_path, onnx_session
    from metakd_cli.models.loading import load_tokenizer
    from metakd_cli.ship.int8 import Int8Attempt, batch_invariance, calibrate, calibration_feeds, calibration_sample
    from metakd_cli.ship.int8 import quantize_attempt
    from metakd_cli.steps.export import detect_target

    run = RunDir(args.run_dir)
    if not (fp32 := onnx_model_path(run.onnx, ONNX_FILE)).is_file():
        raise Skip(f"{run.onnx}/onnx/model.onnx not present; run `metakd --run-dir {run.path} export` first")
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        (source := scratch / "source").mkdir()  # the fp32 file and its config, for metakd's int8 functions
        shutil.copy(fp32, source / "model.onnx")
        shutil.copy(run.onnx / "config.json", source / "config.json")
        export = json.loads((run.onnx / "metakd_export.json").read_text())
        threads, dataset, tokenizer = pin_threads(args.threads), dataset_of(run), load_tokenizer(str(run.onnx))
        max_length, (target, reason), pad_id = int(export["max_length"]), detect_target(), tokenizer.pad_token_id or 0
        dev = encode(dataset.dev, dataset, tokenizer, max_length)
        train = encode(calibration_sample(dataset.train, args.calibration_rows), dataset, tokenizer, max_length)
        plain = Int8Attempt("plain", "defaults", per_channel=True)  # what metakd export tries first
        paths, built, started = {"fp32": fp32}, {"fp32": {}}, time.perf_counter()
        paths["dynamic"] = quantize_attempt(source, "model.onnx", target, plain, scratch / "dynamic")
        built["dynamic"] = {"quantize_seconds": time.perf_counter() - started}
        feeds = calibration_feeds(source / "model.onnx", train, pad_id)
        for method in args.methods.split(","):
            log(f"calibrating {method} on {len(feeds)} training texts")
            try:
                calibration = calibrate(source / "model.onnx", feeds, method, "qdq", scratch / f".calibration-{method}")
            except Exception as exc:  # a calibrator that fails on this graph is a result, not a crash
                built |= {f"static-{f}-{method}": {"error": f"calibration: {type(exc).__name__}: {exc}"}
                          for f in args.formats.split(",")}
                continue
            for fmt in args.formats.split(","):
                name, calibration.format, started = f"static-{fmt}-{method}", fmt, time.perf_counter()
                try:
                    paths[name] = quantize_attempt(source, "model.onnx", target, plain, scratch / name,
                                                   calibration=calibration)
                except Exception as exc:
                    built[name] = {"error": f"quantization: {type(exc).__name__}: {exc}"}
                    continue
                built[name] = {"calibration_seconds": calibration.seconds, "calibration_rows": calibration.rows,
                               "quantize_seconds": time.perf_counter() - started}
        results, reference = {}, None
        for name, path in paths.items():
            log(f"{name}: dev accuracy and batch invariance")
            session = onnx_session(path)  # as metakd predict / eval load it
            predictions = onnx_logits(session, dev, pad_id).argmax(-1)
            accuracy = per_domain_accuracy(predictions, dev, dataset.domains)
            reference = reference or (accuracy, predictions)
            invariance = batch_invariance(session, dev, pad_id, 32)
            change = accuracy["average"] - reference[0]["average"]
            results[name] = {**built[name], "dev_accuracy": accuracy, "change_vs_fp32": change,
                             "passes_gate": -change <= args.max_drop,
                             "agreement_with_fp32": float((predictions == reference[1]).mean() * 100),
                             "batch_invariance": invariance, "size_mb": path.stat().st_size / 1e6,
                             "invariant": invariance["max_abs_prob_diff"] <= INVARIANT_AT
                             and invariance["label_flips"] == 0}
        seq_len = min(128, max_length)
        inputs = fixed_inputs(run.onnx, dataset.dev, 32, seq_len)
        log(f"timing {len(paths)} variants in {args.rounds} interleaved rounds")
        timed, steadiness = rounds_of({name: FixedShape(onnx_forward(pinned_session(path, args.threads)), inputs,
                                                        args.repeats, args.batches) for name, path in paths.items()},
                                      args.rounds)
    for name in paths:
        results[name].update(timed[name])
    results |= {name: info for name, info in built.items() if "error" in info}
    candidates = [n for n, r in results.items() if n.startswith("static-") and "error" not in r and r["invariant"]
                  and r["passes_gate"]]
    chosen = max(candidates, key=lambda n: (round(results[n]["dev_accuracy"]["average"], 6),
                                            results[n]["throughput_b32"]), default=None)
    setup = setup_of(run, threads, target=target, target_reason=reason, dev_rows=len(dev), calibration_rows=len(train),
                     max_drop=args.max_drop, invariant_at=INVARIANT_AT, seq_len_timed=seq_len, rounds=args.rounds,
                     timing=asdict(steadiness), batches=args.batches, repeats=args.repeats, command=args.command_line)
    return {"setup": setup, "results": results, "chosen": chosen, "rule": RULE}
