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
(``metakd_cli.models.inference.onnx_model_path``), so a run exported before this layout still evaluates and predicts.

With --trim-vocab the exported model is first restricted to the word pieces of the training
corpus (``metakd_cli.ship.trim``): the ONNX files, the tokenizer and the PyTorch reference of the
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

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metakd_cli.data.dataset import reload_dataset
from metakd_cli.core.config import DEFAULT_OPSET, ExportConfig, choice
from metakd_cli.core.cpu import CpuInfo, cpu_info, int8_target
from metakd_cli.data.encode import Encoded
from metakd_cli.core.errors import UserError
from metakd_cli.data.metrics import per_domain_accuracy
from metakd_cli.models.inference import (
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
from metakd_cli.core.run_dir import RunDir, StepRecord, atomic_dir, stale_artifacts
from metakd_cli.ship.int8 import (
    FUSED_DIR,
    Calibration,
    Int8Result,
    batch_invariance,
    calibrate,
    calibration_feeds,
    calibration_sample,
    classifier_nodes,
    fused_graph,
    int8_attempts,
    int8_dev_predictions,
    quantize_attempt,
)
from metakd_cli.ship.mobile import MIN_OPSET, ORT_MOBILE_MAX_OPSET, convert_to_ort, mobile_check
from metakd_cli.ship.onnx_tools import quiet_tools, tool_versions
from metakd_cli.ship.trim import TrimCheck, TrimReport, check_trim_options, training_texts, trim_check, trim_vocabulary

MODELS = ("student", "teacher")
TARGETS = ("auto", "avx2", "avx512_vnni", "arm64")
INT8_MODES = ("static", "dynamic")
CALIBRATIONS = ("minmax", "percentile", "entropy")
STATIC_FORMATS = ("qdq", "qoperator")
FAILED_DIR = "onnx.failed"


@dataclass
class LogitsCheck:
    """fp32 ONNX logits against PyTorch's on the check rows (export.json's ``logits_check``)."""

    rows: int
    max_abs_diff: float
    atol: float
    passed: bool
    reference: str  # "PyTorch model", or "trimmed PyTorch model" with --trim-vocab

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Int8Tried:
    """One int8 configuration tried, plain or a remedy (an entry of export.json's ``int8_attempts``): the record
    of ``metakd_cli.ship.int8.Int8Result.to_json``, typed."""

    name: str
    description: str
    per_channel: bool
    fp32_embeddings_classifier: bool
    reduce_range: bool
    weights: str | None
    drop: float  # fp32 minus int8 dev accuracy, points, average over domains
    drop_per_domain: dict[str, float]
    size_mb: float
    passed: bool
    agreement_with_fp32: float | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Int8Check:
    """The int8 model kept and how it compares with fp32 on dev (export.json's ``target``, ``target_reason``,
    ``int8_check`` and ``int8_attempts``)."""

    mode: str  # static | dynamic
    target: str  # avx2 | avx512_vnni | arm64
    target_reason: str  # why that target: --target, or what the CPU has
    attempt: str  # the configuration kept: plain or a remedy's name
    remedy: str | None  # the kept remedy's description; None for plain
    per_channel: bool  # the kept configuration's weight scales
    fused: bool  # --fuse
    passed: bool
    rows: int  # dev rows
    drop: float  # fp32 minus int8 dev accuracy, points, average over domains
    max_drop: float
    drop_per_domain: dict[str, float]
    agreement_with_fp32: float | None  # % of dev rows on which int8 and fp32 give the same label
    calibration: dict | None  # static int8's: method, format, rows, seconds, operators (Calibration.to_json)
    batch_invariance: dict  # rows, batch_size, max_abs_prob_diff, label_flips (ship.int8.batch_invariance)
    tried: list[Int8Tried]

    def to_json(self) -> dict:
        """export.json's ``int8_check``."""
        return {
            "split": "dev", "rows": self.rows, "drop": self.drop, "drop_per_domain": self.drop_per_domain,
            "max_drop": self.max_drop, "passed": self.passed, "agreement_with_fp32": self.agreement_with_fp32,
            "per_channel": self.per_channel, "attempt": self.attempt, "fused": self.fused, "remedy": self.remedy,
            "mode": self.mode, "calibration": self.calibration, "batch_invariance": self.batch_invariance,
        }


@dataclass
class MobileCheck:
    """model.ort against the ONNX file it came from, and what ORT Mobile makes of it: the records of
    ``metakd_cli.ship.mobile.mobile_check``, typed (export.json's ``ort_check`` and ``mobile``)."""

    source: str  # the .onnx file converted
    rows: int
    mismatched_labels: int
    agreement: float | None  # % of dev rows on which both give the same label
    max_abs_diff: float  # logits
    passed: bool
    opset: int | None
    supported_opsets: list[int]  # the lowest and highest ORT Mobile runs
    opset_ok: bool
    operators_config: str | None  # required_operators.config, when written
    usability: dict  # the usability checker's answers (nnapi, coreml_*, recommendation), or {"error": why}

    @property
    def recommendation(self) -> str:
        """The usability checker's recommendation, or why it could not run."""
        return self.usability.get("recommendation") or self.usability.get("error")

    def to_json(self) -> dict:
        """export.json's ``ort_check`` and ``mobile``."""
        return {
            "ort_check": {"source": self.source, "rows": self.rows, "mismatched_labels": self.mismatched_labels,
                          "agreement": self.agreement, "max_abs_diff": self.max_abs_diff, "passed": self.passed},
            "mobile": {"opset": self.opset, "supported_opsets": self.supported_opsets, "opset_ok": self.opset_ok,
                       "operators_config": self.operators_config, "usability": self.usability},
        }


@dataclass
class ExportResult(StepRecord):
    """What `metakd export` did. ``to_json()`` is metrics/export.json (and the export's metakd_export.json): this
    class is the one place that says what the file holds."""

    passed: bool
    folder: Path  # onnx/ when the checks pass, onnx.failed/ when they do not
    failures: list[str]
    seconds: float
    config: ExportConfig
    source: Path  # the model folder exported: the run's student/ or teacher/
    domains: list[str]  # the domains the model was made for
    labels: list[str]
    max_length: int
    cpu: CpuInfo
    logits_check: LogitsCheck
    trim: TrimCheck | None  # None without --trim-vocab
    int8: Int8Check | None  # None without --int8
    dev_accuracy: dict[str, dict[str, float]]  # model (untrimmed, pytorch, onnx, int8) -> domain (and average) -> %
    mobile: MobileCheck | None  # None without model.ort
    size_mb: dict[str, float]  # pytorch weights and each file written
    parameters: int  # the PyTorch model's
    onnx_initializers: int
    versions: dict[str, str]
    command: str

    @property
    def model(self) -> str:
        """student | teacher"""
        return self.config.model

    @property
    def opset(self) -> int:
        return self.config.opset

    def to_json(self) -> dict:
        int8, trim, mobile = self.int8, self.trim, self.mobile
        return {
            "step": "export",
            "model": self.model,
            "source": str(self.source),
            "domains": self.domains,
            "opset": self.opset,
            "int8": int8 is not None,
            "target": int8.target if int8 else None,
            "target_reason": int8.target_reason if int8 else None,
            "ort": mobile is not None,
            "trim_vocab": trim is not None,
            "max_length": self.max_length,
            "labels": self.labels,
            "cpu": self.cpu.to_json(),
            "logits_check": self.logits_check.to_json(),
            **({"trim": {"keep_top": self.config.keep_top, **trim.to_json()}} if trim else {}),
            **({"int8_check": int8.to_json(), "int8_attempts": [a.to_json() for a in int8.tried]} if int8 else {}),
            "dev_accuracy": self.dev_accuracy,
            **(mobile.to_json() if mobile else {}),
            "size_mb": self.size_mb,
            "parameters": {"pytorch": self.parameters, "onnx_initializers": self.onnx_initializers},
            "passed": self.passed,
            "failures": self.failures,
            "versions": self.versions,
            "config": asdict(self.config),
            "command": self.command,
            "seconds": self.seconds,
        }


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
    from metakd_cli.models.heads import TeacherInfo

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
        from metakd_cli.models.loading import damaged_file

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


# --------------------------------------------------------------------------- the step


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



def _onnx_parameters(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


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
    dataset: object  # metakd_cli.data.dataset.Dataset
    domains: list[str]  # the domains the model was made for
    dev_examples: list
    target: str  # int8 format: avx2 | avx512_vnni | arm64
    reason: str  # why that target
    write_ort: bool
    log: Callable[[str], None]


def _job(cfg: ExportConfig, run: RunDir, log: Callable[[str], None]) -> _ExportJob:
    """The model to export and its data, and the int8 format for this CPU (or ``--target``)."""
    source, max_length, only_domain = _source(run, cfg)
    from metakd_cli.models.loading import require_safetensors

    require_safetensors(source)  # optimum's export would load a pickled pytorch_model.bin

    _, dataset = reload_dataset(run)
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
    cpu = cpu_info()
    failed = run.path / FAILED_DIR
    try:
        with atomic_dir(run.onnx) as tmp, tempfile.TemporaryDirectory(prefix=".export-trim-", dir=run.path) as scratch:
            checks = _export_into(job, tmp, Path(scratch))
            result = ExportResult(
                passed=not checks.failures, folder=failed if checks.failures else run.onnx,
                failures=checks.failures, seconds=time.perf_counter() - started, config=cfg, source=job.source,
                domains=job.domains, labels=job.dataset.labels, max_length=job.max_length, cpu=cpu,
                logits_check=checks.logits_check, trim=checks.trim, int8=checks.int8,
                dev_accuracy=checks.dev_accuracy, mobile=checks.mobile, size_mb=checks.size_mb,
                parameters=checks.parameters, onnx_initializers=checks.onnx_initializers, versions=tool_versions(),
                command=" ".join(sys.argv),
            )
            metrics = result.to_json()
            (tmp / EXPORT_JSON).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            if not result.passed:
                shutil.rmtree(failed, ignore_errors=True)
                os.replace(tmp, failed)  # kept for inspection; atomic_dir then finds nothing to clean
                raise _ChecksFailed
    except _ChecksFailed:
        return result
    if failed.exists():  # an older failed attempt no longer describes anything
        shutil.rmtree(failed, ignore_errors=True)
    run.write_metrics("export", metrics)
    run.record_step("export", {
        "config": asdict(cfg), "onnx": str(run.onnx), "model": cfg.model, "opset": cfg.opset,
        "target": metrics["target"], "ort": job.write_ort, "trim_vocab": cfg.trim_vocab,
        "versions": result.versions, "source_id": source_id,
    })
    from metakd_cli.ship.model_card import write_model_cards  # onnx/README.md (and student/'s) from the metrics
    write_model_cards(run, log)
    return result


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
    logits_check: LogitsCheck
    failures: list[str]


@dataclass
class _Checks:
    """What the files written into onnx/ are, as checked: the parts of ExportResult that ``_export_into`` makes."""

    logits_check: LogitsCheck
    trim: TrimCheck | None
    int8: Int8Check | None
    dev_accuracy: dict[str, dict[str, float]]
    mobile: MobileCheck | None
    size_mb: dict[str, float]
    parameters: int
    onnx_initializers: int
    failures: list[str]


def _export_into(job: _ExportJob, tmp: Path, scratch: Path) -> _Checks:
    """Write every file of onnx/ into ``tmp`` and check them."""
    cfg = job.cfg
    model_dir, report = _trimmed_source(job, scratch)
    _to_onnx(job, model_dir if report is None else job.source, model_dir, tmp)
    _cut_at_max_length(tmp, job.max_length)
    fp32 = _fp32_check(job, tmp, model_dir, report is not None)
    failures = list(fp32.failures)
    accuracy = fp32.accuracy
    trim = int8 = mobile = None
    if report is not None:
        trim, untrimmed, trim_failures = _trim_check(job, report, fp32)
        accuracy = {"untrimmed": untrimmed, **accuracy}
        failures.extend(trim_failures)
    files = {ONNX_FILE: size_mb(tmp / ONNX_FILE)}
    source_predictions = fp32.fp32_dev  # what model.ort must predict: the labels of the file it is made from
    if cfg.int8:
        int8_step = _int8_step(job, tmp, fp32)
        int8 = int8_step.check
        accuracy["int8"] = int8_step.accuracy
        failures.extend(int8_step.failures)
        files[INT8_FILE] = size_mb(tmp / INT8_FILE)
        source_predictions = int8_step.predictions
    if job.write_ort:
        mobile, mobile_failures = _ort_step(job, tmp, source_predictions, fp32)
        failures.extend(mobile_failures)
        files[ORT_FILE] = size_mb(tmp / ORT_FILE)
    checks = _Checks(
        logits_check=fp32.logits_check, trim=trim, int8=int8, dev_accuracy=accuracy, mobile=mobile,
        size_mb={"pytorch": weights_size_mb(model_dir), **files},
        parameters=int(sum(p.numel() for p in fp32.model.parameters())),
        onnx_initializers=_onnx_parameters(tmp / ONNX_FILE), failures=failures,
    )
    _nest_onnx_files(tmp)
    return checks


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
    texts = training_texts(job.dataset, job.domains)
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

    from metakd_cli.data.encode import encode

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
    logits_check = LogitsCheck(rows=len(check), max_abs_diff=diff, atol=cfg.atol, passed=diff <= cfg.atol,
                               reference="trimmed PyTorch model" if trimmed else "PyTorch model")
    job.log(f"fp32 ONNX vs PyTorch on {len(check)} dev rows: max |diff| {diff:.2e} (tolerance {cfg.atol:.0e})")
    failures = []
    if diff > cfg.atol:
        failures.append(f"fp32 ONNX logits differ from PyTorch by {diff:.2e} (> {cfg.atol:.0e})")

    torch_dev = torch_logits(model, dev, pad_id).argmax(-1)
    fp32_dev = onnx_logits(fp32, dev, pad_id).argmax(-1)
    accuracy = {"pytorch": per_domain_accuracy(torch_dev, dev, dataset.domains),
                "onnx": per_domain_accuracy(fp32_dev, dev, dataset.domains)}
    return _Fp32(model, tokenizer, pad_id, dev, check, torch_dev, fp32_dev, accuracy, logits_check, failures)


def _trim_check(job: _ExportJob, report: TrimReport, fp32: _Fp32) -> tuple[TrimCheck, dict[str, float], list[str]]:
    """Trimmed vs untrimmed on dev, the untrimmed model's dev accuracy, the failures."""
    trim, untrimmed, failures = trim_check(report, job.source, job.dev_examples, job.dataset, fp32.tokenizer,
                                           fp32.dev, fp32.torch_dev, job.max_length)
    rates = ", ".join(f"{d} {after:.2f}%" for d, after in trim.unknown_rate_after.items())
    job.log(f"trimmed vs untrimmed: {trim.covered_agreement if trim.covered_rows else float('nan'):.1f}% "
            f"agreement on {trim.covered_rows} of {trim.rows} dev rows with every piece kept; "
            f"[UNK] rate on dev: {rates}")
    return trim, untrimmed, failures


@dataclass
class _Int8Step:
    """The int8 model kept in onnx/ and how it was chosen."""

    check: Int8Check
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
    check = Int8Check(
        mode=cfg.int8_kind, target=target, target_reason=job.reason, attempt=chosen.attempt.name,
        remedy=chosen.attempt.description if chosen.attempt.name != "plain" else None,
        per_channel=chosen.attempt.per_channel, fused=cfg.fuse, passed=chosen.passed, rows=len(fp32.dev),
        drop=chosen.drop, max_drop=cfg.max_drop, drop_per_domain=chosen.drop_per_domain,
        agreement_with_fp32=chosen.agreement_with_fp32, calibration=calibration.to_json() if calibration else None,
        batch_invariance=invariance, tried=[Int8Tried(**result.to_json()) for result in attempts],
    )
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
    return _Int8Step(check, chosen.accuracy, chosen.predictions, failures)


def _calibration(job: _ExportJob, tmp: Path, fp32: _Fp32) -> Calibration:
    """Static int8's activation ranges, from a seeded sample of the training texts."""
    from metakd_cli.data.encode import encode

    cfg = job.cfg
    train = calibration_sample(job.dataset.select("train", job.domains), cfg.calibration_rows)
    feeds = calibration_feeds(tmp / ONNX_FILE, encode(train, job.dataset, fp32.tokenizer, job.max_length),
                              fp32.pad_id)
    job.log(f"static int8 for {job.target} ({job.reason}): {cfg.calibration} calibration on {len(feeds)} training "
            f"texts, {cfg.static_format} graph")
    return calibrate(tmp / ONNX_FILE, feeds, cfg.calibration, cfg.static_format, tmp / ".calibration")


def _ort_step(job: _ExportJob, tmp: Path, source_predictions: np.ndarray,
             fp32: _Fp32) -> tuple[MobileCheck, list[str]]:
    """model.ort from the int8 model (else the fp32 one), checked against it; (the check, failures)."""
    ort_source = tmp / (INT8_FILE if job.cfg.int8 else ONNX_FILE)
    job.log(f"converting {ort_source.name} to ORT format for ONNX Runtime Mobile")
    with quiet_tools():
        ort_path = convert_to_ort(ort_source, tmp, job.target)
    records, failures = mobile_check(ort_source, ort_path, source_predictions, fp32.dev, fp32.pad_id)
    mobile = MobileCheck(**records["ort_check"], **records["mobile"])
    job.log(f"{ORT_FILE} vs {ort_source.name} on {len(fp32.dev)} dev rows: "
            f"{mobile.mismatched_labels} labels differ; ORT Mobile usability: {mobile.recommendation}")
    return mobile, failures
