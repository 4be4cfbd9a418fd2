"""int8 quantization of an exported ONNX model: static (calibrated on a seeded sample of training texts) or
dynamic, the known remedies tried in a fixed order when plain int8 loses too much on dev, and batch invariance."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metakd_cli.data.encode import Encoded
from metakd_cli.models.inference import INT8_FILE, ONNX_FILE, onnx_logits, onnx_session
from metakd_cli.ship.onnx_tools import quiet_tools

WEIGHT_TYPES = {"avx2": "QUInt8", "avx512_vnni": "QInt8", "arm64": "QInt8"}  # optimum's default per target
INT8_REMEDIES = ("fp32_embeddings_classifier", "per_channel", "reduce_range", "other_weight_type")


@dataclass(frozen=True)
class Int8Attempt:
    """One dynamic-int8 configuration: the target's defaults ("plain") or one remedy on top of them."""

    name: str
    description: str
    per_channel: bool = False
    fp32_embeddings_classifier: bool = False  # quantize MatMul only; the classifier's last layer stays fp32
    reduce_range: bool = False  # 7-bit weights: avoids VPMADDUBSW saturation on AVX2/AVX-512 without VNNI
    weights: str | None = None  # QInt8 | QUInt8 instead of the target's default

    def settings(self) -> dict:
        return {"per_channel": self.per_channel, "fp32_embeddings_classifier": self.fp32_embeddings_classifier,
                "reduce_range": self.reduce_range, "weights": self.weights}


def int8_attempts(target: str, per_channel: bool) -> list[Int8Attempt]:
    """Plain int8, then each remedy of ``INT8_REMEDIES`` alone, in that order (a remedy that is
    already in effect, per-channel with --per-channel, is not repeated)."""
    other = "QUInt8" if WEIGHT_TYPES[target] == "QInt8" else "QInt8"
    attempts = [
        Int8Attempt("plain", f"{target} defaults, {'per-channel' if per_channel else 'per-tensor'} weight scales",
                    per_channel=per_channel),
        Int8Attempt("fp32_embeddings_classifier", "embedding Gather and classifier left in fp32",
                    per_channel=per_channel, fp32_embeddings_classifier=True),
    ]
    if not per_channel:
        attempts.append(Int8Attempt("per_channel", "per-channel weight scales", per_channel=True))
    attempts += [
        Int8Attempt("reduce_range", "7-bit weights (reduce_range)", per_channel=per_channel, reduce_range=True),
        Int8Attempt("other_weight_type", f"{other} weights instead of {WEIGHT_TYPES[target]}",
                    per_channel=per_channel, weights=other),
    ]
    return attempts


# Static int8 quantizes the weight products and the embedding tables, nothing else: ONNX Runtime's full static
# list (Add, Where, Softmax, LayerNormalization, ...) also quantizes the attention-mask arithmetic, which moved
# a tiny test model's probability by 0.96 between a text alone and the same text in a padded batch.
STATIC_OPERATORS = ("MatMul", "Gather")


@dataclass
class Calibration:
    """Static int8's activation ranges: measured once per export on training texts, shared by every attempt."""

    method: str  # minmax | percentile | entropy
    format: str  # qdq | qoperator
    rows: int  # training texts fed, one at a time
    seconds: float
    ranges: object = field(repr=False)  # onnxruntime.quantization.TensorsData

    def to_json(self) -> dict:
        return {"method": self.method, "format": self.format, "rows": self.rows, "seconds": self.seconds,
                "operators": list(STATIC_OPERATORS)}


def calibration_feeds(path: Path, encoded: Encoded, pad_id: int) -> list[dict[str, np.ndarray]]:
    """One feed per row, unpadded (batch 1): the ranges see real tokens only, never padding."""
    import onnx

    from metakd_cli.models.inference import make_batch

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    feeds = []
    for i in range(len(encoded)):
        batch = make_batch(encoded, [i], pad_id)
        feed = {name: batch[name].numpy() for name in names if name in batch}
        if "token_type_ids" in names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        feeds.append(feed)
    return feeds


def calibrate(path: Path, feeds: list[dict[str, np.ndarray]], method: str, static_format: str,
              scratch: Path) -> Calibration:
    """Activation ranges of the inputs and outputs of ``path``'s STATIC_OPERATORS over ``feeds``
    (onnxruntime's calibrator, fed one row per call: rows of different lengths cannot share a histogram)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class _Feed(CalibrationDataReader):
        def __init__(self, feed: dict):
            self._feeds = iter([feed])

        def get_next(self):
            return next(self._feeds, None)

    started = time.perf_counter()
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_tools():
            calibrator = create_calibrator(path, list(STATIC_OPERATORS),
                                           augmented_model_path=str(scratch / "augmented.onnx"),
                                           calibrate_method=methods[method])
            for feed in feeds:
                calibrator.collect_data(_Feed(feed))
            ranges = calibrator.compute_data()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Calibration(method=method, format=static_format, rows=len(feeds),
                       seconds=time.perf_counter() - started, ranges=ranges)


def _quantization_config(target: str, attempt: Int8Attempt, classifier: list[str], static_format: str | None = None):
    """Optimum's int8 settings for ``target`` with one attempt's remedy; static (QDQ or QOperator graph, the
    STATIC_OPERATORS only) when ``static_format`` is given, else dynamic."""
    from onnxruntime.quantization import QuantFormat, QuantizationMode, QuantType
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    make = {"avx2": AutoQuantizationConfig.avx2, "avx512_vnni": AutoQuantizationConfig.avx512_vnni,
            "arm64": AutoQuantizationConfig.arm64}[target]
    config = make(is_static=static_format is not None, per_channel=attempt.per_channel)
    if static_format is not None:
        config.format = QuantFormat.QDQ if static_format == "qdq" else QuantFormat.QOperator
        config.mode = QuantizationMode.QLinearOps
        config.operators_to_quantize = list(STATIC_OPERATORS)
    if attempt.fp32_embeddings_classifier:
        config.operators_to_quantize = ["MatMul"]  # not Gather: the embedding tables stay fp32
        # ORT's quantizer rewrites a Gemm as <name>_MatMul + <name>_Add before it picks nodes
        config.nodes_to_exclude = [n for name in classifier for n in (name, f"{name}_MatMul")]
    if attempt.reduce_range:
        config.reduce_range = True
    if attempt.weights:
        config.weights_dtype = QuantType[attempt.weights]
    return config


def classifier_nodes(path: Path) -> list[str]:
    """Names of the MatMul / Gemm nodes nearest the graph outputs: the classifier's last layer."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    found: list[str] = []
    seen: set[int] = set()
    stack = [output.name for output in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        else:
            stack.extend(node.input)
    return found


def batch_invariance(session, encoded: Encoded, pad_id: int, batch_size: int = 32) -> dict:
    """Each row alone (batch 1, no padding) against the same row in input-order batches of ``batch_size``
    padded to their longest row: the largest |probability difference| and the labels that change."""
    from metakd_cli.models.inference import make_batch, onnx_forward, softmax

    forward = onnx_forward(session)
    rows = range(len(encoded))
    alone = [forward(make_batch(encoded, [i], pad_id))[0] for i in rows]
    together = [row for start in range(0, len(encoded), batch_size)
                for row in forward(make_batch(encoded, list(rows[start:start + batch_size]), pad_id))]
    if not alone:
        return {"rows": 0, "batch_size": batch_size, "max_abs_prob_diff": 0.0, "label_flips": 0}

    p_alone, p_together = softmax(alone), softmax(together)
    return {"rows": len(encoded), "batch_size": batch_size,
            "max_abs_prob_diff": float(np.abs(p_alone - p_together).max()),
            "label_flips": int((p_alone.argmax(-1) != p_together.argmax(-1)).sum())}


def int8_dev_predictions(attempt: Int8Attempt, path: Path, dev: Encoded, pad_id: int) -> np.ndarray:
    """Predicted labels of one int8 attempt's model on the dev rows."""
    return onnx_logits(onnx_session(path), dev, pad_id).argmax(-1)


@dataclass
class Int8Result:
    attempt: Int8Attempt
    folder: Path  # scratch folder with this attempt's model_quantized.onnx and ort_config.json
    accuracy: dict[str, float]
    drop: float  # fp32 ONNX minus int8 dev accuracy, points, average over domains
    drop_per_domain: dict[str, float]
    agreement_with_fp32: float | None
    size_mb: float
    passed: bool
    predictions: np.ndarray = field(repr=False)

    def to_json(self) -> dict:
        return {"name": self.attempt.name, "description": self.attempt.description, **self.attempt.settings(),
                "drop": self.drop, "drop_per_domain": self.drop_per_domain, "size_mb": self.size_mb,
                "passed": self.passed, "agreement_with_fp32": self.agreement_with_fp32}


FUSED_DIR, FUSED_FILE = ".fused", "model_optimized.onnx"


def fused_graph(tmp: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    """``tmp/model.onnx`` with ONNX Runtime's transformer fusions (Optimum's O2: attention, skip layer
    norm, bias GELU; the embeddings stay plain Gathers so that their tables can be int8), written to a
    scratch folder that is quantized instead of model.onnx; model.onnx itself stays as exported."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    with quiet_tools():
        optimizer = ORTOptimizer.from_pretrained(tmp, file_names=[ONNX_FILE])
        optimizer.optimize(OptimizationConfig(optimization_level=2), tmp / FUSED_DIR, file_suffix="optimized")
    config = tmp / "config.json"  # ORTQuantizer reads the model's config beside the graph
    if config.is_file() and not (tmp / FUSED_DIR / config.name).is_file():
        shutil.copy(config, tmp / FUSED_DIR / config.name)
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    path = tmp / FUSED_DIR / FUSED_FILE
    # the quantizer needs every tensor's type; onnx's own inference stops at the contrib operators
    graph = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True)
    onnx.save(graph, str(path))
    ops = sorted({n.op_type for n in graph.graph.node if n.domain == "com.microsoft"})
    log(f"fused graph for int8: {', '.join(ops) or 'no fused operator found'}")
    return tmp / FUSED_DIR, FUSED_FILE


def quantize_attempt(source_dir: Path, source_file: str, target: str, attempt: Int8Attempt, folder: Path,
                     classifier: list[str] | None = None, calibration: Calibration | None = None) -> Path:
    """``source_dir/source_file`` quantized with one attempt's settings into ``folder`` (Optimum's ORTQuantizer,
    which also writes ort_config.json there): static with ``calibration``'s ranges, else dynamic; the path of
    ``folder/model_quantized.onnx``."""
    from optimum.onnxruntime import ORTQuantizer

    if classifier is None:
        classifier = classifier_nodes(source_dir / source_file)
    config = _quantization_config(target, attempt, classifier, calibration.format if calibration else None)
    with quiet_tools():
        quantizer = ORTQuantizer.from_pretrained(source_dir, file_name=source_file)
        quantizer.quantize(save_dir=folder, quantization_config=config,
                           calibration_tensors_range=calibration.ranges if calibration else None)
    written = folder / f"{Path(source_file).stem}_quantized.onnx"  # Optimum names it after its source
    if written.name != INT8_FILE:
        os.replace(written, folder / INT8_FILE)
    return folder / INT8_FILE


CALIBRATION_SEED = 0


def calibration_sample(train: list, rows: int) -> list:
    """``rows`` training examples drawn with a fixed seed (all of them when there are fewer), in their order."""
    import random

    if len(train) <= rows:
        return list(train)
    return [train[i] for i in sorted(random.Random(CALIBRATION_SEED).sample(range(len(train)), rows))]
