"""`metakd export`: Optimum ONNX export, int8 quantization (static by default), ORT format, and the checks.

The run's student (or teacher) becomes ``onnx/``, a folder that loads with no metakd, one copy of the
weights for every runtime: ``ORTModelForSequenceClassification.from_pretrained("metakd-run/onnx")`` (Optimum
finds the .onnx files in the subfolder), ``pipeline("text-classification", "onnx", {dtype: "q8"})`` in
transformers.js with ``env.localModelPath = "metakd-run/"`` (its layout), or an onnxruntime session on the file:

    config.json, tokenizer.json, tokenizer_config.json (model_max_length: the export's max_length), vocab.txt
    onnx/model.onnx           fp32, opset pinned (default 18, the least optimum recommends for BERT)
    onnx/model_quantized.onnx int8 (--int8) in the format of the target CPU: static by default (activation
                              ranges calibrated on a seeded sample of training texts, so a text gets one
                              answer whatever its batch), or dynamic (--int8-mode dynamic: scales per batch)
    model.ort                 ONNX Runtime Mobile format (--ort; implied by --target arm64)
    required_operators.config the operators model.ort needs, for a reduced-size ORT Mobile build
    ort_config.json (quantization settings), metakd_export.json, README.md (the model card)

The checks run on the files before they move into ``onnx/``; readers find both layouts
(``metakd_cli.inference.onnx_model_path``), so a run exported before this layout still evaluates and predicts.

With --trim-vocab the exported model is first restricted to the word pieces of the training
corpus (``metakd_cli.vocab``): the ONNX files, the tokenizer and the PyTorch reference of the
logits check are all the trimmed model.

Checks, saved in metrics/export.json: fp32 ONNX logits equal PyTorch's within ``atol`` on
real dev rows; a trimmed model predicts what the untrimmed one predicts on every dev row
whose pieces were all kept; the int8 model's dev accuracy may drop at most ``max_drop``
points below the fp32 ONNX model's (average over domains) -- when plain int8 does not, the
known remedies are tried in a fixed order (``INT8_REMEDIES``) and the first that passes is
kept; the int8 probability of each logits-check row alone against the same row in a padded batch
of 32 is recorded (static int8: no difference; dynamic: differences); model.ort predicts the
same label as the ONNX file it came from on every dev row, and its opset is one ONNX Runtime
Mobile runs. When a check fails nothing replaces onnx/: the
new files are kept in ``onnx.failed/`` and the manifest is not touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metakd_cli.config import DEFAULT_OPSET, ExportConfig, choice
from metakd_cli.cpu import cpu_info, int8_target
from metakd_cli.data import Encoded
from metakd_cli.errors import UserError
from metakd_cli.evaluate import per_domain_accuracy
from metakd_cli.inference import (
    EXPORT_JSON,
    INT8_FILE,
    ONNX_FILE,
    ONNX_SUBDIR,
    ORT_FILE,
    onnx_logits,
    onnx_session,
    size_mb,
    torch_logits,
    weights_size_mb,
)
from metakd_cli.run_dir import RunDir, atomic_dir, stale_artifacts
from metakd_cli.vocab import TrimReport, check_trim_options, trim_vocabulary

MODELS = ("student", "teacher")
TARGETS = ("auto", "avx2", "avx512_vnni", "arm64")
INT8_MODES = ("static", "dynamic")
CALIBRATIONS = ("minmax", "percentile", "entropy")
STATIC_FORMATS = ("qdq", "qoperator")
MIN_OPSET = 14  # scaled-dot-product attention and the int8 operators need 14 or later
# The newest ai.onnx opset ONNX Runtime 1.15 implements (ONNX 1.14): the oldest ORT Mobile
# release whose Android/iOS packages this export targets (DESIGN.md: "ORT Mobile 1.15+").
ORT_MOBILE_MAX_OPSET = 19
FAILED_DIR = "onnx.failed"
ORT_OPERATORS_FILE = "required_operators.config"


@dataclass
class LogitsCheck:
    """fp32 ONNX logits against PyTorch's on the check rows."""

    rows: int
    max_abs_diff: float
    atol: float
    passed: bool


@dataclass
class Int8Tried:
    """One int8 configuration tried: plain, or a remedy."""

    name: str
    description: str
    drop: float  # fp32 minus int8 dev accuracy, points, average over domains
    size_mb: float
    passed: bool


@dataclass
class Int8Check:
    """The int8 model kept and how it compares with fp32 on dev."""

    mode: str  # static | dynamic
    target: str  # avx2 | avx512_vnni | arm64
    attempt: str  # the configuration kept: plain or a remedy's name
    passed: bool
    drop: float  # fp32 minus int8 dev accuracy, points, average over domains
    max_drop: float
    drop_per_domain: dict[str, float]
    tried: list[Int8Tried]


@dataclass
class TrimCheck:
    """The trimmed vocabulary, and the trimmed model against the untrimmed one on dev."""

    vocab_before: int
    vocab_after: int
    parameters_before: int
    parameters_after: int
    size_mb_before: float
    size_mb_after: float
    from_corpus: int
    from_top: int
    special: int
    texts: int
    covered_rows: int  # dev rows whose pieces were all kept
    covered_agreement: float | None  # % of those on which both models agree
    unknown_rate_after: dict[str, float]  # % of [UNK] pieces on dev, per domain, trimmed
    passed: bool


@dataclass
class MobileCheck:
    """model.ort against the ONNX file it came from, and what ORT Mobile makes of it."""

    source: str  # the .onnx file converted
    rows: int
    mismatched_labels: int
    opset: int | None
    opset_ok: bool
    usability: str  # the checker's recommendation, or why it could not run


@dataclass
class ExportResult:
    """What `metakd export` did, typed for the command to show; ``metrics`` is metrics/export.json itself."""

    passed: bool
    folder: Path  # onnx/ when the checks pass, onnx.failed/ when they do not
    failures: list[str]
    metrics: dict
    seconds: float
    model: str  # student | teacher
    opset: int
    dev_accuracy: dict[str, dict[str, float]]  # model (untrimmed, pytorch, onnx, int8) -> domain (and average) -> %
    logits_check: LogitsCheck
    int8: Int8Check | None  # None without --int8
    trim: TrimCheck | None  # None without --trim-vocab
    mobile: MobileCheck | None  # None without model.ort
    size_mb: dict[str, float]  # pytorch weights and each file written
    parameters: int  # the PyTorch model's
    onnx_initializers: int

    @classmethod
    def from_metrics(cls, folder: Path, metrics: dict) -> "ExportResult":
        """The result of the export whose export.json is ``metrics`` (written to ``folder``)."""
        m = metrics
        int8 = trim = mobile = None
        if "int8_check" in m:
            check = m["int8_check"]
            int8 = Int8Check(check["mode"], m["target"], check["attempt"], check["passed"], check["drop"],
                             check["max_drop"], check["drop_per_domain"],
                             [Int8Tried(a["name"], a["description"], a["drop"], a["size_mb"], a["passed"])
                              for a in m["int8_attempts"]])
        if "trim" in m:
            t = m["trim"]
            trim = TrimCheck(t["vocab_before"], t["vocab_after"], t["parameters_before"], t["parameters_after"],
                             t["size_mb_before"], t["size_mb_after"], t["from_corpus"], t["from_top"], t["special"],
                             t["texts"], t["covered_rows"], t["covered_agreement"],
                             {d: rate["after"] for d, rate in t["unknown_rate"].items()}, t["passed"])
        if "ort_check" in m:
            ort, usability = m["ort_check"], m["mobile"]["usability"]
            mobile = MobileCheck(ort["source"], ort["rows"], ort["mismatched_labels"], m["mobile"]["opset"],
                                 m["mobile"]["opset_ok"], usability.get("recommendation") or usability.get("error"))
        logits = m["logits_check"]
        return cls(
            passed=m["passed"], folder=folder, failures=m["failures"], metrics=m, seconds=m["seconds"],
            model=m["model"], opset=m["opset"], dev_accuracy=m["dev_accuracy"],
            logits_check=LogitsCheck(logits["rows"], logits["max_abs_diff"], logits["atol"], logits["passed"]),
            int8=int8, trim=trim, mobile=mobile, size_mb=m["size_mb"],
            parameters=m["parameters"]["pytorch"], onnx_initializers=m["parameters"]["onnx_initializers"],
        )


class _ChecksFailed(Exception):
    """Raised inside atomic_dir so that onnx/ is left as it was."""


def detect_target(cpuinfo: str | None = None, machine: str | None = None) -> tuple[str, str]:
    """The int8 format for this CPU and why: arm64 on ARM, avx512_vnni with VNNI, else avx2."""
    return int8_target(cpu_info(cpuinfo, machine))


def validate(cfg: ExportConfig) -> None:
    choice(cfg.model, MODELS, "--model")
    choice(cfg.target, TARGETS, "--target")
    if cfg.opset < MIN_OPSET:
        raise UserError(
            f"--opset {cfg.opset} is too old for BERT-style models; use {MIN_OPSET} or later (default {DEFAULT_OPSET})"
        )
    if (cfg.ort or cfg.target == "arm64") and cfg.opset > ORT_MOBILE_MAX_OPSET:
        raise UserError(f"--opset {cfg.opset} is newer than ONNX Runtime Mobile 1.15 runs; with --ort (or --target "
                        f"arm64) use --opset {ORT_MOBILE_MAX_OPSET} or lower (default {DEFAULT_OPSET})")
    if cfg.check_rows < 1:
        raise UserError(f"export.check_rows must be at least 1, got {cfg.check_rows}")
    check_trim_options(cfg.trim_vocab, cfg.keep_top)
    if not cfg.max_drop >= 0:  # written so that NaN is refused too
        raise UserError(f"--max-drop must be 0 or more (the dev accuracy points int8 may lose vs fp32), "
                        f"got {cfg.max_drop:g}")
    if cfg.fuse and not cfg.int8:
        raise UserError("--fuse quantizes a fused graph to int8; add --int8 or drop --fuse")
    choice(cfg.int8_kind, INT8_MODES, "--int8-mode")
    choice(cfg.calibration, CALIBRATIONS, "--calibration")
    choice(cfg.static_format, STATIC_FORMATS, "export.static_format")
    if cfg.calibration_rows < 1:
        raise UserError(f"export.calibration_rows must be at least 1, got {cfg.calibration_rows}")
    if cfg.fuse and cfg.int8_kind == "static":
        raise UserError("--fuse quantizes the fused attention (QAttention), which only dynamic int8 has; "
                        "add --int8-mode dynamic or drop --fuse")


def _source(run: RunDir, cfg: ExportConfig) -> tuple[Path, int, str | None]:
    """(model folder, max_length, domain the model was trained for or None)."""
    from metakd_cli.models import TeacherInfo

    teacher_info = TeacherInfo.load(run.teacher) if (run.teacher / "metakd.json").is_file() else None
    if cfg.model == "teacher":
        if teacher_info is None or not (run.teacher / "config.json").is_file():
            if teacher_info is not None and teacher_info.mode == "single":
                raise UserError(
                    f"{run.teacher} holds one teacher per domain (--teacher-mode single); export one with "
                    "`metakd distill --domain D` first and export the student, or fit a meta/mix teacher"
                )
            raise UserError(f"{run.path}: no teacher/ in this run folder; run `metakd fit DATA` first")
        return run.teacher, teacher_info.max_length, None
    if not (run.student / "config.json").is_file():
        raise UserError(f"{run.path}: no student/ in this run folder; run `metakd distill` first (or --model teacher)")
    stale = stale_artifacts(run.load()).get("student")
    if stale:
        raise UserError(f"{run.path}: {stale} before exporting it")
    extra = {}
    if (run.student / "metakd_student.json").is_file():
        from metakd_cli.models import damaged_file

        try:
            extra = json.loads((run.student / "metakd_student.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise damaged_file(run.student / "metakd_student.json", exc) from None
        if not isinstance(extra, dict):
            raise damaged_file(run.student / "metakd_student.json", ValueError("not a JSON object"))
    max_length = extra.get("max_length") or (teacher_info.max_length if teacher_info else 128)
    return run.student, int(max_length), extra.get("domain")


def _check_rows(n_rows: int, domains: list[int], limit: int) -> list[int]:
    """Up to ``limit`` row indices, taken round-robin over the domains so each is represented."""
    rank: list[int] = []
    seen: dict[int, int] = {}
    for d in domains:
        rank.append(seen.get(d, 0))
        seen[d] = rank[-1] + 1
    order = sorted(range(n_rows), key=lambda i: (rank[i], domains[i]))
    return sorted(order[:limit])


@contextlib.contextmanager
def quiet_tools():
    """Silence the exporters' tracer warnings and the ORT converter's prints (stdout is for results)."""
    from metakd_cli.models import transformers_errors_only

    converter_logger = logging.getLogger("ort_format_model.utils")  # its INFO line names a temporary path
    disabled = converter_logger.disabled
    converter_logger.disabled = True
    try:  # transformers_errors_only: "torch_dtype is deprecated" from optimum's loader
        with transformers_errors_only(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        converter_logger.disabled = disabled


# --------------------------------------------------------------------------- int8 and its fallback

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

    from metakd_cli.inference import make_batch

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
    from metakd_cli.inference import make_batch, onnx_forward, softmax

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


def _quantize_with_fallback(
    job: _ExportJob, tmp: Path, fp32: _Fp32, calibration: Calibration | None = None
) -> tuple[Int8Result, list[Int8Result]]:
    """Quantize ``tmp``'s model.onnx plain, then with each remedy until one passes ``max_drop`` against ``fp32`` on
    dev; (the one kept, every attempt).

    The one kept is the first that passes, or the smallest drop when none does.
    """
    cfg, target, log, domains = job.cfg, job.target, job.log, job.dataset.domains
    dev, pad_id, fp32_accuracy, fp32_dev = fp32.dev, fp32.pad_id, fp32.accuracy["onnx"], fp32.fp32_dev
    source_dir, source_file = (fused_graph(tmp, log) if cfg.fuse else (tmp, ONNX_FILE))
    classifier = classifier_nodes(source_dir / source_file)
    results: list[Int8Result] = []
    for attempt in int8_attempts(target, cfg.per_channel):
        folder = tmp / f".int8-{attempt.name}"
        quantize_attempt(source_dir, source_file, target, attempt, folder, classifier, calibration)
        predictions = int8_dev_predictions(attempt, folder / INT8_FILE, dev, pad_id)
        accuracy = per_domain_accuracy(predictions, dev, domains)
        drops = {d: fp32_accuracy[d] - accuracy[d] for d in fp32_accuracy}
        drop = drops.get("average", 0.0)
        results.append(Int8Result(
            attempt=attempt, folder=folder, accuracy=accuracy, drop=drop, drop_per_domain=drops,
            agreement_with_fp32=float((predictions == fp32_dev).mean() * 100.0) if len(dev) else None,
            size_mb=size_mb(folder / INT8_FILE), passed=drop <= cfg.max_drop, predictions=predictions,
        ))
        verdict = "passes" if drop <= cfg.max_drop else "over the limit"
        log(f"int8 {attempt.name} ({attempt.description}): {0.0 - drop:+.2f} points vs fp32 on {len(dev)} dev rows "
            f"(limit {cfg.max_drop:g}): {verdict}")
        if drop <= cfg.max_drop:
            break
    chosen = next((r for r in results if r.passed), None) or min(results, key=lambda r: r.drop)
    return chosen, results


# --------------------------------------------------------------------------- ONNX Runtime Mobile


def _convert_to_ort(source: Path, folder: Path, target: str) -> Path:
    """``source`` (.onnx) as ``folder/model.ort`` through onnxruntime's converter (fixed optimizations),
    with the operator list for a reduced-size ORT Mobile build as ``folder/required_operators.config``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    scratch = folder / ".ort-convert"
    scratch.mkdir()
    try:
        convert_onnx_models_to_ort(
            source,
            output_dir=scratch,
            optimization_styles=[OptimizationStyle.Fixed],
            target_platform="arm" if target == "arm64" else None,
        )
        converted = next(scratch.glob("*.ort"))
        os.replace(converted, folder / ORT_FILE)
        for config in scratch.glob("*.config"):
            os.replace(config, folder / ORT_OPERATORS_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder / ORT_FILE


def onnx_opset(path: Path) -> int | None:
    """The model's ai.onnx opset (None when it imports none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def mobile_usability(path: Path) -> dict:
    """onnxruntime's ORT Mobile usability checker on an .onnx file, as a verdict per execution provider.

    ``{"nnapi": "NO" | "MAYBE" | "YES", "coreml_neuralnetwork": ..., "coreml_mlprogram": ...,
    "try_nnapi_or_coreml": bool, "recommendation": str}``; the CPU execution provider runs any
    model ORT can load, so "NO" only means NNAPI / CoreML would not speed it up.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("metakd.ort_mobile_usability")
    logger.propagate = False
    logger.handlers = [_Collect()]
    logger.setLevel(logging.INFO)
    try:
        with quiet_tools():
            try_eps = bool(usability_checker.analyze_model(Path(path), skip_optimize=False, logger=logger))
    except Exception as exc:  # the checker is advisory: record why it could not run, never fail the export
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        logger.handlers = []
    verdict: dict = {}
    for line in lines:
        if line.startswith("Model should perform well with ") and " as is: " in line:
            ep, _, answer = line.removeprefix("Model should perform well with ").partition(" as is: ")
            verdict[ep.lower().replace(" ", "_")] = answer.strip()
    verdict["try_nnapi_or_coreml"] = try_eps
    verdict["recommendation"] = ("compare NNAPI (Android) / CoreML (iOS) against the CPU execution provider"
                                 if try_eps else "use the CPU execution provider")
    return verdict


def _mobile_check(
    ort_source: Path, ort_path: Path, source_predictions: np.ndarray, dev: Encoded, pad_id: int
) -> tuple[dict, list[str]]:
    """Load model.ort back, compare its dev predictions with the ONNX file it came from, check the
    opset and run the usability checker; (metrics, failures)."""
    failures = []
    ort_logits = onnx_logits(onnx_session(ort_path), dev, pad_id)
    ort_predictions = ort_logits.argmax(-1)
    source_logits = onnx_logits(onnx_session(ort_source), dev, pad_id)
    mismatched = int((ort_predictions != source_predictions).sum())
    check = {
        "source": ort_source.name, "rows": len(dev), "mismatched_labels": mismatched,
        "agreement": float((ort_predictions == source_predictions).mean() * 100.0) if len(dev) else None,
        "max_abs_diff": float(np.abs(ort_logits - source_logits).max()) if len(dev) else 0.0,
        "passed": mismatched == 0,
    }
    if mismatched:
        failures.append(f"{ORT_FILE} predicts a different label than {ort_source.name} on {mismatched} of "
                        f"{len(dev)} dev rows")
    opset = onnx_opset(ort_source)
    opset_ok = opset is not None and MIN_OPSET <= opset <= ORT_MOBILE_MAX_OPSET
    if not opset_ok:
        failures.append(f"{ort_source.name} has opset {opset}; ONNX Runtime Mobile 1.15+ runs "
                        f"{MIN_OPSET}-{ORT_MOBILE_MAX_OPSET}")
    mobile = {"opset": opset, "supported_opsets": [MIN_OPSET, ORT_MOBILE_MAX_OPSET], "opset_ok": opset_ok,
              "operators_config": ORT_OPERATORS_FILE if (ort_path.parent / ORT_OPERATORS_FILE).is_file() else None,
              "usability": mobile_usability(ort_source)}
    return {"ort_check": check, "mobile": mobile}, failures


# --------------------------------------------------------------------------- vocabulary trimming


def _trim_metrics(
    report: TrimReport, original_dir: Path, dev_examples, dataset, trimmed_tokenizer, trimmed_dev: Encoded,
    trimmed_predictions: np.ndarray, max_length: int,
) -> tuple[dict, dict[str, float], list[str]]:
    """Untrimmed vs trimmed on dev: unknown-token rate per domain, accuracy, and agreement on covered rows.

    A covered row is one the trimmed tokenizer splits into exactly the original pieces; there the
    two models must predict the same label. Returns (metrics, untrimmed accuracy, failures).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data import encode
    from metakd_cli.vocab import unknown_rate

    tokenizer = AutoTokenizer.from_pretrained(original_dir)
    original_dev = encode(dev_examples, dataset, tokenizer, max_length)
    with quiet_tools():
        original = AutoModelForSequenceClassification.from_pretrained(original_dir, use_safetensors=True)
    original_predictions = torch_logits(original, original_dev, tokenizer.pad_token_id or 0).argmax(-1)
    new_id = {old: new for new, old in enumerate(report.kept_ids)}
    covered = [i for i, (old, new) in enumerate(zip(original_dev.input_ids, trimmed_dev.input_ids))
               if all(t in new_id for t in old) and [new_id[t] for t in old] == new]
    same = (original_predictions[covered] == trimmed_predictions[covered]) if covered else np.ones(0, dtype=bool)
    domain_ids = np.asarray(trimmed_dev.domains)
    unknown: dict[str, dict[str, float]] = {}
    for d, name in enumerate(dataset.domains):
        rows = [i for i in range(len(trimmed_dev)) if domain_ids[i] == d]
        if rows:
            unknown[name] = {
                "before": unknown_rate([original_dev.input_ids[i] for i in rows], tokenizer.unk_token_id,
                                       set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}),
                "after": unknown_rate([trimmed_dev.input_ids[i] for i in rows], trimmed_tokenizer.unk_token_id,
                                      set(trimmed_tokenizer.all_special_ids) - {trimmed_tokenizer.unk_token_id}),
            }
    untrimmed_accuracy = per_domain_accuracy(original_predictions, original_dev, dataset.domains)
    metrics = {
        **{k: v for k, v in report.to_json().items() if k != "out_dir"},
        "unknown_rate": unknown,
        "dev_accuracy": {"untrimmed": untrimmed_accuracy,
                         "trimmed": per_domain_accuracy(trimmed_predictions, trimmed_dev, dataset.domains)},
        "covered_rows": len(covered),
        "rows": len(trimmed_dev),
        "covered_agreement": float(same.mean() * 100.0) if covered else None,
        "passed": bool(same.all()),
    }
    failures = []
    if not same.all():
        failures.append(f"the trimmed model predicts differently from the untrimmed one on {int((~same).sum())} of "
                        f"{len(covered)} dev rows whose pieces were all kept")
    return metrics, untrimmed_accuracy, failures


CALIBRATION_SEED = 0


def _calibration_sample(train: list, rows: int) -> list:
    """``rows`` training examples drawn with a fixed seed (all of them when there are fewer), in their order."""
    import random

    if len(train) <= rows:
        return list(train)
    return [train[i] for i in sorted(random.Random(CALIBRATION_SEED).sample(range(len(train)), rows))]


def _training_texts(dataset, domains: list[str]) -> list[str]:
    """text and text_pair of the training rows of ``domains``: the corpus the kept pieces come from."""
    return [t for ex in dataset.select("train", domains) for t in (ex.text, ex.text_pair) if t]


# --------------------------------------------------------------------------- the step


def _onnx_parameters(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def _versions() -> dict[str, str]:
    import onnxruntime
    import optimum.version
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "optimum": optimum.version.__version__, "onnxruntime": onnxruntime.__version__}


def export(cfg: ExportConfig, run: RunDir, log: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export the run's student (or teacher) into onnx/, check it, and record the step.

    Returns ``passed=False`` (and keeps the files in onnx.failed/) when a check fails;
    the caller decides the exit status. Holds the run folder's lock.
    """
    validate(cfg)
    with run.lock("export", log):
        return _export(cfg, run, log)


@dataclass
class _ExportJob:
    """What one export works from: its settings, the model folder, the data, the int8 format and the log."""

    cfg: ExportConfig
    source: Path  # the run's student/ or teacher/
    max_length: int
    dataset: object  # metakd_cli.data.Dataset
    domains: list[str]  # the domains the model was made for
    dev_examples: list
    target: str  # int8 format: avx2 | avx512_vnni | arm64
    reason: str  # why that target
    write_ort: bool
    log: Callable[[str], None]

    def header(self) -> dict:
        """export.json's opening keys: what was exported, how, and on which CPU."""
        cfg, int8 = self.cfg, self.cfg.int8
        return {
            "step": "export",
            "model": cfg.model,
            "source": str(self.source),
            "domains": self.domains,
            "opset": cfg.opset,
            "int8": int8,
            "target": self.target if int8 else None,
            "target_reason": self.reason if int8 else None,
            "ort": self.write_ort,
            "trim_vocab": cfg.trim_vocab,
            "max_length": self.max_length,
            "labels": self.dataset.labels,
            "cpu": cpu_info().to_json(),
        }


def _job(cfg: ExportConfig, run: RunDir, log: Callable[[str], None]) -> _ExportJob:
    """The model to export and its data, and the int8 format for this CPU (or ``--target``)."""
    source, max_length, only_domain = _source(run, cfg)
    from metakd_cli.models import require_safetensors

    require_safetensors(source)  # optimum's export would load a pickled pytorch_model.bin

    _, dataset = run.reload_dataset()
    target, reason = (cfg.target, "--target") if cfg.target != "auto" else detect_target()
    write_ort = cfg.ort or target == "arm64"
    if (cfg.target != "auto" or cfg.ort != write_ort) and not cfg.int8:
        log(f"target {target} sets the int8 format; without --int8 it only decides whether model.ort is written")
    domains = [only_domain] if only_domain else dataset.domains
    return _ExportJob(cfg, source, max_length, dataset, domains, dataset.select("dev", domains), target, reason,
                      write_ort, log)


def _export(cfg: ExportConfig, run: RunDir, log: Callable[[str], None]) -> ExportResult:
    started = time.perf_counter()
    # the step the model comes from, as it is now: recorded as the export's source at the end
    source_id = run.load().steps.get("distill" if cfg.model == "student" else "fit", {}).get("id")
    job = _job(cfg, run, log)
    metrics = job.header()
    failed = run.path / FAILED_DIR
    try:
        with atomic_dir(run.onnx) as tmp, tempfile.TemporaryDirectory(prefix=".export-trim-", dir=run.path) as scratch:
            checks, failures = _export_into(job, tmp, Path(scratch))
            metrics.update(checks)
            metrics["passed"] = not failures
            metrics["failures"] = failures
            metrics["versions"] = _versions()
            metrics["config"] = asdict(cfg)
            metrics["command"] = " ".join(sys.argv)
            metrics["seconds"] = time.perf_counter() - started
            (tmp / EXPORT_JSON).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            if failures:
                shutil.rmtree(failed, ignore_errors=True)
                os.replace(tmp, failed)  # kept for inspection; atomic_dir then finds nothing to clean
                raise _ChecksFailed
    except _ChecksFailed:
        return ExportResult.from_metrics(failed, metrics)
    if failed.exists():  # an older failed attempt no longer describes anything
        shutil.rmtree(failed, ignore_errors=True)
    run.write_metrics("export", metrics)
    run.record_step("export", {
        "config": asdict(cfg), "onnx": str(run.onnx), "model": cfg.model, "opset": cfg.opset,
        "target": metrics["target"], "ort": job.write_ort, "trim_vocab": cfg.trim_vocab,
        "versions": metrics["versions"], "source_id": source_id,
    })
    from metakd_cli.model_card import write_model_cards  # onnx/README.md (and student/'s) from the metrics
    write_model_cards(run, log)
    return ExportResult.from_metrics(run.onnx, metrics)


@dataclass
class _Fp32:
    """The fp32 ONNX model beside the PyTorch model it came from, on the dev rows."""

    model: object  # the PyTorch model (the trimmed one with --trim-vocab)
    tokenizer: object  # the shipped tokenizer
    pad_id: int
    dev: Encoded
    check: Encoded  # the logits-check rows of dev
    torch_dev: np.ndarray  # labels on dev: PyTorch
    fp32_dev: np.ndarray  # labels on dev: fp32 ONNX
    accuracy: dict[str, dict[str, float]]  # {"pytorch": per domain, "onnx": per domain}
    logits_check: dict
    failures: list[str]


def _export_into(job: _ExportJob, tmp: Path, scratch: Path) -> tuple[dict, list[str]]:
    """Write every file of onnx/ into ``tmp``; (the checks' metrics in export.json's order, the failures)."""
    cfg = job.cfg
    model_dir, report = _trimmed_source(job, scratch)
    _to_onnx(job, model_dir if report is None else job.source, model_dir, tmp)
    _cut_at_max_length(tmp, job.max_length)
    fp32 = _fp32_check(job, tmp, model_dir, report is not None)
    checks: dict = {"logits_check": fp32.logits_check}
    failures = list(fp32.failures)
    accuracy = fp32.accuracy
    if report is not None:
        trim, untrimmed, trim_failures = _trim_check(job, report, fp32)
        checks["trim"] = trim
        accuracy = {"untrimmed": untrimmed, **accuracy}
        failures.extend(trim_failures)
    files = {ONNX_FILE: size_mb(tmp / ONNX_FILE)}
    source_predictions = fp32.fp32_dev  # what model.ort must predict: the labels of the file it is made from
    if cfg.int8:
        int8 = _int8_step(job, tmp, fp32)
        accuracy["int8"] = int8.accuracy
        checks["int8_check"], checks["int8_attempts"] = int8.check, int8.attempts
        failures.extend(int8.failures)
        files[INT8_FILE] = size_mb(tmp / INT8_FILE)
        source_predictions = int8.predictions
    checks["dev_accuracy"] = accuracy
    if job.write_ort:
        mobile, mobile_failures = _ort_step(job, tmp, source_predictions, fp32)
        checks.update(mobile)
        failures.extend(mobile_failures)
        files[ORT_FILE] = size_mb(tmp / ORT_FILE)
    checks["size_mb"] = {"pytorch": weights_size_mb(model_dir), **files}
    checks["parameters"] = {"pytorch": int(sum(p.numel() for p in fp32.model.parameters())),
                            "onnx_initializers": _onnx_parameters(tmp / ONNX_FILE)}
    _nest_onnx_files(tmp)
    return checks, failures


def _cut_at_max_length(folder: Path, max_length: int) -> None:
    """The shipped tokenizer's ``model_max_length`` set to the length the model was trained and checked at, so
    that a runtime that truncates at it (transformers.js does, and transformers with ``truncation=True``) cuts
    texts where ``metakd predict`` does."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_max_length") != max_length:
        config["model_max_length"] = max_length
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _nest_onnx_files(folder: Path) -> None:
    """The .onnx files of ``folder`` (and their external data) moved into ``folder/onnx/``, beside which
    config.json and the tokenizer stay: the layout transformers.js loads as-is and Optimum finds too. Moved, not
    copied: one copy of the weights serves every runtime."""
    nested = folder / ONNX_SUBDIR
    nested.mkdir(exist_ok=True)
    for path in sorted(folder.glob("*.onnx")) + sorted(folder.glob("*.onnx_data")):
        os.replace(path, nested / path.name)


def _trimmed_source(job: _ExportJob, scratch: Path) -> tuple[Path, TrimReport | None]:
    """(the model folder to export, the trim report): with --trim-vocab a copy of the source restricted to the
    pieces of the training texts, in ``scratch``; else the source itself and None."""
    cfg, source, log = job.cfg, job.source, job.log
    if not cfg.trim_vocab:
        return source, None
    texts = _training_texts(job.dataset, job.domains)
    log(f"trimming the vocabulary of {source} to the pieces of {len(texts):,} training texts"
        + (f" plus the first {cfg.keep_top:,} others by vocabulary rank" if cfg.keep_top else ""))
    model_dir = scratch / "trimmed"
    with quiet_tools():
        report = trim_vocabulary(source, model_dir, texts, cfg.keep_top)
    log(f"vocabulary {report.vocab_before:,} -> {report.vocab_after:,} pieces; parameters "
        f"{report.parameters_before:,} -> {report.parameters_after:,}")
    return model_dir, report


def _to_onnx(job: _ExportJob, shown: Path, model_dir: Path, tmp: Path) -> None:
    """Optimum's export of ``model_dir`` into ``tmp`` (model.onnx, config and tokenizer files)."""
    from optimum.exporters.onnx import main_export

    job.log(f"exporting {shown} to ONNX (opset {job.cfg.opset})")
    with quiet_tools():
        try:
            main_export(str(model_dir), tmp, task="text-classification", opset=job.cfg.opset,
                        do_validation=False, local_files_only=True)
        except ValueError as exc:  # unsupported architecture or opset
            raise UserError(f"cannot export {job.source} to ONNX: {str(exc).splitlines()[0]}") from None


def _fp32_check(job: _ExportJob, tmp: Path, model_dir: Path, trimmed: bool) -> _Fp32:
    """fp32 ONNX logits against PyTorch's on the check rows, and both models' dev accuracy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data import encode

    cfg, dataset = job.cfg, job.dataset
    tokenizer = AutoTokenizer.from_pretrained(tmp)  # the shipped tokenizer, as a user would load it
    pad_id = tokenizer.pad_token_id or 0
    with quiet_tools():
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)

    dev = encode(job.dev_examples, dataset, tokenizer, job.max_length)
    check = dev.subset(_check_rows(len(dev), dev.domains, cfg.check_rows))
    torch_check = torch_logits(model, check, pad_id)
    fp32 = onnx_session(tmp / ONNX_FILE)
    diff = float(np.abs(onnx_logits(fp32, check, pad_id) - torch_check).max()) if len(check) else 0.0
    logits_check = {"rows": len(check), "max_abs_diff": diff, "atol": cfg.atol, "passed": diff <= cfg.atol,
                    "reference": "trimmed PyTorch model" if trimmed else "PyTorch model"}
    job.log(f"fp32 ONNX vs PyTorch on {len(check)} dev rows: max |diff| {diff:.2e} (tolerance {cfg.atol:.0e})")
    failures = []
    if diff > cfg.atol:
        failures.append(f"fp32 ONNX logits differ from PyTorch by {diff:.2e} (> {cfg.atol:.0e})")

    torch_dev = torch_logits(model, dev, pad_id).argmax(-1)
    fp32_dev = onnx_logits(fp32, dev, pad_id).argmax(-1)
    accuracy = {"pytorch": per_domain_accuracy(torch_dev, dev, dataset.domains),
                "onnx": per_domain_accuracy(fp32_dev, dev, dataset.domains)}
    return _Fp32(model, tokenizer, pad_id, dev, check, torch_dev, fp32_dev, accuracy, logits_check, failures)


def _trim_check(job: _ExportJob, report: TrimReport, fp32: _Fp32) -> tuple[dict, dict[str, float], list[str]]:
    """export.json's ``trim`` (trimmed vs untrimmed on dev), the untrimmed model's dev accuracy, the failures."""
    trim, untrimmed, failures = _trim_metrics(report, job.source, job.dev_examples, job.dataset, fp32.tokenizer,
                                              fp32.dev, fp32.torch_dev, job.max_length)
    rates = ", ".join(f"{d} {r['after']:.2f}%" for d, r in trim["unknown_rate"].items())
    job.log(f"trimmed vs untrimmed: {trim['covered_agreement'] if trim['covered_rows'] else float('nan'):.1f}% "
            f"agreement on {trim['covered_rows']} of {trim['rows']} dev rows with every piece kept; "
            f"[UNK] rate on dev: {rates}")
    return {"keep_top": job.cfg.keep_top, **trim}, untrimmed, failures


@dataclass
class _Int8Step:
    """The int8 model kept in onnx/ and how it was chosen."""

    check: dict  # export.json's int8_check
    attempts: list[dict]  # export.json's int8_attempts
    accuracy: dict[str, float]  # dev, per domain
    predictions: np.ndarray  # dev labels
    failures: list[str]


def _int8_step(job: _ExportJob, tmp: Path, fp32: _Fp32) -> _Int8Step:
    """model_quantized.onnx and ort_config.json into ``tmp``: plain int8, then the remedies until one keeps dev
    accuracy within --max-drop of fp32; its batch invariance on the check rows."""
    cfg, target, log = job.cfg, job.target, job.log
    calibration = _calibration(job, tmp, fp32) if cfg.int8_kind == "static" else None
    if calibration is None:
        log(f"dynamic int8 quantization for {target} ({job.reason}): activation scales per batch, so a text's "
            "answer can change with its neighbours")
    chosen, attempts = _quantize_with_fallback(job, tmp, fp32, calibration)
    os.replace(chosen.folder / INT8_FILE, tmp / INT8_FILE)
    os.replace(chosen.folder / "ort_config.json", tmp / "ort_config.json")
    for result in attempts:
        shutil.rmtree(result.folder, ignore_errors=True)
    shutil.rmtree(tmp / FUSED_DIR, ignore_errors=True)
    invariance = batch_invariance(onnx_session(tmp / INT8_FILE), fp32.check, fp32.pad_id)
    check = {
        "split": "dev", "rows": len(fp32.dev), "drop": chosen.drop, "drop_per_domain": chosen.drop_per_domain,
        "max_drop": cfg.max_drop, "passed": chosen.passed, "agreement_with_fp32": chosen.agreement_with_fp32,
        "per_channel": chosen.attempt.per_channel, "attempt": chosen.attempt.name, "fused": cfg.fuse,
        "remedy": chosen.attempt.description if chosen.attempt.name != "plain" else None,
        "mode": cfg.int8_kind, "calibration": calibration.to_json() if calibration else None,
        "batch_invariance": invariance,
    }
    log(f"int8 {cfg.int8_kind}: each of {invariance['rows']} dev rows alone vs in a batch of "
        f"{invariance['batch_size']}: max |probability diff| {invariance['max_abs_prob_diff']:.1e}, "
        f"{invariance['label_flips']} labels changed")
    failures = []
    if not chosen.passed:
        tried = ", ".join(f"{r.attempt.name} {r.drop:.2f}" for r in attempts)
        failures.append(f"int8 dev accuracy is {chosen.drop:.2f} points below fp32 (--max-drop {cfg.max_drop:g}) "
                        f"with every remedy tried (drop per attempt: {tried})")
    elif chosen.attempt.name != "plain":
        log(f"kept int8 {chosen.attempt.name}: {chosen.attempt.description}")
    return _Int8Step(check, [r.to_json() for r in attempts], chosen.accuracy, chosen.predictions, failures)


def _calibration(job: _ExportJob, tmp: Path, fp32: _Fp32) -> Calibration:
    """Static int8's activation ranges, from a seeded sample of the training texts."""
    from metakd_cli.data import encode

    cfg = job.cfg
    train = _calibration_sample(job.dataset.select("train", job.domains), cfg.calibration_rows)
    feeds = calibration_feeds(tmp / ONNX_FILE, encode(train, job.dataset, fp32.tokenizer, job.max_length),
                              fp32.pad_id)
    job.log(f"static int8 for {job.target} ({job.reason}): {cfg.calibration} calibration on {len(feeds)} training "
            f"texts, {cfg.static_format} graph")
    return calibrate(tmp / ONNX_FILE, feeds, cfg.calibration, cfg.static_format, tmp / ".calibration")


def _ort_step(job: _ExportJob, tmp: Path, source_predictions: np.ndarray, fp32: _Fp32) -> tuple[dict, list[str]]:
    """model.ort from the int8 model (else the fp32 one), checked against it: ({ort_check, mobile}, failures)."""
    ort_source = tmp / (INT8_FILE if job.cfg.int8 else ONNX_FILE)
    job.log(f"converting {ort_source.name} to ORT format for ONNX Runtime Mobile")
    with quiet_tools():
        ort_path = _convert_to_ort(ort_source, tmp, job.target)
    mobile, failures = _mobile_check(ort_source, ort_path, source_predictions, fp32.dev, fp32.pad_id)
    usability = mobile["mobile"]["usability"]
    job.log(f"{ORT_FILE} vs {ort_source.name} on {len(fp32.dev)} dev rows: "
            f"{mobile['ort_check']['mismatched_labels']} labels differ; ORT Mobile usability: "
            f"{usability.get('recommendation') or usability.get('error')}")
    return mobile, failures
