"""What a teacher carries beside its encoder: the domain head (domain features, and the domain classifier trained
against shuffled labels or through gradient reversal), the teacher's own record (metakd.json), and an mtl teacher's
per-domain heads; saved and loaded as safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from metakd_cli.core.errors import UserError
from metakd_cli.models.loading import HEAD_FILE, TEACHER_JSON, damaged_file, read_safetensors

if TYPE_CHECKING:
    import numpy as np


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by -scale backward (DANN, Ganin et al. 2016)."""
    return _GradReverse.apply(x, scale)


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

    Eval mode, no gradients: for metrics and cached teacher logits (metakd_cli.steps.evaluate's
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
