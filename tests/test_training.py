"""run_phase: the share of the phase done (DANN's schedule reads it), what --resume says and refuses, and the
training time a resumed phase counts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import InterruptAfter
from metakd_cli.core.errors import UserError
from metakd_cli.training.loop import PhaseSpec, PhaseSteps, earlier_seconds, refuse_other_settings, run_phase


def test_batches_carry_training_progress(tmp_path):
    seen: list[float] = []
    model = nn.Linear(2, 1)

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        seen.append(float(batch["progress"]))
        return {"loss": model(batch["x"]).pow(2).mean()}

    def make_batch(indices: list[int]) -> dict:
        return {"x": torch.ones(len(indices), 2), "index": torch.tensor(indices)}

    spec = PhaseSpec(name="p", epochs=2, batch_size=4, lr=0.01, seed=0)
    run_phase(spec, model, PhaseSteps(10, make_batch, loss_step), tmp_path, resume=False)
    assert seen == pytest.approx([step / 6 for step in range(6)])  # 3 steps an epoch, 2 epochs: 0 .. 5/6


def test_batches_carry_the_global_batch_and_this_process_rows_in_it(tmp_path):
    """One process: the global batch is the batch, every position its own (a whole-batch term sees it all)."""
    seen: list[tuple[list[int], list[int], list[int]]] = []
    model = nn.Linear(2, 1)

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        seen.append((batch["index"].tolist(), batch["global_index"].tolist(), batch["global_position"].tolist()))
        return {"loss": model(batch["x"]).pow(2).mean()}

    def make_batch(indices: list[int]) -> dict:
        return {"x": torch.ones(len(indices), 2), "index": torch.tensor(indices)}

    spec = PhaseSpec(name="p", epochs=1, batch_size=4, lr=0.01, seed=0)
    run_phase(spec, model, PhaseSteps(10, make_batch, loss_step), tmp_path, resume=False)
    assert [len(index) for index, _, _ in seen] == [4, 4, 2]
    for index, global_index, positions in seen:
        assert global_index == index and positions == list(range(len(index)))


def _train(tmp_path, signature: str = "", resume: bool = False, n_examples: int = 10) -> list[str]:
    model = nn.Linear(2, 1)

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": model(batch["x"]).pow(2).mean()}

    def make_batch(indices: list[int]) -> dict:
        return {"x": torch.ones(len(indices), 2), "index": torch.tensor(indices)}

    spec = PhaseSpec(name="fit-teacher", epochs=1, batch_size=4, lr=0.01, seed=0, signature=signature,
                     signature_names=("settings", "data fingerprint"))
    lines: list[str] = []
    run_phase(spec, model, PhaseSteps(n_examples, make_batch, loss_step), tmp_path, resume=resume, log=lines.append)
    return lines


def _signature(lr: float, fingerprint: str = "ab" * 32) -> str:
    return json.dumps([{"lr": lr, "epochs": 1}, fingerprint], sort_keys=True)


def test_resume_names_the_settings_that_differ(tmp_path):
    # it used to print the current run's example and step counts, which said nothing about what changed
    _train(tmp_path, _signature(0.01))
    with pytest.raises(UserError) as error:
        _train(tmp_path, _signature(0.02, "cd" * 32), resume=True, n_examples=12)
    message = str(error.value)
    assert "checkpoint was made with other settings (checkpoint -> now: lr 0.01 -> 0.02; " in message
    assert 'data fingerprint abababababab... -> cdcdcdcdcdcd...' in message
    assert "training examples 10 -> 12" in message and "epochs" not in message


def test_resume_says_plainly_when_the_checkpoint_does_not_record_its_settings(tmp_path):
    _train(tmp_path)  # a checkpoint of a caller that gave no signature
    with pytest.raises(UserError, match="it does not record which, so they cannot be compared"):
        _train(tmp_path, _signature(0.01), resume=True)


def test_resume_logs_what_it_resumes_or_that_it_starts_from_scratch(tmp_path):
    assert _train(tmp_path, resume=True) == [
        f"fit-teacher: no checkpoint to resume in {tmp_path / 'fit-teacher'}, so it starts from scratch"]
    assert _train(tmp_path, resume=True) == ["fit-teacher: finished in its checkpoint, not trained again"]
    assert _train(tmp_path, resume=False) == []


def test_resume_and_the_early_refusal_read_a_checkpoint_left_as_old_by_a_kill_between_renames(tmp_path):
    _train(tmp_path, _signature(0.01))
    (tmp_path / "fit-teacher").rename(tmp_path / ".fit-teacher.old")
    assert _train(tmp_path, _signature(0.01), resume=True) == [
        "fit-teacher: finished in its checkpoint, not trained again"]
    spec = PhaseSpec(name="fit-teacher", epochs=1, batch_size=4, lr=0.02, seed=0, signature=_signature(0.02))
    with pytest.raises(UserError, match=r"\.fit-teacher\.old: the checkpoint was made with other settings .*lr 0.01"):
        refuse_other_settings(tmp_path, spec)
    refuse_other_settings(tmp_path / "elsewhere", spec)  # nothing saved: nothing to refuse


@pytest.mark.parametrize("damaged", ["loop.json", "model.safetensors", "rng.safetensors", "optim.pt"])
def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path, damaged):
    _train(tmp_path)
    path = tmp_path / "fit-teacher" / damaged
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(UserError, match=r"the checkpoint is damaged or truncated .*run without --resume"):
        _train(tmp_path, resume=True)


def _timed_phase(tmp_path, resume: bool, progress=None):
    model = nn.Linear(2, 1)

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": model(batch["x"]).pow(2).mean()}

    def make_batch(indices: list[int]) -> dict:
        return {"x": torch.ones(len(indices), 2), "index": torch.tensor(indices)}

    spec = PhaseSpec(name="p", epochs=2, batch_size=4, lr=0.01, seed=0)
    return run_phase(spec, model, PhaseSteps(10, make_batch, loss_step), tmp_path, resume=resume, progress=progress)


def test_a_resumed_phase_counts_the_interrupted_runs_training_time(tmp_path):
    fresh = _timed_phase(tmp_path / "fresh", resume=False)
    assert fresh.resumed_from is None and fresh.seconds > 0
    with pytest.raises(KeyboardInterrupt):
        _timed_phase(tmp_path, resume=False, progress=InterruptAfter(4))  # 3 steps an epoch: in the second
    loop = tmp_path / "p" / "loop.json"
    recorded = json.loads(loop.read_text())["seconds"]
    assert recorded > 0
    result = _timed_phase(tmp_path, resume=True)
    assert result.resumed_from == {"epoch": 1, "step": 1, "earlier_seconds": recorded}
    assert result.seconds > recorded  # the earlier run's and this one's
    assert earlier_seconds([None, result.resumed_from, {"earlier_seconds": None}]) == recorded


def test_a_checkpoint_that_did_not_record_its_time_says_so(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _timed_phase(tmp_path, resume=False, progress=InterruptAfter(4))
    loop = tmp_path / "p" / "loop.json"
    saved = json.loads(loop.read_text())
    del saved["seconds"]  # written before the loop recorded its time
    loop.write_text(json.dumps(saved))
    with pytest.raises(KeyboardInterrupt):  # interrupted again: the time stays not known, not a part of it
        _timed_phase(tmp_path, resume=True, progress=InterruptAfter(1))
    assert json.loads(loop.read_text())["seconds"] is None
    result = _timed_phase(tmp_path, resume=True)
    assert result.resumed_from["earlier_seconds"] is None and result.seconds > 0  # this run's alone


def _scored_phase(tmp_path, scores: list[float] | None, epochs: int = 3, eval_every: int | None = 1,
                  patience: int = 0, resume: bool = False, progress=None):
    """A phase of 10 rows in batches of 2 (5 steps an epoch) whose dev score is taken from ``scores`` in turn
    (None: a score that is a function of the weights, the same on a resumed run)."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    given = iter(scores or [])

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": (model(batch["x"]) - 1).pow(2).mean()}

    def make_batch(indices: list[int]) -> dict:
        return {"x": torch.arange(len(indices) * 2, dtype=torch.float).reshape(-1, 2) / 10,
                "index": torch.tensor(indices)}

    def evaluate() -> float:
        if scores is None:
            with torch.no_grad():
                return -float((model(torch.ones(1, 2)) - 1).abs())
        return next(given)

    spec = PhaseSpec(name="p", epochs=epochs, batch_size=2, lr=0.05, seed=0, eval_every=eval_every,
                     patience=patience)
    result = run_phase(spec, model, PhaseSteps(10, make_batch, loss_step, evaluate), tmp_path, resume=resume,
                       progress=progress)
    return result, model


def test_dev_is_scored_inside_epochs_and_the_best_scoring_step_is_kept(tmp_path):
    # every 2 steps of 5, and at each epoch's end: steps 2, 4, 5 | 7, 9, 10
    scores = [1.0, 2.0, 1.5, 5.0, 3.0, 4.0]
    result, _ = _scored_phase(tmp_path, scores, epochs=2, eval_every=2)
    assert [point["step"] for point in result.dev_curve] == [2, 4, 5, 7, 9, 10]
    assert [point["dev_score"] for point in result.dev_curve] == scores
    assert result.dev_curve[3]["epoch"] == 1.4
    assert (result.best_score, result.best_step, result.best_epoch) == (5.0, 7, 2)
    assert [epoch["dev_score"] for epoch in result.history] == [1.5, 4.0]  # each epoch's end
    assert not result.stopped_early


def test_the_kept_state_is_the_one_of_the_best_scoring(tmp_path):
    # the score is a function of the weights: the kept model must score the best score again
    result, model = _scored_phase(tmp_path, None, epochs=2, eval_every=1)
    assert -float((model(torch.ones(1, 2)) - 1).abs().detach()) == pytest.approx(result.best_score)
    assert result.best_score == max(point["dev_score"] for point in result.dev_curve)


def test_patience_stops_the_phase_and_epochs_is_the_ceiling(tmp_path):
    # scored every step: the best at step 2, then three scorings without a gain stop it at step 5
    result, _ = _scored_phase(tmp_path / "a", [1.0, 2.0, 2.0, 1.0, 0.5] + [9.0] * 20, epochs=3, patience=3)
    assert result.stopped_early and [p["step"] for p in result.dev_curve] == [1, 2, 3, 4, 5]
    assert (result.best_step, len(result.history)) == (2, 1)
    # without patience every epoch runs (the ceiling): 15 scorings
    result, _ = _scored_phase(tmp_path / "b", [1.0, 2.0, 2.0, 1.0, 0.5] + [0.0] * 10, epochs=3, patience=0)
    assert not result.stopped_early and len(result.dev_curve) == 15 and result.best_step == 2


def test_a_phase_interrupted_between_dev_scorings_resumes_exactly(tmp_path):
    whole, whole_model = _scored_phase(tmp_path / "whole", None, epochs=2, eval_every=2, patience=4)
    with pytest.raises(KeyboardInterrupt):
        _scored_phase(tmp_path / "cut", None, epochs=2, eval_every=2, patience=4, progress=InterruptAfter(4))
    resumed, resumed_model = _scored_phase(tmp_path / "cut", None, epochs=2, eval_every=2, patience=4, resume=True)
    assert resumed.dev_curve == whole.dev_curve
    assert (resumed.best_step, resumed.stopped_early) == (whole.best_step, whole.stopped_early)
    assert torch.equal(resumed_model.weight, whole_model.weight)


def test_a_phase_stopped_by_patience_is_finished_in_its_checkpoint(tmp_path):
    first, _ = _scored_phase(tmp_path, [1.0, 0.5, 0.5] + [9.0] * 20, epochs=3, patience=2)
    assert first.stopped_early and len(first.dev_curve) == 3
    again, _ = _scored_phase(tmp_path, [9.0] * 20, epochs=3, patience=2, resume=True)
    assert again.dev_curve == first.dev_curve and again.stopped_early  # nothing trained or scored again
