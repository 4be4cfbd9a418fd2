"""What makes the int8 student faster on this CPU: ways of building it from the same fp32 ONNX file.

    python -m bench.int8_variants --run-dir bench/runs/meta-meta [--threads N] [--rounds 5]

The run folder holds onnx/onnx/model.onnx and onnx/onnx/model_quantized.onnx (`metakd export --int8`; an older
export: onnx/model.onnx beside onnx/model_quantized.onnx).
Every variant is built here from the fp32 file into a temporary folder and measured in ONE
process, threads pinned, on the same fixed-shape inputs (real test texts, seq 128):

    fp32               onnx/model.onnx as exported
    fp32-fused         onnxruntime's transformer optimizer (Attention, SkipLayerNorm, BiasGelu fusions)
    int8-shipped       onnx/model_quantized.onnx, what metakd export wrote
    int8-matmul        quantize_dynamic of the MatMuls only (embedding tables stay fp32)
    int8-fused         the fused graph, then quantize_dynamic (MatMul and Attention -> QAttention)
    int8-fused-fastgelu  as int8-fused with the tanh approximation of GELU (FastGelu)
    int8-fused-small   fused without EmbedLayerNormalization, so that the embedding tables
                       (Gather) are quantized too, as in int8-shipped
    int8-export-fuse   what `metakd export --int8 --fuse` writes (Optimum O2 fusion, then its
                       int8 config), built with metakd's own functions
    int8-per-channel   what `metakd export --int8 --per-channel` writes when its first attempt passes:
                       the plain int8 settings with one weight scale per output column, built with
                       metakd's own functions

Timed in interleaved rounds (every variant once per round; the figures are medians over rounds,
every round's kept), so that the machine's slow spells do not favour one variant: throughput at
batch 32, latency p50 at batch 1, file size, and test
accuracy on the run's test split with agreement against the fp32 model (so a faster variant
that changes predictions shows it). Writes bench/results/int8_variants.json and prints a table.
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.common import RESULTS
from bench.timing import FixedShape, fixed_inputs, fixed_shape_rounds, pin_threads, pinned_session
from metakd_cli.export import WEIGHT_TYPES, quiet_tools
from metakd_cli.timing import available_cpus

OUT = RESULTS / "int8_variants.json"


def build(onnx_dir: Path, scratch: Path, weight_type: str, config, target: str) -> dict[str, Path]:
    """{variant: model file}, built from export folder ``onnx_dir``'s fp32 file."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from metakd_cli.inference import INT8_FILE, ONNX_FILE, onnx_model_path

    heads, hidden = config.num_attention_heads, config.hidden_size
    source = onnx_model_path(onnx_dir, ONNX_FILE)
    out = {"fp32": source, "int8-shipped": onnx_model_path(onnx_dir, INT8_FILE)}
    with quiet_tools():
        path = scratch / "int8-matmul.onnx"
        quantize_dynamic(str(source), str(path), weight_type=getattr(QuantType, weight_type),
                         op_types_to_quantize=["MatMul"])
        out["int8-matmul"] = path
        for name, approximate, embeddings in (("fused", False, True), ("fused-fastgelu", True, True),
                                              ("fused-small", False, False)):
            options = FusionOptions("bert")
            options.enable_gelu_approximation = approximate
            options.enable_embed_layer_norm = embeddings  # off: plain Gathers, whose tables can be int8
            fused = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden,
                                   optimization_options=options, opt_level=0)
            fused_path = scratch / f"fp32-{name}.onnx"
            fused.save_model_to_file(str(fused_path))
            if name == "fused":
                out["fp32-fused"] = fused_path
            path = scratch / f"int8-{name}.onnx"
            ops = ["MatMul", "Attention"] + ([] if embeddings else ["Gather"])
            quantize_dynamic(str(fused_path), str(path), weight_type=getattr(QuantType, weight_type),
                             op_types_to_quantize=ops,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})  # fused ops lack shape info
            out[f"int8-{name}"] = path
        out["int8-export-fuse"] = export_built(onnx_dir, scratch / "export-fuse", target, fuse=True)
        out["int8-per-channel"] = export_built(onnx_dir, scratch / "per-channel", target, per_channel=True)
    return out


def export_built(onnx_dir: Path, folder: Path, target: str, per_channel: bool = False, fuse: bool = False) -> Path:
    """What `metakd export --int8` writes with its first, plain attempt (and --per-channel / --fuse), built with
    its own functions from export folder ``onnx_dir``'s fp32 file."""
    import shutil

    from metakd_cli.export import Int8Attempt, fused_graph, quantize_attempt
    from metakd_cli.inference import ONNX_FILE, onnx_model_path

    folder.mkdir(parents=True)
    shutil.copy(onnx_model_path(onnx_dir, ONNX_FILE), folder / "model.onnx")
    shutil.copy(onnx_dir / "config.json", folder / "config.json")
    source_dir, source_file = fused_graph(folder, lambda message: None) if fuse else (folder, "model.onnx")
    attempt = Int8Attempt("plain", "defaults", per_channel=per_channel)
    return quantize_attempt(source_dir, source_file, target, attempt, folder / "int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=len(available_cpus()))
    parser.add_argument("--rounds", type=int, default=5,
                        help="Interleaved rounds over all variants; the figures are medians over rounds [5].")
    parser.add_argument("--batches", type=int, default=8, help="Batches of 32 timed per variant and round [8].")
    parser.add_argument("--repeats", type=int, default=30, help="Batch-1 calls timed per variant and round [30].")
    parser.add_argument("--seq-len", type=int, default=128, help="Tokens per row of the timed inputs [128].")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON report [{OUT}].")
    args = parser.parse_args(argv)
    import onnx
    from transformers import AutoConfig

    from metakd_cli.cpu import cpu_info
    from metakd_cli.data import encode
    from metakd_cli.inference import batched_logits, onnx_forward
    from metakd_cli.models import load_tokenizer
    from metakd_cli.run_dir import RunDir, atomic_write_json

    run = RunDir(args.run_dir)
    onnx_dir = run.path / "onnx"
    export = json.loads((onnx_dir / "metakd_export.json").read_text())
    target = export["target"]
    threads = pin_threads(args.threads)
    _, dataset = run.reload_dataset()
    examples = dataset.test
    tokenizer = load_tokenizer(str(onnx_dir))
    pad_id = tokenizer.pad_token_id or 0
    encoded = encode(examples, dataset, tokenizer, export["max_length"])
    labels = np.asarray(encoded.labels)
    inputs = fixed_inputs(onnx_dir, examples, 32, args.seq_len, None)
    config = AutoConfig.from_pretrained(onnx_dir)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        variants = build(onnx_dir, Path(scratch), WEIGHT_TYPES[target], config, target)
        reference = None
        forwards = {name: onnx_forward(pinned_session(path, args.threads)) for name, path in variants.items()}
        print(f"timing {len(forwards)} variants in {args.rounds} interleaved rounds", file=sys.stderr, flush=True)
        timed, steadiness = fixed_shape_rounds(
            {name: FixedShape(forward, inputs, args.repeats, args.batches) for name, forward in forwards.items()},
            32, args.rounds)
        for name, path in variants.items():
            predictions = batched_logits(encoded, pad_id, 64, forwards[name]).argmax(-1)
            reference = predictions if reference is None else reference
            results[name] = {
                **timed[name], "size_mb": path.stat().st_size / 2**20,
                "test_accuracy": float((predictions == labels).mean() * 100),
                "agreement_with_fp32": float((predictions == reference).mean() * 100),
                "ops": sorted({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}),
            }
    report = {"setup": {"run_dir": str(run.path), "cpu": cpu_info().to_json(), "threads": threads, "seq_len": args.seq_len,
                        "batch": 32, "int8_format": target, "weight_type": WEIGHT_TYPES[target],
                        "test_rows": len(examples), "batches": args.batches, "repeats": args.repeats,
                        "rounds": args.rounds, "timing": asdict(steadiness),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
              "results": results}
    atomic_write_json(args.out, report)
    base = results["int8-shipped"]["throughput_b32"]
    print(f"{'variant':22}{'ex/s b32':>10}{'vs shipped':>11}{'b1 p50 ms':>11}{'MB':>7}{'test acc':>10}{'agree':>8}")
    for name, row in results.items():
        print(f"{name:22}{row['throughput_b32']:10.1f}{row['throughput_b32'] / base:10.2f}x"
              f"{row['latency_b1_p50_ms']:11.2f}{row['size_mb']:7.1f}{row['test_accuracy']:10.2f}"
              f"{row['agreement_with_fp32']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
