"""Pre-softmax attention scores of BERT-family encoders, taken with hooks during the ordinary forward.

Distillation compares the scores S = Q K^T / sqrt(d_head) + M (M: the additive mask) as TinyBERT
and the official Meta-KD code do, but transformers returns only the probabilities softmax(S)
(``output_attentions``). A BERT-family self-attention module (BERT, RoBERTa, ELECTRA ... in
transformers 4.57: ``BertSelfAttention``) projects its input through its ``query`` and ``key``
linear layers and adds the mask it is called with; hooks record those projections and that mask
while the model runs, and the scores are formed from them, so the projections are not computed
twice and gradients flow through them for a student as usual.

MPNet (``MPNetSelfAttention``: layers ``q``, ``k``, ``v``, ``o``) adds a relative position bias,
computed once by its encoder and passed to every layer, before the mask:
S = Q K^T / sqrt(d_head) + B + M. The hook takes B from the call as it takes M, so the scores
are those its own softmax sees.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from metakd_cli.core.errors import UserError


PROJECTIONS = (("query", "key"), ("q", "k"))  # BERT family; MPNet


def _projections(module: nn.Module) -> tuple[str, str] | None:
    """The names of a self-attention module's query and key layers, or None for another module."""
    if not (isinstance(getattr(module, "num_attention_heads", None), int)
            and isinstance(getattr(module, "attention_head_size", None), int)):
        return None
    return next((names for names in PROJECTIONS
                 if all(isinstance(getattr(module, n, None), nn.Linear) for n in names)), None)


def _is_self_attention(module: nn.Module) -> bool:
    return _projections(module) is not None


def self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each encoder layer's self-attention module, in layer order; [] for a model we cannot read."""
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        return []
    found = [next((m for m in layer.modules() if _is_self_attention(m)), None) for layer in layers]
    return found if all(m is not None for m in found) else []


def score_heads(model: nn.Module, what: str) -> int:
    """The number of attention heads whose scores ``model`` (the ``what``: student / teacher) exposes;
    a user error for an architecture whose scores we cannot take."""
    modules = self_attention_modules(model)
    if not modules:
        raise UserError(
            f"the {what} ({type(model).__name__}) has no BERT-style self-attention (query/key layers) to take "
            "attention scores from; use --method kd (logits only)"
        )
    relative = {getattr(m, "position_embedding_type", "absolute") for m in modules} - {"absolute"}
    if relative:
        raise UserError(
            f"the {what} uses {', '.join(sorted(relative))} position scores inside attention, which metakd does "
            "not reproduce; use a model with absolute positions, or --method kd (logits only)"
        )
    return modules[0].num_attention_heads


def check_attention_heads(student: nn.Module, teacher: nn.Module) -> None:
    """Attention scores are compared head by head: refuse a student and teacher whose head counts differ."""
    student_heads, teacher_heads = score_heads(student, "student"), score_heads(teacher, "teacher")
    if student_heads != teacher_heads:
        raise UserError(
            f"the student has {student_heads} attention heads per layer and the teacher {teacher_heads}: attention "
            f"distillation compares them head by head; pick a student with {teacher_heads} heads, "
            "or --method kd (logits only)"
        )


def scores_from(module: nn.Module, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """S = Q K^T / sqrt(d_head) (+ B) + M, exactly as the eager ``BertSelfAttention`` (``MPNetSelfAttention``)
    forms it before its softmax.

    query, key: the module's projections [B, L, heads * d_head]; mask: the additive mask it was
    called with ([B, 1, 1, L] or [B, 1, L, L]; a boolean one is made additive) or None; bias:
    MPNet's relative position bias [B, heads, L, L] (added before the mask, as MPNet adds it).
    Returns [B, heads, L, L].
    """
    batch, heads, size = query.shape[0], module.num_attention_heads, module.attention_head_size
    q = query.view(batch, -1, heads, size).transpose(1, 2)
    k = key.view(batch, -1, heads, size).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(size)
    if bias is not None:
        scores = scores + bias
    if mask is None:
        return scores
    if mask.dtype == torch.bool:  # True = attend
        mask = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(scores.dtype).min)
    return scores + mask


@contextlib.contextmanager
def attention_scores(model: nn.Module, layers: list[int]) -> Iterator[list[torch.Tensor]]:
    """While inside, a forward of ``model`` fills the yielded list with the scores of ``layers``.

    ``layers``: 0-based encoder layer indices, in the order wanted; the list holds one
    [B, heads, L, L] tensor per entry after the forward (under ``torch.no_grad`` for a frozen
    teacher, with gradients for a student). Only these layers are hooked.
    """
    modules = self_attention_modules(model)
    if not modules:
        raise UserError(f"{type(model).__name__}: no BERT-style self-attention to take attention scores from")
    scores: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]  # filled by the forward
    handles = []
    for position, layer in enumerate(layers):
        module = modules[layer]
        kept: dict[str, torch.Tensor | None] = {}

        def keep(name, kept=kept):
            return lambda _module, _args, output: kept.__setitem__(name, output)

        def finish(module, args, kwargs, _output, kept=kept, position=position):
            mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
            bias = None
            if _projections(module) == ("q", "k"):  # MPNet: forward(hidden, mask, head_mask, position_bias, ...)
                bias = kwargs["position_bias"] if "position_bias" in kwargs else (args[3] if len(args) > 3 else None)
            scores[position] = scores_from(module, kept["query"], kept["key"], mask, bias)

        query_name, key_name = _projections(module)
        handles.append(getattr(module, query_name).register_forward_hook(keep("query")))
        handles.append(getattr(module, key_name).register_forward_hook(keep("key")))
        handles.append(module.register_forward_hook(finish, with_kwargs=True))
    try:
        yield scores
    finally:
        for handle in handles:
            handle.remove()
