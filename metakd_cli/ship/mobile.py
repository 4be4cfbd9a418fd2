"""ONNX Runtime Mobile: the ORT-format conversion of an exported model and whether a mobile build runs it."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from metakd_cli.data.encode import Encoded
from metakd_cli.models.inference import ORT_FILE, onnx_logits, onnx_session
from metakd_cli.ship.onnx_tools import quiet_tools

MIN_OPSET = 14  # scaled-dot-product attention and the int8 operators need 14 or later
# The newest ai.onnx opset ONNX Runtime 1.15 implements (ONNX 1.14): the oldest ORT Mobile
# release whose Android/iOS packages this export targets (DESIGN.md: "ORT Mobile 1.15+").
ORT_MOBILE_MAX_OPSET = 19
ORT_OPERATORS_FILE = "required_operators.config"

def convert_to_ort(source: Path, folder: Path, target: str) -> Path:
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


def mobile_check(
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
