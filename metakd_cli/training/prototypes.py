"""Prototypes per domain (and class) and transferability scores (Meta-KD, Sec. 3.2).

The scores are computed once, before teacher training, from the untouched pretrained
encoder on the train split, and never recomputed (as the official implementation does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import numpy as np

    from metakd_cli.data.encode import Encoded


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence representation h(x) from the last layer's token states.

    hidden: [B, L, H]; attention_mask: [B, L] (1 = real token).
    ``mean``: sum_i m_i h_i / sum_i m_i over real tokens (the official code averages
    padding too; we do not). ``cls``: h_0.
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def compute_prototypes(
    reps: torch.Tensor, domains: torch.Tensor, labels: torch.Tensor, n_domains: int, n_labels: int, by_class: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes p[d, c] = mean of h(x) over train rows of domain d (and class c).

    reps: [N, H]. Returns (prototypes [D, C, H], present [D, C] bool), with C = 1 when
    ``by_class`` is False (the official code: one centroid per domain, labels ignored).
    """
    groups = n_labels if by_class else 1
    classes = labels if by_class else torch.zeros_like(labels)
    sums = torch.zeros(n_domains, groups, reps.shape[1], dtype=reps.dtype)
    counts = torch.zeros(n_domains, groups, dtype=reps.dtype)
    sums.index_put_((domains, classes), reps, accumulate=True)
    counts.index_put_((domains, classes), torch.ones_like(domains, dtype=reps.dtype), accumulate=True)
    present = counts > 0
    return sums / counts.clamp(min=1.0).unsqueeze(-1), present


def transferability(
    reps: torch.Tensor,
    domains: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
    alpha: float = 0.5,
    zeta: float = 0.5,
) -> torch.Tensor:
    """t(x) = alpha * cos(h(x), p[d, c]) + zeta * cos(h(x), mean_{d' != d} p[d', c]).

    d is x's domain; c its gold class (or 0 for domain prototypes, C = 1). The other
    domains' prototypes are averaged first (the official formula), over those domains
    that have class c in their train split; with no other domain that term is 0.
    Returns t: [N], in [-(alpha+zeta), alpha+zeta].
    """
    n_domains, groups, _ = prototypes.shape
    classes = labels if groups > 1 else torch.zeros_like(labels)
    own = prototypes[domains, classes]  # [N, H]
    weights = present[:, None, :].expand(n_domains, n_domains, groups).clone().float()  # [D', D, C]
    eye = torch.eye(n_domains, dtype=torch.bool)
    weights[eye] = 0.0  # exclude the example's own domain
    w = weights[:, domains, classes]  # [D', N]
    total = w.sum(0)  # [N]
    others = torch.einsum("kn,knh->nh", w, prototypes[:, classes]) / total.clamp(min=1.0).unsqueeze(-1)
    own_term = F.cosine_similarity(reps, own, dim=-1)
    other_term = torch.where(total > 0, F.cosine_similarity(reps, others, dim=-1), torch.zeros_like(own_term))
    return alpha * own_term + zeta * other_term


def encode_representations(encoder, encoded: Encoded, pad_id: int, pooling: str, batch_size: int = 64) -> torch.Tensor:
    """h(x) for every row with the untouched pretrained encoder, in input order: [N, H].

    Several processes: each encodes its share of the rows, and every process gets them all.
    """
    from metakd_cli.core import processes
    from metakd_cli.models.inference import MODEL_INPUTS, batched_logits

    encoder.eval()
    device = next(encoder.parameters()).device

    def forward(batch: dict) -> np.ndarray:
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        with torch.inference_mode():
            hidden = encoder(**inputs).last_hidden_state
        return pool(hidden, inputs["attention_mask"], pooling).float().cpu().numpy()

    return torch.from_numpy(processes.gather_encoded(encoded, lambda part: batched_logits(part, pad_id, batch_size,
                                                                                          forward)))
