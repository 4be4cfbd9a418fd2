"""Static int8 against dynamic int8: dev accuracy, speed at batch 32 and 1, and batch invariance.

    metakd --run-dir R export                    # fp32 onnx/onnx/model.onnx of R's student
    python -m bench.int8_static --run-dir R [--threads N] [--rounds 3] [--calibration-rows 256]

Every variant is built here from R's fp32 ONNX file with metakd's own functions (``metakd_cli.export``),
into a temporary folder, and measured in ONE process:

    fp32                       onnx/onnx/model.onnx as exported (the reference)
    dynamic                    what `metakd export --int8 --int8-mode dynamic` writes (plain attempt,
                               per-channel weights): activation scales computed per batch, padding included
    static-{qdq,qoperator}-{minmax,percentile,entropy}
                               what `metakd export --int8 --calibration C` writes with export.static_format F:
                               MatMul and Gather quantized with activation ranges calibrated on
                               ``--calibration-rows`` seeded training texts fed one at a time

For each: dev accuracy (average over domains) and its change vs fp32 ONNX (the export gate is a drop of at
most ``--max-drop`` points), agreement with fp32 on dev, throughput at batch 32 and latency p50 at batch 1
on fixed-shape dev inputs (seq 128 or the max_length, threads pinned, interleaved rounds, medians; ratios matter, not
absolute times), and batch invariance: every dev row alone (batch 1, no padding) vs in input-order
batches of 32 of mixed lengths padded to their longest row, as the largest |probability difference| and
the labels that change. A variant is "invariant" at a difference of at most 1e-6 and no label change.
The default the numbers point to: among the invariant variants that pass the gate, the best dev accuracy,
then the fastest at batch 32. Choices are made on dev; test is not read.

Writes bench/results/int8_static.json and prints a table. Not part of CI; skips with a reason when the
run folder has no fp32 ONNX file (onnx/onnx/model.onnx, or onnx/model.onnx from an older export) or its data
(the Amazon reviews, for a real run) is absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bench.common import RESULTS
from bench.timing import FixedShape, fixed_inputs, fixed_shape_rounds, pin_threads, pinned_session
from metakd_cli.timing import Steadiness, available_cpus

OUT = RESULTS / "int8_static.json"
FORMATS = ("qdq", "qoperator")
METHODS = ("minmax", "percentile", "entropy")
INVARIANT_AT = 1e-6


def build(onnx_dir: Path, scratch: Path, target: str, train_encoded, pad_id: int, formats, methods,
          log) -> tuple[dict[str, Path], dict[str, dict]]:
    """{variant: model file}, {variant: how it was built (seconds, calibration) or why it failed}."""
    from metakd_cli.export import Int8Attempt, calibrate, calibration_feeds, quantize_attempt

    source = scratch / "source"
    source.mkdir()
    from metakd_cli.inference import ONNX_FILE, onnx_model_path

    shutil.copy(onnx_model_path(onnx_dir, ONNX_FILE), source / "model.onnx")
    shutil.copy(onnx_dir / "config.json", source / "config.json")
    plain = Int8Attempt("plain", "defaults", per_channel=True)  # what metakd export tries first
    paths = {"fp32": onnx_model_path(onnx_dir, ONNX_FILE)}
    built: dict[str, dict] = {"fp32": {}}
    started = time.perf_counter()
    paths["dynamic"] = quantize_attempt(source, "model.onnx", target, plain, scratch / "dynamic")
    built["dynamic"] = {"quantize_seconds": time.perf_counter() - started}
    feeds = calibration_feeds(source / "model.onnx", train_encoded, pad_id)
    for method in methods:
        log(f"calibrating {method} on {len(feeds)} training texts")
        try:
            calibration = calibrate(source / "model.onnx", feeds, method, "qdq", scratch / f".calibration-{method}")
        except Exception as exc:  # a calibrator that fails on this graph is a result, not a crash
            for fmt in formats:
                built[f"static-{fmt}-{method}"] = {"error": f"calibration: {type(exc).__name__}: {exc}"}
            continue
        for fmt in formats:
            name = f"static-{fmt}-{method}"
            calibration.format = fmt
            started = time.perf_counter()
            try:
                paths[name] = quantize_attempt(source, "model.onnx", target, plain, scratch / name,
                                               calibration=calibration)
            except Exception as exc:
                built[name] = {"error": f"quantization: {type(exc).__name__}: {exc}"}
                continue
            built[name] = {"calibration_seconds": calibration.seconds, "calibration_rows": calibration.rows,
                           "quantize_seconds": time.perf_counter() - started}
    return paths, built


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="A run folder with onnx/model.onnx.")
    parser.add_argument("--threads", type=int, default=len(available_cpus()))
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds; medians reported [3].")
    parser.add_argument("--batches", type=int, default=4, help="Batches of 32 timed per variant and round [4].")
    parser.add_argument("--repeats", type=int, default=20, help="Batch-1 calls timed per variant and round [20].")
    parser.add_argument("--calibration-rows", type=int, default=256, help="Training texts for calibration [256].")
    parser.add_argument("--max-drop", type=float, default=1.0, help="The export gate, dev points vs fp32 [1.0].")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"Calibrations [{','.join(METHODS)}].")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"Static graphs [{','.join(FORMATS)}].")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON report [{OUT}].")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _score(paths: dict[str, Path], built: dict, dev, dataset, pad_id: int, max_drop: float) -> dict[str, dict]:
    """Each variant's dev accuracy, change and agreement against fp32 (the first), and batch invariance."""
    from metakd_cli.evaluate import per_domain_accuracy
    from metakd_cli.export import batch_invariance
    from metakd_cli.inference import onnx_logits
    from metakd_cli.inference import onnx_session as default_session

    results: dict[str, dict] = {}
    fp32_accuracy = fp32_predictions = None
    for name, path in paths.items():
        _log(f"{name}: dev accuracy and batch invariance")
        session = default_session(path)  # as metakd predict / eval load it
        predictions = onnx_logits(session, dev, pad_id).argmax(-1)
        accuracy = per_domain_accuracy(predictions, dev, dataset.domains)
        if fp32_accuracy is None:
            fp32_accuracy, fp32_predictions = accuracy, predictions
        invariance = batch_invariance(session, dev, pad_id, 32)
        change = accuracy["average"] - fp32_accuracy["average"]
        results[name] = {
            **built[name], "dev_accuracy": accuracy, "change_vs_fp32": change,
            "passes_gate": -change <= max_drop,
            "agreement_with_fp32": float((predictions == fp32_predictions).mean() * 100),
            "batch_invariance": invariance,
            "invariant": invariance["max_abs_prob_diff"] <= INVARIANT_AT and invariance["label_flips"] == 0,
            "size_mb": path.stat().st_size / 1e6,
        }
    return results


def _time(paths: dict[str, Path], inputs, args: argparse.Namespace, results: dict[str, dict]) -> Steadiness:
    """Throughput at batch 32 and batch-1 latency of every variant, in interleaved rounds (medians and spreads),
    into results; how steady the rounds were."""
    from metakd_cli.inference import onnx_forward

    models = {name: FixedShape(onnx_forward(pinned_session(path, args.threads)), inputs, args.repeats, args.batches)
              for name, path in paths.items()}
    _log(f"timing {len(models)} variants in {args.rounds} interleaved rounds")
    timed, steadiness = fixed_shape_rounds(models, 32, args.rounds)
    for name in paths:
        results[name].update(timed[name])
    return steadiness


def _chosen(results: dict[str, dict]) -> str | None:
    """Among the batch-invariant static variants within the gate: the best dev accuracy, then the fastest."""
    candidates = [n for n, r in results.items() if n.startswith("static-") and "error" not in r
                  and r["invariant"] and r["passes_gate"]]
    return max(candidates, key=lambda n: (round(results[n]["dev_accuracy"]["average"], 6),
                                          results[n]["throughput_b32"]), default=None)


def _print_table(results: dict[str, dict], chosen: str | None, rule: str) -> None:
    base = results["dynamic"]
    print(f"{'variant':28}{'dev acc':>8}{'vs fp32':>8}{'gate':>5}{'b32 ex/s':>10}{'vs dyn':>7}{'b1 ms':>7}"
          f"{'vs dyn':>7}{'max|dp| alone/b32':>19}{'flips':>6}{'MB':>6}{'calib s':>8}")
    for name, row in results.items():
        if "error" in row:
            print(f"{name:28}failed: {row['error'][:100]}")
            continue
        print(f"{name:28}{row['dev_accuracy']['average']:8.2f}{row['change_vs_fp32']:+8.2f}"
              f"{'ok' if row['passes_gate'] else 'no':>5}{row['throughput_b32']:10.1f}"
              f"{row['throughput_b32'] / base['throughput_b32']:6.2f}x{row['latency_b1_p50_ms']:7.2f}"
              f"{row['latency_b1_p50_ms'] / base['latency_b1_p50_ms']:6.2f}x"
              f"{row['batch_invariance']['max_abs_prob_diff']:19.1e}{row['batch_invariance']['label_flips']:6d}"
              f"{row['size_mb']:6.1f}{row.get('calibration_seconds', 0.0):8.1f}")
    print(f"chosen default: {chosen} ({rule})")


RULE = ("invariant (max |p diff| <= 1e-6, no label change) and within --max-drop of fp32 on dev; "
        "then best dev accuracy, then fastest at batch 32")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    from metakd_cli.inference import ONNX_FILE, onnx_model_path

    if not onnx_model_path(args.run_dir / "onnx", ONNX_FILE).is_file():
        print(f"skipped: {args.run_dir}/onnx/onnx/model.onnx not present; run `metakd --run-dir {args.run_dir} "
              "export` first")
        return 0

    from metakd_cli.cpu import cpu_info
    from metakd_cli.data import encode
    from metakd_cli.errors import UserError
    from metakd_cli.export import _calibration_sample, detect_target
    from metakd_cli.models import load_tokenizer
    from metakd_cli.run_dir import RunDir, atomic_write_json

    run = RunDir(args.run_dir)
    onnx_dir = run.path / "onnx"
    max_length = int(json.loads((onnx_dir / "metakd_export.json").read_text())["max_length"])
    target, reason = detect_target()
    threads = pin_threads(args.threads)
    try:
        _, dataset = run.reload_dataset()
    except UserError as exc:  # the run's data (the Amazon reviews, for a real run) is not on this machine
        print(f"skipped: the data of {run.path} cannot be read ({exc})")
        return 0
    tokenizer = load_tokenizer(str(onnx_dir))
    pad_id = tokenizer.pad_token_id or 0
    dev = encode(dataset.dev, dataset, tokenizer, max_length)
    train = encode(_calibration_sample(dataset.train, args.calibration_rows), dataset, tokenizer, max_length)
    seq_len = min(128, max_length)
    inputs = fixed_inputs(onnx_dir, dataset.dev, 32, seq_len, None)
    with tempfile.TemporaryDirectory() as scratch:
        paths, built = build(onnx_dir, Path(scratch), target, train, pad_id, args.formats.split(","),
                             args.methods.split(","), _log)
        results = _score(paths, built, dev, dataset, pad_id, args.max_drop)
        steadiness = _time(paths, inputs, args, results)
    for name, info in built.items():
        if "error" in info:
            results[name] = info
    chosen = _chosen(results)
    report = {"setup": {"run_dir": str(run.path), "cpu": cpu_info().to_json(), "target": target,
                        "target_reason": reason, "threads": threads, "dev_rows": len(dev),
                        "calibration_rows": len(train), "max_drop": args.max_drop, "invariant_at": INVARIANT_AT,
                        "seq_len_timed": seq_len, "rounds": args.rounds, "timing": asdict(steadiness),
                        "batches": args.batches, "repeats": args.repeats, "command": " ".join(sys.argv),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
              "results": results, "chosen": chosen, "rule": RULE}
    atomic_write_json(args.out, report)
    _print_table(results, chosen, RULE)
    return 0

if __name__ == "__main__":
    sys.exit(main())
