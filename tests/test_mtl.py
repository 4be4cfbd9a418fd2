"""`metakd fit --teacher-mode mtl` (BERT-mtl): one shared encoder, one head per domain, each row
through its own domain's head at training, metrics and distillation time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_toy_dataset
from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
from metakd_cli.data.encode import encode
from metakd_cli.data.dataset import load_dataset
from metakd_cli.steps.distill import distill
from metakd_cli.data.metrics import per_domain_accuracy
from metakd_cli.models.inference import batched_logits, torch_logits
from metakd_cli.steps.fit import fit
from metakd_cli.models.loading import HEAD_FILE
from metakd_cli.models.heads import (
    DomainClassifiers,
    TeacherInfo,
    classifier_output_layer,
    load_domain_classifiers,
    mtl_forward,
    mtl_logits,
)
from metakd_cli.core.run_dir import RunDir


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def mtl_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mtl")
    data = DataConfig(path=str(write_toy_dataset(root, "jsonl")))
    # dev scored at epoch ends: scored after every step, the state kept can be the first step's, where Adam's
    # sign-only first step has moved every head alike
    config = FitConfig(teacher=str(tiny_model_dir), teacher_mode="mtl", epochs=2, batch_size=8, lr=1e-3,
                       max_length=16, seed=3, eval_every=0)
    fit(data, config, RunDir(root / "run"), log=_quiet)
    return root / "run"


@pytest.fixture
def run(mtl_run, tmp_path) -> RunDir:
    shutil.copytree(mtl_run, tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_domain_classifiers_pick_each_rows_own_head():
    heads = DomainClassifiers(3, 2, 4)
    with torch.no_grad():
        heads.weight.copy_(torch.arange(24, dtype=torch.float).reshape(3, 2, 4))
        heads.bias.copy_(torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]))
    features = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    domains = torch.tensor([2, 0, 1])
    # row 0, head 2: W[2] = [[16..19], [20..23]] -> first column 16, 20; + bias 20, 21
    # row 1, head 0: second column of W[0] = 1, 5; + 0, 1
    # row 2, head 1: row sums of W[1] = 8+9+10+11, 12+13+14+15; + 10, 11
    expected = torch.tensor([[36.0, 41.0], [1.0, 6.0], [48.0, 65.0]])
    assert torch.equal(heads(features, domains), expected)


def test_mtl_fit_saves_a_plain_classifier_and_the_domain_heads(run):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    info = TeacherInfo.load(run.teacher)
    assert info.mode == "mtl" and info.domain_loss == "none"
    tensors = load_file(str(run.teacher / HEAD_FILE))
    for domain in info.domains:
        assert tensors[f"mtl.{domain}.weight"].shape == (2, 32) and tensors[f"mtl.{domain}.bias"].shape == (2,)
    heads = load_domain_classifiers(run.teacher)
    assert not torch.equal(heads.weight[0], heads.weight[1])  # trained on different domains, they differ
    # plain transformers loads the encoder; its own head is the mean of the domain heads ...
    model = AutoModelForSequenceClassification.from_pretrained(run.teacher)
    layer = classifier_output_layer(model)
    assert torch.allclose(layer.weight, heads.weight.mean(0)) and torch.allclose(layer.bias, heads.bias.mean(0))
    # ... so its logits are exactly the mean of all domains' logits
    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    from transformers import AutoTokenizer

    test = encode(dataset.test, dataset, AutoTokenizer.from_pretrained(run.teacher), 16)
    plain = torch_logits(model, test, 0)
    assert np.allclose(plain, _all_heads(model, heads, test).mean(0), atol=1e-5)


def _all_heads(model, heads: DomainClassifiers, encoded) -> np.ndarray:
    """Logits of every domain's head on every row: [D, N, C]."""
    out = []
    for d in range(heads.weight.shape[0]):
        def forward(batch, d=d):
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.inference_mode():
                return mtl_logits(model, heads, inputs, torch.full_like(batch["domains"], d)).numpy()
        out.append(batched_logits(encoded, 0, 64, forward))
    return np.stack(out)


def _make_heads_disagree(run: RunDir) -> DomainClassifiers:
    """Rewrite the saved heads so that books always says label 0 and every other domain label 1."""
    from safetensors.torch import load_file, save_file

    info = TeacherInfo.load(run.teacher)
    tensors = load_file(str(run.teacher / HEAD_FILE))
    for domain in info.domains:
        tensors[f"mtl.{domain}.weight"] = torch.zeros(2, 32)
        tensors[f"mtl.{domain}.bias"] = torch.tensor([5.0, -5.0] if domain == "books" else [-3.0, 3.0])
    save_file(tensors, str(run.teacher / HEAD_FILE))
    return load_domain_classifiers(run.teacher)


def test_metrics_and_distillation_use_each_rows_own_head(run, monkeypatch):
    import metakd_cli.steps.distill as distill_module

    heads = _make_heads_disagree(run)
    captured = {}
    original = distill_module.soft_targets

    def spy(logits, temperature=1.0):
        captured["logits"] = logits.clone()
        return original(logits, temperature)

    monkeypatch.setattr(distill_module, "soft_targets", spy)
    result = distill(DistillConfig(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5), run, log=_quiet,
                     warn=_quiet)
    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    domains = [ex.domain for ex in dataset.train]
    expected = torch.tensor([[5.0, -5.0] if d == "books" else [-3.0, 3.0] for d in domains])
    assert torch.allclose(captured["logits"], expected)  # the cached teacher logits: each row's own head
    # the teacher's test accuracy is that of the per-domain heads: books always "negative" (label 0)
    teacher = result.metrics["teacher_test_accuracy"]
    assert teacher["books"] == pytest.approx(50.0) and teacher["kitchen"] == pytest.approx(50.0)
    # the helper evaluate.py can call gives the same per-row logits on any split
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run.teacher)
    test = encode(dataset.test, dataset, AutoTokenizer.from_pretrained(run.teacher), 16)
    logits = batched_logits(test, 0, 64, mtl_forward(model, heads))
    predictions = logits.argmax(-1)
    assert all(p == (0 if dataset.domains[d] == "books" else 1) for p, d in zip(predictions, test.domains))
    assert per_domain_accuracy(predictions, test, dataset.domains) == pytest.approx(teacher)


def test_mtl_fit_metrics_come_from_the_domain_heads(mtl_run):
    import json

    metrics = json.loads((mtl_run / "metrics" / "fit.json").read_text())
    run = RunDir(mtl_run)
    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run.teacher)
    test = encode(dataset.test, dataset, AutoTokenizer.from_pretrained(run.teacher), 16)
    logits = batched_logits(test, 0, 64, mtl_forward(model, load_domain_classifiers(run.teacher)))
    assert per_domain_accuracy(logits.argmax(-1), test, dataset.domains) == pytest.approx(metrics["test_accuracy"])
    assert metrics["mode"] == "mtl"
