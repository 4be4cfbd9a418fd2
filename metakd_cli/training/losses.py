"""Losses of Meta-KD as pure functions of tensors, each reduced PER EXAMPLE.

Every function returns a [B] tensor of per-example losses, so that example weights
(t for the teacher, lambda for distillation) multiply whole examples, as the official
code does, before the batch mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dann_scale(progress: float, steepness: float = 10.0) -> float:
    """DANN's schedule for the reversed gradient (Ganin et al. 2016): 2 / (1 + exp(-10 p)) - 1 at training
    progress p in [0, 1], so the domain classifier's pull starts at 0 and reaches ~1 as training ends, and
    the encoder learns the task before it is asked to hide the domain."""
    return 2.0 / (1.0 + math.exp(-steepness * progress)) - 1.0


def confusion_targets(
    domains: torch.Tensor, generator: torch.Generator | None = None, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The batch's domain labels randomly permuted: the official domain-confusion target.

    domains: [B] the domain labels of the WHOLE batch; positions: [b] the rows of it to return (a process's share
    under several processes, which all draw the same permutation of the same batch), None: all -> [b]. Permuting
    each share alone would give a row another target than the one-process batch gives it.
    """
    permuted = domains[torch.randperm(domains.shape[0], generator=generator).to(domains.device)]
    return permuted if positions is None else permuted[positions.to(domains.device)]


def teacher_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    domain_logits: torch.Tensor | None,
    domain_targets: torch.Tensor | None,
    t: torch.Tensor,
    gamma: float,
) -> dict[str, torch.Tensor]:
    """Meta-teacher loss: mean_i t_i * (CE(y_i) + gamma * CE(domain target_i)).

    logits: [B, C]; labels: [B]; domain_logits: [B, D] or None (no domain loss);
    t: [B] transferability weights (1 for the mix baseline), clamped at 0 here: a negative
    weight would be gradient ascent on that example. Returns named terms; ``loss`` is the
    one to optimise.
    """
    ce = F.cross_entropy(logits, labels, reduction="none")
    per_example = ce
    terms: dict[str, torch.Tensor] = {"ce": ce.mean()}
    if domain_logits is not None and domain_targets is not None:
        domain_ce = F.cross_entropy(domain_logits, domain_targets, reduction="none")
        per_example = per_example + gamma * domain_ce
        terms["domain"] = domain_ce.mean()
    terms["loss"] = example_weighted(per_example, t.clamp(min=0.0))
    return terms


def example_weighted(per_example: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_i w_i * l_i over a batch whose losses are already reduced per example ([B] each).

    Reducing each example first is what makes the weights per-example; the EasyNLP port
    averages over the batch first, which turns them into one batch constant.
    """
    return (weights * per_example).mean()


def expertise_weight(t: torch.Tensor, p_gold: torch.Tensor) -> torch.Tensor:
    """lambda = (1 + t) / (exp((1 - p)^2) + 1): the teacher's domain expertise on x.

    t: transferability in [-1, 1], clamped at 0 first (as every use of t is); p_gold: the
    teacher's probability of the gold label. For p in [0, 1], lambda lies in [0.27, 1].
    """
    return (1.0 + t.clamp(min=0.0)) / (torch.exp((1.0 - p_gold) ** 2) + 1.0)


def _token_mean(squared: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean of [B, L, H] squared errors over real tokens and features -> [B]."""
    mask = token_mask.to(squared.dtype).unsqueeze(-1)
    return (squared * mask).sum((1, 2)) / (mask.sum((1, 2)) * squared.shape[-1]).clamp(min=1.0)


def hidden_mse(
    student_hidden: list[torch.Tensor],
    teacher_hidden: list[torch.Tensor],
    attention_mask: torch.Tensor,
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """sum_j MSE(W h_s^j, h_t^{m(j)}) per example, over real tokens (index 0 = embeddings).

    Lists are already aligned by the layer map; tensors [B, L, H_s] / [B, L, H_t].
    ``projection`` maps student width to teacher width when they differ.
    """
    total = torch.zeros(attention_mask.shape[0], dtype=teacher_hidden[0].dtype, device=attention_mask.device)
    for hs, ht in zip(student_hidden, teacher_hidden, strict=True):
        if projection is not None:
            hs = projection(hs)
        total = total + _token_mean((hs - ht) ** 2, attention_mask)
    return total


MASKED_SCORE = -100.0  # a pre-softmax score at or below this is a masked one (TinyBERT's threshold)


def attention_mse(
    student_scores: list[torch.Tensor], teacher_scores: list[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """sum_j MSE(S_s^j, S_t^{m(j)}) per example on PRE-SOFTMAX attention scores -> [B].

    S = Q K^T / sqrt(d_head) + M: [B, heads, L, L] (query x key), M the additive mask the
    layer adds (0 for a real key, a very negative number for padding); see
    ``metakd_cli.models.attention``. As TinyBERT and the official Meta-KD code do, entries <= -100
    are set to 0 in both S_s and S_t first. With S' those values and n_b real tokens in
    example b (attention_mask: [B, L], 1 = real):

        loss_b = sum_j 1 / (heads * n_b^2) * sum_{h, q real, k real} (S'_s^j - S'_t^{m(j)})^2 [b, h, q, k]

    Lists are aligned by the layer map; student and teacher have the same number of heads.
    (Probabilities would give a term ~100x smaller than the hidden one, teaching almost nothing.)
    """
    mask = attention_mask.to(teacher_scores[0].dtype)
    pair = (mask[:, :, None] * mask[:, None, :]).unsqueeze(1)  # [B, 1, L, L]
    total = torch.zeros(mask.shape[0], dtype=mask.dtype, device=mask.device)
    for s_s, s_t in zip(student_scores, teacher_scores, strict=True):
        if s_s.shape != s_t.shape:
            raise ValueError(f"attention scores of different shapes: student {tuple(s_s.shape)}, "
                             f"teacher {tuple(s_t.shape)}")
        s_s = torch.where(s_s <= MASKED_SCORE, torch.zeros_like(s_s), s_s)
        s_t = torch.where(s_t <= MASKED_SCORE, torch.zeros_like(s_t), s_t)
        weights = pair.expand_as(s_s)
        total = total + ((s_s - s_t) ** 2 * weights).sum((1, 2, 3)) / weights.sum((1, 2, 3)).clamp(min=1.0)
    return total


def domain_feature_mse(
    student_z: torch.Tensor, teacher_z: torch.Tensor, projection: torch.nn.Module | None = None
) -> torch.Tensor:
    """MSE(z_t, W z_s) per example on the domain features: [B, H_s], [B, H_t] -> [B]."""
    if projection is not None:
        student_z = projection(student_z)
    return ((student_z - teacher_z) ** 2).mean(-1)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-sum_c softmax(z_t / T)_c * log_softmax(z_s / T)_c per example -> [B]."""
    return soft_target_cross_entropy(student_logits, soft_targets(teacher_logits, temperature), temperature)


def soft_targets(teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(z_t / T): one teacher's soft labels, [N, C] -> [N, C]."""
    return F.softmax(teacher_logits / temperature, dim=-1)


def soft_target_cross_entropy(
    student_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """-sum_c q_c * log_softmax(z_s / T)_c per example, for given soft labels q: [B, C] -> [B]."""
    return -(targets * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1)


def multi_teacher_targets(teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """MTN-KD soft labels: the mean of K teachers' softmax outputs, [K, N, C] -> [N, C].

    q = (1/K) sum_k softmax(z_k / T). Soft cross-entropy is linear in its target, so
    CE(q, s) = (1/K) sum_k CE(softmax(z_k / T), s): the student learns from every teacher
    equally, the multi-teacher objective of Yang et al. (2020) with one output head and
    no weighting invented beyond it.
    """
    return soft_targets(teacher_logits, temperature).mean(0)


def prediction_loss(student_logits: torch.Tensor, targets: torch.Tensor | None, labels: torch.Tensor,
                    temperature: float = 1.0, gold_weight: float = 0.0,
                    labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 2 per example, [B, C] logits -> [B] (Hinton et al. 2015):

        T^2 * CE(q, softmax(z_s / T)) + gold_weight * CE(y, softmax(z_s))

    q: the teacher's soft labels at temperature T ([B, C]; None: no teacher, the gold term alone, as the no-teacher
    baseline trains). T^2 keeps the soft term's gradient at the scale T = 1 gives it, so a temperature and a gold
    weight can be chosen independently; at T = 1 and gold_weight 0 this is the official code's stage 2.
    ``labelled`` ([B], 1 or 0): which rows have a gold label (the transfer set's rows have none); None: all.
    """
    if targets is None:
        return F.cross_entropy(student_logits, labels, reduction="none")
    loss = temperature**2 * soft_target_cross_entropy(student_logits, targets, temperature)
    if gold_weight > 0:
        gold = F.cross_entropy(student_logits, labels, reduction="none")
        loss = loss + gold_weight * (gold if labelled is None else gold * labelled.to(gold.dtype))
    return loss


def least_squares_projection(gram: torch.Tensor, cross: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """The Linear(S -> T) that best maps student states x to teacher states y in squared error, from the sums
    gram = sum [x, 1]^T [x, 1] ([S+1, S+1]) and cross = sum [x, 1]^T y ([S+1, T]) over tokens:
    solve (gram + ridge * I_S) [W^T; b] = cross, a small ridge on W (not b) for stability -> (W [T, S], b [T])."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    eye[-1, -1] = 0.0  # no ridge on the bias
    scale = gram.diagonal()[:-1].mean().clamp(min=1e-12)
    # least squares rather than solve: few tokens (or constant features) leave the system singular
    solution = torch.linalg.lstsq(gram + ridge * scale * eye, cross, driver="gelsd").solution
    return solution[:-1].T.contiguous(), solution[-1].contiguous()
