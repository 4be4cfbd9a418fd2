"""Loss functions against hand-computed values; per-example weighting really weights examples."""

import math

import pytest
import torch
import torch.nn.functional as F

from metakd_cli.training.losses import (
    attention_mse,
    confusion_targets,
    dann_scale,
    domain_feature_mse,
    expertise_weight,
    hidden_mse,
    soft_cross_entropy,
    teacher_loss,
)
from metakd_cli.models.heads import grad_reverse


def test_grad_reverse_negates_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    (grad_reverse(x) * torch.tensor([3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [-3.0, -4.0]
    y = torch.tensor([1.0], requires_grad=True)
    grad_reverse(y, 0.5).sum().backward()
    assert y.grad.tolist() == [-0.5]


def test_dann_scale_ramps_from_zero_to_one():
    assert dann_scale(0.0) == 0.0
    assert dann_scale(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.9866
    assert 0.9999 < dann_scale(1.0) < 1.0
    values = [dann_scale(p / 10) for p in range(11)]
    assert values == sorted(values) and len(set(values)) == 11


def test_confusion_target_is_a_permutation_of_the_batch_domains():
    domains = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    targets = confusion_targets(domains, torch.Generator().manual_seed(0))
    assert sorted(targets.tolist()) == sorted(domains.tolist())
    outcomes = {tuple(confusion_targets(domains, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(outcomes) > 1  # really shuffled


def test_confusion_targets_of_shares_are_the_whole_batchs_rows():
    """Two processes, each with every other row of the batch and the same generator, get the rows of the one
    shuffle the whole batch gets in one process (each shuffling its own share would not)."""
    from metakd_cli.training.loop import shard

    domains = torch.tensor([0, 1, 2, 3, 0, 1, 2])  # 7 rows: shares of 4 and 3
    whole = confusion_targets(domains, torch.Generator().manual_seed(5))
    for rank in (0, 1):
        positions, _ = shard(list(range(len(domains))), rank, 2)
        share = confusion_targets(domains, torch.Generator().manual_seed(5), torch.tensor(positions))
        assert share.tolist() == whole[positions].tolist()
    assert confusion_targets(domains, torch.Generator().manual_seed(5), torch.arange(7)).tolist() == whole.tolist()


def test_teacher_loss_value_and_t_weighting():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    dom_logits = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    dom_targets = torch.tensor([1, 1])
    t = torch.tensor([0.5, 1.0])
    ce = F.cross_entropy(logits, labels, reduction="none")
    dce = F.cross_entropy(dom_logits, dom_targets, reduction="none")
    expected = ((t * (ce + 0.5 * dce)).mean()).item()
    assert teacher_loss(logits, labels, dom_logits, dom_targets, t, gamma=0.5)["loss"].item() == pytest.approx(expected)


def test_example_with_zero_t_contributes_no_gradient():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    terms = teacher_loss(logits, torch.tensor([1, 0]), None, None, torch.tensor([0.0, 1.0]), gamma=0.5)
    terms["loss"].backward()
    assert torch.all(logits.grad[0] == 0)
    assert torch.any(logits.grad[1] != 0)


def test_expertise_weight_formula_and_range():
    t = torch.tensor([0.0, 1.0, 1.0, 0.5])
    p = torch.tensor([1.0, 1.0, 0.0, 0.5])
    lam = expertise_weight(t, p)
    assert lam[0].item() == pytest.approx(1 / 2)
    assert lam[1].item() == pytest.approx(2 / 2)
    assert lam[2].item() == pytest.approx(2 / (math.e + 1))
    assert lam[3].item() == pytest.approx(1.5 / (math.exp(0.25) + 1))
    assert (1 / (math.e + 1)) == pytest.approx(0.2689, abs=1e-4)  # the paper's lower end, t=0, p=0


def test_hidden_mse_masks_padding_and_is_per_example():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    teacher = [torch.zeros(2, 3, 2)]
    student = [torch.zeros(2, 3, 2)]
    student[0][0, 0] = torch.tensor([1.0, 1.0])  # example 0, real token: error 1 on 2 of 4 values
    student[0][0, 2] = torch.tensor([9.0, 9.0])  # padding: ignored
    student[0][1, 0] = torch.tensor([2.0, 0.0])  # example 1: squared error 4 over 2 values
    loss = hidden_mse(student, teacher, mask)
    assert loss.tolist() == pytest.approx([0.5, 2.0])


def test_hidden_mse_with_projection():
    proj = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    student = [torch.tensor([[[1.0, 2.0]]])]
    teacher = [torch.tensor([[[1.0, 2.0, 0.0]]])]
    assert hidden_mse(student, teacher, torch.tensor([[1]]), proj).tolist() == pytest.approx([9.0 / 3])


def test_attention_mse_only_over_real_token_pairs():
    mask = torch.tensor([[1, 1, 0]])
    a_t = torch.zeros(1, 1, 3, 3)
    a_s = torch.zeros(1, 1, 3, 3)
    a_s[0, 0, 0, 1] = 1.0  # real pair
    a_s[0, 0, 2, 2] = 5.0  # padding pair: ignored
    assert attention_mse([a_s], [a_t], mask).tolist() == pytest.approx([1.0 / 4])


def test_domain_feature_mse_and_soft_cross_entropy():
    assert domain_feature_mse(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).tolist() == pytest.approx([2.5])
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[1.0, 0.0]])
    expected = -0.5 * (math.log(math.e / (math.e + 1)) + math.log(1 / (math.e + 1)))
    assert soft_cross_entropy(student, teacher, 1.0).item() == pytest.approx(expected)
    # temperature softens both sides
    assert soft_cross_entropy(student, teacher, 2.0).item() == pytest.approx(
        -0.5 * (math.log(math.exp(0.5) / (math.exp(0.5) + 1)) + math.log(1 / (math.exp(0.5) + 1)))
    )


def test_examples_with_different_lambda_get_different_weights():
    from metakd_cli.training.losses import example_weighted

    per_example = torch.tensor([1.0, 3.0], requires_grad=True)
    lam = torch.tensor([0.3, 1.0])
    loss = example_weighted(per_example, lam)
    assert loss.item() == pytest.approx((0.3 * 1 + 1.0 * 3) / 2)
    assert loss.item() != pytest.approx(lam.mean().item() * per_example.mean().item())  # not a batch constant
    loss.backward()
    assert per_example.grad.tolist() == pytest.approx([0.15, 0.5])


def test_attention_mse_on_scores_zeroes_masked_entries_hand_computed():
    # example 0: two real tokens, one head; entries <= -100 become 0 in both before the MSE
    s_t = torch.tensor([[[[1.0, -1e4], [0.5, 2.0]]]])
    s_s = torch.tensor([[[[0.0, -150.0], [1.5, 2.0]]]])
    # zeroed: teacher [[1, 0], [0.5, 2]], student [[0, 0], [1.5, 2]] -> squared errors 1, 0, 1, 0
    assert attention_mse([s_s], [s_t], torch.tensor([[1, 1]])).tolist() == pytest.approx([2.0 / 4])
    # example 1: the second token is padding (the layer added the dtype's minimum to its key)
    low = torch.finfo(torch.float32).min
    s_t = torch.tensor([[[[1.0, low], [7.0, low]]]])
    s_s = torch.tensor([[[[3.0, low], [-9.0, low]]]])
    assert attention_mse([s_s], [s_t], torch.tensor([[1, 0]])).tolist() == pytest.approx([4.0])  # (3 - 1)^2 only


def test_attention_mse_is_per_example_summed_over_layers_and_needs_equal_heads():
    mask = torch.tensor([[1, 1], [1, 0]])
    s_t = torch.zeros(2, 2, 2, 2)
    s_s = torch.ones(2, 2, 2, 2)
    assert attention_mse([s_s, s_s], [s_t, s_t], mask).tolist() == pytest.approx([2.0, 2.0])
    with pytest.raises(ValueError, match="different shapes"):
        attention_mse([torch.zeros(1, 4, 2, 2)], [torch.zeros(1, 2, 2, 2)], torch.ones(1, 2))


def test_negative_t_is_clamped_at_zero_before_it_weights_a_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([1, 0])
    negative = teacher_loss(logits, labels, None, None, torch.tensor([-0.5, 1.0]), gamma=0.5)["loss"]
    zero = teacher_loss(logits, labels, None, None, torch.tensor([0.0, 1.0]), gamma=0.5)["loss"]
    assert negative.item() == pytest.approx(zero.item())
    negative.backward()
    assert torch.all(logits.grad[0] == 0)  # no gradient ascent on the dissimilar example
    p = torch.tensor([0.3, 0.3])
    lam = expertise_weight(torch.tensor([-0.8, 0.0]), p)
    assert lam[0].item() == pytest.approx(lam[1].item())
    assert lam[0].item() == pytest.approx(1 / (math.exp(0.49) + 1))


def test_prediction_loss_hand_computed_with_temperature_squared_and_gold_term():
    import math

    from metakd_cli.training.losses import prediction_loss

    student = torch.tensor([[2.0, 0.0]])
    targets = torch.tensor([[0.25, 0.75]])
    labels = torch.tensor([0])
    # T = 2: 4 * -(0.25 log softmax([1, 0])_0 + 0.75 log softmax([1, 0])_1); gold: -log softmax([2, 0])_0
    log_p = [1 - math.log(math.e + 1), -math.log(math.e + 1)]
    soft = -4 * (0.25 * log_p[0] + 0.75 * log_p[1])
    gold = math.log(math.exp(2) + 1) - 2
    assert prediction_loss(student, targets, labels, 2.0).item() == pytest.approx(soft, rel=1e-6)
    assert prediction_loss(student, targets, labels, 2.0, 0.5).item() == pytest.approx(soft + 0.5 * gold, rel=1e-6)
    # no teacher: the gold cross-entropy alone, whatever the temperature
    assert prediction_loss(student, None, labels, 2.0).item() == pytest.approx(gold, rel=1e-6)
    # T = 1, no gold term: the official stage 2 (soft cross-entropy)
    official = -(targets * torch.log_softmax(student, -1)).sum().item()
    assert prediction_loss(student, targets, labels).item() == pytest.approx(official, rel=1e-6)


def test_least_squares_projection_recovers_a_linear_map():
    from metakd_cli.training.losses import least_squares_projection

    torch.manual_seed(0)
    x = torch.randn(500, 6, dtype=torch.float64)
    weight, bias = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    y = x @ weight.T + bias
    ones = torch.cat([x, torch.ones(500, 1, dtype=torch.float64)], 1)
    found_w, found_b = least_squares_projection(ones.T @ ones, ones.T @ y, ridge=0.0)
    assert torch.allclose(found_w, weight, atol=1e-8) and torch.allclose(found_b, bias, atol=1e-8)
    shrunk, _ = least_squares_projection(ones.T @ ones, ones.T @ y, ridge=10.0)
    assert shrunk.norm() < weight.norm()  # the ridge pulls W towards 0, the bias is free
