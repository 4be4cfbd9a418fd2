"""`metakd distill --method mtn` (Multi-teachers -> MTN-KD): stage 2 only, from every single-domain
teacher at once; each row's soft label is the mean of all teachers' softmax outputs at T."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import metakd_cli.steps.distill as distill_module
from conftest import write_toy_dataset
from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
from metakd_cli.data.encode import encode
from metakd_cli.data.dataset import load_dataset
from metakd_cli.steps.distill import distill
from metakd_cli.core.errors import UserError
from metakd_cli.models.inference import torch_logits
from metakd_cli.steps.fit import fit
from metakd_cli.training.losses import multi_teacher_targets, soft_cross_entropy, soft_target_cross_entropy
from metakd_cli.core.run_dir import RunDir

DOMAINS = ["books", "electronics", "kitchen"]


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    data = DataConfig(path=str(write_toy_dataset(root, "jsonl")))
    config = FitConfig(teacher=str(tiny_model_dir), teacher_mode="single", epochs=1, batch_size=8, lr=1e-3,
                       max_length=16, seed=3)
    fit(data, config, RunDir(root / "run"), log=_quiet)
    return root / "run"


@pytest.fixture
def run(single_run, tmp_path) -> RunDir:
    shutil.copytree(single_run, tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_multi_teacher_targets_by_hand():
    # two teachers, one row, two classes, T = 1: softmax([0, 0]) = [.5, .5]; softmax([ln 3, 0]) = [.75, .25]
    logits = torch.tensor([[[0.0, 0.0]], [[float(torch.log(torch.tensor(3.0))), 0.0]]])
    assert torch.allclose(multi_teacher_targets(logits), torch.tensor([[0.625, 0.375]]))
    # T = 2 divides the logits first: softmax([ln 3 / 2, 0]) = [sqrt 3 / (sqrt 3 + 1), 1 / (sqrt 3 + 1)]
    root3 = 3.0 ** 0.5
    expected = torch.tensor([[(0.5 + root3 / (root3 + 1)) / 2, (0.5 + 1 / (root3 + 1)) / 2]])
    assert torch.allclose(multi_teacher_targets(logits, 2.0), expected)
    # the loss to the mean target is the mean of the per-teacher KD losses (soft CE is linear in its target)
    student = torch.tensor([[0.3, -1.2]])
    per_teacher = torch.stack([soft_cross_entropy(student, logits[k], 2.0) for k in range(2)]).mean(0)
    assert torch.allclose(soft_target_cross_entropy(student, multi_teacher_targets(logits, 2.0), 2.0), per_teacher)


def test_the_students_target_is_the_mean_of_every_teachers_softmax(run, monkeypatch):
    batches, losses = [], []
    collate, loss = distill_module.collate, distill_module.prediction_loss

    def spy_collate(encoded, indices, pad_id):
        batch = collate(encoded, indices, pad_id)
        batches.append(batch["index"].clone())
        return batch

    def spy_loss(student_logits, targets, *rest):
        losses.append((targets.detach().clone(), rest[1]))  # rest: labels, temperature, gold weight, labelled
        return loss(student_logits, targets, *rest)

    monkeypatch.setattr(distill_module, "collate", spy_collate)
    monkeypatch.setattr(distill_module, "prediction_loss", spy_loss)
    config = DistillConfig(method="mtn", domain="kitchen", epochs=1, batch_size=8, lr=1e-3, temperature=2.0, seed=5)
    result = distill(config, run, log=_quiet, warn=_quiet)

    # independently: each single-domain teacher, loaded with plain transformers, on kitchen's train rows
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    rows = [ex for ex in dataset.train if ex.domain == "kitchen"]
    encoded = encode(rows, dataset, AutoTokenizer.from_pretrained(run.teacher / "books"), 16)
    probabilities = [
        torch.from_numpy(torch_logits(AutoModelForSequenceClassification.from_pretrained(run.teacher / d), encoded, 0)
                         / 2.0).softmax(-1)
        for d in DOMAINS
    ]
    expected = torch.stack(probabilities).mean(0)
    assert not torch.allclose(probabilities[0], probabilities[2], atol=1e-3)  # the teachers do disagree
    assert len(batches) == len(losses) and batches
    for index, (targets, temperature) in zip(batches, losses):
        assert temperature == 2.0
        assert torch.allclose(targets, expected[index], atol=1e-5)
    metrics = result.metrics
    assert metrics["method"] == "mtn" and metrics["teachers"] == DOMAINS
    assert "intermediate" not in metrics["stages"]  # stage 2 only, like the paper's baseline
    assert metrics["lambda"] == {"mean": 1.0, "min": 1.0, "max": 1.0}


def test_mtn_teacher_accuracy_is_the_averaged_teachers(run):
    result = distill(DistillConfig(method="mtn", epochs=1, batch_size=8, lr=1e-3, seed=5), run, log=_quiet,
                     warn=_quiet)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dataset = load_dataset(DataConfig(**run.load().data["config"]))
    test = encode(dataset.test, dataset, AutoTokenizer.from_pretrained(run.teacher / "books"), 16)
    mean = torch.stack([
        torch.from_numpy(torch_logits(AutoModelForSequenceClassification.from_pretrained(run.teacher / d), test, 0))
        .softmax(-1) for d in DOMAINS
    ]).mean(0)
    from metakd_cli.data.metrics import per_domain_accuracy

    assert result.metrics["teacher_test_accuracy"] == pytest.approx(
        per_domain_accuracy(mean.argmax(-1).numpy(), test, dataset.domains))
    assert set(result.metrics["test_accuracy"]) == {*DOMAINS, "average"}  # one student for all domains


def test_mtn_needs_single_domain_teachers(tiny_model_dir, tmp_path):
    root = tmp_path / "mix"
    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))
    fit(data, FitConfig(teacher=str(tiny_model_dir), teacher_mode="mix", epochs=1, batch_size=8, max_length=16),
        RunDir(root), log=_quiet)
    with pytest.raises(UserError, match="--method mtn learns from one teacher per domain, but this run's teacher "
                                        "is mix: fit with --teacher-mode single first"):
        distill(DistillConfig(method="mtn"), RunDir(root), log=_quiet, warn=_quiet)
    with pytest.raises(UserError, match="unknown --method 'ensemble'"):
        distill(DistillConfig(method="ensemble"), RunDir(root), log=_quiet, warn=_quiet)


def test_mtn_command_line(run):
    from click.testing import CliRunner

    from metakd_cli.cli import cli

    result = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(run.path), "distill", "--method", "mtn",
                                      "--domain", "books", "--train-fraction", "0.5", "--epochs", "1",
                                      "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "teachers' mean test %" in result.stdout
    assert run.load().steps["distill"]["train_fraction"] == 0.5
