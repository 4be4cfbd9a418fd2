"""The teacher as fp32 ONNX, for labelling many rows on a CPU (a transfer set, --augment's rows).

ONNX Runtime runs a BERT-style encoder about twice as fast as PyTorch on these CPUs (DESIGN.md's CPU facts:
MiniLM-L6 119 vs 59 rows/s; `python -m bench label-speed transfer` measures the teacher at hand), so a long
labelling pass exports the teacher once with Optimum, checks its logits against PyTorch's on the first rows, and
labels with it. A teacher Optimum cannot export, or whose ONNX logits differ, is labelled by PyTorch instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from metakd_cli.core.config import DEFAULT_OPSET

LABEL_WITH = ("auto", "torch", "onnx")
ONNX_MIN_ROWS = 2048  # auto: fewer rows do not repay the export (seconds for MiniLM-L6, about a minute for MPNet)
CHECK_ROWS = 64  # rows labelled both ways: the first half and the longest half
ATOL = 1e-3  # logits; the export's own check of a shipped model is stricter (1e-4) on a few dev rows


def wanted(label_with: str, rows: int, one_plain_teacher: bool, on_cpu: bool, one_process: bool = True) -> bool:
    """Whether to label with ONNX: asked for (`onnx`), or `auto` with enough rows on a CPU; never for a teacher
    with one head per domain (mtl) or several teachers, which are not one exportable classifier, nor under several
    processes (each labels its share with PyTorch)."""
    if not one_plain_teacher or not one_process or label_with == "torch":
        return False
    return label_with == "onnx" or (on_cpu and rows >= ONNX_MIN_ROWS)


def check_rows(lengths: list[int], n: int = CHECK_ROWS) -> list[int]:
    """The rows checked against PyTorch: the first n/2 and the n/2 longest (a fault may show on long rows only)."""
    first = list(range(min(n // 2, len(lengths))))
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return sorted(set(first) | set(longest[: n - len(first)]))


class OnnxTeacher:
    """An fp32 ONNX export of a teacher folder in a temporary folder (the system's, or ``scratch``; removed by
    ``close``, and by the system's temporary-file cleaning after a hard kill, never left in a run folder)."""

    def __init__(self, teacher_dir: Path, scratch: Path | None = None):
        from optimum.exporters.onnx import main_export

        from metakd_cli.ship.onnx_tools import quiet_tools
        from metakd_cli.models.inference import onnx_session

        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="metakd-onnx-teacher-", dir=scratch)
        try:
            folder = Path(self._tmp.name)
            with quiet_tools():
                main_export(str(teacher_dir), folder, task="text-classification", opset=DEFAULT_OPSET,
                            do_validation=False, local_files_only=True)
            self.session = onnx_session(folder / "model.onnx")
        except BaseException:
            self._tmp.cleanup()
            raise

    def logits(self, encoded, pad_id: int) -> np.ndarray:
        from metakd_cli.models.inference import onnx_logits

        return onnx_logits(self.session, encoded, pad_id)

    def close(self) -> None:
        self.session = None
        self._tmp.cleanup()
