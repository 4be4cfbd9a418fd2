"""What every ONNX tool call in metakd runs under (the exporters' and converters' chatter silenced), and the
versions of the tools an export records."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet_tools():
    """Silence the exporters' tracer warnings and the ORT converter's prints (stdout is for results)."""
    from metakd_cli.models.loading import transformers_errors_only

    converter_logger = logging.getLogger("ort_format_model.utils")  # its INFO line names a temporary path
    disabled = converter_logger.disabled
    converter_logger.disabled = True
    try:  # transformers_errors_only: "torch_dtype is deprecated" from optimum's loader
        with transformers_errors_only(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        converter_logger.disabled = disabled


def tool_versions() -> dict[str, str]:
    import onnxruntime
    import optimum.version
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "optimum": optimum.version.__version__, "onnxruntime": onnxruntime.__version__}
