"""`metakd fit`: the meta-teacher (Meta-KD Sec. 3.2) and the single / mix / mtl baselines.

meta:   t-weighted CE plus gamma x domain loss (confusion or reversal), t from prototypes
mix:    one teacher on the union of domains, t = 1, no domain loss
mtl:    BERT-mtl: one shared encoder, one classification head per domain, trained on all
        domains at once (t = 1, no domain loss); a row always goes through its own domain's
        head. Saved as a plain classifier whose own head is the mean of the domain heads
        (exactly the mean of their logits), the heads themselves in metakd_head.safetensors
single: one teacher per domain, t = 1, no domain loss, saved as teacher/<domain's folder>/
        (run_dir.folder_names: a domain name is escaped before it becomes a path)

``hold_out`` leaves one domain out of everything the teacher learns from (training rows,
prototypes, scores, dev selection): the paper's "no fiction data for the meta-teacher".
``train_fraction`` keeps a seeded, label-stratified fraction of each domain's training rows
(``data.fraction_indices``): the data-scarce setting. Scores are stored per row of the
whole train split, NaN for the rows the teacher did not train on.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metakd_cli import __version__
from metakd_cli.core.config import DataConfig, FitConfig, choice
from metakd_cli.core.cpu import CpuInfo, cpu_info
from metakd_cli.data.rows import Dataset
from metakd_cli.data.encode import Encoded, batch_rows, collate, encode
from metakd_cli.data.dataset import fraction_indices, load_dataset
from metakd_cli.core.errors import UserError
from metakd_cli.data.metrics import per_domain_accuracy
from metakd_cli.models.inference import batched_logits, torch_logits
from metakd_cli.training.losses import confusion_targets, dann_scale, teacher_loss
from metakd_cli.models.heads import (
    DomainClassifiers,
    DomainHead,
    TeacherInfo,
    classifier_output_layer,
    mtl_forward,
    mtl_logits,
    save_head,
)
from metakd_cli.models.loading import (
    check_model_source,
    load_classifier,
    load_encoder,
    load_tokenizer,
    position_limit,
    resolve_model,
)
from metakd_cli.core import processes
from metakd_cli.training.prototypes import compute_prototypes, encode_representations, pool, transferability
from metakd_cli.core.run_dir import RunDir, StepRecord, atomic_dir, folder_name, folder_names
from metakd_cli.training.loop import PhaseSpec, PhaseSteps, SavedPass, clear_checkpoints, refuse_other_settings
from metakd_cli.training.loop import by_dev, check_length, earlier_seconds, run_phase

TEACHER_MODES = ("meta", "mix", "mtl", "single")
PROTOTYPES = ("class", "domain")
POOLINGS = ("mean", "cls")
DOMAIN_LOSSES = ("confusion", "reversal", "none")
SCORES_CHECKPOINT = "fit-scores"  # checkpoints/<this>: a meta fit's transferability pass, for --resume to reuse


@dataclass
class TeacherResult:
    name: str  # "teacher" or the domain of a single teacher
    dev: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    history: list[dict]
    train_seconds: float
    examples_per_second: float
    t_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    resumed_from: dict | None = None  # PhaseResult's: where a resumed fit took training up, its earlier seconds
    dev_curve: list[dict] = field(default_factory=list)  # every dev scoring: step, epoch, dev_score
    best_step: int = -1  # the optimisation step whose state was kept
    stopped_early: bool = False  # patience stopped it before max_epochs
    learning_rate: float | None = None


@dataclass
class FitResult(StepRecord):
    """What `metakd fit` did. ``to_json()`` is metrics/fit.json: this class is the one place that says what the
    file holds."""

    run_dir: Path
    config: FitConfig
    teachers: list[TeacherResult]  # one; single: one per domain not held out
    dev_accuracy: dict[str, float]  # per domain and "average" (single: each domain by its own teacher)
    test_accuracy: dict[str, float]
    seconds: float  # this run's, and the training time of the interrupted runs that it resumed
    train_rows: dict[str, int]  # the rows the teacher learnt from, per domain
    processes: int
    cpu: CpuInfo
    versions: dict[str, str]
    command: str

    @property
    def mode(self) -> str:
        """meta | mix | mtl | single"""
        return self.config.teacher_mode

    @property
    def held_out(self) -> str | None:
        """The domain left out of training."""
        return self.config.hold_out

    @property
    def mean_t(self) -> dict[str, float]:
        """The mean transferability t of each domain's training rows (meta only)."""
        return {d: stats["mean"] for d, stats in self.teachers[0].t_stats.items() if stats}

    def to_json(self) -> dict:
        cfg = self.config
        return {
            "step": "fit",
            "mode": self.mode,
            "teacher": cfg.teacher,
            "dev_accuracy": self.dev_accuracy,
            "test_accuracy": self.test_accuracy,
            "t": self.teachers[0].t_stats,
            "teachers": [asdict(t) for t in self.teachers],
            "seconds": self.seconds,
            "cpu": self.cpu.to_json(),
            "train_examples_per_second": float(np.mean([t.examples_per_second for t in self.teachers])),
            "seed": cfg.seed,
            "config": asdict(cfg),
            "versions": self.versions,
            "command": self.command,
            "held_out": self.held_out,
            "train_fraction": cfg.train_fraction,
            "fraction_domains": cfg.fraction_domains,
            "train_rows": self.train_rows,
            "processes": self.processes,
        }


def data_manifest(cfg: DataConfig, dataset: Dataset) -> dict:
    """How to read the data again (absolute path) and what it held."""
    config = asdict(cfg)
    config["path"] = dataset.source
    return {
        "config": config,
        "layout": dataset.layout,
        "fingerprint": dataset.fingerprint(),
        "text_pairs": dataset.has_pairs,  # predict asks for a second text when the model learnt from pairs
        "labels": dataset.labels,
        "domains": dataset.domains,
        "domain_folders": folder_names(dataset.domains),  # where a per-domain teacher or checkpoint lives
        "summary": dataset.summary(),
    }


def validate(cfg: FitConfig) -> None:
    check_model_source(cfg.teacher, "--teacher")  # a typo fails now, not after a minute of hub retries
    choice(cfg.teacher_mode, TEACHER_MODES, "--teacher-mode")
    choice(cfg.prototypes, PROTOTYPES, "--prototypes")
    choice(cfg.pooling, POOLINGS, "--pooling")
    choice(cfg.domain_loss, DOMAIN_LOSSES, "--domain-loss")
    for name in ("batch_size", "max_length"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    check_length(cfg.epochs, cfg.max_epochs, cfg.patience, cfg.eval_every)
    if cfg.lr is not None and cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    processes.check_settings(cfg.batch_size, cfg.mixed_precision)
    check_fraction(cfg.train_fraction)
    if cfg.fraction_domains and cfg.train_fraction == 1:
        raise UserError(f"--fraction-domains {','.join(cfg.fraction_domains)} says which domains --train-fraction "
                        "thins out, but --train-fraction is 1 (every row): give a fraction below 1, or leave "
                        "--fraction-domains out")
    if cfg.hold_out is not None and cfg.hold_out in (cfg.fraction_domains or []):
        raise UserError(f"--fraction-domains {cfg.hold_out}: that domain is held out (--hold-out), so the teacher "
                        "has none of its rows to take a fraction of")


def kept_rows(dataset: Dataset, cfg: FitConfig, held_out: list[int]) -> list[int]:
    """Indices of the training rows the teacher learns from: none of a held-out domain, and a
    ``train_fraction`` of each domain in ``fraction_domains`` (of every domain when that is None)."""
    dataset.check_domains(cfg.fraction_domains or [], "--fraction-domains")
    sampled = set(fraction_indices(dataset.train, cfg.train_fraction, dataset.split_seed))
    scarce = set(cfg.fraction_domains or dataset.domains)
    return [i for i, row in enumerate(dataset.train)
            if dataset.domain_id(row.domain) not in held_out and (row.domain not in scarce or i in sampled)]


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise UserError(f"--train-fraction must be above 0 and at most 1, got {fraction}")


def transferability_scores(
    model_path: str, cfg: FitConfig, encoded: Encoded, dataset: Dataset, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t per training row, prototypes), from the untouched pretrained encoder, once."""
    encoder = load_encoder(model_path, cfg.trust_remote_code).to(processes.device())
    reps = encode_representations(encoder, encoded, pad_id, cfg.pooling)
    del encoder
    domains = torch.tensor(encoded.domains)
    labels = torch.tensor(encoded.labels)
    protos, present = compute_prototypes(
        reps, domains, labels, len(dataset.domains), len(dataset.labels), by_class=cfg.prototypes == "class"
    )
    t = transferability(reps, domains, labels, protos, present, cfg.alpha, cfg.zeta)
    return t, protos


def t_statistics(t: torch.Tensor, encoded: Encoded, domains: list[str]) -> dict[str, dict[str, float]]:
    ids = torch.tensor(encoded.domains)
    stats = {}
    for i, name in enumerate(domains):
        values = t[ids == i]
        if len(values):
            stats[name] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    return stats


@dataclass
class _FitContext:
    """What every teacher of one fit shares: its settings, base model and tokenizer, data, run folder and callbacks."""

    cfg: FitConfig
    model_path: str
    tokenizer: object
    dataset: Dataset
    run: RunDir
    resume: bool
    progress: object
    log: Callable[[str], None]
    lr: float  # the learning rate: --lr, else teacher_lr's default


@dataclass
class _Splits:
    """The encoded rows one teacher trains on, is selected on and is scored on."""

    train: Encoded
    dev: Encoded
    test: Encoded


def _train_one(
    ctx: _FitContext,
    name: str,
    rows: _Splits,
    t: torch.Tensor,
    use_domain_loss: bool,
    mtl: bool = False,
    held_out: list[int] | None = None,
) -> tuple[nn.ModuleDict, TeacherResult]:
    """Train one teacher on ``rows.train``; select on the dev rows of the domains it trains on.

    ``mtl``: per-domain heads (``parts["heads"]``); ``held_out``: domain ids it never sees
    (their mtl heads become the mean of the trained ones).
    """
    cfg, model_path, dataset = ctx.cfg, ctx.model_path, ctx.dataset
    train, dev, test = rows.train, rows.dev, rows.test
    pad_id = ctx.tokenizer.pad_token_id or 0
    held_out = held_out or []
    torch.manual_seed(cfg.seed)  # the new classifier layer and the domain head start the same every run
    classifier = load_classifier(model_path, dataset.labels, "sdpa", cfg.trust_remote_code)
    hidden = classifier.config.hidden_size
    head = DomainHead(hidden, len(dataset.domains))
    parts = nn.ModuleDict({"classifier": classifier, "head": head})
    if mtl:
        output_layer = classifier_output_layer(classifier)
        parts["heads"] = DomainClassifiers.from_layer(output_layer, len(dataset.domains))
        output_layer.requires_grad_(False)  # replaced by the domain heads until the mean is written into it
    weights = t.float()
    train_domains = torch.tensor(train.domains, dtype=torch.long)
    select_dev = dev.subset([i for i, d in enumerate(dev.domains) if d not in held_out]) if held_out else dev

    def logits_of(encoded: Encoded) -> np.ndarray:  # several processes: each its share, gathered in row order
        if mtl:
            return processes.gather_encoded(encoded, lambda part: batched_logits(
                part, pad_id, 64, mtl_forward(classifier, parts["heads"])))
        return processes.gather_encoded(encoded, lambda part: torch_logits(classifier, part, pad_id))

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        t_batch = batch_rows(weights, batch["index"])  # on the batch's device; teacher_loss clamps it at 0
        if mtl:  # BERT-mtl: each row through its own domain's head, plain CE (t = 1, no domain loss)
            logits = mtl_logits(parts["classifier"], parts["heads"], inputs, batch["domains"])
            return teacher_loss(logits, batch["labels"], None, None, t_batch, cfg.gamma)
        out = parts["classifier"](**inputs, output_hidden_states=use_domain_loss)
        domain_logits = targets = None
        if use_domain_loss:
            pooled = pool(out.hidden_states[-1], batch["attention_mask"], "mean")
            z = parts["head"].features(pooled, batch["domains"])
            scale = dann_scale(float(batch["progress"]))  # used by reversal only
            domain_logits = parts["head"].logits(pooled, z, cfg.domain_loss, scale)
            targets = batch["domains"]
            if cfg.domain_loss == "confusion":  # the whole global batch's shuffle, this process's rows of it
                targets = confusion_targets(batch_rows(train_domains, batch["global_index"]), generator,
                                            batch["global_position"])
        return teacher_loss(out.logits, batch["labels"], domain_logits, targets, t_batch, cfg.gamma)

    def dev_accuracy() -> float:
        predictions = logits_of(select_dev).argmax(-1)
        return float((predictions == np.asarray(select_dev.labels)).mean() * 100)

    steps = PhaseSteps(len(train), lambda idx: collate(train, idx, pad_id), loss_step, dev_accuracy)
    phase = run_phase(_phase_spec(cfg, dataset, name, ctx.lr), parts, steps, ctx.run.checkpoints, ctx.resume, ctx.progress,
                      ctx.log)
    if mtl:
        seen = [d for d in range(len(dataset.domains)) if d not in held_out]
        parts["heads"].fill(held_out, seen)
        parts["heads"].write_average(output_layer)
        output_layer.requires_grad_(True)
    dev_scores = per_domain_accuracy(logits_of(dev).argmax(-1), dev, dataset.domains)
    test_scores = per_domain_accuracy(logits_of(test).argmax(-1), test, dataset.domains)
    result = TeacherResult(
        name=name,
        dev=dev_scores,
        test=test_scores,
        best_epoch=phase.best_epoch,
        history=phase.history,
        train_seconds=phase.seconds,
        examples_per_second=phase.examples_per_second,
        resumed_from=phase.resumed_from,
        dev_curve=phase.dev_curve,
        best_step=phase.best_step,
        stopped_early=phase.stopped_early,
        learning_rate=ctx.lr,
    )
    return parts, result


# Default teacher learning rates by the encoder's width (docs/usage.md "Training length and learning rates"): MiniLM-L6 (384) fine-tunes best
# hotter than BERT-base (every MiniLM recipe here uses 5e-5; issue 37 reports 2e-5 costing 1.5 points on an unseen
# four-domain set, not re-measured here); BERT-base and MPNet-base (768) keep the paper's 2e-5.
NARROW_TEACHER_LR, WIDE_TEACHER_LR, NARROW_WIDTH = 5e-5, 2e-5, 512


def teacher_lr(cfg: FitConfig, model_path: str) -> float:
    """The fit's learning rate: --lr when given, else by the width of the model at ``model_path``."""
    if cfg.lr is not None:
        return cfg.lr
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    return NARROW_TEACHER_LR if getattr(config, "hidden_size", NARROW_WIDTH + 1) <= NARROW_WIDTH else WIDE_TEACHER_LR


def _phase_spec(cfg: FitConfig, dataset: Dataset, name: str, lr: float) -> PhaseSpec:
    """The training phase of the teacher ``name`` ("teacher" or a domain), as ``cfg`` sets it: exactly --epochs,
    else up to max_epochs and stopped by patience on dev."""
    return PhaseSpec(
        name=f"fit-{name if name == 'teacher' else folder_name(name, dataset.domains)}",  # a domain's, escaped
        **by_dev(cfg.epochs, cfg.max_epochs, cfg.patience, cfg.eval_every),
        batch_size=cfg.batch_size,
        lr=lr,
        seed=cfg.seed,
        warmup=cfg.warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        signature=json.dumps([asdict(cfg), dataset.fingerprint()], sort_keys=True),
        signature_names=("settings", "data fingerprint"),
        mixed_precision=cfg.mixed_precision,
    )


def _save_teacher(
    folder: Path, parts: nn.ModuleDict, tokenizer, info: TeacherInfo, extra: dict[str, torch.Tensor]
) -> None:
    with atomic_dir(folder) as tmp:
        parts["classifier"].save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_head(parts["head"], tmp, extra)
        info.save(tmp)


def fit(data_cfg: DataConfig, cfg: FitConfig, run: RunDir, resume: bool = False, progress=None, log=print,
        warn=print) -> FitResult:
    """Train the teacher(s) as ``cfg`` says and write them, their metrics and the manifest, holding the
    run folder's lock. Under several processes every one trains and only the main one locks and writes."""
    validate(cfg)
    if not processes.is_main():  # the main process says it all once, and writes
        progress, log, warn = None, lambda _: None, lambda _: None
    log(processes.describe(cfg.mixed_precision))
    with run.lock("fit", log, create=True) if processes.is_main() else nullcontext():
        result = _fit(data_cfg, cfg, run, resume, progress, log, warn)
    processes.wait()  # no process leaves before the run folder is written
    return result


def _fit(data_cfg: DataConfig, cfg: FitConfig, run: RunDir, resume: bool, progress, log, warn) -> FitResult:
    started = time.perf_counter()
    dataset = load_dataset(data_cfg)
    held_out: list[int] = []
    if cfg.hold_out is not None:
        dataset.check_domains([cfg.hold_out], "--hold-out")
        if len(dataset.domains) < 2:
            raise UserError(f"--hold-out {cfg.hold_out} leaves no domain to train the teacher on")
        held_out = [dataset.domain_id(cfg.hold_out)]
    if len(dataset.domains) - len(held_out) < 2 and cfg.teacher_mode == "meta":
        warn("only one domain: the meta-teacher's cross-domain terms have nothing to compare; "
             "consider --teacher-mode mix")
    if len(dataset.labels) == 1:
        warn(f"every row has the same label ('{dataset.labels[0]}'): the teacher has nothing to tell apart "
             "(is --label-column the right column?)")
    model_path = resolve_model(cfg.teacher)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    limit = position_limit(model_path, cfg.trust_remote_code)
    if cfg.max_length > limit:
        raise UserError(f"--max-length {cfg.max_length} is above the model's limit of {limit} positions for {cfg.teacher}")
    # the rows the teacher learns from: no held-out row is even tokenised
    kept = kept_rows(dataset, cfg, held_out)
    scarce = ", ".join(cfg.fraction_domains) if cfg.fraction_domains else "each domain"
    notes = (f", {cfg.hold_out} held out" if cfg.hold_out else "") + (
        f", {cfg.train_fraction:g} of the rows of {scarce}" if cfg.train_fraction < 1 else "")
    log(f"teacher {cfg.teacher} ({model_path}), mode {cfg.teacher_mode}, {len(kept):,} training rows{notes}")
    train = encode([dataset.train[i] for i in kept], dataset, tokenizer, cfg.max_length)
    dev = encode(dataset.dev, dataset, tokenizer, cfg.max_length)
    test = encode(dataset.test, dataset, tokenizer, cfg.max_length)
    ctx = _FitContext(cfg, model_path, tokenizer, dataset, run, resume, progress, log, teacher_lr(cfg, model_path))
    info_common = dict(
        labels=dataset.labels,
        domains=dataset.domains,
        base_model=cfg.teacher,
        max_length=cfg.max_length,
        held_out=cfg.hold_out,
    )
    if cfg.teacher_mode == "single":
        teachers = _fit_single(ctx, _Splits(train, dev, test), held_out, info_common)
    else:
        teachers = [_fit_shared(ctx, _Splits(train, dev, test), kept, held_out, info_common)]
    for message in chance_warnings(teachers, dev, dataset.domains, len(dataset.labels), held_out,
                                   cfg.teacher_mode == "single"):
        warn(message)
    # the step's time: this run's, and the training time of the interrupted runs that it resumed
    seconds = time.perf_counter() - started + earlier_seconds([t.resumed_from for t in teachers])
    train_rows = {name: train.domains.count(d) for d, name in enumerate(dataset.domains)}
    dev_accuracy, test_accuracy = _accuracy(cfg, teachers)
    result = FitResult(run_dir=run.path, config=cfg, teachers=teachers, dev_accuracy=dev_accuracy,
                       test_accuracy=test_accuracy, seconds=seconds, train_rows=train_rows,
                       processes=processes.world_size(), cpu=cpu_info(), versions=_versions(),
                       command=" ".join(sys.argv))
    if not processes.is_main():  # the main process writes the run folder
        return result
    run.write_metrics("fit", result.to_json())
    run.record_step(
        "fit",
        {"config": asdict(cfg), "teacher": str(run.teacher), "model_path": model_path, "versions": _versions(),
         "held_out": cfg.hold_out, "train_fraction": cfg.train_fraction, "fraction_domains": cfg.fraction_domains,
         "train_rows": train_rows},
        data=data_manifest(data_cfg, dataset),
    )
    for finished in [*run.checkpoints.glob("fit-*"), *run.checkpoints.glob(".fit-*")]:  # nothing left to resume
        clear_checkpoints(run.checkpoints, finished.name)
    return result


def _fit_single(ctx: _FitContext, rows: _Splits, held_out: list[int], info_common: dict) -> list[TeacherResult]:
    """One teacher per domain not held out, each on its own domain's rows, written as teacher/<domain's folder>/."""
    dataset, run, tokenizer = ctx.dataset, ctx.run, ctx.tokenizer
    teachers: list[TeacherResult] = []
    staging_parts = {}
    for d, domain in enumerate(dataset.domains):
        if d in held_out:
            continue
        sub_train = rows.train.subset(rows.train.rows_of(d))
        sub_dev = rows.dev.subset(rows.dev.rows_of(d))
        sub_test = rows.test.subset(rows.test.rows_of(d))
        ctx.log(f"single teacher for domain {domain}: {len(sub_train):,} rows")
        parts, result = _train_one(ctx, domain, _Splits(sub_train, sub_dev, sub_test), torch.ones(len(sub_train)),
                                   False)
        teachers.append(result)
        staging_parts[domain] = parts
    folders = folder_names(dataset.domains)  # a domain name never reaches a path as it is
    if processes.is_main():  # the main process writes the run folder
        with atomic_dir(run.teacher) as tmp:
            for domain, parts in staging_parts.items():
                info = TeacherInfo(mode="single", domain_loss="none",
                                   hidden_size=parts["classifier"].config.hidden_size, domain=domain, **info_common)
                _save_teacher(tmp / folders[domain], parts, tokenizer, info, {"scores": torch.ones(0)})
            TeacherInfo(mode="single", domain_loss="none", hidden_size=0, **info_common).save(tmp)
    return teachers


def _scores(ctx: _FitContext, train: Encoded) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """t, the prototypes and where they are saved: with --resume, those an interrupted fit of these settings and
    data saved; else (or when they are missing or do not match) from the untouched pretrained encoder, saved in
    the checkpoints until the fit finishes (for a big teacher the pass is the long part of a resume). A resume
    that the training checkpoint's settings would refuse is refused before the pass."""
    spec = _phase_spec(ctx.cfg, ctx.dataset, "teacher", ctx.lr)
    saved = SavedPass(ctx.run.checkpoints / SCORES_CHECKPOINT, "scores.safetensors", spec.signature,
                      spec.signature_names, len(train))
    if ctx.resume:
        refuse_other_settings(ctx.run.checkpoints, spec)
        found, tensors = saved.load({"t": (len(train),), "prototypes": None})
        if isinstance(tensors, dict):
            ctx.log(f"transferability scores from the earlier pass saved in {found}")
            return tensors["t"], tensors["prototypes"], found
        if found is not None:
            ctx.log(f"the transferability scores in {found} are not used: {tensors}")
    ctx.log("transferability scores from the untouched pretrained encoder")
    t, protos = transferability_scores(ctx.model_path, ctx.cfg, train, ctx.dataset, ctx.tokenizer.pad_token_id or 0)
    if processes.is_main():
        saved.save({"t": t, "prototypes": protos})
    return t, protos, saved.folder


def _fit_shared(ctx: _FitContext, rows: _Splits, kept: list[int], held_out: list[int],
                info_common: dict) -> TeacherResult:
    """The one teacher of every domain not held out (meta, mix or mtl), written as teacher/ with each training
    row's t (NaN for the rows it did not train on) and the prototypes."""
    cfg, dataset, train = ctx.cfg, ctx.dataset, rows.train
    if cfg.teacher_mode == "meta":
        t, protos, saved = _scores(ctx, train)
        use_domain_loss = cfg.domain_loss != "none"
    else:
        t, protos, saved = torch.ones(len(train)), torch.zeros(0), None
        use_domain_loss = False
    try:
        parts, result = _train_one(ctx, "teacher", rows, t, use_domain_loss, mtl=cfg.teacher_mode == "mtl",
                                   held_out=held_out)
    except KeyboardInterrupt as exc:
        if saved is not None:  # Ctrl-C's message names them when no training state was saved yet
            exc.saved_pass = ("the transferability scores", saved)
        raise
    if cfg.teacher_mode == "meta":
        result.t_stats = t_statistics(t, train, dataset.domains)
    info = TeacherInfo(
        mode=cfg.teacher_mode,
        domain_loss=cfg.domain_loss if use_domain_loss else "none",
        hidden_size=parts["classifier"].config.hidden_size,
        **info_common,
    )
    scores = torch.full((len(dataset.train),), float("nan"))  # NaN: a row the teacher did not train on
    scores[kept] = t.float()
    extra = {"scores": scores, "prototypes": protos.float()}
    if "heads" in parts:
        extra.update(parts["heads"].tensors(dataset.domains))
    if processes.is_main():
        _save_teacher(ctx.run.teacher, parts, ctx.tokenizer, info, extra)
    return result


def chance_warnings(teachers: list[TeacherResult], dev: Encoded, domains: list[str], n_labels: int,
                    held_out: list[int], single: bool = False) -> list[str]:
    """A warning for each teacher whose dev accuracy is at or below chance: always answering the most common
    label of each domain it was selected on (the mean over those domains of that label's share of dev)."""
    if n_labels < 2:  # one label: already warned, and every model is "at chance"
        return []
    ids, labels = np.asarray(dev.domains), np.asarray(dev.labels)
    messages = []
    for teacher in teachers:
        own = [teacher.name] if single else [d for i, d in enumerate(domains) if i not in held_out]
        shares, scores = [], []
        for name in own:
            rows = labels[ids == domains.index(name)]
            if len(rows) and name in teacher.dev:
                shares.append(np.bincount(rows, minlength=n_labels).max() / len(rows) * 100)
                scores.append(teacher.dev[name])
        if not shares or np.mean(scores) > np.mean(shares):
            continue
        who = f"the {teacher.name} teacher" if single else "the teacher"
        messages.append(f"{who} scores {np.mean(scores):.1f}% on dev, at or below chance ({np.mean(shares):.1f}%: "
                        "always the most common label): check the labels, or train longer (--epochs) or with "
                        "another --lr")
    return messages


def _versions() -> dict[str, str]:
    import transformers

    return {"metakd": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _accuracy(cfg: FitConfig, teachers: list[TeacherResult]) -> tuple[dict[str, float], dict[str, float]]:
    """(dev, test) accuracy per domain and "average": the teacher's, or with single teachers each domain's own."""
    if cfg.teacher_mode != "single":
        return teachers[0].dev, teachers[0].test
    dev = {t.name: t.dev[t.name] for t in teachers}
    test = {t.name: t.test[t.name] for t in teachers}
    dev["average"] = float(np.mean(list(dev.values())))
    test["average"] = float(np.mean(list(test.values())))
    return dev, test
