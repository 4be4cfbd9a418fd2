"""`metakd fit`: the meta-teacher (Meta-KD Sec. 3.2) and the single / mix baselines.

meta:   t-weighted CE plus gamma x domain loss (confusion or reversal), t from prototypes
mix:    one teacher on the union of domains, t = 1, no domain loss
single: one teacher per domain, t = 1, no domain loss, saved as teacher/<domain>/
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metakd_cli import __version__
from metakd_cli.config import DataConfig, FitConfig, choice
from metakd_cli.data import Dataset, Encoded, collate, encode, load_dataset
from metakd_cli.errors import UserError
from metakd_cli.evaluate import per_domain_accuracy, torch_logits
from metakd_cli.losses import confusion_targets, teacher_loss
from metakd_cli.models import (
    DomainHead,
    TeacherInfo,
    load_classifier,
    load_encoder,
    load_tokenizer,
    model_max_length,
    resolve_model,
    save_head,
)
from metakd_cli.prototypes import compute_prototypes, pool, transferability
from metakd_cli.run_dir import RunDir, atomic_dir
from metakd_cli.training import PhaseSpec, clear_checkpoints, run_phase

TEACHER_MODES = ("meta", "mix", "single")
PROTOTYPES = ("class", "domain")
POOLINGS = ("mean", "cls")
DOMAIN_LOSSES = ("confusion", "reversal", "none")


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


@dataclass
class FitResult:
    run_dir: Path
    mode: str
    teachers: list[TeacherResult]
    metrics: dict
    seconds: float


def data_manifest(cfg: DataConfig, dataset: Dataset) -> dict:
    """How to read the data again (absolute path) and what it held."""
    config = asdict(cfg)
    config["path"] = dataset.source
    return {
        "config": config,
        "layout": dataset.layout,
        "fingerprint": dataset.fingerprint(),
        "labels": dataset.labels,
        "domains": dataset.domains,
        "summary": dataset.summary(),
    }


def validate(cfg: FitConfig) -> None:
    choice(cfg.teacher_mode, TEACHER_MODES, "--teacher-mode")
    choice(cfg.prototypes, PROTOTYPES, "--prototypes")
    choice(cfg.pooling, POOLINGS, "--pooling")
    choice(cfg.domain_loss, DOMAIN_LOSSES, "--domain-loss")
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")


def encode_representations(encoder, encoded: Encoded, pad_id: int, pooling: str, batch_size: int = 64) -> torch.Tensor:
    """h(x) for every row with the untouched pretrained encoder, in input order: [N, H]."""
    from metakd_cli.evaluate import batched_logits

    encoder.eval()

    def forward(batch: dict) -> np.ndarray:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            hidden = encoder(**inputs).last_hidden_state
        return pool(hidden, batch["attention_mask"], pooling).float().numpy()

    return torch.from_numpy(batched_logits(encoded, pad_id, batch_size, forward))


def transferability_scores(
    model_path: str, cfg: FitConfig, encoded: Encoded, dataset: Dataset, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t per training row, prototypes), from the untouched pretrained encoder, once."""
    encoder = load_encoder(model_path, cfg.trust_remote_code)
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


def _train_one(
    name: str,
    cfg: FitConfig,
    model_path: str,
    tokenizer,
    dataset: Dataset,
    train: Encoded,
    dev: Encoded,
    test: Encoded,
    t: torch.Tensor,
    use_domain_loss: bool,
    run: RunDir,
    resume: bool,
    progress,
    log,
) -> tuple[nn.ModuleDict, TeacherResult]:
    pad_id = tokenizer.pad_token_id or 0
    torch.manual_seed(cfg.seed)  # the new classifier layer and the domain head start the same every run
    classifier = load_classifier(model_path, dataset.labels, "sdpa", cfg.trust_remote_code)
    hidden = classifier.config.hidden_size
    head = DomainHead(hidden, len(dataset.domains))
    parts = nn.ModuleDict({"classifier": classifier, "head": head})
    weights = t.float()

    def loss_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = parts["classifier"](**inputs, output_hidden_states=use_domain_loss)
        domain_logits = targets = None
        if use_domain_loss:
            pooled = pool(out.hidden_states[-1], batch["attention_mask"], "mean")
            z = parts["head"].features(pooled, batch["domains"])
            domain_logits = parts["head"].logits(pooled, z, cfg.domain_loss)
            targets = (
                confusion_targets(batch["domains"], generator) if cfg.domain_loss == "confusion" else batch["domains"]
            )
        return teacher_loss(out.logits, batch["labels"], domain_logits, targets, weights[batch["index"]], cfg.gamma)

    def dev_accuracy() -> float:
        predictions = torch_logits(classifier, dev, pad_id).argmax(-1)
        return float((predictions == np.asarray(dev.labels)).mean() * 100)

    spec = PhaseSpec(
        name=f"fit-{name}",
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        warmup=cfg.warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
    )
    phase = run_phase(
        spec, parts, len(train), lambda idx: collate(train, idx, pad_id), loss_step, dev_accuracy,
        run.checkpoints, resume, progress,
    )
    if phase.resumed_from:
        log(f"resumed {spec.name} from epoch {phase.resumed_from['epoch'] + 1}, step {phase.resumed_from['step']}")
    dev_scores = per_domain_accuracy(torch_logits(classifier, dev, pad_id).argmax(-1), dev, dataset.domains)
    test_scores = per_domain_accuracy(torch_logits(classifier, test, pad_id).argmax(-1), test, dataset.domains)
    result = TeacherResult(
        name=name,
        dev=dev_scores,
        test=test_scores,
        best_epoch=phase.best_epoch,
        history=phase.history,
        train_seconds=phase.seconds,
        examples_per_second=phase.examples_per_second,
    )
    return parts, result


def _save_teacher(
    folder: Path, parts: nn.ModuleDict, tokenizer, info: TeacherInfo, extra: dict[str, torch.Tensor]
) -> None:
    with atomic_dir(folder) as tmp:
        parts["classifier"].save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_head(parts["head"], tmp, extra)
        info.save(tmp)


def fit(data_cfg: DataConfig, cfg: FitConfig, run: RunDir, resume: bool = False, progress=None, log=print) -> FitResult:
    """Train the teacher(s) as ``cfg`` says and write them, their metrics and the manifest."""
    validate(cfg)
    started = time.perf_counter()
    dataset = load_dataset(data_cfg)
    if len(dataset.domains) < 2 and cfg.teacher_mode == "meta":
        log("only one domain: the meta-teacher's cross-domain terms have nothing to compare; consider --teacher-mode mix")
    model_path = resolve_model(cfg.teacher)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    from transformers import AutoConfig

    limit = model_max_length(AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code))
    if cfg.max_length > limit:
        raise UserError(f"--max-length {cfg.max_length} is above the model's limit of {limit} positions for {cfg.teacher}")
    log(f"teacher {cfg.teacher} ({model_path}), mode {cfg.teacher_mode}, {len(dataset.train):,} training rows")
    pad_id = tokenizer.pad_token_id or 0
    train = encode(dataset.train, dataset, tokenizer, cfg.max_length)
    dev = encode(dataset.dev, dataset, tokenizer, cfg.max_length)
    test = encode(dataset.test, dataset, tokenizer, cfg.max_length)

    teachers: list[TeacherResult] = []
    info_common = dict(
        labels=dataset.labels,
        domains=dataset.domains,
        base_model=cfg.teacher,
        max_length=cfg.max_length,
    )
    if cfg.teacher_mode == "single":
        staging_parts = {}
        for d, domain in enumerate(dataset.domains):
            sub_train = train.subset(train.rows_of(d))
            sub_dev = dev.subset(dev.rows_of(d))
            sub_test = test.subset(test.rows_of(d))
            log(f"single teacher for domain {domain}: {len(sub_train):,} rows")
            parts, result = _train_one(
                domain, cfg, model_path, tokenizer, dataset, sub_train, sub_dev, sub_test,
                torch.ones(len(sub_train)), False, run, resume, progress, log,
            )
            teachers.append(result)
            staging_parts[domain] = parts
        with atomic_dir(run.teacher) as tmp:
            for domain, parts in staging_parts.items():
                info = TeacherInfo(mode="single", domain_loss="none", hidden_size=parts["classifier"].config.hidden_size,
                                   domain=domain, **info_common)
                _save_teacher(tmp / domain, parts, tokenizer, info, {"scores": torch.ones(0)})
            TeacherInfo(mode="single", domain_loss="none", hidden_size=0, **info_common).save(tmp)
    else:
        if cfg.teacher_mode == "meta":
            log("transferability scores from the untouched pretrained encoder")
            t, protos = transferability_scores(model_path, cfg, train, dataset, pad_id)
            use_domain_loss = cfg.domain_loss != "none"
        else:
            t, protos = torch.ones(len(train)), torch.zeros(0)
            use_domain_loss = False
        parts, result = _train_one(
            "teacher", cfg, model_path, tokenizer, dataset, train, dev, test, t, use_domain_loss, run, resume,
            progress, log,
        )
        if cfg.teacher_mode == "meta":
            result.t_stats = t_statistics(t, train, dataset.domains)
        teachers.append(result)
        info = TeacherInfo(
            mode=cfg.teacher_mode,
            domain_loss=cfg.domain_loss if use_domain_loss else "none",
            hidden_size=parts["classifier"].config.hidden_size,
            **info_common,
        )
        _save_teacher(run.teacher, parts, tokenizer, info, {"scores": t.float(), "prototypes": protos.float()})

    seconds = time.perf_counter() - started
    metrics = _metrics(cfg, dataset, teachers, seconds)
    run.write_metrics("fit", metrics)
    run.record_step(
        "fit",
        {"config": asdict(cfg), "teacher": str(run.teacher), "model_path": model_path, "versions": _versions()},
        data=data_manifest(data_cfg, dataset),
    )
    for finished in run.checkpoints.glob("fit-*"):  # nothing left to resume
        clear_checkpoints(run.checkpoints, finished.name)
    return FitResult(run_dir=run.path, mode=cfg.teacher_mode, teachers=teachers, metrics=metrics, seconds=seconds)


def _versions() -> dict[str, str]:
    import transformers

    return {"metakd": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _metrics(cfg: FitConfig, dataset: Dataset, teachers: list[TeacherResult], seconds: float) -> dict:
    if cfg.teacher_mode == "single":
        dev = {t.name: t.dev[t.name] for t in teachers}
        test = {t.name: t.test[t.name] for t in teachers}
        dev["average"] = float(np.mean(list(dev.values())))
        test["average"] = float(np.mean(list(test.values())))
    else:
        dev, test = teachers[0].dev, teachers[0].test
    return {
        "step": "fit",
        "mode": cfg.teacher_mode,
        "teacher": cfg.teacher,
        "dev_accuracy": dev,
        "test_accuracy": test,
        "t": teachers[0].t_stats,
        "teachers": [asdict(t) for t in teachers],
        "seconds": seconds,
        "train_examples_per_second": float(np.mean([t.examples_per_second for t in teachers])),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "versions": _versions(),
        "command": " ".join(__import__("sys").argv),
    }
