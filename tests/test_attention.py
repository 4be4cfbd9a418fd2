"""Pre-softmax attention scores taken by hooks equal a hand recomputation from the query/key weights."""

from __future__ import annotations

import pytest
import torch

from conftest import scores_by_hand
from metakd_cli.models.attention import attention_scores, check_attention_heads, self_attention_modules
from metakd_cli.core.errors import UserError


def tiny_bert(hidden: int = 32, heads: int = 4, layers: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=37, max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def test_captured_scores_equal_a_hand_recomputation():
    model = tiny_bert(layers=3).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad(), attention_scores(model, [2, 0]) as scores:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(scores) == 2 and scores[0].shape == (2, 4, 4, 4)
    for captured, layer in zip(scores, [2, 0]):
        expected = scores_by_hand(model, out.hidden_states[layer], layer, mask)  # hidden_states[i] is layer i's input
        real = expected > -100
        assert torch.equal(captured > -100, real)  # padded keys masked, as the model masks them
        assert torch.allclose(captured[real], expected[real], atol=1e-5)
        assert torch.allclose(captured.softmax(-1), out.attentions[layer], atol=1e-6)  # what the model softmaxes
    assert (scores[0][1, :, :, 2:] <= -100).all()


def test_student_scores_carry_gradients_and_hooks_are_removed():
    model = tiny_bert().train()
    ids = torch.tensor([[5, 6, 7]])
    with attention_scores(model, [0, 1]) as scores:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    sum(s.sum() for s in scores).backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    for module in self_attention_modules(model):
        assert not module._forward_hooks and not module.query._forward_hooks and not module.key._forward_hooks


def test_different_widths_same_heads_are_accepted_different_heads_refused():
    check_attention_heads(tiny_bert(hidden=48, heads=4), tiny_bert(hidden=32, heads=4))
    with pytest.raises(UserError, match="12 attention heads per layer and the teacher 4") as error:
        check_attention_heads(tiny_bert(hidden=36, heads=12), tiny_bert(hidden=32, heads=4))
    assert "\n" not in str(error.value)


def test_a_model_without_bert_attention_is_refused():
    with pytest.raises(UserError, match="no BERT-style self-attention"):
        check_attention_heads(torch.nn.Linear(2, 2), tiny_bert())
