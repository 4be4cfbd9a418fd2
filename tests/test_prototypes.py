"""Prototypes and transferability scores on hand-made vectors with known answers."""

import math

import pytest
import torch

from metakd_cli.training.prototypes import compute_prototypes, pool, transferability


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(pool(hidden, mask, "cls"), torch.tensor([[1.0, 0.0]]))


def test_class_prototypes_are_group_means():
    reps = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    domains = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 0, 0, 1])
    protos, present = compute_prototypes(reps, domains, labels, n_domains=2, n_labels=2, by_class=True)
    assert protos.shape == (2, 2, 2)
    assert torch.allclose(protos[0, 0], torch.tensor([2.0, 0.0]))
    assert torch.allclose(protos[1, 0], torch.tensor([0.0, 2.0]))
    assert torch.allclose(protos[1, 1], torch.tensor([0.0, 4.0]))
    assert present.tolist() == [[True, False], [True, True]]
    domain_protos, _ = compute_prototypes(reps, domains, labels, 2, 2, by_class=False)
    assert domain_protos.shape == (2, 1, 2)
    assert torch.allclose(domain_protos[1, 0], torch.tensor([0.0, 3.0]))


def test_transferability_known_values():
    # domain 0 prototype along x, domain 1 along y, domain 2 along -x (one class)
    protos = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]])
    present = torch.ones(3, 1, dtype=torch.bool)
    reps = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    domains = torch.tensor([0, 1])
    labels = torch.tensor([0, 0])
    t = transferability(reps, domains, labels, protos, present, alpha=0.5, zeta=0.5)
    # x=(1,0) in domain 0: cos(own)=1; others mean = (-0.5, 0.5) -> cos = -1/sqrt(2)
    assert t[0].item() == pytest.approx(0.5 * 1 + 0.5 * (-1 / math.sqrt(2)), abs=1e-6)
    # x=(1,1) in domain 1: cos(own (0,1)) = 1/sqrt(2); others mean = (0,0) -> cos = 0
    assert t[1].item() == pytest.approx(0.5 / math.sqrt(2), abs=1e-6)


def test_transferability_uses_the_same_class_of_other_domains_and_weights():
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]])
    present = torch.ones(2, 2, dtype=torch.bool)
    reps = torch.tensor([[0.0, 1.0]])
    t = transferability(reps, torch.tensor([0]), torch.tensor([1]), protos, present, alpha=1.0, zeta=0.0)
    assert t.item() == pytest.approx(1.0)
    t = transferability(reps, torch.tensor([0]), torch.tensor([1]), protos, present, alpha=0.0, zeta=1.0)
    assert t.item() == pytest.approx(-1.0)  # class 1 of domain 1 points the other way


def test_single_domain_has_no_other_domain_term():
    protos = torch.tensor([[[1.0, 0.0]]])
    t = transferability(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor([0]), protos,
                        torch.ones(1, 1, dtype=torch.bool))
    assert t.item() == pytest.approx(0.5)
