"""The one training loop shared by fit and distill, on accelerate.

Seeded per-epoch batch order, AdamW with linear warm-up (or a constant rate), gradient
clipping, dev-set selection of the best state, a progress callback, and checkpoints that
make ``--resume`` continue exactly where an interrupted run stopped: model, optimizer,
scheduler, RNG states and position are saved at each epoch end and on Ctrl-C.

Under several processes (metakd_cli.core.processes) the loss step runs through accelerate's
wrapper (DDP: gradients all-reduced), each process takes every N-th row of the global batch,
and only the main process writes checkpoints (at epoch ends; a Ctrl-C keeps the last one).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from metakd_cli.core.errors import UserError
from metakd_cli.core.run_dir import atomic_dir, saved_or_old


@dataclass
class PhaseSpec:
    name: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    constant_lr: bool = False
    signature: str = ""  # JSON of what the caller trains (config, data): a checkpoint of other settings is refused
    signature_names: tuple[str, ...] = ()  # names of the parts of a JSON-list signature, for that refusal
    mixed_precision: str | None = None  # no | bf16 | fp16; None: the launcher's setting, else no
    # training length by dev (needs PhaseSteps.evaluate): score dev every `eval_every` optimisation steps inside an
    # epoch too (0: at epoch ends only; None: about ten times an epoch), and stop after `patience` scorings in a row
    # without a gain (0: run every epoch); `epochs` is then the ceiling
    eval_every: int | None = 0
    patience: int = 0


def check_length(epochs: int | None, max_epochs: int, patience: int, eval_every: int | None) -> None:
    """The length settings of fit and of distill's stage 2 (--epochs, --max-epochs, --patience, --eval-every),
    refused in one line when out of range."""
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs} (leave it out to choose the length on dev)")
    if max_epochs < 1:
        raise UserError(f"--max-epochs must be at least 1, got {max_epochs}")
    for flag, value in (("--patience", patience), ("--eval-every", eval_every)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}")


def by_dev(epochs: int | None, max_epochs: int, patience: int, eval_every: int | None) -> dict:
    """PhaseSpec's length fields for the rule fit and stage 2 share: --epochs N trains exactly N (the best-scoring
    state still kept); without it, up to max_epochs, stopped by patience."""
    return {"epochs": epochs or max_epochs, "patience": 0 if epochs else patience, "eval_every": eval_every}


@dataclass
class PhaseSteps:
    """What a phase trains on: its rows, how a batch of them is built, the loss step and the dev score.

    ``make_batch(indices)`` builds the batch of those training rows; ``loss_step(batch, generator)`` returns
    named loss terms with ``loss`` to optimise (the batch also carries ``progress``, the share of the phase's
    steps done before this one, 0 to <1, and, for a term that belongs to the whole batch rather than to each row,
    ``global_index``, the global batch's rows in order [B], and ``global_position``, where this process's rows
    sit in it [b]: under several processes a process holds a share of the batch only); ``evaluate()`` returns the
    dev score used for selection (higher is better), None: keep the last epoch's state.
    """

    n_examples: int
    make_batch: Callable[[list[int]], dict]
    loss_step: Callable[[dict, torch.Generator], dict[str, torch.Tensor]]
    evaluate: Callable[[], float] | None = None


@dataclass
class PhaseResult:
    """``seconds``: the phase's training time, the interrupted runs' that it resumed included (as their checkpoint
    recorded it); ``examples_per_second``: this run's rate; ``resumed_from``: None, or where this run took the phase
    up (epoch, step) and the training seconds its checkpoint had recorded (None from a checkpoint that did not,
    when ``seconds`` is this run's alone)."""

    best_score: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    examples_per_second: float = 0.0
    resumed_from: dict | None = None
    dev_curve: list[dict] = field(default_factory=list)  # every dev scoring: {"step", "epoch", "dev_score"}
    best_step: int = -1  # the optimisation step (counted over the phase) whose state was kept
    stopped_early: bool = False  # stopped by patience before the epoch ceiling


class _LossStep(nn.Module):
    """The trainable parts and the loss step as one module, so that accelerate's wrapper runs the step:
    under DDP only a forward through the wrapper makes the backward all-reduce the gradients (the
    parts' own forwards, called inside the step, are the same parameters)."""

    def __init__(self, parts: nn.Module, step: Callable[[dict, torch.Generator], dict[str, torch.Tensor]]):
        super().__init__()
        self.parts = parts
        self._step = step

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self._step(batch, generator)


def shard(indices: list[int], rank: int, processes: int) -> tuple[list[int], float]:
    """This process's rows of a global batch and the factor on its mean loss that makes the all-reduced
    (averaged) gradient the one of the mean over the whole batch: share x processes / batch.

    Equal shares give 1. An unequal last batch weights each share by its size; a process left with no
    row takes the batch's first row with factor 0 (every process must run the step for DDP).
    """
    own = indices[rank::processes]
    if processes == 1:
        return own, 1.0
    if not own:
        return indices[:1], 0.0
    return own, len(own) * processes / len(indices)


class _DeferredInterrupt:
    """Turn Ctrl-C (SIGINT) into a request honoured between steps, so a checkpoint is never
    taken half-way through an optimisation step; a second Ctrl-C interrupts at once."""

    requested = False

    def __enter__(self) -> "_DeferredInterrupt":
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _state_file(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # tied weights share storage; safetensors wants distinct tensors
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))


_ABSENT = object()  # a setting one side's signature does not have


def _short(value: object) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str) and len(value) > 24:  # a data fingerprint: its start shows that it differs
        return value[:12] + "..."
    return json.dumps(value)


def checkpoint_changes(loop: dict, signature: str, names: tuple[str, ...], total_steps: int | None,
                       n_examples: int) -> list[str]:
    """What differs between a checkpoint's ``loop.json`` and this run, as "name old -> new" strings.

    Settings come from the two signatures (a config dict's keys by name, other parts by
    ``names``); example and step counts are added when they differ. An empty list:
    the checkpoint does not record its settings in a form that can be compared.
    """
    changes = []
    try:
        old, new = json.loads(loop.get("signature") or "null"), json.loads(signature or "null")
    except json.JSONDecodeError:
        old = new = None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (old_part, new_part) in enumerate(zip(old, new)):
            if old_part == new_part:
                continue
            if isinstance(old_part, dict) and isinstance(new_part, dict):
                for key in sorted(old_part.keys() | new_part.keys()):
                    before, after = old_part.get(key, _ABSENT), new_part.get(key, _ABSENT)
                    if before != after:
                        changes.append(f"{key} {_short(before)} -> {_short(after)}")
            else:
                name = names[i] if i < len(names) else f"part {i + 1}"
                changes.append(f"{name} {_short(old_part)} -> {_short(new_part)}")
    if loop.get("n_examples") != n_examples:
        changes.append(f"training examples {loop.get('n_examples')} -> {n_examples}")
    if loop.get("total_steps") != total_steps:
        changes.append(f"steps {loop.get('total_steps')} -> {total_steps}")
    return changes


_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@dataclass
class _Phase:
    """One phase's fixed parts, set up once: its settings, what it trains on, the loss step as accelerate prepared
    it, the optimizer and schedule, the generator handed to the loss step, its checkpoint folder and the callbacks."""

    spec: PhaseSpec
    module: nn.Module
    steps: PhaseSteps
    accelerator: object
    model: nn.Module  # _LossStep(module, loss_step) through accelerator.prepare
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator
    checkpoint: Path
    progress: object
    log: Callable[[str], None]

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def n_examples(self) -> int:
        return self.steps.n_examples

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.spec.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.spec.epochs

    @property
    def eval_every(self) -> int:
        """Steps between dev scorings inside an epoch; 0: at epoch ends only (also when nothing scores dev)."""
        if self.steps.evaluate is None:
            return 0
        if self.spec.eval_every is None:
            return max(1, self.steps_per_epoch // 10)
        return self.spec.eval_every


def _fresh_position(epoch: int = 0) -> dict:
    # term_sums: the running sum of each named term a loss step returns beside "loss" (stage 1's hidden,
    # attention, domain), so the history shows what each part of the loss was
    return {"epoch": epoch, "step": 0, "loss_sum": 0.0, "loss_count": 0, "term_sums": {}}


@dataclass
class _LoopState:
    """Where a phase stands: the position (epoch, step, running loss), the best dev score and state so far and
    the history (all of it in a checkpoint), and this process's count of trained rows since it started."""

    position: dict = field(default_factory=_fresh_position)
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from: dict | None = None
    earlier_seconds: float | None = 0.0  # the training time of the runs this one resumed (None: not recorded)
    started: float = 0.0
    trained_examples: int = 0
    consistent: bool = True  # False while a step or an epoch end is half done: no checkpoint then
    dev_curve: list[dict] = field(default_factory=list)
    best_step: int = -1
    since_best: int = 0  # dev scorings in a row without a gain
    stopped: bool = False  # patience ran out

    def rate(self) -> float:
        return self.trained_examples / max(time.perf_counter() - self.started, 1e-9)


def run_phase(
    spec: PhaseSpec,
    module: nn.Module,
    steps: PhaseSteps,
    checkpoint_dir: Path,
    resume: bool,
    progress=None,
    log: Callable[[str], None] = lambda _: None,
) -> PhaseResult:
    """Train ``module`` (an nn.Module holding every trainable part) on ``steps`` and keep its best state.

    Checkpoints go to ``checkpoint_dir / spec.name``; with ``resume`` the phase continues from the one there.
    On return ``module`` holds the best state seen (by ``steps.evaluate``, else the last).
    """
    accelerator, model, optimizer, scheduler, generator = _prepare(spec, module, steps)
    phase = _Phase(spec, module, steps, accelerator, model, optimizer, scheduler, generator,
                   checkpoint_dir / spec.name, progress, log)
    state = _start_state(phase, resume)
    state.started = time.perf_counter()
    if progress is not None:
        progress.start(spec.name, phase.total_steps,
                       completed=state.position["epoch"] * phase.steps_per_epoch + state.position["step"])
    try:
        with _DeferredInterrupt() as interrupt:
            while state.position["epoch"] < spec.epochs and not state.stopped:
                _train_epoch(phase, state, interrupt)
                _end_epoch(phase, state, interrupt)
    except KeyboardInterrupt:
        if state.consistent and phase.processes == 1:  # several: the others are elsewhere, so only epoch ends
            _save_checkpoint(phase, state, _rng_states(phase))
        if progress is not None:
            progress.stop()
        raise
    if progress is not None:
        progress.stop()
    seconds = time.perf_counter() - state.started
    if state.best_state is not None:
        module.load_state_dict(state.best_state)
    module.eval()
    return PhaseResult(best_score=state.best_score, best_epoch=state.best_epoch, history=state.history,
                       seconds=(state.earlier_seconds or 0.0) + seconds,
                       examples_per_second=state.trained_examples / max(seconds, 1e-9),
                       resumed_from=state.resumed_from, dev_curve=state.dev_curve, best_step=state.best_step,
                       stopped_early=state.stopped)


def _prepare(spec: PhaseSpec, module: nn.Module, steps: PhaseSteps) -> tuple:
    """(accelerator, prepared loss step, optimizer, scheduler, generator): AdamW without weight decay on biases
    and norms, a linear warm-up and decay (or a constant rate), seeded by ``spec.seed`` in this order."""
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    from metakd_cli.core.processes import accelerator as make_accelerator

    accelerator = make_accelerator(spec.mixed_precision)
    torch.manual_seed(spec.seed)
    total_steps = math.ceil(steps.n_examples / spec.batch_size) * spec.epochs
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not n.endswith(_NO_DECAY)], "weight_decay": spec.weight_decay},
        {"params": [p for n, p in named if n.endswith(_NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=spec.lr)
    if spec.constant_lr:
        scheduler = get_constant_schedule(optimizer)
    else:
        scheduler = get_linear_schedule_with_warmup(optimizer, int(spec.warmup * total_steps), total_steps)
    # the scheduler stays ours: accelerate's would step it once per process at every step (it expects a
    # data loader whose length it divided among the processes; our steps are global batches already)
    model, optimizer = accelerator.prepare(_LossStep(module, steps.loss_step), optimizer)
    generator = torch.Generator().manual_seed(spec.seed + 1)
    return accelerator, model, optimizer, scheduler, generator


def _start_state(phase: _Phase, resume: bool) -> _LoopState:
    """A fresh start, or with ``resume`` the state of the phase's checkpoint when there is one."""
    saved = saved_or_old(phase.checkpoint, "loop.json")
    if resume and saved:
        state = _load_checkpoint(phase, saved)
        position = state.position
        state.resumed_from = {"epoch": position["epoch"], "step": position["step"],
                              "earlier_seconds": state.earlier_seconds}
        if position["epoch"] >= phase.spec.epochs or state.stopped:
            phase.log(f"{phase.spec.name}: finished in its checkpoint, not trained again")
        else:
            phase.log(f"{phase.spec.name}: resuming from epoch {position['epoch'] + 1}, step {position['step']}")
        return state
    if resume:
        phase.log(f"{phase.spec.name}: no checkpoint to resume in {phase.checkpoint}, so it starts from scratch")
    return _LoopState()


def _other_settings(saved: Path, loop: dict, spec: PhaseSpec, total_steps, n_examples) -> UserError:
    changes = checkpoint_changes(loop, spec.signature, spec.signature_names, total_steps, n_examples)
    what = "; ".join(changes) if changes else "it does not record which, so they cannot be compared"
    return UserError(f"{saved}: the checkpoint was made with other settings (checkpoint -> now: {what}); "
                     "resume with the checkpoint's settings, or run without --resume to start over")


def refuse_other_settings(checkpoint_dir: Path, spec: PhaseSpec) -> None:
    """Refuse now, before the work that precedes a phase (a fit's transferability pass), a checkpoint whose
    settings run_phase's resume would refuse after that work; a damaged one is left for run_phase to report."""
    saved = saved_or_old(checkpoint_dir / spec.name, "loop.json")
    if saved is None:
        return
    try:
        loop = json.loads((saved / "loop.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(loop, dict) and loop.get("signature", "") != spec.signature:
        raise _other_settings(saved, loop, spec, loop.get("total_steps"), loop.get("n_examples"))


def _load_checkpoint(phase: _Phase, saved: Path) -> _LoopState:
    """Module, optimizer, scheduler and this process's random streams as ``saved`` holds them, and the loop's
    state; a checkpoint of other settings, or a damaged one, is a UserError."""
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = phase.spec
    try:
        loop = json.loads((saved / "loop.json").read_text())
        if (loop.get("total_steps"), loop.get("n_examples"), loop.get("signature", "")) != (
            phase.total_steps, phase.n_examples, spec.signature
        ):
            raise _other_settings(saved, loop, spec, phase.total_steps, phase.n_examples)
        phase.module.load_state_dict(load_file(str(saved / "model.safetensors")))
        states = torch.load(saved / "optim.pt", weights_only=True)  # our own checkpoint, tensors only
        phase.optimizer.load_state_dict(states["optimizer"])
        phase.scheduler.load_state_dict(states["scheduler"])
        rng = load_file(str(saved / "rng.safetensors"))
        own = f"_rank{phase.rank}" if f"torch_rank{phase.rank}" in rng else ""  # several processes: each its own
        torch.set_rng_state(rng[f"torch{own}"])
        phase.generator.set_state(rng[f"generator{own}"])
        if f"cuda{own}" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng[f"cuda{own}"])
        best_state = load_file(str(saved / "best.safetensors")) if (saved / "best.safetensors").is_file() else None
        position = {**{k: loop[k] for k in ("epoch", "step", "loss_sum", "loss_count")},
                    "term_sums": dict(loop.get("term_sums") or {})}  # a checkpoint from before term_sums: none
        earlier = loop.get("seconds")  # a checkpoint from before the loop recorded its time: not known
        earlier = float(earlier) if isinstance(earlier, (int, float)) and earlier >= 0 else None
        return _LoopState(position, loop["best_score"], loop["best_epoch"], loop["history"], best_state,
                          earlier_seconds=earlier, dev_curve=list(loop.get("dev_curve") or []),
                          best_step=int(loop.get("best_step", -1)), since_best=int(loop.get("since_best", 0)),
                          stopped=bool(loop.get("stopped", False)))
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, SafetensorError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{saved}: the checkpoint is damaged or truncated ({reason}); run without --resume "
                        "to start over") from None


def _rng_states(phase: _Phase) -> dict[str, torch.Tensor]:
    """Every process's random streams (dropout, the confusion shuffle), gathered to all: call it on every
    process at the same point."""
    own = {"torch": torch.get_rng_state(), "generator": phase.generator.get_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    if phase.processes == 1:
        return own
    from accelerate.utils import gather_object

    every = gather_object([own])
    return {**every[0], **{f"{k}_rank{r}": v for r, states in enumerate(every) if r for k, v in states.items()}}


def earlier_seconds(resumed: list[dict | None]) -> float:
    """The training seconds that the phases' resumed checkpoints recorded (``resumed_from`` of each; none: 0): what
    a step adds to its own wall time so that a resumed step's time counts its interrupted runs' training."""
    return sum(float((r or {}).get("earlier_seconds") or 0.0) for r in resumed)


def _seconds_so_far(state: _LoopState) -> float | None:
    """The phase's training time up to now, earlier runs included; None when an earlier run's was not recorded."""
    if state.earlier_seconds is None:
        return None
    return state.earlier_seconds + time.perf_counter() - state.started


def _save_checkpoint(phase: _Phase, state: _LoopState, rng: dict[str, torch.Tensor]) -> None:
    """The phase as it stands into its checkpoint folder (main process only)."""
    if not phase.accelerator.is_main_process:
        return
    with atomic_dir(phase.checkpoint) as tmp:  # a kill at any moment leaves the previous checkpoint usable
        _save_tensors(_state_file(phase.module), tmp / "model.safetensors")
        if state.best_state is not None:
            _save_tensors(state.best_state, tmp / "best.safetensors")
        torch.save({"optimizer": phase.optimizer.state_dict(), "scheduler": phase.scheduler.state_dict()},
                   tmp / "optim.pt")
        _save_tensors(rng, tmp / "rng.safetensors")
        loop = {
            **state.position,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "history": state.history,
            "dev_curve": state.dev_curve,
            "best_step": state.best_step,
            "since_best": state.since_best,
            "stopped": state.stopped,
            "total_steps": phase.total_steps,
            "n_examples": phase.n_examples,
            "signature": phase.spec.signature,
            "seconds": _seconds_so_far(state),
        }
        (tmp / "loop.json").write_text(json.dumps(loop, indent=2))


def _train_epoch(phase: _Phase, state: _LoopState, interrupt: _DeferredInterrupt) -> None:
    """The optimisation steps of the current epoch, from the position's step on, in the epoch's seeded order."""
    spec, epoch = phase.spec, state.position["epoch"]
    order = epoch_order(phase.n_examples, spec.seed, epoch)
    phase.model.train()
    for step in range(state.position["step"], phase.steps_per_epoch):
        state.consistent = False
        _optimisation_step(phase, state, order[step * spec.batch_size : (step + 1) * spec.batch_size], step)
        if phase.eval_every and (step + 1) % phase.eval_every == 0 and step + 1 < phase.steps_per_epoch:
            _score_dev(phase, state)  # before a Ctrl-C is honoured: a resumed run does not score this step again
            phase.model.train()
        state.consistent = True
        if interrupt.requested:
            raise KeyboardInterrupt
        if phase.progress is not None:
            mean_loss = state.position["loss_sum"] / state.position["loss_count"]
            phase.progress.advance(1, f"epoch {epoch + 1}/{spec.epochs} loss {mean_loss:.4f} {state.rate():.1f} ex/s")
        if state.stopped:
            return


def _score_dev(phase: _Phase, state: _LoopState) -> float:
    """Score dev now, record it on the dev curve, keep the state when it is the best so far, and count the
    scorings without a gain (patience). Call it between optimisation steps."""
    phase.model.eval()
    score = phase.steps.evaluate()
    step = state.position["epoch"] * phase.steps_per_epoch + state.position["step"]
    state.dev_curve.append({"step": step, "epoch": round(step / phase.steps_per_epoch, 3), "dev_score": score})
    if score > state.best_score:
        state.best_score, state.best_epoch, state.best_step = score, state.position["epoch"] + 1, step
        state.best_state = _state_file(phase.module)
        state.since_best = 0
    else:
        state.since_best += 1
        state.stopped = phase.spec.patience > 0 and state.since_best >= phase.spec.patience
    return score


def _optimisation_step(phase: _Phase, state: _LoopState, indices: list[int], step: int) -> None:
    """One global batch: this process's share through the loss step, backward, clipping, optimizer and
    schedule; the position moves on by one step."""
    accelerator, position = phase.accelerator, state.position
    positions, factor = shard(list(range(len(indices))), phase.rank, phase.processes)
    batch = {k: v.to(accelerator.device) for k, v in phase.steps.make_batch([indices[p] for p in positions]).items()}
    batch["progress"] = torch.tensor((position["epoch"] * phase.steps_per_epoch + step) / phase.total_steps)
    batch["global_index"] = torch.tensor(indices, dtype=torch.long, device=accelerator.device)
    batch["global_position"] = torch.tensor(positions, dtype=torch.long, device=accelerator.device)
    terms = phase.model(batch, phase.generator)  # through accelerate's wrapper: DDP all-reduces the gradients
    loss = terms["loss"] if phase.processes == 1 else terms["loss"] * factor
    phase.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if phase.spec.max_grad_norm > 0:
        accelerator.clip_grad_norm_(phase.model.parameters(), phase.spec.max_grad_norm)
    phase.optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16: a step skipped for overflow
        phase.scheduler.step()
    position["step"] = step + 1
    state.trained_examples += len(indices)  # the global batch's rows
    named = [name for name in terms if name != "loss"]
    # the loss and every named term (each a mean over this process's rows) in one tensor: one all-reduce and
    # one read per step; several processes: weighted by their shares, the mean is the whole batch's mean
    values = torch.stack([terms[n].detach().float().reshape(()) for n in ("loss", *named)])
    if phase.processes > 1:
        values = accelerator.reduce(values * factor, reduction="mean")
    loss_value, *term_values = values.tolist()
    position["loss_sum"] += loss_value
    for name, value in zip(named, term_values):
        position["term_sums"][name] = position["term_sums"].get(name, 0.0) + value
    position["loss_count"] += 1


def _end_epoch(phase: _Phase, state: _LoopState, interrupt: _DeferredInterrupt) -> None:
    """Score the epoch on dev (or count it), keep the best state, and checkpoint the next epoch's start; an epoch
    that patience stopped part-way is not scored again (its last scoring stands)."""
    spec, epoch = phase.spec, state.position["epoch"]
    state.consistent = False
    phase.model.eval()
    evaluate = phase.steps.evaluate
    if evaluate is None:  # keep the last state
        score = float(epoch + 1)
        state.best_score, state.best_epoch = score, epoch + 1
        state.best_step = (epoch + 1) * phase.steps_per_epoch
        state.best_state = _state_file(phase.module)
    elif state.stopped:
        score = state.dev_curve[-1]["dev_score"]
    else:
        score = _score_dev(phase, state)
    count = max(state.position["loss_count"], 1)
    train_loss = state.position["loss_sum"] / count
    terms = {name: total / count for name, total in state.position["term_sums"].items()}
    state.history.append({"epoch": epoch + 1, "train_loss": train_loss, "dev_score": score,
                          **({"train_terms": terms} if terms else {})})
    if phase.progress is not None and hasattr(phase.progress, "epoch_end"):  # a plain line where no bar can show
        phase.progress.epoch_end(epoch + 1, spec.epochs, train_loss, score if evaluate is not None else None,
                                 state.rate())
    state.position = _fresh_position(epoch + 1)
    _save_checkpoint(phase, state, _rng_states(phase))
    state.consistent = True
    if interrupt.requested:
        raise KeyboardInterrupt


def clear_checkpoints(checkpoint_dir: Path, name: str) -> None:
    shutil.rmtree(checkpoint_dir / name, ignore_errors=True)


# --------------------------------------------------------------------------- a long pass before a phase, saved

_PASS_RECORD = "signature.json"


@dataclass(frozen=True)
class SavedPass:
    """The tensors of a long pass that precedes training (a meta fit's transferability scores, a distillation's
    teacher logits: for a big teacher, the long part of a resume), saved in the checkpoint folder ``folder``
    with what they were made from (``signature``, a JSON list whose parts ``names`` names, and the row count),
    so that --resume reuses them only for the same settings, data and rows."""

    folder: Path
    file: str  # the safetensors file in the folder
    signature: str
    names: tuple[str, ...]
    rows: int

    def save(self, tensors: dict[str, torch.Tensor], extra: dict[str, str] | None = None) -> None:
        """Write the folder whole or not at all (atomic_dir); ``extra``: more text files beside (name -> text)."""
        from safetensors.torch import save_file

        with atomic_dir(self.folder) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / self.file))
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            (tmp / _PASS_RECORD).write_text(json.dumps({"signature": self.signature, "rows": self.rows}),
                                            encoding="utf-8")

    def load(self, shapes: dict[str, tuple[int, ...] | None]) -> tuple[Path | None, dict[str, torch.Tensor] | str]:
        """(where, tensors) when the folder, or the .NAME.old a kill between renames left, holds a pass of these
        settings, data and rows whose tensors have ``shapes`` (None: any shape); (where, why not) when one is
        there but cannot be used; (None, "") when there is none. A folder without its record is damaged."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        found = saved_or_old(self.folder)
        if found is None:
            return None, ""
        try:
            saved = json.loads((found / _PASS_RECORD).read_text(encoding="utf-8"))
            if saved != {"signature": self.signature, "rows": self.rows}:
                changes = checkpoint_changes({"signature": saved.get("signature"), "n_examples": saved.get("rows")},
                                             self.signature, self.names, None, self.rows)
                return found, f"they were made with other settings or data ({'; '.join(changes) or 'unrecorded'})"
            tensors = load_file(str(found / self.file))
            missing = [key for key in shapes if key not in tensors]
            if missing:
                return found, f"they are damaged (no {', '.join(missing)})"
            for key, shape in shapes.items():
                if shape is not None and tuple(tensors[key].shape) != shape:
                    return found, f"they are damaged ({key} is {tuple(tensors[key].shape)}, not {shape})"
        except (OSError, ValueError, KeyError, AttributeError, SafetensorError) as exc:
            return found, f"they are damaged ({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})"
        return found, tensors
