"""The run folder that chains the commands, and its manifest.

Layout (DESIGN.md "The run folder")::

    manifest.json   data source and fingerprint, split seed, labels, domains, steps
    teacher/        save_pretrained folder (+ metakd extras)
    student/        save_pretrained folder of the student
    onnx/           config + tokenizer, onnx/model.onnx and onnx/model_quantized.onnx (int8), model.ort
    metrics/        one JSON per step

Every write is atomic: a file goes to a temporary sibling and is renamed; an artifact
folder is built in a temporary sibling and swapped in whole, so the manifest never
points at a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
from metakd_cli.core.errors import UserError

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
LOCK_FILE = ".metakd.lock"
STEP_COMMANDS = {"fit": "metakd fit", "distill": "metakd distill", "export": "metakd export"}
# A folder name a data value may keep as it is: letters, digits, '_', '-', '.', not leading with a dot,
# nothing a file system treats specially (no separator, no '..', no Windows device name).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def folder_names(names: list[str]) -> dict[str, str]:
    """A safe folder (or checkpoint) name for each of ``names`` (domains, which come from the user's data).

    A plain name (``books``, ``kitchen_2``) is kept as it is; any other (``/srv/x``, ``../../up``, ``a b``,
    ``CON``, two names that differ only in case) becomes a slug plus a hash of the name, so no value from
    data ever reaches the file system unescaped and two names never share a folder. Pure: the same names
    always give the same folders; the manifest records them (``data.domain_folders``) for people to read.
    """
    def plain(name: str) -> bool:
        return (_PLAIN_NAME.fullmatch(name) is not None and ".." not in name
                and name.split(".")[0].lower() not in _RESERVED and not name.endswith((".tmp", ".old")))

    folded: dict[str, int] = {}
    for name in names:
        if plain(name):
            folded[name.casefold()] = folded.get(name.casefold(), 0) + 1
    out = {}
    for name in names:
        if plain(name) and folded[name.casefold()] == 1:
            out[name] = name
        else:
            slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:40] or "domain"
            out[name] = f"{slug}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:10]}"
    return out


def domain_paths(parent: Path, names: list[str]) -> dict[str, Path]:
    """Each domain's folder under ``parent`` (a single-mode teacher/): its escaped name (``folder_names``), or,
    for a run made before names were escaped, the domain's own name when only that folder exists and the name
    is one ordinary path part (no separator, not ``.`` or ``..``): such a folder was written inside ``parent``."""
    out = {}
    for name, folder in folder_names(names).items():
        legacy = parent / name
        one_part = name not in ("", ".", "..") and "/" not in name and "\\" not in name and Path(name).name == name
        use_legacy = (folder != name and one_part and not (parent / folder).exists() and legacy.is_dir())
        out[name] = legacy if use_legacy else parent / folder
    return out


def folder_name(name: str, names: list[str]) -> str:
    """The folder of ``name``, one of ``names`` (every domain of the run: a name's folder depends on its peers)."""
    return folder_names(names)[name]


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, on disk before the rename.

    The file ends with the mode a plain ``open(path, "wb")`` would give it: the existing file's,
    else 0666 less the umask (mkstemp makes it 0600, and the rename would keep that).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically and with a plain file's mode (``atomic_write_bytes``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_object(path: Path) -> dict:
    """A JSON object file metakd wrote (metrics, metakd_export.json, config.json), or {} when it is missing,
    unreadable or not an object: for figures that are shown when present, never for what a step relies on."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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
    old = _old(final)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _old(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def saved_or_old(final: Path, marker: str | None = None) -> Path | None:
    """``final``, else the ``.NAME.old`` sibling that a kill between atomic_dir's two renames leaves, whichever
    first holds the file ``marker`` (with None: whichever is a folder); None when neither does."""
    for folder in (final, _old(final)):
        if (folder / marker).is_file() if marker else folder.is_dir():
            return folder
    return None


class StepRecord:
    """A step's result (FitResult, DistillResult, ExportResult): ``to_json()`` is its metrics/<step>.json."""

    def to_json(self) -> dict:
        raise NotImplementedError

    @property
    def metrics(self) -> dict:
        """metrics/<step>.json as a dict: ``to_json()``."""
        return self.to_json()


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
        check_manifest(raw, self.manifest_path)
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

    @contextmanager
    def lock(self, command: str, log=lambda _: None, create: bool = False) -> Iterator[None]:
        """Hold the run folder's writer lock while inside; ``create`` (fit): make the folder when missing,
        else a missing folder or manifest is the UserError ``load`` gives.

        One writer at a time: a second process gets a UserError naming the holder (pid, command, start);
        a lock left by a process that died is taken over, with a note. Re-entrant within a process, so
        `metakd run` holds it across its steps and each step's own call is a no-op. The lock is the
        operating system's (flock), so it dies with its holder; the file only says who holds it.
        """
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--run-dir {self.path} is a file, not a folder")
        if not create:
            self.load()  # says what to run first when there is no run here
        created = not self.path.exists()
        for _ in range(3):  # a lock file removed under us (a failed first command removes its new folder): again
            self.path.mkdir(parents=True, exist_ok=True)
            handle = _take_lock(self.path / LOCK_FILE, self.path)
            if handle is not None:
                break
        else:
            raise UserError(f"{self.path}: its lock file kept being replaced while metakd took it; run the command again")
        previous = _lock_holder(handle)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            log(f"note: took over the lock of {self.path} left by pid {previous['pid']} ({_describe(previous)}), "
                "which is no longer running")
        holder = {"pid": os.getpid(), "command": command, "argv": " ".join(sys.argv),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        _HELD[key] = [handle, 1]
        log(f"run folder {self.path}")
        try:
            yield
        finally:
            del _HELD[key]
            handle.seek(0)
            handle.truncate()  # a clean exit leaves no holder behind
            if created and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
                shutil.rmtree(self.path)  # the command failed before writing anything: leave no empty run folder
            handle.close()  # closing releases the flock

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


_HELD: dict[str, list] = {}  # resolved run folder -> [open lock file, nesting depth] held by this process


def _take_lock(path: Path, folder: Path):
    """The lock file, opened and exclusively flock-ed; a UserError naming whoever holds it; or None when the file
    was removed or replaced between opening and locking it (its lock would guard nothing: the caller tries again)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the lock file still records the writer
        fcntl = None
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot create the lock file {path}: {exc.strerror}") from None
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _lock_holder(handle)
        handle.close()
        who = f"pid {holder['pid']} ({_describe(holder)})" if holder.get("pid") else "another process"
        raise UserError(f"{folder} is in use by {who}: one command writes a run folder at a time; wait for it "
                        "to finish, or give another --run-dir") from None
    try:
        same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        handle.close()
        return None
    return handle


def _lock_holder(handle) -> dict:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return f"`{holder.get('argv') or holder.get('command', '?')}`, started {holder.get('started', '?')}"


def check_manifest(raw: dict, path: Path) -> None:
    """Refuse a manifest whose parts have the wrong shape (valid JSON, but ``steps`` a list, a step null ...),
    in one line naming the key and what to re-run, before anything reads or replaces what it describes."""
    def fail(key: str, expected: str, value: object, rerun: str = "metakd fit") -> None:
        raise UserError(f"{path}: `{key}` is {type(value).__name__ if value is not None else 'null'}, expected "
                        f"{expected}; the manifest is damaged: re-run `{rerun}` (or start a new --run-dir)")

    for key in ("data", "steps"):
        if not isinstance(raw.get(key, {}), dict):
            fail(key, "an object", raw[key])
    data = raw.get("data", {})
    for key in ("labels", "domains"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"data.{key}", "a list of strings", value)
    if not isinstance(data.get("config", {}), dict):
        fail("data.config", "an object", data["config"])
    for step, info in raw.get("steps", {}).items():
        rerun = STEP_COMMANDS.get(step, "metakd fit")
        if not isinstance(info, dict):
            fail(f"steps.{step}", "an object", info, rerun)
        if not isinstance(info.get("config", {}), dict):
            fail(f"steps.{step}.config", "an object", info["config"], rerun)
        for key in ("id", "finished", "fit_id", "source_id", "model_path", "model", "target"):
            if info.get(key) is not None and not isinstance(info[key], str):
                fail(f"steps.{step}.{key}", "a string", info[key], rerun)


def rerun_hint(path: Path) -> str:
    """The command that writes ``path`` again when it is part of a run folder (teacher/, student/, onnx/)."""
    parts = set(Path(path).parts)
    for part, command in (("onnx", "metakd export"), ("student", "metakd distill"), ("teacher", "metakd fit")):
        if part in parts:
            return f"re-run `{command}`"
    return "replace it with an intact copy"
