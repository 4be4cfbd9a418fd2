"""`metakd export`: Optimum ONNX export, dynamic int8 quantization, ORT format, and the checks.

The run's student (or teacher) becomes ``onnx/``, a folder that loads with
``ORTModelForSequenceClassification.from_pretrained("metakd-run/onnx")`` and no metakd:

    model.onnx             fp32, opset pinned (default 18, the least optimum recommends for BERT)
    model_quantized.onnx   dynamic int8 (--int8) in the format of the target CPU
    model.ort              ONNX Runtime Mobile format (--ort; implied by --target arm64)
    config.json, tokenizer files, ort_config.json (quantization settings), metakd_export.json

Checks, saved in metrics/export.json: fp32 ONNX logits equal PyTorch's within ``atol`` on
real dev rows; the int8 model's dev accuracy may drop at most ``max_drop`` points below
the fp32 ONNX model's (average over domains). When a check fails nothing replaces onnx/:
the new files are kept in ``onnx.failed/`` and the manifest is not touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metakd_cli.config import DEFAULT_OPSET, ExportConfig, choice
from metakd_cli.cpu import cpu_info, int8_target
from metakd_cli.errors import UserError
from metakd_cli.evaluate import (
    EXPORT_JSON,
    INT8_FILE,
    ONNX_FILE,
    ORT_FILE,
    onnx_logits,
    onnx_session,
    per_domain_accuracy,
    size_mb,
    torch_logits,
    weights_size_mb,
)
from metakd_cli.run_dir import RunDir, atomic_dir

MODELS = ("student", "teacher")
TARGETS = ("auto", "avx2", "avx512_vnni", "arm64")
MIN_OPSET = 14  # scaled-dot-product attention and the int8 operators need 14 or later
FAILED_DIR = "onnx.failed"


@dataclass
class ExportResult:
    passed: bool
    folder: Path  # onnx/ when the checks pass, onnx.failed/ when they do not
    failures: list[str]
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


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
    if cfg.check_rows < 1:
        raise UserError(f"check_rows must be at least 1, got {cfg.check_rows}")


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
    extra = {}
    if (run.student / "metakd_student.json").is_file():
        extra = json.loads((run.student / "metakd_student.json").read_text(encoding="utf-8"))
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
def _quiet_tools():
    """Silence the exporters' tracer warnings and the ORT converter's prints (stdout is for results)."""
    from transformers.utils import logging as transformers_logging

    converter_logger = logging.getLogger("ort_format_model.utils")  # its INFO line names a temporary path
    disabled = converter_logger.disabled
    verbosity = transformers_logging.get_verbosity()
    converter_logger.disabled = True
    transformers_logging.set_verbosity_error()  # "torch_dtype is deprecated" from optimum's loader
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        converter_logger.disabled = disabled
        transformers_logging.set_verbosity(verbosity)


def _quantization_config(target: str, per_channel: bool):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    make = {"avx2": AutoQuantizationConfig.avx2, "avx512_vnni": AutoQuantizationConfig.avx512_vnni,
            "arm64": AutoQuantizationConfig.arm64}[target]
    return make(is_static=False, per_channel=per_channel)


def _convert_to_ort(source: Path, folder: Path, target: str) -> Path:
    """``source`` (.onnx) as ``folder/model.ort`` through onnxruntime's converter (fixed optimizations)."""
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
        for config in scratch.glob("*.config"):  # operator list, for a reduced-size ORT Mobile build
            os.replace(config, folder / "required_operators.config")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder / ORT_FILE


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
    the caller decides the exit status.
    """
    validate(cfg)
    started = time.perf_counter()
    run.load()
    source, max_length, only_domain = _source(run, cfg)
    from metakd_cli.distill import reload_dataset

    _, dataset = reload_dataset(run)
    target, reason = (cfg.target, "--target") if cfg.target != "auto" else detect_target()
    write_ort = cfg.ort or target == "arm64"
    if (cfg.target != "auto" or cfg.ort != write_ort) and not cfg.int8:
        log(f"target {target} sets the int8 format; without --int8 it only decides whether model.ort is written")

    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    domains = [only_domain] if only_domain else dataset.domains
    dev_examples = dataset.select("dev", domains)
    failures: list[str] = []
    metrics: dict = {
        "step": "export",
        "model": cfg.model,
        "source": str(source),
        "domains": domains,
        "opset": cfg.opset,
        "int8": cfg.int8,
        "target": target if cfg.int8 else None,
        "target_reason": reason if cfg.int8 else None,
        "ort": write_ort,
        "max_length": max_length,
        "labels": dataset.labels,
        "cpu": cpu_info().to_json(),
    }
    failed = run.path / FAILED_DIR
    try:
        with atomic_dir(run.onnx) as tmp:
            log(f"exporting {source} to ONNX (opset {cfg.opset})")
            with _quiet_tools():
                try:
                    main_export(str(source), tmp, task="text-classification", opset=cfg.opset,
                                do_validation=False, local_files_only=True)
                except ValueError as exc:  # unsupported architecture or opset
                    raise UserError(f"cannot export {source} to ONNX: {str(exc).splitlines()[0]}") from None
            tokenizer = AutoTokenizer.from_pretrained(tmp)  # the shipped tokenizer, as a user would load it
            pad_id = tokenizer.pad_token_id or 0
            model = AutoModelForSequenceClassification.from_pretrained(source)
            from metakd_cli.data import encode

            dev = encode(dev_examples, dataset, tokenizer, max_length)
            check = dev.subset(_check_rows(len(dev), dev.domains, cfg.check_rows))
            torch_check = torch_logits(model, check, pad_id)
            fp32 = onnx_session(tmp / ONNX_FILE)
            diff = float(np.abs(onnx_logits(fp32, check, pad_id) - torch_check).max()) if len(check) else 0.0
            metrics["logits_check"] = {"rows": len(check), "max_abs_diff": diff, "atol": cfg.atol,
                                       "passed": diff <= cfg.atol}
            log(f"fp32 ONNX vs PyTorch on {len(check)} dev rows: max |diff| {diff:.2e} (tolerance {cfg.atol:.0e})")
            if diff > cfg.atol:
                failures.append(f"fp32 ONNX logits differ from PyTorch by {diff:.2e} (> {cfg.atol:.0e})")

            torch_dev = torch_logits(model, dev, pad_id).argmax(-1)
            fp32_dev = onnx_logits(fp32, dev, pad_id).argmax(-1)
            accuracy = {"pytorch": per_domain_accuracy(torch_dev, dev, dataset.domains),
                        "onnx": per_domain_accuracy(fp32_dev, dev, dataset.domains)}
            files = {ONNX_FILE: size_mb(tmp / ONNX_FILE)}
            if cfg.int8:
                from optimum.onnxruntime import ORTQuantizer

                log(f"dynamic int8 quantization for {target} ({reason})")
                with _quiet_tools():
                    quantizer = ORTQuantizer.from_pretrained(tmp, file_name=ONNX_FILE)
                    quantizer.quantize(save_dir=tmp, quantization_config=_quantization_config(target, cfg.per_channel))
                int8_dev = onnx_logits(onnx_session(tmp / INT8_FILE), dev, pad_id).argmax(-1)
                accuracy["int8"] = per_domain_accuracy(int8_dev, dev, dataset.domains)
                drops = {d: accuracy["onnx"][d] - accuracy["int8"][d] for d in accuracy["onnx"]}
                drop = drops.get("average", 0.0)
                metrics["int8_check"] = {
                    "split": "dev", "rows": len(dev), "drop": drop, "drop_per_domain": drops,
                    "max_drop": cfg.max_drop, "passed": drop <= cfg.max_drop,
                    "agreement_with_fp32": float((int8_dev == fp32_dev).mean() * 100.0) if len(dev) else None,
                    "per_channel": cfg.per_channel,
                }
                log(f"int8 vs fp32 on {len(dev)} dev rows: {drop:+.2f} points drop (limit {cfg.max_drop:g})")
                if drop > cfg.max_drop:
                    failures.append(f"int8 dev accuracy is {drop:.2f} points below fp32 (--max-drop {cfg.max_drop:g})")
                files[INT8_FILE] = size_mb(tmp / INT8_FILE)
            metrics["dev_accuracy"] = accuracy
            if write_ort:
                ort_source = tmp / (INT8_FILE if cfg.int8 else ONNX_FILE)
                log(f"converting {ort_source.name} to ORT format for ONNX Runtime Mobile")
                with _quiet_tools():
                    ort_path = _convert_to_ort(ort_source, tmp, target)
                ort_logits = onnx_logits(onnx_session(ort_path), check, pad_id)
                source_logits = onnx_logits(onnx_session(ort_source), check, pad_id)
                metrics["ort_check"] = {
                    "source": ort_source.name, "rows": len(check),
                    "max_abs_diff": float(np.abs(ort_logits - source_logits).max()) if len(check) else 0.0,
                    "agreement": float((ort_logits.argmax(-1) == source_logits.argmax(-1)).mean() * 100.0)
                    if len(check) else None,
                }
                files[ORT_FILE] = size_mb(ort_path)
            metrics["size_mb"] = {"pytorch": weights_size_mb(source), **files}
            metrics["parameters"] = {"pytorch": int(sum(p.numel() for p in model.parameters())),
                                     "onnx_initializers": _onnx_parameters(tmp / ONNX_FILE)}
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
        return ExportResult(passed=False, folder=failed, failures=failures, metrics=metrics,
                            seconds=metrics["seconds"])
    if failed.exists():  # an older failed attempt no longer describes anything
        shutil.rmtree(failed, ignore_errors=True)
    run.write_metrics("export", metrics)
    run.record_step("export", {
        "config": asdict(cfg), "onnx": str(run.onnx), "model": cfg.model, "opset": cfg.opset,
        "target": metrics["target"], "ort": write_ort, "versions": metrics["versions"],
    })
    return ExportResult(passed=True, folder=run.onnx, failures=[], metrics=metrics, seconds=metrics["seconds"])
