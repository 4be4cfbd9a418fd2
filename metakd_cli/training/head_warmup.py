"""Head warm-up: fit a new classifier head to the frozen body before stage 2 moves the body.

A student cut from a body pretrained with mean pooling (the sentence-transformers MiniLM-L6 that `minilm4` and the
no-teacher `tiny` cut come from) has a pooler that was never trained and a [CLS] state that never summarised a
sentence. Stage 2 would otherwise push its first gradients through a random head into the body. As in linear
probing then fine-tuning (Kumar et al., 2022), the head (BERT's pooler and classifier) is first trained alone on
the body's [CLS] states, computed once with the body frozen (so the warm-up costs one forward pass over the rows),
with stage 2's own loss; the epoch that scores best on dev is kept (epoch 0, the head as it was, included). The
model stays a plain transformers classifier: only the weights of its own pooler and classifier change.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from metakd_cli.data.encode import Encoded
from metakd_cli.models.inference import MODEL_INPUTS, batched_logits

HEAD_LR = 1e-3  # the head alone, on fixed features: a linear probe's rate, not a fine-tuning one
HEAD_WARMUP_EPOCHS = 10  # a new head's warm-up when --head-warmup is not given
BATCH = 32


def head_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(pooler, classifier) of a BERT-style sequence classifier whose logits are classifier(dropout(pooler(h_CLS)));
    None for another head shape (it is then not warmed up)."""
    base = getattr(model, "base_model", None)
    pooler, classifier = getattr(base, "pooler", None), getattr(model, "classifier", None)
    if pooler is None or not isinstance(classifier, nn.Linear) or not hasattr(pooler, "dense"):
        return None
    return pooler, classifier


def cls_states(model: nn.Module, encoded: Encoded, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """The body's last-layer [CLS] state of each row [N, H], in eval mode and without gradients."""
    model.eval()
    base = model.base_model
    device = next(model.parameters()).device

    def forward(batch: dict) -> np.ndarray:
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        with torch.inference_mode():
            return base(**inputs).last_hidden_state[:, 0].float().cpu().numpy()

    return torch.from_numpy(batched_logits(encoded, pad_id, batch_size, forward))


def warm_head(model: nn.Module, train_states: torch.Tensor, loss_of: Callable[[torch.Tensor, torch.Tensor],
              torch.Tensor], dev_states: torch.Tensor, dev_labels: torch.Tensor, epochs: int, seed: int,
              lr: float = HEAD_LR) -> dict:
    """Train ``model``'s pooler and classifier (head_parts) on fixed [CLS] states for ``epochs`` epochs: AdamW at
    ``lr``, batches of 32 in a seeded order, the classifier's dropout as the model applies it; ``loss_of(logits,
    row indices)`` is the per-row loss. Keeps the epoch with the best dev accuracy (0: the head as it was) and
    returns what happened. The global random state is left as it was."""
    pooler, classifier = head_parts(model)
    dropout = getattr(model, "dropout", None)
    started = time.perf_counter()
    parts = nn.ModuleList([pooler, classifier])
    device = classifier.weight.device
    train_states, dev_states, dev_labels = train_states.to(device), dev_states.to(device), dev_labels.to(device)

    def logits_of(states: torch.Tensor, training: bool) -> torch.Tensor:
        pooled = pooler.activation(pooler.dense(states))
        if training and dropout is not None:
            pooled = dropout(pooled)
        return classifier(pooled)

    def dev_accuracy() -> float:
        with torch.no_grad():
            return float((logits_of(dev_states, False).argmax(-1) == dev_labels).float().mean() * 100)

    curve = [dev_accuracy()]
    best_state = {k: v.detach().clone() for k, v in parts.state_dict().items()}
    optimizer = torch.optim.AdamW(parts.parameters(), lr=lr, weight_decay=0.01)
    with torch.random.fork_rng():  # every device's generator restored afterwards
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            if dropout is not None:
                dropout.train()
            order = torch.randperm(len(train_states), generator=generator)
            for start in range(0, len(order), BATCH):
                rows = order[start:start + BATCH]
                loss = loss_of(logits_of(train_states[rows.to(device)], True), rows).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            curve.append(dev_accuracy())
            if curve[-1] > max(curve[:-1]):
                best_state = {k: v.detach().clone() for k, v in parts.state_dict().items()}
    parts.load_state_dict(best_state)
    best = int(np.argmax(curve))
    return {"epochs": epochs, "lr": lr, "rows": len(train_states), "dev_before": curve[0], "dev_after": curve[best],
            "best_epoch": best, "dev_curve": curve, "seconds": time.perf_counter() - started}
