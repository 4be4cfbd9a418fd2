"""The domain head: initialised like BERT's own modules, deterministically under a seed."""

from __future__ import annotations

import pytest
import torch

from metakd_cli.models.heads import DomainHead


def test_domain_head_starts_like_bert():
    torch.manual_seed(0)
    head = DomainHead(256, 4)
    for name, parameter in head.named_parameters():
        if name.endswith("bias"):
            assert torch.all(parameter == 0), name
        else:
            assert parameter.mean().item() == pytest.approx(0.0, abs=0.003), name
            assert parameter.std().item() == pytest.approx(0.02, abs=0.002), name  # not N(0, 1), not kaiming
    # so the domain embedding is small beside a pooled state, and z carries the text's content
    pooled = torch.randn(2, 256) * 0.5
    z = head.features(pooled, torch.tensor([1, 1]))
    assert not torch.allclose(z[0], z[1], atol=1e-2)


def test_domain_head_is_deterministic_under_a_seed():
    torch.manual_seed(7)
    first = DomainHead(32, 3).state_dict()
    torch.manual_seed(7)
    second = DomainHead(32, 3).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
