"""`metakd distill`: meta-distillation (Meta-KD Sec. 3.3) and the TinyBERT-KD / KD / MTN-KD baselines.

Stage 1 (intermediate), per example x with weight lambda(x):
    lambda(x) * [ sum_j MSE(W h_s^j, h_t^m(j)) + sum_j MSE(A_s^j, A_t^m(j)) + gamma * MSE(z_t, W z_s) ]
    lambda(x) = (1 + max(t(x), 0)) / (exp((1 - p_t(gold | x))^2) + 1)      (meta)
    lambda = 1 and no gamma term                                     (tinybert)
    Ablations: distill.lambda_weights false (lambda = 1, gamma term kept), distill.attention_weight
    (the attention term's weight, 1 by default; 0 drops it), distill.gamma 0 (no domain-feature term).
    A: pre-softmax attention scores QK^T / sqrt(d) + mask (metakd_cli.models.attention), as TinyBERT.
Stage 2 (prediction): soft cross-entropy to the teacher's soft labels softmax(z_t / T).
Stage 2's loss is T^2 * soft CE + gold_weight * CE(gold) (metakd_cli.training.losses.prediction_loss); its length is chosen
on dev (scored ~10 times an epoch, patience, an epoch ceiling) unless --epochs fixes it.
``kd`` runs stage 2 only. ``none`` is the no-teacher baseline: the same student, stage 2 on the gold labels alone,
and a `tiny` cut from the teacher's untouched pretrained encoder (what a user without a teacher would start from),
so that what the teacher buys is measured. The teacher is frozen, in eval mode; its logits, p_t(gold) and
lambda are computed once per run. An mtl teacher's logits for a row come from the head of
the row's own domain. A student with its own tokenizer whose word pieces align with the
teacher's (an MPNet teacher, a BERT-vocabulary student) reads its own tokens; stage 1 compares
the teacher's positions that hold the same tokens, and rows that do not align have no stage-1
term (metakd_cli.data.alignment).

``mtn`` (Multi-teachers -> MTN-KD, Yang et al. 2020) is stage 2 only, from every single-domain
teacher of a ``--teacher-mode single`` run at once: the soft label of each row is the plain
average of all teachers' softmax outputs, q = (1/K) sum_k softmax(z_k / T). Soft
cross-entropy is linear in its target, so this is exactly the mean of the K per-teacher KD
losses (Yang et al.'s multi-teacher objective with one shared output head), and, as a
baseline should, it uses neither the row's domain nor its gold label to favour a teacher:
choosing the right teacher per example is what Meta-KD adds. A `tiny` student is cut from the
teacher of ``--teacher-domain`` / ``--domain`` (else the first domain's).

Rows without a stored t (a domain held out of `metakd fit`, or rows left out by its
``--train-fraction``) get one here, for ``--method meta``, with the fit step's formula and
settings on the untouched pretrained encoder: the cross-domain term uses the prototypes the
teacher stored (seen domains only), and a held-out domain's own prototype is the centroid of
its rows in this distillation. The teacher never saw that domain, but the student's rows of
it are here; this keeps t's formula and scale, and t still measures how close a row is to
what the teacher learned from (t = 1 would rate every unseen row as perfectly transferable).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metakd_cli.core.config import LOGIT_ONLY, METHODS, DistillConfig, FitConfig, choice
from metakd_cli.models.students import PRESETS, SMALL_STUDENT_LAYERS, build_student, student_depth
from metakd_cli.core.cpu import CpuInfo, cpu_info
from metakd_cli.models.attention import attention_scores, check_attention_heads
from metakd_cli.data.rows import Dataset
from metakd_cli.data.encode import Encoded, batch_rows, collate, encode
from metakd_cli.data.dataset import fraction_indices, reload_dataset
from metakd_cli.core.errors import UserError
from metakd_cli.data.metrics import per_domain_accuracy
from metakd_cli.models.inference import MODEL_INPUTS, batched_logits, torch_logits
from metakd_cli.training.losses import (
    attention_mse,
    domain_feature_mse,
    example_weighted,
    expertise_weight,
    hidden_mse,
    least_squares_projection,
    multi_teacher_targets,
    prediction_loss,
    soft_targets,
)
from metakd_cli.ship.onnx_teacher import LABEL_WITH
from metakd_cli.models.heads import DomainClassifiers, DomainHead, TeacherInfo, load_head, mtl_forward
from metakd_cli.models.loading import (
    check_model_source,
    load_classifier,
    load_encoder,
    load_tokenizer,
    model_max_length,
    position_limit,
)
from metakd_cli.models.students import layer_map
from metakd_cli.data.alignment import CrossTokenizer, gather_hidden, gather_scores, teacher_inputs
from metakd_cli.core import processes
from metakd_cli.training.prototypes import compute_prototypes, pool, transferability
from metakd_cli.core.run_dir import RunDir, StepRecord, atomic_dir, domain_paths, folder_name
from metakd_cli.ship.model_card import write_model_cards
from metakd_cli.training.row_weights import save_row_weights
from metakd_cli.training.loop import PhaseSpec, PhaseSteps, SavedPass, clear_checkpoints, refuse_other_settings
from metakd_cli.training.loop import by_dev, check_length, earlier_seconds, run_phase
from metakd_cli.ship.trim import TrimCheck, check_trim_options, training_texts, trim_check, trim_vocabulary

STUDENT_JSON = "metakd_student.json"


@dataclass
class IntermediateStage:
    """How stage 1 went (distill.json's ``stages["intermediate"]``)."""

    seconds: float  # training time, the interrupted runs' that it resumed included
    examples_per_second: float
    history: list[dict]  # per epoch: the mean loss terms
    resumed_from: dict | None  # where a resumed run took the stage up, and its earlier seconds
    scored_on_dev: bool  # a student whose head came from the teacher is scored on dev as it goes
    dev_curve: list[dict]  # every dev scoring: step, epoch, dev_score
    best_step: int  # the optimisation step whose state was kept
    stopped_early: bool  # patience stopped it before the epoch ceiling
    rows: dict[str, int]  # "train" and "transfer" rows stage 1 went over
    transfer_lambda: dict | None = None  # --transfer-stage1: the transfer rows' lambda and t (mean)
    # which student stage 2 starts from: {"checked": True, "initial_dev", "after_stage_1_dev", "stage_2_starts_from"},
    # or {"checked": False, "why", "stage_2_starts_from"} for a new head
    start_check: dict | None = None
    projection_warmup: dict | None = None  # the projection's least-squares fit: rows, mse_before, mse_after

    @property
    def epochs(self) -> int:
        """Epochs trained (begun: patience can stop one part-way)."""
        return len(self.history)

    def to_json(self) -> dict:
        record = {
            "seconds": self.seconds, "examples_per_second": self.examples_per_second, "history": self.history,
            "resumed_from": self.resumed_from, "scored_on_dev": self.scored_on_dev, "dev_curve": self.dev_curve,
            "best_step": self.best_step, "stopped_early": self.stopped_early, "rows": self.rows,
            **({"transfer_lambda": self.transfer_lambda} if self.transfer_lambda is not None else {}),
        }
        checks = {"start_check": self.start_check, "projection_warmup": self.projection_warmup}
        if self.start_check is not None and not self.start_check["checked"]:
            # an unchecked start (a new head) has always been recorded after the projection's warm-up
            checks = {"projection_warmup": self.projection_warmup, "start_check": self.start_check}
        return {**record, **checks}


@dataclass
class PredictionStage:
    """How stage 2 went (distill.json's ``stages["prediction"]``)."""

    seconds: float  # training time, the interrupted runs' that it resumed included
    examples_per_second: float
    history: list[dict]  # per epoch: the mean loss
    best_epoch: int  # the epoch dev accuracy chose
    resumed_from: dict | None  # where a resumed run took the stage up, and its earlier seconds
    dev_curve: list[dict]  # every dev scoring: step, epoch, dev_score
    best_step: int  # the optimisation step whose state was kept
    stopped_early: bool  # patience stopped it before the epoch ceiling
    head_warmup: dict | None = None  # a new head trained alone first (training.head_warmup's record); None when not

    @property
    def epochs(self) -> int:
        """Epochs trained (begun: patience can stop one part-way)."""
        return len(self.history)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class DistillResult(StepRecord):
    """What `metakd distill` did. ``to_json()`` is metrics/distill.json: this class is the one place that says what
    the file holds."""

    run_dir: Path
    config: DistillConfig
    student: str  # how the student was made
    student_layers: list[int] | None  # a cut: the layers it kept of the model it was cut from (1-based)
    teacher_mode: str
    teachers: list[str] | None  # mtn: the domains of the teachers learnt from; else None
    held_out: str | None  # the domain the teacher never saw
    train_rows: dict[str, int]  # the rows distilled on, per domain
    dev_accuracy: dict[str, float]  # the student's, per domain and "average"
    test_accuracy: dict[str, float]  # the student's
    teacher_test_accuracy: dict[str, float]  # mtn: the teachers' mean
    agreement_with_teacher: float | None  # % of test rows on which student and teacher give the same label
    lambda_stats: dict[str, float]  # lambda(x) over the training rows: mean, min, max
    alignment: dict | None  # a student with its own tokenizer: how its pieces align with the teacher's
    teacher_cache_seconds: float
    learning_rates: dict[str, float]  # "intermediate" (stage 1) and "prediction" (stage 2), as used
    stages: dict[str, IntermediateStage | PredictionStage]  # "intermediate" (when it ran), "prediction"
    cpu: CpuInfo
    student_parameters: int
    teacher_parameters: int  # mtn: every teacher's together
    seconds: float  # this run's, and the training time of the interrupted runs its stages resumed
    command: str
    processes: int
    transfer: dict | None  # --augment / --transfer: the transfer set's rows, kinds and labelling; else None
    trim: TrimCheck | None = None  # --trim-vocab: the trimmed student against the untrimmed one

    @property
    def method(self) -> str:
        return self.config.method

    def to_json(self) -> dict:
        cfg = self.config
        return {
            "step": "distill",
            "method": cfg.method,
            "student": self.student,
            "student_layers": self.student_layers,
            "domain": cfg.domain,
            "teacher_mode": self.teacher_mode,
            "teachers": self.teachers,
            "held_out": self.held_out,
            "train_fraction": cfg.train_fraction,
            "train_rows": self.train_rows,
            "dev_accuracy": self.dev_accuracy,
            "test_accuracy": self.test_accuracy,
            "teacher_test_accuracy": self.teacher_test_accuracy,
            "test_agreement_with_teacher": self.agreement_with_teacher,
            "lambda": self.lambda_stats,
            **({"alignment": self.alignment} if self.alignment is not None else {}),
            "teacher_cache_seconds": self.teacher_cache_seconds,
            "learning_rates": self.learning_rates,
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
            "cpu": self.cpu.to_json(),
            "parameters": {"student": self.student_parameters, "teacher": self.teacher_parameters},
            "seconds": self.seconds,
            "config": asdict(cfg),
            "command": self.command,
            "processes": self.processes,
            "transfer": self.transfer,
            **({"trim": self.trim.to_json()} if self.trim is not None else {}),
        }


# Default learning rates (stage 1, stage 2) by how the student starts; docs/usage.md "Training length and learning
# rates" shows the table.
# A pretrained student of 4 layers or fewer (every preset) trains stage 2 at 1e-4: at the official 3e-5 the minilm4
# student under the MPNet teacher scored 79.25 on Amazon's test rows and at 1e-4 84.25 (+5.0, p < 0.001, chosen on
# dev; bench/results/mpnet.json), and the BERT miniatures' grid reaches 3e-4. A deeper student keeps BERT-base's 3e-5.
SMALL_STUDENT_LRS = (5e-5, 1e-4)
DEEP_STUDENT_LRS = (5e-5, 3e-5)
RANDOM_INIT_LRS = (5e-4, 3e-4)  # at 3e-5 a student from random weights stayed at chance


def learning_rates(cfg: DistillConfig, student_layers: int = SMALL_STUDENT_LAYERS) -> tuple[float, float]:
    """(stage 1, stage 2) learning rates: the ones given, else the defaults for how the student starts and how
    deep it is (``student_layers``)."""
    random_init = cfg.student == "tinybert4" and cfg.student_init == "random"
    if random_init:
        stage1, stage2 = RANDOM_INIT_LRS
    else:
        stage1, stage2 = SMALL_STUDENT_LRS if student_layers <= SMALL_STUDENT_LAYERS else DEEP_STUDENT_LRS
    return (cfg.intermediate_lr if cfg.intermediate_lr is not None else stage1,
            cfg.lr if cfg.lr is not None else stage2)


def validate(cfg: DistillConfig) -> None:
    choice(cfg.method, METHODS, "--method")
    choice(cfg.label_with, LABEL_WITH, "--label-with")
    for flag, value in (("--lr", cfg.lr), ("--intermediate-lr", cfg.intermediate_lr)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    check_length(cfg.epochs, cfg.max_epochs, cfg.patience, cfg.eval_every)
    if cfg.gold_weight < 0:
        raise UserError(f"--gold-weight must be 0 or more, got {cfg.gold_weight}")
    if cfg.augment < 0:
        raise UserError(f"--augment must be 0 or more, got {cfg.augment}")
    if cfg.transfer_stage1 and not (cfg.augment or cfg.transfer):
        raise UserError("--transfer-stage1 runs stage 1 over the transfer set: give --augment K or --transfer PATH")
    if cfg.transfer_stage1 and (cfg.method in LOGIT_ONLY or cfg.intermediate_epochs == 0):
        raise UserError(f"--transfer-stage1: --method {cfg.method}"
                        + (" has no stage 1" if cfg.method in LOGIT_ONLY else " with --intermediate-epochs 0 runs no stage 1"))
    if cfg.head_warmup is not None and cfg.head_warmup < 0:
        raise UserError(f"--head-warmup must be 0 or more, got {cfg.head_warmup}")
    if (cfg.augment or cfg.transfer) and cfg.method in ("none", "mtn"):
        flag = "--augment" if cfg.augment else "--transfer"
        raise UserError(f"{flag} adds rows one teacher labels; --method {cfg.method} "
                        + ("learns from gold labels only" if cfg.method == "none" else "has several teachers"))
    if cfg.student_layers is not None:
        if cfg.student not in ("tiny", "minilm4"):
            raise UserError(f"--student-layers picks the layers of a cut student (tiny, minilm4); --student "
                            f"{cfg.student} is not cut")
        if not cfg.student_layers or any(n < 1 for n in cfg.student_layers) or \
                sorted(set(cfg.student_layers)) != cfg.student_layers:
            raise UserError(f"--student-layers {','.join(map(str, cfg.student_layers))}: give increasing layer "
                            "numbers from 1 (e.g. 1,3,5,6), each once")
    if cfg.intermediate_epochs is not None and cfg.intermediate_epochs < 0:
        raise UserError(f"--intermediate-epochs must be 0 or more, got {cfg.intermediate_epochs}")
    if cfg.intermediate_max_epochs < 1:
        raise UserError(f"--intermediate-max-epochs must be at least 1, got {cfg.intermediate_max_epochs}")
    if cfg.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {cfg.temperature}")
    for flag, value in (("--gamma", cfg.gamma), ("--attention-weight", cfg.attention_weight)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}")
    if not 0 < cfg.train_fraction <= 1:
        raise UserError(f"--train-fraction must be above 0 and at most 1, got {cfg.train_fraction}")
    if cfg.max_length is not None and cfg.max_length < 1:  # 0 would silently mean "the teacher's"
        raise UserError(f"--max-length must be at least 1, got {cfg.max_length}")
    processes.check_settings(cfg.batch_size, cfg.mixed_precision)
    check_trim_options(cfg.trim_vocab, cfg.keep_top)
    check_model_source(cfg.student, "--student", PRESETS)  # a typo fails now, not after a minute of hub retries
    if cfg.student == "tinybert4" and cfg.student_init is not None:
        check_model_source(cfg.student_init, "--student-init", ("random",))


def check_teacher_length(max_length: int, limit: int, teacher: str) -> None:
    """A length past the teacher's position embeddings is refused: a long row would crash the teacher mid-run."""
    if max_length > limit:
        raise UserError(f"--max-length {max_length} is above the teacher's limit of {limit} positions "
                        f"({teacher}); give {limit} or less")


def check_student_length(max_length: int, limit: int, given: bool, student: str) -> None:
    """A student model with fewer positions than the length distillation tokenises to is refused."""
    if max_length > limit:
        what = "--max-length" if given else "the teacher's max length (fit --max-length)"
        raise UserError(f"{what} {max_length} is above the student's limit of {limit} positions ({student}); "
                        f"give distill --max-length {limit} or less")


def _teacher_folders(run: RunDir, info: TeacherInfo, cfg: DistillConfig) -> tuple[Path, list[Path]]:
    """(the teacher folder distilled from, every teacher folder whose soft labels the student learns).

    They are the same one folder except for ``mtn``, where the first is the teacher a `tiny`
    student is cut from and whose layers size the layer map.
    """
    check_teacher(cfg, info.mode, info.held_out, info.domains)
    if cfg.teacher_domain is not None and cfg.teacher_domain not in info.domains:
        raise UserError(f"--teacher-domain: unknown domain '{cfg.teacher_domain}' (known domains: "
                        f"{', '.join(info.domains)})")
    paths = domain_paths(run.teacher, info.domains)
    if cfg.method == "mtn":
        folders = {d: path for d, path in paths.items() if (path / "config.json").is_file()}
        if not folders:
            raise UserError(f"{run.teacher}: no single-domain teacher folders; re-run `metakd fit --teacher-mode single`")
        if cfg.teacher_domain is not None and cfg.teacher_domain not in folders:
            raise UserError(f"--teacher-domain {cfg.teacher_domain}: no single-domain teacher for it (held out at fit?); "
                            f"the run has teachers for {', '.join(folders)}")
        main = folders.get(cfg.teacher_domain or cfg.domain or "", next(iter(folders.values())))
        return main, list(folders.values())
    if info.mode != "single":
        return run.teacher, [run.teacher]
    name = cfg.teacher_domain or cfg.domain
    if not (paths[name] / "config.json").is_file():
        raise UserError(
            f"no single-domain teacher for '{name}': {paths[name]} is missing; distil from another domain's "
            "teacher with --teacher-domain, or from all of them with --method mtn"
        )
    return paths[name], [paths[name]]


def check_teacher(cfg: DistillConfig, mode: str, held_out: str | None, domains: list[str] | None = None) -> None:
    """The distill settings a teacher fitted with --teacher-mode ``mode`` (and --hold-out ``held_out``) can serve;
    `metakd run` checks a recipe with it before fitting."""
    if cfg.teacher_domain is not None and mode != "single":
        raise UserError(f"--teacher-domain picks one teacher of a --teacher-mode single run; this run's is {mode}")
    if cfg.method == "mtn":
        if mode != "single":
            raise UserError(
                f"--method mtn learns from one teacher per domain, but this run's teacher is {mode}: "
                "fit with --teacher-mode single first"
            )
        return
    if mode != "single":
        return
    name = cfg.teacher_domain or cfg.domain
    if name is None:
        known = f" ({', '.join(domains)})" if domains else ""
        raise UserError(
            "the run's teacher was fitted with --teacher-mode single (one teacher per domain): "
            f"pick which with --domain{known}, or learn from all of them with --method mtn"
        )
    if name == held_out:
        raise UserError(
            f"no single-domain teacher for '{name}': it was held out of `metakd fit`; distil from another domain's "
            "teacher with --teacher-domain, or from all of them with --method mtn"
        )


def _load_teacher(folder: Path, device=None):
    """A frozen teacher in eval mode (eager attention, for the attention maps) and its mtl heads, if any, on
    ``device`` (default: where it loads)."""
    teacher = load_classifier(str(folder), None, "eager")
    if device is not None:
        teacher.to(device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from metakd_cli.models.heads import load_domain_classifiers

    heads = load_domain_classifiers(folder)
    if heads is not None and device is not None:
        heads.to(device)
    return teacher, heads


def teacher_logits_of(teacher, heads: DomainClassifiers | None, encoded: Encoded, pad_id: int) -> torch.Tensor:
    """The teacher's logits [N, C]; an mtl teacher's through each row's own domain head.

    Several processes: each computes its share of the rows, and every process gets them all.
    """
    if heads is not None:
        return torch.from_numpy(processes.gather_encoded(encoded, lambda part: batched_logits(
            part, pad_id, 64, mtl_forward(teacher, heads))))
    return torch.from_numpy(processes.gather_encoded(encoded, lambda part: torch_logits(teacher, part, pad_id)))


def missing_scores(rows: Encoded, run: RunDir, prototypes: torch.Tensor, n_labels: int, pad_id: int) -> torch.Tensor:
    """t for training rows the teacher did not train on, as the module docstring says: [N].

    ``prototypes``: the fit step's [D, C, H] ([D, 1, H] for domain prototypes), zero for a
    domain (or class) it never saw.
    """
    fit_step = run.load().steps["fit"]
    known = FitConfig.__dataclass_fields__
    fit_cfg = FitConfig(**{k: v for k, v in fit_step["config"].items() if k in known})
    encoder = load_encoder(fit_step["model_path"], fit_cfg.trust_remote_code).to(processes.device())
    from metakd_cli.training.prototypes import encode_representations

    reps = encode_representations(encoder, rows, pad_id, fit_cfg.pooling)
    del encoder
    domains = torch.tensor(rows.domains)
    labels = torch.tensor(rows.labels)
    present = prototypes.norm(dim=-1) > 0  # [D, C]: what the teacher's training rows held
    filled = prototypes.clone()
    by_class = prototypes.shape[1] > 1
    unseen = sorted({d for d in rows.domains if not present[d].any()})
    if unseen:  # a held-out domain: its own prototype from its rows here
        own, _ = compute_prototypes(reps, domains, labels, prototypes.shape[0], n_labels if by_class else 1, by_class)
        filled[unseen] = own[unseen]
    # own term: `filled`; cross-domain term: only the stored (seen) prototypes, via `present`
    return transferability(reps, domains, labels, filled, present, fit_cfg.alpha, fit_cfg.zeta)


def distill(cfg: DistillConfig, run: RunDir, resume: bool = False, progress=None, log=print, warn=print) -> DistillResult:
    """Distil the run's teacher into a student and write student/, metrics and the manifest, holding the
    run folder's lock. Under several processes every one trains and only the main one locks and writes."""
    validate(cfg)
    if not processes.is_main():  # the main process says it all once, and writes
        progress, log, warn = None, lambda _: None, lambda _: None
    log(processes.describe(cfg.mixed_precision))
    with run.lock("distill", log) if processes.is_main() else nullcontext():
        result = _distill(cfg, run, resume, progress, log, warn)
    processes.wait()  # no process leaves before the run folder is written
    return result


@dataclass
class _Context:
    """What every step of one distillation reads: its settings, run folder, data and callbacks."""

    cfg: DistillConfig
    run: RunDir
    dataset: Dataset
    resume: bool
    progress: object
    log: Callable[[str], None]
    warn: Callable[[str], None]
    in_fraction: list[int]  # the training rows --train-fraction keeps (all domains)


@dataclass
class _TeacherSide:
    """The frozen teacher (for ``mtn``, the one a `tiny` student is cut from), its tokenizer and its folders."""

    info: TeacherInfo
    domain_id: int | None  # the --domain distilled for, None for every domain
    teacher_dir: Path
    teacher_dirs: list[Path]  # every teacher whose soft labels the student learns (mtn: all of them)
    domain_of: dict[Path, str]  # a single teacher's folder -> its domain
    tokenizer: object
    pad_id: int
    max_length: int
    teacher: nn.Module
    teacher_heads: DomainClassifiers | None  # an mtl teacher's per-domain heads
    teacher_head: DomainHead
    extra: dict[str, torch.Tensor]  # what fit stored beside the teacher: scores, prototypes


@dataclass
class _TrainingRows:
    """The rows distilled on, in the teacher's tokens, and each training row's t."""

    keep: list[int]  # indices into the whole train split
    full_train: Encoded
    train: Encoded
    dev_all: Encoded
    dev: Encoded
    test_all: Encoded
    test: Encoded
    t: torch.Tensor  # [N]


@dataclass
class _TeacherCache:
    """The teacher's outputs, computed once per run."""

    targets: torch.Tensor  # [N, C] soft labels at the temperature
    teacher_test: np.ndarray  # [N_test] predicted labels
    lam: torch.Tensor  # [N] lambda(x)
    teacher_parameters: int  # mtn: all teachers together
    seconds: float
    saved: Path | None  # where the logits are saved for --resume (checkpoints), None when they are not


@dataclass
class _StudentSide:
    """The student, the rows in its own tokens and the modules stage 1 trains."""

    student: nn.Module
    how: str  # how it was initialised, one line
    tokenizer: object  # the student's own, else the teacher's
    train: Encoded
    dev: Encoded
    test: Encoded
    pad_id: int
    cross: CrossTokenizer | None  # a student with its own tokenizer whose word pieces align
    parts: nn.ModuleDict  # student, head (and projection)
    projection: nn.Linear | None
    mapping: list[int]  # student layer -> teacher layer
    attention_weight: float = 1.0  # stage 1's attention-score term: distill.attention_weight, else attention_weight_for
    head_from_teacher: bool = False  # the classifier was cut from the teacher: dev accuracy means something at once
    kept_layers: list[int] | None = None  # a cut: the layers it kept of the model it was cut from (1-based)


def _distill(cfg: DistillConfig, run: RunDir, resume: bool, progress, log, warn) -> DistillResult:
    started = time.perf_counter()
    fit_id = run.step_id("fit")  # the teacher this student is built from: read now, recorded at the end
    _, dataset = reload_dataset(run)
    ctx = _Context(cfg, run, dataset, resume, progress, log, warn,
                   fraction_indices(dataset.train, cfg.train_fraction, dataset.split_seed))
    user_texts = _read_transfer(ctx) if cfg.transfer else None  # a bad row is refused before any teacher pass
    teacher_side = _load_teacher_side(ctx)
    intermediate_lr, lr = learning_rates(cfg, student_depth(cfg))
    specs = _stage_specs(ctx, teacher_side.info.mode, intermediate_lr, lr)
    if resume:  # a checkpoint of other settings is refused before the teacher's passes, not after them
        for spec in specs.values():
            refuse_other_settings(run.checkpoints, spec)
    rows = _training_rows(ctx, teacher_side)
    cache = _cache_teacher(ctx, teacher_side, rows)
    student_side = _build_student_side(ctx, teacher_side, rows)
    transfer = (_transfer_set(ctx, teacher_side, student_side, rows, user_texts) if cfg.augment or cfg.transfer
                else None)
    stage1 = (_stage1_rows(ctx, teacher_side, student_side, rows, cache, transfer)
              if cfg.transfer_stage1 and "intermediate" in specs else None)
    steps = _LossSteps(cfg, teacher_side.teacher, teacher_side.teacher_head, student_side, cache.lam,
                       cache.targets, transfer, stage1)
    stages: dict[str, IntermediateStage | PredictionStage] = {}
    try:
        if "intermediate" in specs:
            stages["intermediate"] = _run_intermediate_checked(ctx, specs["intermediate"], steps)
        head_warmup = _warm_head(ctx, steps)
        stages["prediction"] = replace(_run_prediction(ctx, specs["prediction"], steps), head_warmup=head_warmup)
    except KeyboardInterrupt as exc:
        if cache.saved is not None:  # Ctrl-C's message names them when no training state was saved yet
            exc.saved_pass = ("the teacher's logits", cache.saved)
        raise
    lrs = {"intermediate": intermediate_lr, "prediction": lr}
    result = _result(ctx, teacher_side, student_side, cache, lrs, stages, started,
                     transfer.summary() if transfer is not None else None)
    if not processes.is_main():  # the main process writes the run folder
        return result
    result = _save(ctx, teacher_side, student_side, rows, cache.lam, result, fit_id)
    return replace(result, seconds=_step_seconds(started, stages))  # the run's end, after the writing


def _step_seconds(started: float, stages: dict[str, IntermediateStage | PredictionStage]) -> float:
    """The step's time: this run's, and the training time of the interrupted runs its stages resumed."""
    return time.perf_counter() - started + earlier_seconds([stage.resumed_from for stage in stages.values()])


def _load_teacher_side(ctx: _Context) -> _TeacherSide:
    """The teacher distilled from, frozen on this process's device, with its tokenizer and domain head."""
    cfg, run, dataset = ctx.cfg, ctx.run, ctx.dataset
    info = TeacherInfo.load(run.teacher)
    domain_id = None
    if cfg.domain is not None:
        dataset.check_domains([cfg.domain], "--domain")
        domain_id = dataset.domain_id(cfg.domain)
    teacher_dir, teacher_dirs = _teacher_folders(run, info, cfg)
    domain_of = {path: d for d, path in domain_paths(run.teacher, info.domains).items()}  # single teachers
    if cfg.method == "mtn":
        ctx.log(f"mtn: learning from the teachers of {', '.join(domain_of[d] for d in teacher_dirs)}; the student's "
                f"tokenizer and {cfg.student} layers come from {domain_of[teacher_dir]}'s")
    tokenizer = load_tokenizer(str(teacher_dir))
    pad_id = tokenizer.pad_token_id or 0
    max_length = cfg.max_length or info.max_length
    # as fit checks it: past the position embeddings a long row crashes the teacher mid-run, and
    # metakd_student.json would hand export / eval a length no model here can take
    check_teacher_length(max_length, position_limit(str(teacher_dir)), info.base_model)
    teacher, teacher_heads = _load_teacher(teacher_dir, processes.device())
    teacher_head, extra = load_head(teacher_dir, teacher.config.hidden_size, len(info.domains))
    teacher_head.to(processes.device()).eval()
    for p in teacher_head.parameters():
        p.requires_grad_(False)
    return _TeacherSide(info, domain_id, teacher_dir, teacher_dirs, domain_of, tokenizer, pad_id, max_length,
                        teacher, teacher_heads, teacher_head, extra)


def _training_rows(ctx: _Context, side: _TeacherSide) -> _TrainingRows:
    """The train / dev / test rows of the distilled domain(s), in the teacher's tokens, and t per training row:
    the one fit stored, else (see the module docstring) one computed here."""
    cfg, dataset, domain_id = ctx.cfg, ctx.dataset, side.domain_id
    full_train = encode(dataset.train, dataset, side.tokenizer, side.max_length)
    in_fraction = set(ctx.in_fraction)
    keep = [i for i in full_train.rows_of(domain_id) if i in in_fraction]
    train = full_train.subset(keep)
    dev_all = encode(dataset.dev, dataset, side.tokenizer, side.max_length)
    dev = dev_all.subset(dev_all.rows_of(domain_id))
    test_all = encode(dataset.test, dataset, side.tokenizer, side.max_length)
    test = test_all.subset(test_all.rows_of(domain_id))
    scores = side.extra.get("scores")
    if side.info.mode == "meta" and scores is not None and len(scores) == len(full_train):
        t = scores[keep].float()
        missing = torch.isnan(t).nonzero().flatten().tolist()
        if missing and cfg.method == "meta":
            ctx.log(f"t for {len(missing):,} rows the teacher did not train on, from the pretrained encoder")
            t[missing] = missing_scores(train.subset(missing), ctx.run, side.extra["prototypes"], len(dataset.labels),
                                        side.pad_id)
    else:
        t = torch.ones(len(train))  # mix / mtl / single teachers: every example equally transferable
    return _TrainingRows(keep, full_train, train, dev_all, dev, test_all, test, t)


def _cache_teacher(ctx: _Context, side: _TeacherSide, rows: _TrainingRows) -> _TeacherCache:
    """Cached once: the teacher's logits on the training rows (and test rows, for the metrics),
    its soft labels, p_t(gold) and lambda."""
    cfg, train = ctx.cfg, rows.train
    cache_started = time.perf_counter()
    logits, saved = _teacher_logits(ctx, side, rows)
    if cfg.method == "mtn":  # [teachers, rows, labels]
        targets = multi_teacher_targets(logits["train"], cfg.temperature)
        probabilities = multi_teacher_targets(logits["train"])
        teacher_test = multi_teacher_targets(logits["test"]).argmax(-1).numpy()
    else:
        targets = soft_targets(logits["train"], cfg.temperature)
        probabilities = logits["train"].softmax(-1)
        teacher_test = logits["test"].argmax(-1).numpy()
    teacher_parameters = int(logits["parameters"].item())
    p_gold = probabilities[torch.arange(len(train)), torch.tensor(train.labels, dtype=torch.long)]
    weighted = cfg.method == "meta" and cfg.lambda_weights
    lam = expertise_weight(rows.t, p_gold) if weighted else torch.ones(len(train))
    return _TeacherCache(targets, teacher_test, lam, teacher_parameters, time.perf_counter() - cache_started, saved)


TRANSFER_CHECKPOINT = "transfer-teacher"  # checkpoints/<this>-<hash>: the teacher's logits on derived rows, kept
TRANSFER_CHUNK = 256  # derived rows labelled between two progress updates


@dataclass
class _TransferSet:
    """The rows only the teacher labels (--augment): in the student's tokens, the teacher's soft labels on them,
    and what they are (kinds, domains, where the logits are kept)."""

    student_rows: Encoded
    targets: torch.Tensor  # [M, C] at the temperature
    kinds: list[str]  # each row's: an augment kind, or "transfer" for the user's texts
    domains: list[str]
    saved: list[Path]  # where the logits are kept: the derived rows', then the user's texts'
    reused: bool  # every part's logits came from an earlier pass
    seconds: float
    read: dict | None = None  # --transfer: what was read and what was left out (metakd_cli.data.transfer.TransferRead)
    labelled_with: dict | None = None  # torch or onnx, rows/s, the ONNX check; None: the labels were reused
    teacher_rows: Encoded | None = None  # the rows in the teacher's tokens (stage 1 over them)
    sources: list[int | None] | None = None  # a derived row's training row (index into the rows distilled on)
    probabilities: torch.Tensor | None = None  # [M, C] the teacher's, at T = 1 (p for lambda)

    def summary(self) -> dict:
        """metrics/distill.json's ``transfer``: its size and source."""
        from collections import Counter

        derived = [k for k in self.kinds if k != "transfer"]
        return {"rows": len(self.kinds), "augment_rows": len(derived), "transfer_rows": len(self.kinds) - len(derived),
                "by_kind": dict(Counter(self.kinds)), "by_domain": dict(Counter(self.domains)),
                "by_domain_kind": {d: dict(Counter(k for k, dd in zip(self.kinds, self.domains) if dd == d))
                                   for d in dict.fromkeys(self.domains)},
                "transfer": self.read, "labelled_by": "teacher (soft labels; no gold term)",
                "logits": [str(folder) for folder in self.saved], "reused": self.reused,
                "teacher_seconds": self.seconds,
                "labelled_with": self.labelled_with}


def _transfer_set(ctx: _Context, side: _TeacherSide, student: _StudentSide, rows: _TrainingRows,
                  read=None) -> _TransferSet:
    """--augment K: K derived rows per training row (metakd_cli.data.augment), and --transfer's texts, labelled by
    the teacher once: each part's logits are kept in checkpoints/transfer-teacher-<hash> (not cleared when the
    distillation ends) under what they were made from (the teacher, and the rows as the teacher reads them: its
    tokens and their domains), so --resume and later distillations from the same teacher reuse them, whatever their
    seed, K or --train-fraction (the user's texts apart from the derived rows). The derived rows' folder also holds
    each row's recipe (rows.jsonl: its training row, kind and place)."""
    from metakd_cli.data.augment import derive, render_mask

    cfg, dataset = ctx.cfg, ctx.dataset
    started = time.perf_counter()
    sources = [dataset.train[i] for i in rows.keep]
    derived = derive(sources, cfg.augment, cfg.seed, side.tokenizer, side.max_length) if cfg.augment else []
    user_rows = [replace(row, label=dataset.labels[0]) for row in read.rows] if read else []  # no gold: a stand-in
    examples = [d.example for d in derived] + user_rows
    kinds = [d.kind for d in derived] + ["transfer"] * len(user_rows)
    teacher_rows = encode([render_mask(ex, side.tokenizer.mask_token or "[MASK]") for ex in examples], dataset,
                          side.tokenizer, side.max_length)
    recipes = "".join(json.dumps({"row": i, "source": rows.keep[d.source], "kind": d.kind, "where": d.example.where})
                      + "\n" for i, d in enumerate(derived))
    parts = [(range(0, len(derived)), {"rows.jsonl": recipes}),
             (range(len(derived), len(examples)), {})]
    logits, saved, labelled_with, missing = {}, [], None, []
    for at, (indices, extra) in enumerate(parts):
        if not indices:
            continue
        part = _labels_pass(ctx, side, teacher_rows.subset(indices))
        found, got = part.load({"logits": (len(indices), len(dataset.labels))})
        saved.append(part.folder)
        if isinstance(got, dict):
            ctx.log(f"the teacher's labels of {len(indices):,} {('derived rows', 'of your texts')[at]} from {found}")
            logits[at] = got["logits"]
        else:
            missing.append((at, indices, part, extra))
    if missing:  # one labelling pass (one ONNX export) over every part not labelled before
        fresh, labelled_with = _label_rows(ctx, side, teacher_rows.subset([i for _, idx, _, _ in missing for i in idx]))
        offset = 0
        for at, indices, part, extra in missing:
            logits[at], offset = fresh[offset:offset + len(indices)], offset + len(indices)
            if processes.is_main():
                part.save({"logits": logits[at]}, extra)
    logits = torch.cat([logits[at] for at in sorted(logits)])
    student_rows = teacher_rows
    if student.cross is not None:  # the student reads its own tokens (stage 2 needs no alignment)
        student_rows = encode([render_mask(ex, student.tokenizer.mask_token or "[MASK]") for ex in examples], dataset,
                              student.tokenizer, side.max_length)
    ctx.log(f"transfer set: {len(derived):,} derived rows ({cfg.augment} per training row) and {len(user_rows):,} of "
            "your texts, labelled by the teacher")
    return _TransferSet(student_rows, soft_targets(logits, cfg.temperature), kinds, [ex.domain for ex in examples],
                        saved, not missing, time.perf_counter() - started, read.summary() if read else None,
                        labelled_with, teacher_rows, [d.source for d in derived] + [None] * len(user_rows),
                        torch.softmax(logits.float(), -1))


def _labels_pass(ctx: _Context, side: _TeacherSide, encoded: Encoded) -> SavedPass:
    """Where the teacher's logits on ``encoded`` are kept: named by a hash of the teacher (its fit and weight files)
    and of the rows as it reads them (tokens, token types, domains: a teacher with a head per domain reads the
    domain); nothing else changes them."""
    import hashlib

    teacher = {"teacher fit": ctx.run.step_id("fit"), "teacher weights": _weights_stamp([side.teacher_dir]),
               "max_length": side.max_length}
    tokens = hashlib.sha256(json.dumps([encoded.input_ids, encoded.token_type_ids, encoded.domains])
                            .encode()).hexdigest()
    signature = json.dumps([teacher, tokens], sort_keys=True)
    key = hashlib.sha256(signature.encode()).hexdigest()[:12]
    return SavedPass(ctx.run.checkpoints / f"{TRANSFER_CHECKPOINT}-{key}", "logits.safetensors", signature,
                     ("teacher", "rows"), len(encoded))


@dataclass
class _Stage1Rows:
    """Stage 1 over the training rows, then the transfer set's (--transfer-stage1): how the student's rows align
    with the teacher's (a student with its own tokenizer), and lambda per row."""

    cross: CrossTokenizer | None
    lam: torch.Tensor  # [N + M]
    summary: dict


def concat_encoded(first: Encoded, second: Encoded) -> Encoded:
    return Encoded(first.input_ids + second.input_ids,
                   None if first.token_type_ids is None else first.token_type_ids + (second.token_type_ids or []),
                   first.labels + second.labels, first.domains + second.domains)


def _stage1_rows(ctx: _Context, side: _TeacherSide, student: _StudentSide, rows: _TrainingRows,
                 cache: _TeacherCache, transfer: _TransferSet) -> _Stage1Rows:
    """lambda of the transfer set's rows, as for training rows: a derived row's t is its source's, a text of yours
    gets t from the prototypes (from the untouched encoder, as for rows the teacher did not train on); p is the
    teacher's probability of the label it gives (the row has no gold one)."""
    cfg = ctx.cfg
    sources = transfer.sources
    t = torch.ones(len(sources))
    derived = [i for i, source in enumerate(sources) if source is not None]
    yours = [i for i, source in enumerate(sources) if source is None]
    weighted = cfg.method == "meta" and cfg.lambda_weights
    if derived:
        t[derived] = rows.t[[sources[i] for i in derived]].float()
    prototypes = side.extra.get("prototypes")
    if yours and weighted and side.info.mode == "meta" and prototypes is not None:
        ctx.log(f"t for {len(yours):,} of your texts, from the pretrained encoder (stage 1 reads them)")
        rows_of_yours = transfer.teacher_rows.subset(yours)  # scored against the class the teacher gives them
        rows_of_yours = replace(rows_of_yours, labels=transfer.probabilities[yours].argmax(-1).tolist())
        t[yours] = missing_scores(rows_of_yours, ctx.run, prototypes, len(ctx.dataset.labels), side.pad_id).float()
    p = transfer.probabilities.max(-1).values
    lam = expertise_weight(t, p) if weighted else torch.ones(len(sources))
    cross = None
    if student.cross is not None:  # the combined rows aligned as the training rows are
        base = student.cross
        cross = CrossTokenizer.build(base.tokenizer, base.tokens, concat_encoded(student.train, transfer.student_rows),
                                     concat_encoded(base.teacher_train, transfer.teacher_rows), base.teacher_pad_id)
    summary = {"rows": len(sources), "lambda_mean": float(lam.mean()) if len(lam) else None,
               "t_mean": float(t.mean()) if len(t) else None}
    return _Stage1Rows(cross, torch.cat([cache.lam.float(), lam.float()]), summary)


def _read_transfer(ctx: _Context):
    """--transfer's rows (metakd_cli.data.transfer), checked against the run's domains and texts; one line says what
    was read and what was left out."""
    from metakd_cli.data.transfer import read_transfer, seen_texts

    dataset, data = ctx.dataset, ctx.run.load().data.get("config") or {}
    # with --train-fraction, the training rows left out are text this student never sees: not a repeat
    seen = seen_texts(dataset, ctx.in_fraction)
    read = read_transfer(ctx.cfg.transfer, dataset.domains, seen, ctx.cfg.domain,
                         data.get("text_column", "text"), data.get("text_pair_column", "text_pair"),
                         data.get("domain_column", "domain"), pairs=dataset.has_pairs)
    left = "; ".join(f"{n:,} {why}" for why, n in read.left_out.items())
    ctx.log(f"--transfer: {len(read.rows):,} texts kept" + (f"; left out: {left}" if left else ""))
    if not read.rows:
        raise UserError(f"--transfer {', '.join(ctx.cfg.transfer)}: no text left to learn from ({left or 'none read'})")
    return read


def _label_rows(ctx: _Context, side: _TeacherSide, encoded: Encoded,
                what: str = "teacher labels derived rows") -> tuple[torch.Tensor, dict]:
    """The teacher's logits on ``encoded`` [M, C], a chunk at a time with a progress bar (a long pass for a big
    teacher), and how they were made: by the teacher's fp32 ONNX export where metakd_cli.ship.onnx_teacher says so
    (checked against PyTorch on the first rows; PyTorch when the export fails or differs), else by PyTorch."""
    from metakd_cli.ship import onnx_teacher

    progress, total, started = ctx.progress, len(encoded), time.perf_counter()
    onnx, how = None, {"with": "torch"}
    one_plain = side.teacher_heads is None and len(side.teacher_dirs) == 1
    one_process = processes.world_size() == 1  # each process labels its share with PyTorch, as it trains
    if onnx_teacher.wanted(ctx.cfg.label_with, total, one_plain, processes.device().type == "cpu", one_process):
        onnx, how = _onnx_teacher(ctx, side, encoded)
    elif ctx.cfg.label_with == "onnx":
        why = "several processes" if not one_process else "a teacher with one head per domain, or several teachers"
        ctx.log(f"--label-with onnx: labelling with PyTorch ({why})")
        how["why"] = why
    if progress is not None:
        progress.start(what, total)
    parts = []
    try:
        for start in range(0, total, TRANSFER_CHUNK):
            part = encoded.subset(range(start, min(start + TRANSFER_CHUNK, total)))
            parts.append(torch.from_numpy(onnx.logits(part, side.pad_id)) if onnx is not None
                         else teacher_logits_of(side.teacher, side.teacher_heads, part, side.pad_id))
            if progress is not None:
                progress.advance(len(part))
    finally:
        if onnx is not None:
            onnx.close()
        if progress is not None:
            progress.stop()
    how["rows_per_s"] = round(total / max(time.perf_counter() - started, 1e-9), 1)
    return (torch.cat(parts) if parts else torch.zeros(0, 0)), how


def _onnx_teacher(ctx: _Context, side: _TeacherSide, encoded: Encoded):
    """(the teacher's ONNX export, how) when it exports and its logits on the first rows are PyTorch's within
    onnx_teacher.ATOL; (None, how) with the reason otherwise, said in the log."""
    from metakd_cli.ship import onnx_teacher

    check = encoded.subset(onnx_teacher.check_rows([len(ids) for ids in encoded.input_ids]))
    onnx = None
    try:
        onnx = onnx_teacher.OnnxTeacher(side.teacher_dir)
        diff = float(np.abs(onnx.logits(check, side.pad_id)
                            - teacher_logits_of(side.teacher, None, check, side.pad_id).numpy()).max())
    except Exception as exc:  # noqa: BLE001 - optimum's refusals (architecture, opset) and ORT's share no base
        if onnx is not None:
            onnx.close()
        why = f"the teacher's ONNX export failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ctx.log(f"labelling with PyTorch: {why}")
        return None, {"with": "torch", "why": why}
    record = {"rows": len(check), "max_abs_diff": diff, "atol": onnx_teacher.ATOL}
    if diff > onnx_teacher.ATOL:
        onnx.close()
        ctx.log(f"labelling with PyTorch: the teacher's ONNX logits differ by {diff:.2e} on the first rows")
        return None, {"with": "torch", "why": "ONNX logits differ", "check": record}
    ctx.log(f"labelling with the teacher's fp32 ONNX export (max |diff| {diff:.1e} vs PyTorch on {len(check)} rows, "
            "the first and the longest)")
    return onnx, {"with": "onnx", "check": record}


TEACHER_CHECKPOINT = "distill-teacher"  # checkpoints/<this><suffix>: the teacher's logits, for --resume to reuse


def _weights_stamp(folders: list[Path]) -> list[list]:
    """Each teacher folder's weight files as name, size and modification time: a teacher rewritten in place (a
    refit killed before its manifest entry) differs here even where the manifest's fit id does not."""
    files = [(f"{folder.name}/{f.name}", f.stat()) for folder in folders for f in sorted(folder.glob("*.safetensors"))]
    return [[name, stat.st_size, stat.st_mtime_ns] for name, stat in files]


def _teacher_logits(ctx: _Context, side: _TeacherSide,
                    rows: _TrainingRows) -> tuple[dict[str, torch.Tensor], Path | None]:
    """The teacher's logits on the training and test rows ([teachers, rows, labels] for mtn) and its parameter
    count, and where they are saved: with --resume, those an interrupted distillation of this teacher and these
    rows saved; else computed and saved in the checkpoints until the distillation finishes (for a big teacher
    they are a long pass)."""
    cfg, train, test, pad_id = ctx.cfg, rows.train, rows.test, side.pad_id
    fit_id = ctx.run.step_id("fit")
    teachers = side.teacher_dirs if cfg.method == "mtn" else [side.teacher_dir]
    made_of = {"teacher fit": fit_id, "teacher weights": _weights_stamp(teachers), "domain": cfg.domain,
               "train_fraction": cfg.train_fraction, "max_length": side.max_length, "test rows": len(test)}
    saved = SavedPass(ctx.run.checkpoints / f"{TEACHER_CHECKPOINT}{_checkpoint_suffix(ctx)}", "logits.safetensors",
                      json.dumps([made_of, ctx.dataset.fingerprint()], sort_keys=True),
                      ("teacher and rows", "data fingerprint"), len(train))
    labels = len(ctx.dataset.labels)
    lead = (len(side.teacher_dirs),) if cfg.method == "mtn" else ()
    if ctx.resume and fit_id is not None:
        found, logits = saved.load({"train": (*lead, len(train), labels), "test": (*lead, len(test), labels),
                                    "parameters": (1,)})
        if isinstance(logits, dict):
            ctx.log(f"the teacher's logits from the earlier pass saved in {found}")
            return logits, found
        if found is not None:
            ctx.log(f"the teacher's logits in {found} are not used: {logits}")
    if cfg.method == "mtn":
        every_train, every_test, parameters = [], [], 0
        for folder in side.teacher_dirs:  # one teacher in memory at a time, besides the one kept for `tiny`
            model, heads = ((side.teacher, side.teacher_heads) if folder == side.teacher_dir
                            else _load_teacher(folder, processes.device()))
            every_train.append(teacher_logits_of(model, heads, train, pad_id))
            every_test.append(teacher_logits_of(model, heads, test, pad_id))
            parameters += sum(p.numel() for p in model.parameters())
            del model, heads
        logits = {"train": torch.stack(every_train), "test": torch.stack(every_test)}
    else:  # one pass over both (one ONNX export when it labels them)
        both, how = _label_rows(ctx, side, concat_encoded(train, test), "teacher labels the training and test rows")
        ctx.log(f"the teacher's logits on {len(both):,} training and test rows by {how['with']} "
                f"({how['rows_per_s']:,.1f} rows/s)")
        logits = {"train": both[:len(train)], "test": both[len(train):]}
        parameters = sum(p.numel() for p in side.teacher.parameters())
    logits["parameters"] = torch.tensor([parameters], dtype=torch.int64)
    if fit_id is None:
        return logits, None
    if processes.is_main():
        saved.save(logits)
    return logits, saved.folder


def _build_student_side(ctx: _Context, side: _TeacherSide, rows: _TrainingRows) -> _StudentSide:
    """The student, the rows in its own tokens when it has its own tokenizer, and the modules of stage 1
    (student, domain head, and a projection to the teacher's width when they differ)."""
    cfg, dataset, log, teacher = ctx.cfg, ctx.dataset, ctx.log, side.teacher
    tokenizer, pad_id, max_length = side.tokenizer, side.pad_id, side.max_length
    train, dev, test = rows.train, rows.dev, rows.test
    built = build_student(cfg, teacher, tokenizer, dataset.labels, ctx.warn, side.info.base_model)
    student, how, student_tokens = built.model, built.how, built.own_tokens
    cross = None
    if student_tokens is not None:  # the student reads its own tokens (and ships its tokenizer); see alignment.py
        tokenizer, tokens = student_tokens
        student_train = encode(dataset.train, dataset, tokenizer, max_length).subset(rows.keep)
        cross = CrossTokenizer.build(tokenizer, tokens, student_train, train, pad_id)
        train, pad_id = student_train, cross.pad_id
        dev = encode(dataset.dev, dataset, tokenizer, max_length).subset(rows.dev_all.rows_of(side.domain_id))
        test = encode(dataset.test, dataset, tokenizer, max_length).subset(rows.test_all.rows_of(side.domain_id))
        aligned = cross.summary()
        log(f"cross-tokenizer: the student reads its own tokens; {aligned['aligned']:,} of {aligned['rows']:,} "
            f"training rows align with the teacher's position by position"
            + (" (pairs: the teacher's extra </s> dropped)" if dataset.has_pairs else "")
            + (f", {aligned['not_aligned']:,} do not and learn from the logit terms only" if aligned["not_aligned"]
               else ""))
    check_student_length(max_length, model_max_length(student.config), cfg.max_length is not None, how)
    log(f"student {how}; method {cfg.method}; {len(train):,} training rows"
        + (f" of domain {cfg.domain}" if cfg.domain else ""))
    for p in student.parameters():  # a `tiny` student is cut from the frozen teacher
        p.requires_grad_(True)
    # a cut of this teacher: each student layer to the teacher layer it was cut from; else the uniform map
    mapping = ([0, *built.teacher_layers] if built.teacher_layers is not None
               else layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers))
    attention_weight = attention_weight_for(cfg, teacher.config, student.config)
    if cfg.method not in LOGIT_ONLY and cfg.intermediate_epochs != 0:
        if cfg.attention_weight is None and attention_weight == 0:
            log(f"stage 1 leaves the attention-score term out: the teacher ({teacher.config.model_type}) adds a "
                f"relative position bias to its scores that the student ({student.config.model_type}) cannot "
                "reproduce (--set distill.attention_weight=1 keeps it)")
        if attention_weight > 0:
            check_attention_heads(student, teacher)  # attention scores are compared head by head
    torch.manual_seed(cfg.seed)
    student_head = DomainHead(student.config.hidden_size, len(side.info.domains))
    projection = (
        nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
        if student.config.hidden_size != teacher.config.hidden_size
        else None
    )
    parts = nn.ModuleDict({"student": student, "head": student_head})
    if projection is not None:
        parts["projection"] = projection
    return _StudentSide(student, how, tokenizer, train, dev, test, pad_id, cross, parts, projection, mapping,
                        attention_weight, head_from_teacher=built.teacher_layers is not None,
                        kept_layers=built.kept_layers)


RELATIVE_POSITION_TYPES = ("mpnet", "deberta", "deberta-v2", "t5")  # attention scores carry a learnt position bias


def relative_positions(config) -> bool:
    """Whether a model's attention scores include a relative position bias (MPNet, DeBERTa, T5; a BERT configured
    with relative position embeddings), not only query-key products over absolute-position inputs."""
    return (getattr(config, "model_type", "") in RELATIVE_POSITION_TYPES
            or getattr(config, "position_embedding_type", "absolute") != "absolute")


def attention_weight_for(cfg: DistillConfig, teacher_config, student_config) -> float:
    """Stage 1's attention-score weight: the one given, else 1, or 0 when teacher and student encode positions
    differently: on MPNet -> minilm4 the term was ~95% of stage 1's loss (13.2 against 0.67 for the hidden states),
    the relative position bias the BERT student cannot produce."""
    if cfg.attention_weight is not None:
        return cfg.attention_weight
    return 0.0 if relative_positions(teacher_config) != relative_positions(student_config) else 1.0


@dataclass
class _LossSteps:
    """The batches and loss steps of both stages, and the student's dev accuracy (stage 2's selection)."""

    cfg: DistillConfig
    teacher: nn.Module
    teacher_head: DomainHead
    side: _StudentSide
    lam: torch.Tensor
    targets: torch.Tensor
    transfer: "_TransferSet | None" = None
    stage1: "_Stage1Rows | None" = None  # stage 1 over the training rows and the transfer set (--transfer-stage1)

    def __post_init__(self) -> None:
        """Stage 2's rows, once: the training rows, then the transfer set's; and their soft labels."""
        train, transfer = self.side.train, self.transfer
        self.prediction_encoded, self.prediction_targets = train, self.targets
        if transfer is not None:
            self.prediction_encoded = concat_encoded(train, transfer.student_rows)
            self.prediction_targets = torch.cat([self.targets, transfer.targets])

    @property
    def intermediate_rows(self) -> int:
        return len(self.stage1.lam) if self.stage1 is not None else len(self.side.train)

    @property
    def prediction_rows(self) -> int:
        return len(self.prediction_encoded)

    def make_prediction_batch(self, indices: list[int]) -> dict:
        """A stage-2 batch over the training rows and the transfer set (indices past the training rows), in the
        student's tokens, with which rows have a gold label (``labelled``)."""
        batch = collate(self.prediction_encoded, indices, self.side.pad_id)
        batch["labelled"] = self.labelled(batch["index"])
        return batch

    def labelled(self, index: torch.Tensor) -> torch.Tensor:
        """1 for stage-2 rows with a gold label (the training rows, which come first), 0 for the transfer set's."""
        return (index < len(self.side.train)).float()

    def make_batch(self, indices: list[int]) -> dict:
        """A stage-1 batch: the training rows (then the transfer set's, with --transfer-stage1)."""
        train, pad_id, cross = self.side.train, self.side.pad_id, self.stage1_cross
        if self.stage1 is not None:
            train = self.prediction_encoded
        batch = collate(train, indices, pad_id)
        if cross is not None:  # the teacher's own tokens of these rows, and where they sit in the student's
            batch.update(cross.teacher_batch(indices, batch["input_ids"].shape[1]))
        return batch

    @property
    def stage1_cross(self) -> CrossTokenizer | None:
        return self.stage1.cross if self.stage1 is not None else self.side.cross

    def intermediate_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, teacher, teacher_head = self.cfg, self.teacher, self.teacher_head
        lam = self.stage1.lam if self.stage1 is not None else self.lam
        parts, cross, mapping, projection = self.side.parts, self.stage1_cross, self.side.mapping, self.side.projection
        student_layers = self.side.student.config.num_hidden_layers
        use_gamma = cfg.method == "meta" and cfg.gamma > 0
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        mask = batch["attention_mask"]
        if teacher.device != mask.device:  # the frozen teacher is not accelerate's to move: it follows the batch
            teacher.to(mask.device)
            teacher_head.to(mask.device)
        # pre-softmax attention scores (transformers returns only probabilities), of the mapped layers only
        t_inputs = teacher_inputs(batch) if cross is not None else inputs
        attention_weight = self.side.attention_weight
        use_attention = attention_weight > 0  # at 0 (an ablation, or across position types) no layer is hooked
        with torch.no_grad(), _scores_of(teacher, [m - 1 for m in mapping[1:]], use_attention) as teacher_scores:
            t_out = teacher(**t_inputs, output_hidden_states=True)
        with _scores_of(parts["student"], list(range(student_layers)), use_attention) as student_scores:
            s_out = parts["student"](**inputs, output_hidden_states=True)
        teacher_hidden = [t_out.hidden_states[m] for m in mapping]
        if cross is not None:  # the teacher's positions that hold the student's tokens, in the student's order
            teacher_hidden = [gather_hidden(h, batch["teacher_positions"]) for h in teacher_hidden]
            teacher_scores = [gather_scores(s, batch["teacher_positions"]) for s in teacher_scores]
        hidden = hidden_mse(
            list(s_out.hidden_states), teacher_hidden, mask, parts["projection"] if projection is not None else None
        )
        attention = attention_mse(student_scores, teacher_scores, mask) if use_attention else torch.zeros_like(hidden)
        if cross is not None:  # a row whose tokens do not align has no stage-1 term (it learns from the logits)
            hidden, attention = hidden * batch["aligned"], attention * batch["aligned"]
        per_example = hidden + attention_weight * attention
        terms = {"hidden": hidden.mean(), "attention": attention.mean()}
        if use_gamma:
            with torch.no_grad():
                z_t = teacher_head.features(pool(t_out.hidden_states[-1], t_inputs["attention_mask"], "mean"),
                                            batch["domains"])
            z_s = parts["head"].features(pool(s_out.hidden_states[-1], mask, "mean"), batch["domains"])
            domain = domain_feature_mse(z_s, z_t, parts["projection"] if projection is not None else None)
            if cross is not None:
                domain = domain * batch["aligned"]
            per_example = per_example + cfg.gamma * domain
            terms["domain"] = domain.mean()
        # weight whole examples (each reduced to one number first), then average the batch
        terms["loss"] = example_weighted(per_example, batch_rows(lam, batch["index"]))
        return terms

    def prediction_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, parts = self.cfg, self.side.parts
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        logits = parts["student"](**inputs).logits
        targets = None if cfg.method == "none" else batch_rows(self.prediction_targets, batch["index"])
        loss = prediction_loss(logits, targets, batch["labels"], cfg.temperature, cfg.gold_weight,
                               batch.get("labelled")).mean()
        return {"loss": loss}

    def dev_accuracy(self) -> float:
        dev = self.side.dev
        predictions = _student_predictions(self.side, dev)
        return float((predictions == np.asarray(dev.labels)).mean() * 100)


def _scores_of(model: nn.Module, layers: list[int], wanted: bool):
    """attention_scores(model, layers), or, when the attention term is off, no hooks and an empty list."""
    return attention_scores(model, layers) if wanted else nullcontext([])


SIGNATURE_NAMES = ("settings", "data fingerprint", "teacher mode")


def _signature(ctx: _Context, teacher_mode: str) -> str:
    """What a checkpoint must match to be resumed: the settings, the data and the teacher's mode."""
    settings = {k: v for k, v in asdict(ctx.cfg).items() if k != "label_with"}  # how labels are made, not which
    return json.dumps([settings, ctx.dataset.fingerprint(), teacher_mode], sort_keys=True)


def _checkpoint_suffix(ctx: _Context) -> str:
    """The distilled domain's part of the checkpoint names (escaped), empty for every domain."""
    return f"-{folder_name(ctx.cfg.domain, ctx.dataset.domains)}" if ctx.cfg.domain else ""


def _stage_specs(ctx: _Context, teacher_mode: str, intermediate_lr: float, lr: float) -> dict[str, PhaseSpec]:
    """The stages this distillation runs: stage 1 ("intermediate") unless the method is logit-only or has no
    stage-1 epochs, then stage 2 ("prediction")."""
    cfg, suffix, signature = ctx.cfg, _checkpoint_suffix(ctx), _signature(ctx, teacher_mode)
    specs = {}
    if cfg.method not in LOGIT_ONLY and cfg.intermediate_epochs != 0:
        specs["intermediate"] = PhaseSpec(
            f"distill-intermediate{suffix}", batch_size=cfg.batch_size, lr=intermediate_lr, seed=cfg.seed,
            constant_lr=True, max_grad_norm=1.0, weight_decay=0.0, signature=signature,
            signature_names=SIGNATURE_NAMES, mixed_precision=cfg.mixed_precision,
            **by_dev(cfg.intermediate_epochs, cfg.intermediate_max_epochs, cfg.patience, cfg.eval_every))
    specs["prediction"] = PhaseSpec(f"distill-prediction{suffix}", batch_size=cfg.batch_size, lr=lr, seed=cfg.seed,
                                    weight_decay=0.01, signature=signature, signature_names=SIGNATURE_NAMES,
                                    mixed_precision=cfg.mixed_precision,
                                    **by_dev(cfg.epochs, cfg.max_epochs, cfg.patience, cfg.eval_every))
    return specs


def _run_intermediate(ctx: _Context, spec: PhaseSpec, steps: _LossSteps) -> IntermediateStage:
    """Stage 1: the student's hidden states, attention scores (and, for meta, domain features) to the teacher's.
    A student whose head came from the teacher is scored on dev accuracy as it goes (the best state kept, patience
    applies); a new head cannot be, so that student keeps its last state."""
    scored = steps.dev_accuracy if steps.side.head_from_teacher else None
    phase_steps = PhaseSteps(steps.intermediate_rows, steps.make_batch, steps.intermediate_step, scored)
    phase = run_phase(spec, steps.side.parts, phase_steps, ctx.run.checkpoints, ctx.resume, ctx.progress, ctx.log)
    return IntermediateStage(
        seconds=phase.seconds, examples_per_second=phase.examples_per_second, history=phase.history,
        resumed_from=phase.resumed_from, scored_on_dev=scored is not None, dev_curve=phase.dev_curve,
        best_step=phase.best_step, stopped_early=phase.stopped_early,
        rows={"train": len(steps.side.train), "transfer": steps.intermediate_rows - len(steps.side.train)},
        transfer_lambda=steps.stage1.summary if steps.stage1 is not None else None,
    )


PROJECTION_ROWS = 256  # training rows the projection is fitted on before stage 1 (a seeded sample)


def warm_projection(steps: _LossSteps, seed: int, rows: int = PROJECTION_ROWS) -> dict:
    """Fit the student-to-teacher projection by least squares on the mapped hidden states of a seeded sample of
    training rows, before stage 1 moves the student: a random projection would make the student's layers fit it.
    Returns the sample's hidden-state MSE before and after (metrics' ``projection_warmup``)."""
    side, teacher, projection = steps.side, steps.teacher, steps.side.projection
    order = torch.randperm(len(side.train), generator=torch.Generator().manual_seed(seed)).tolist()[:rows]
    width = side.student.config.hidden_size
    gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
    cross = torch.zeros(width + 1, teacher.config.hidden_size, dtype=torch.float64)
    pairs = []
    side.student.eval()
    device = next(side.student.parameters()).device
    teacher.to(device)  # as the loss step does: the frozen teacher follows the student's batches
    with torch.no_grad():
        for start in range(0, len(order), 32):
            batch = {k: v.to(device) for k, v in steps.make_batch(order[start:start + 32]).items()}
            student_states, teacher_states, mask = _mapped_states(steps, batch)
            student_states, teacher_states = [h.cpu() for h in student_states], [h.cpu() for h in teacher_states]
            mask = mask.cpu()
            pairs.append((student_states, teacher_states, mask))
            for hs, ht in zip(student_states, teacher_states):
                x = torch.cat([hs[mask], torch.ones(int(mask.sum()), 1)], 1).double()
                gram += x.T @ x
                cross += x.T @ ht[mask].double()
        if gram[-1, -1] == 0:  # no aligned token in the sample: nothing to fit on
            return {"rows": len(order), "mse_before": None, "mse_after": None, "skipped": "no aligned token"}
        projection_device = projection.weight.device
        projection.cpu()
        before = _pairs_mse(pairs, projection)
        weight, bias = least_squares_projection(gram, cross)
        projection.weight.copy_(weight.to(projection.weight.dtype))
        projection.bias.copy_(bias.to(projection.bias.dtype))
        after = _pairs_mse(pairs, projection)
        projection.to(projection_device)
    return {"rows": len(order), "mse_before": before, "mse_after": after}


def _mapped_states(steps: _LossSteps, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The student's hidden states and the teacher's at the mapped layers (its positions of the student's tokens
    for a student with its own tokenizer), and the mask of the real tokens of rows that align: [B, L, H] lists."""
    cross, mapping = steps.stage1_cross, steps.side.mapping
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    t_inputs = teacher_inputs(batch) if cross is not None else inputs
    student_states = list(steps.side.student(**inputs, output_hidden_states=True).hidden_states)
    teacher_all = steps.teacher(**t_inputs, output_hidden_states=True).hidden_states
    teacher_states = [teacher_all[m] for m in mapping]
    mask = batch["attention_mask"].bool()
    if cross is not None:
        teacher_states = [gather_hidden(h, batch["teacher_positions"]) for h in teacher_states]
        mask = mask & batch["aligned"].bool().unsqueeze(1)
    return student_states, teacher_states, mask


def _pairs_mse(pairs: list, projection: nn.Module) -> float:
    errors = [((projection(hs[mask]) - ht[mask]) ** 2).mean() for s, t, mask in pairs for hs, ht in zip(s, t)]
    return float(torch.stack(errors).mean())


def _run_intermediate_checked(ctx: _Context, spec: PhaseSpec, steps: _LossSteps) -> IntermediateStage:
    """Stage 1, then stage 2's start: the better on dev of stage 1's result and the student as it began (stage 1
    must do no harm). A student whose classifier came with it from the teacher (a `tiny` cut) is scored by its dev
    accuracy; one with a new head (minilm4, a hub model) by the dev accuracy of a head warmed up on its frozen body
    (_probe_dev), its own head left as it was; one whose head is not BERT-style starts stage 2 from stage 1's
    result, unchecked, as the record says."""
    student = steps.side.student
    warmup = None
    if steps.side.projection is not None:
        warmup = warm_projection(steps, ctx.cfg.seed)
        if warmup["mse_after"] is None:
            ctx.log(f"stage 1's projection is not fitted first: {warmup['skipped']} in {warmup['rows']} training rows")
        else:
            ctx.log(f"stage 1's projection fitted by least squares on {warmup['rows']} training rows: hidden-state "
                    f"MSE {warmup['mse_before']:.4f} -> {warmup['mse_after']:.4f}")
    own_head = steps.side.head_from_teacher
    student.eval()
    initial_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    initial_dev = steps.dev_accuracy() if own_head else _probe_dev(ctx, steps)
    if initial_dev is None:
        return replace(_run_intermediate(ctx, spec, steps), projection_warmup=warmup, start_check={
            "checked": False, "why": "the student's head is new and not a BERT-style pooler and classifier",
            "stage_2_starts_from": "stage 1"})
    stage = _run_intermediate(ctx, spec, steps)
    curve = stage.dev_curve or []  # stage 1 was scored on dev: its kept state's score
    student.eval()
    after_dev = (max(point["dev_score"] for point in curve) if curve else steps.dev_accuracy()) if own_head \
        else _probe_dev(ctx, steps)
    start = "stage 1" if after_dev >= initial_dev else "the initial student"
    if after_dev < initial_dev:
        student.load_state_dict(initial_state)
        ctx.log(f"stage 1 lowered dev accuracy ({initial_dev:.2f} -> {after_dev:.2f}): stage 2 starts from the "
                "student as it began")
    return replace(stage, projection_warmup=warmup, start_check={
        "checked": True, "initial_dev": initial_dev, "after_stage_1_dev": after_dev, "stage_2_starts_from": start,
        **({} if own_head else {"scored_by": "a head warmed up on the frozen body (the labelled training rows)"})})


def _probe_dev(ctx: _Context, steps: _LossSteps) -> float | None:
    """The dev accuracy a head trained on the student's frozen body reaches (metakd_cli.training.head_warmup on the
    [CLS] states of the labelled training rows, stage 2's loss): how a body under a new head is scored before
    stage 2; the student's own head is put back afterwards. None when the head is not a BERT-style pooler and
    classifier."""
    from metakd_cli.training.head_warmup import HEAD_WARMUP_EPOCHS, cls_states, head_parts, warm_head

    cfg, side = ctx.cfg, steps.side
    if (parts := head_parts(side.student)) is None:
        return None
    head = nn.ModuleList(parts)
    kept = {k: v.detach().clone() for k, v in head.state_dict().items()}
    # the training rows come first among stage 2's rows: their indices are the same in both
    record = warm_head(side.student, cls_states(side.student, side.train, side.pad_id), _stage2_loss(ctx, steps),
                       cls_states(side.student, side.dev, side.pad_id), torch.tensor(side.dev.labels),
                       cfg.head_warmup or HEAD_WARMUP_EPOCHS, cfg.seed)
    head.load_state_dict(kept)
    return record["dev_after"]


def _stage2_loss(ctx: _Context, steps: _LossSteps) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Stage 2's per-row loss as a head warm-up takes it: (logits, indices into stage 2's rows) -> loss per row,
    soft labels (none for --method none), and the gold term on the labelled rows."""
    cfg, labels = ctx.cfg, torch.tensor(steps.prediction_encoded.labels)

    def loss_of(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        targets = None if cfg.method == "none" else steps.prediction_targets[index].to(logits.device)
        return prediction_loss(logits, targets, labels[index].to(logits.device), cfg.temperature, cfg.gold_weight,
                               steps.labelled(index).to(logits.device))
    return loss_of


def _warm_head(ctx: _Context, steps: _LossSteps) -> dict | None:
    """Before stage 2, a head that did not come from the teacher is trained alone on the frozen body's [CLS]
    states with stage 2's loss (metakd_cli.training.head_warmup; --head-warmup epochs); None when it is not."""
    from metakd_cli.training.head_warmup import HEAD_WARMUP_EPOCHS, cls_states, head_parts, warm_head

    cfg, side = ctx.cfg, steps.side
    epochs = cfg.head_warmup if cfg.head_warmup is not None else 0 if side.head_from_teacher else HEAD_WARMUP_EPOCHS
    if not epochs:
        return None
    if head_parts(side.student) is None:
        ctx.log("head warm-up left out: the student's head is not a BERT-style pooler and classifier")
        return {"skipped": "not a BERT-style pooler and classifier"}
    record = warm_head(side.student, cls_states(side.student, steps.prediction_encoded, side.pad_id),
                       _stage2_loss(ctx, steps), cls_states(side.student, side.dev, side.pad_id),
                       torch.tensor(side.dev.labels), epochs, cfg.seed)
    ctx.log(f"head warm-up on the frozen body ({record['rows']:,} rows, {epochs} epochs at {record['lr']:g}): dev "
            f"{record['dev_before']:.2f} -> {record['dev_after']:.2f} (epoch {record['best_epoch']} kept)")
    return record


def _run_prediction(ctx: _Context, spec: PhaseSpec, steps: _LossSteps) -> PredictionStage:
    """Stage 2: the student's logits to the teacher's soft labels, selected on dev accuracy."""
    phase_steps = PhaseSteps(steps.prediction_rows, steps.make_prediction_batch, steps.prediction_step,
                             steps.dev_accuracy)
    phase = run_phase(spec, nn.ModuleDict({"student": steps.side.student}), phase_steps, ctx.run.checkpoints,
                      ctx.resume, ctx.progress, ctx.log)
    return PredictionStage(
        seconds=phase.seconds, examples_per_second=phase.examples_per_second, history=phase.history,
        best_epoch=phase.best_epoch, resumed_from=phase.resumed_from, dev_curve=phase.dev_curve,
        best_step=phase.best_step, stopped_early=phase.stopped_early,
    )


def _result(ctx: _Context, teacher: _TeacherSide, student: _StudentSide, cache: _TeacherCache,
            lrs: dict[str, float], stages: dict[str, IntermediateStage | PredictionStage], started: float,
            transfer: dict | None) -> DistillResult:
    """Student vs teacher on the same rows, and how the run went."""
    cfg, info, domains = ctx.cfg, teacher.info, ctx.dataset.domains
    train, dev, test, cross = student.train, student.dev, student.test, student.cross
    teacher_test, lam = cache.teacher_test, cache.lam
    student_dev = _student_predictions(student, dev)
    student_test = _student_predictions(student, test)
    train_rows = {name: train.domains.count(d) for d, name in enumerate(domains) if d in set(train.domains)}
    return DistillResult(
        run_dir=ctx.run.path,
        config=cfg,
        student=student.how,
        student_layers=student.kept_layers,
        teacher_mode=info.mode,
        teachers=[teacher.domain_of[folder] for folder in teacher.teacher_dirs] if cfg.method == "mtn" else None,
        held_out=info.held_out,
        train_rows=train_rows,
        dev_accuracy=per_domain_accuracy(student_dev, dev, domains),
        test_accuracy=per_domain_accuracy(student_test, test, domains),
        teacher_test_accuracy=per_domain_accuracy(teacher_test, test, domains),
        agreement_with_teacher=float((student_test == teacher_test).mean() * 100) if len(test) else None,
        lambda_stats={"mean": float(lam.mean()), "min": float(lam.min()), "max": float(lam.max())},
        alignment=cross.summary() if cross is not None else None,
        teacher_cache_seconds=cache.seconds,
        learning_rates=lrs,
        stages=stages,
        cpu=cpu_info(),
        student_parameters=sum(p.numel() for p in student.student.parameters()),
        teacher_parameters=cache.teacher_parameters,
        seconds=_step_seconds(started, stages),
        command=" ".join(sys.argv),
        processes=processes.world_size(),
        transfer=transfer,
    )


def _student_predictions(student: _StudentSide, encoded: Encoded) -> np.ndarray:
    """The student's labels for ``encoded``; several processes: each its share, gathered in row order."""
    logits = processes.gather_encoded(encoded, lambda part: torch_logits(student.student, part, student.pad_id))
    return logits.argmax(-1)


def _save(ctx: _Context, teacher: _TeacherSide, student: _StudentSide, rows: _TrainingRows, lam: torch.Tensor,
          result: DistillResult, fit_id: str | None) -> DistillResult:
    """Write student/, the metrics, each row's t and lambda, the manifest's step and the model cards (main
    process only), then clear the finished checkpoints; the result with the trimmed student's check, if any."""
    cfg, run, dataset, info, max_length = ctx.cfg, ctx.run, ctx.dataset, teacher.info, teacher.max_length
    with atomic_dir(run.student) as tmp:
        if cfg.trim_vocab:
            result = replace(result, trim=_save_trimmed(student.student, student.tokenizer, dataset, cfg, tmp,
                                                        max_length, ctx.warn))
        else:
            student.student.save_pretrained(tmp, safe_serialization=True)
            student.tokenizer.save_pretrained(tmp)
        (tmp / STUDENT_JSON).write_text(json.dumps(
            {"method": cfg.method, "student": student.how, "student_layers": student.kept_layers,
             "domain": cfg.domain, "labels": dataset.labels,
             "domains": dataset.domains, "max_length": max_length, "teacher_mode": info.mode}, indent=2) + "\n")
    run.write_metrics("distill", result.to_json())
    # each row's t and lambda, for `metakd report`; before the manifest records the step, so a kill in between
    # never pairs the new manifest with the previous distillation's rows
    save_row_weights(run, rows.keep, rows.t, lam, cfg.method)
    run.record_step("distill", {"config": asdict(cfg), "student": str(run.student),
                                "student_layers": student.kept_layers, "held_out": info.held_out,
                                "train_fraction": cfg.train_fraction, "train_rows": result.train_rows,
                                "fit_id": fit_id})
    write_model_cards(run, ctx.log)  # student/README.md from the metrics so far
    for name in (f"distill-{part}{_checkpoint_suffix(ctx)}" for part in ("intermediate", "prediction", "teacher")):
        # this distillation's own (another --domain's stay resumable), and what a kill mid-save left
        for finished in [run.checkpoints / name, *run.checkpoints.glob(f".{name}.old"),
                         *run.checkpoints.glob(f".{name}.*.tmp")]:
            clear_checkpoints(run.checkpoints, finished.name)
    return result


def _save_trimmed(student, tokenizer, dataset: Dataset, cfg: DistillConfig, out: Path, max_length: int,
                  warn: Callable[[str], None]) -> TrimCheck:
    """Save the student with only the word pieces of its training texts (plus --keep-top others), checked as
    `metakd export --trim-vocab` checks it: on every dev row whose pieces were all kept, the trimmed student
    predicts what the untrimmed one does (a failure is said, and recorded in the metrics)."""
    import tempfile

    from metakd_cli.models.loading import load_classifier as load

    domains = [cfg.domain] if cfg.domain else None
    with tempfile.TemporaryDirectory(dir=out.parent) as full:
        student.save_pretrained(full, safe_serialization=True)
        tokenizer.save_pretrained(full)
        report = trim_vocabulary(Path(full), out, training_texts(dataset, domains), cfg.keep_top)
        trimmed_tokenizer = load_tokenizer(str(out))
        dev_examples = dataset.select("dev", domains)
        dev = encode(dev_examples, dataset, trimmed_tokenizer, max_length)
        predictions = torch_logits(load(str(out)), dev, trimmed_tokenizer.pad_token_id or 0).argmax(-1)
        check, _, failures = trim_check(report, Path(full), dev_examples, dataset, trimmed_tokenizer, dev,
                                        predictions, max_length)
    for failure in failures:
        warn(f"--trim-vocab: {failure}")
    return check
