"""run_phase hands each loss step the share of the phase already done (DANN's schedule reads it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metakd_cli.training import PhaseSpec, run_phase


def test_batches_carry_training_progress(tmp_path):
    seen: list[float] = []
    model = nn.Linear(2, 1)

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        seen.append(float(batch["progress"]))
        return {"loss": model(batch["x"]).pow(2).mean()}

    def make_batch(indices: list[int]) -> dict:
        return {"x": torch.ones(len(indices), 2), "index": torch.tensor(indices)}

    spec = PhaseSpec(name="p", epochs=2, batch_size=4, lr=0.01, seed=0)
    run_phase(spec, model, 10, make_batch, loss_step, None, tmp_path, resume=False)
    assert seen == pytest.approx([step / 6 for step in range(6)])  # 3 steps an epoch, 2 epochs: 0 .. 5/6
