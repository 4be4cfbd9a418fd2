"""The run folder that chains the commands, and its manifest.

Layout (DESIGN.md "The run folder")::

    manifest.json   data source and fingerprint, split seed, labels, domains, steps
    teacher/        save_pretrained folder (+ metakd extras)
    student/        save_pretrained folder of the student
    onnx/           ONNX / int8 / ORT files
    metrics/        one JSON per step

Every write is atomic: a file goes to a temporary sibling and is renamed; an artifact
folder is built in a temporary sibling and swapped in whole, so the manifest never
points at a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from metakd_cli import __version__
from metakd_cli.errors import UserError

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder.

    The file ends with the mode a plain ``open(path, "w")`` would give it: the existing file's,
    else 0666 less the umask (mkstemp makes it 0600, and the rename would keep that).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder; on success it replaces ``final`` whole.

    On an exception (Ctrl-C included) the temporary folder is removed and ``final``
    is left exactly as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the folder should read like one from mkdir
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Manifest:
    """What the run folder holds; ``steps`` maps a step name to what it produced."""

    version: int = MANIFEST_VERSION
    metakd_version: str = __version__
    data: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)
    updated: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class RunDir:
    """A run folder: paths of its parts, and its manifest."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def teacher(self) -> Path:
        return self.path / "teacher"

    @property
    def student(self) -> Path:
        return self.path / "student"

    @property
    def onnx(self) -> Path:
        return self.path / "onnx"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def load(self) -> Manifest:
        """Read the manifest, or raise a UserError saying what to run first."""
        if not self.path.exists():
            raise UserError(
                f"run folder {self.path} does not exist: run `metakd fit DATA` first "
                "or point --run-dir / METAKD_RUN_DIR at an existing run"
            )
        if not self.manifest_path.is_file():
            raise UserError(
                f"{self.path} has no {MANIFEST}: it is not a metakd run folder "
                "(run `metakd --run-dir DIR fit DATA` to create one)"
            )
        try:
            raw = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.manifest_path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{self.manifest_path}: expected a JSON object")
        version = raw.get("version")
        if version != MANIFEST_VERSION:
            raise UserError(
                f"{self.manifest_path}: manifest version {version!r} is not supported by "
                f"metakd {__version__} (expects {MANIFEST_VERSION}); re-run `metakd fit` "
                "into a new run folder"
            )
        known = set(Manifest.__dataclass_fields__)
        return Manifest(**{k: v for k, v in raw.items() if k in known})

    def load_or_new(self) -> Manifest:
        return self.load() if self.exists() else Manifest()

    def save(self, manifest: Manifest) -> None:
        manifest.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest.metakd_version = __version__
        atomic_write_json(self.manifest_path, manifest.to_json())

    def record_step(self, step: str, info: dict, data: dict | None = None) -> Manifest:
        """Record what ``step`` produced (and the data description) in the manifest."""
        manifest = self.load_or_new()
        if data is not None:
            manifest.data = data
        manifest.steps[step] = {
            **info,
            "command": " ".join(sys.argv),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "id": uuid.uuid4().hex,  # what a later step records as its source (see stale_artifacts)
        }
        self.save(manifest)
        return manifest

    def step_id(self, step: str) -> str | None:
        """The id of the recorded ``step``, for the step built from it to record as its source."""
        return self.load().steps.get(step, {}).get("id") if self.exists() else None

    def write_metrics(self, step: str, metrics: dict) -> Path:
        path = self.metrics / f"{step}.json"
        atomic_write_json(path, metrics)
        return path

    def require_step(self, step: str, hint: str) -> dict:
        manifest = self.load()
        if step not in manifest.steps:
            raise UserError(f"{self.path}: no `{step}` step recorded yet; {hint}")
        return manifest.steps[step]


def _made_from(step: dict, source: dict | None, key: str) -> bool:
    """Whether ``step`` was built from the current ``source`` step: by the id it recorded, or, for steps
    recorded before ids existed, by not being older than the source."""
    if source is None:
        return False
    if step.get(key) is not None and source.get("id") is not None:
        return step[key] == source["id"]
    return str(step.get("finished", "")) >= str(source.get("finished", ""))


def stale_artifacts(manifest: Manifest) -> dict[str, str]:
    """{"student" / "onnx": why} for student/ and onnx/ built from an earlier run of the step they came from
    (fit ran again after distill, distill after export): kept on disk, but no longer what the folder's
    manifest describes, so metakd neither scores, exports nor serves them."""
    steps = manifest.steps
    fit, distill, export = steps.get("fit"), steps.get("distill"), steps.get("export")
    out: dict[str, str] = {}
    if distill is not None and fit is not None and not _made_from(distill, fit, "fit_id"):
        out["student"] = (f"student/ was distilled from an earlier teacher (`metakd fit` ran again at "
                          f"{fit.get('finished')}); re-run `metakd distill`")
    if export is not None:
        source_step = "distill" if export.get("model", "student") == "student" else "fit"
        source = steps.get(source_step)
        if not _made_from(export, source, "source_id") or (source_step == "distill" and "student" in out):
            made = "the student" if source_step == "distill" else "the teacher"
            out["onnx"] = (f"onnx/ was exported from an earlier version of {made} (`metakd {source_step}` ran again "
                           "since); re-run `metakd export`")
    return out
