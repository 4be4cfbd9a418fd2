"""Head warm-up (metakd_cli.training.head_warmup): a new head trained alone on the frozen body's [CLS] states before stage 2,
the best epoch on dev kept; on by default only for a head that did not come from the teacher."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from metakd_cli.core.config import DistillConfig
from metakd_cli.steps.distill import distill
from metakd_cli.training.head_warmup import cls_states, head_parts, warm_head
from metakd_cli.core.run_dir import RunDir


def _quiet(*_args, **_kwargs) -> None:
    pass


def _classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20, num_labels=2)
    return BertForSequenceClassification(config)


def _separable(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (rows,), generator=generator)
    states = torch.randn(rows, 16, generator=generator) + 2.0 * labels[:, None] * torch.ones(16)
    return states, labels


def test_the_head_learns_the_body_does_not_move_and_the_best_epoch_is_kept():
    model = _classifier()
    body = {k: v.clone() for k, v in model.state_dict().items() if "pooler" not in k and "classifier" not in k}
    train, train_labels = _separable(256, 1)
    dev, dev_labels = _separable(128, 2)
    gold = lambda logits, rows: torch.nn.functional.cross_entropy(logits, train_labels[rows], reduction="none")
    torch.manual_seed(123)
    record = warm_head(model, train, gold, dev, dev_labels, epochs=10, seed=9, lr=1e-2)
    after_global = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_global, torch.rand(1))  # the global random state is left as it was
    assert record["dev_after"] == max(record["dev_curve"]) > record["dev_before"]
    assert record["dev_after"] > 95 and len(record["dev_curve"]) == 11
    for key, value in model.state_dict().items():
        if key in body:
            assert torch.equal(value, body[key]), key
    pooler, classifier = head_parts(model)
    with torch.no_grad():
        logits = classifier(pooler.activation(pooler.dense(dev)))
    assert float((logits.argmax(-1) == dev_labels).float().mean() * 100) == record["dev_after"]


def test_the_same_seed_gives_the_same_head_and_epoch_zero_is_kept_when_nothing_helps():
    train, labels = _separable(64, 3)
    dev, dev_labels = _separable(64, 4)
    gold = lambda logits, rows: torch.nn.functional.cross_entropy(logits, labels[rows], reduction="none")
    first, second = _classifier(), _classifier()
    warm_head(first, train, gold, dev, dev_labels, epochs=2, seed=5)
    warm_head(second, train, gold, dev, dev_labels, epochs=2, seed=5)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    # a loss that teaches the wrong labels: dev gets worse, so the head as it was (epoch 0) is kept
    model = _classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = lambda logits, rows: torch.nn.functional.cross_entropy(logits, 1 - dev_labels[rows], reduction="none")
    record = warm_head(model, dev, wrong, dev, dev_labels, epochs=3, seed=5, lr=1e-2)
    assert record["best_epoch"] == 0 and record["dev_curve"][-1] < record["dev_before"] == record["dev_after"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_head_of_another_shape_is_not_warmed_up():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=20)
    assert head_parts(DistilBertForSequenceClassification(config)) is None
    assert head_parts(_classifier()) is not None


def test_cls_states_are_the_bodys_first_token(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from metakd_cli.data.encode import Encoded

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    encoded = Encoded([[2, 7, 8, 3], [2, 9, 3]], None, [0, 1], [0, 0])
    states = cls_states(model, encoded, pad_id=0)
    with torch.no_grad():
        expected = model.bert(input_ids=torch.tensor([[2, 9, 3]])).last_hidden_state[0, 0]
    assert states.shape == (2, 32) and torch.allclose(states[1], expected, atol=1e-5)


@pytest.fixture
def run(fitted_toy_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fitted_toy_run.path, copy)
    return RunDir(copy)


def _stage2(run) -> dict:
    return json.loads((run.metrics / "distill.json").read_text())["stages"]["prediction"]


def test_a_new_head_is_warmed_up_by_default_and_a_teachers_head_is_not(run):
    from transformers import AutoModelForSequenceClassification

    lines = []
    distill(DistillConfig(method="none", epochs=1, batch_size=8, lr=1e-3, seed=5), run, log=lines.append,
            warn=_quiet)
    warm = _stage2(run)["head_warmup"]
    assert warm["epochs"] == 10 and warm["dev_after"] >= warm["dev_before"] and len(warm["dev_curve"]) == 11
    assert any(line.startswith("head warm-up on the frozen body") for line in lines)
    AutoModelForSequenceClassification.from_pretrained(run.student)  # still a plain transformers classifier
    distill(DistillConfig(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5), run, log=_quiet, warn=_quiet)
    assert _stage2(run)["head_warmup"] is None  # tiny's head is the teacher's
    distill(DistillConfig(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5, head_warmup=2), run, log=_quiet,
            warn=_quiet)
    assert _stage2(run)["head_warmup"]["epochs"] == 2  # asked for


def test_head_warmup_zero_turns_it_off_and_a_negative_count_is_refused(run):
    from metakd_cli.core.errors import UserError

    distill(DistillConfig(method="none", epochs=1, batch_size=8, lr=1e-3, seed=5, head_warmup=0), run, log=_quiet,
            warn=_quiet)
    assert _stage2(run)["head_warmup"] is None
    with pytest.raises(UserError, match="--head-warmup must be 0 or more, got -1"):
        distill(DistillConfig(method="none", head_warmup=-1), run, log=_quiet, warn=_quiet)

