"""`metakd distill`: meta-distillation (Meta-KD Sec. 3.3) and the TinyBERT-KD / KD / MTN-KD baselines.

Stage 1 (intermediate), per example x with weight lambda(x):
    lambda(x) * [ sum_j MSE(W h_s^j, h_t^m(j)) + sum_j MSE(A_s^j, A_t^m(j)) + gamma * MSE(z_t, W z_s) ]
    lambda(x) = (1 + t(x)) / (exp((1 - p_t(gold | x))^2) + 1)      (meta)
    lambda = 1 and no gamma term                                     (tinybert)
Stage 2 (prediction): soft cross-entropy to the teacher's soft labels softmax(z_t / T).
``kd`` runs stage 2 only. The teacher is frozen, in eval mode; its logits, p_t(gold) and
lambda are computed once per run. An mtl teacher's logits for a row come from the head of
the row's own domain.

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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metakd_cli.config import DataConfig, DistillConfig, FitConfig, choice
from metakd_cli.cpu import cpu_info
from metakd_cli.data import Dataset, Encoded, collate, encode, fraction_indices, load_dataset
from metakd_cli.errors import UserError
from metakd_cli.evaluate import batched_logits, per_domain_accuracy, torch_logits
from metakd_cli.losses import (
    attention_mse,
    domain_feature_mse,
    example_weighted,
    expertise_weight,
    hidden_mse,
    multi_teacher_targets,
    soft_target_cross_entropy,
    soft_targets,
)
from metakd_cli.models import (
    DomainClassifiers,
    DomainHead,
    TeacherInfo,
    cut_layers,
    layer_map,
    load_classifier,
    load_encoder,
    load_head,
    load_tokenizer,
    model_max_length,
    mtl_forward,
    position_limit,
    resolve_model,
)
from metakd_cli.prototypes import compute_prototypes, pool, transferability
from metakd_cli.run_dir import RunDir, atomic_dir
from metakd_cli.training import PhaseSpec, clear_checkpoints, run_phase
from metakd_cli.vocab import check_trim_options

METHODS = ("meta", "tinybert", "kd", "mtn")
LOGIT_ONLY = ("kd", "mtn")  # methods without the intermediate stage
PRESETS = ("tiny", "tinybert4")
STUDENT_JSON = "metakd_student.json"
TINYBERT4 = dict(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class DistillResult:
    run_dir: Path
    metrics: dict
    seconds: float


PRETRAINED_LRS = (5e-5, 3e-5)  # (stage 1, stage 2): DESIGN.md's defaults for a pretrained student
RANDOM_INIT_LRS = (5e-4, 3e-4)  # ten times those: at 3e-5 a student from random weights stayed at chance


def learning_rates(cfg: DistillConfig) -> tuple[float, float]:
    """(stage 1, stage 2) learning rates: the ones given, else the defaults for how the student starts."""
    random_init = cfg.student == "tinybert4" and cfg.student_init == "random"
    stage1, stage2 = RANDOM_INIT_LRS if random_init else PRETRAINED_LRS
    return (cfg.intermediate_lr if cfg.intermediate_lr is not None else stage1,
            cfg.lr if cfg.lr is not None else stage2)


def validate(cfg: DistillConfig) -> None:
    choice(cfg.method, METHODS, "--method")
    for flag, value in (("--lr", cfg.lr), ("--intermediate-lr", cfg.intermediate_lr)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.intermediate_epochs < 0:
        raise UserError(f"--intermediate-epochs must be 0 or more, got {cfg.intermediate_epochs}")
    if cfg.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {cfg.temperature}")
    if not 0 < cfg.train_fraction <= 1:
        raise UserError(f"--train-fraction must be above 0 and at most 1, got {cfg.train_fraction}")
    if cfg.max_length is not None and cfg.max_length < 1:  # 0 would silently mean "the teacher's"
        raise UserError(f"--max-length must be at least 1, got {cfg.max_length}")
    check_trim_options(cfg.trim_vocab, cfg.keep_top)


def reload_dataset(run: RunDir) -> tuple[DataConfig, Dataset]:
    """The fit step's dataset, checked against the fingerprint recorded in the manifest."""
    manifest = run.load()
    if "fit" not in manifest.steps or not manifest.data:
        raise UserError(f"{run.path}: no `fit` step recorded yet; run `metakd fit DATA` first")
    data_cfg = DataConfig(**manifest.data["config"])
    dataset = load_dataset(data_cfg)
    if dataset.fingerprint() != manifest.data["fingerprint"]:
        raise UserError(
            f"the data at {data_cfg.path} changed since `metakd fit` (fingerprint differs); re-run fit"
        )
    return data_cfg, dataset


def build_student(cfg: DistillConfig, teacher, teacher_tokenizer, labels: list[str], warn) -> tuple[nn.Module, str]:
    """The student and a one-line description of how it was initialised."""
    if cfg.student == "tiny":
        student, kept = cut_layers(teacher, 4)
        return student, f"tiny: the teacher's embeddings, layers {kept} and classifier"
    if cfg.student == "tinybert4":
        if cfg.student_init is None:
            raise UserError(
                "--student tinybert4 needs --student-init: a general-distilled 4L-312 checkpoint (folder or hub id, "
                "e.g. huawei-noah/TinyBERT_General_4L_312D online) or `random`"
            )
        if cfg.student_init == "random":
            from transformers import BertConfig, BertForSequenceClassification

            warn(
                "tinybert4 from random weights: a student without general distillation is much weaker; "
                "prefer --student-init with a general-distilled checkpoint"
            )
            config = BertConfig(
                vocab_size=teacher.config.vocab_size,
                max_position_embeddings=teacher.config.max_position_embeddings,
                type_vocab_size=teacher.config.type_vocab_size,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                attn_implementation="eager",
                **TINYBERT4,
            )
            torch.manual_seed(cfg.seed)
            return BertForSequenceClassification(config), "tinybert4 (4L-312) from random weights"
        name = resolve_model(cfg.student_init)
    else:
        name = resolve_model(cfg.student)
    student_tokenizer = load_tokenizer(name, cfg.trust_remote_code)
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UserError(
            f"student {name} has a different tokenizer vocabulary than the teacher; distillation needs the same "
            "word pieces (pick a student built on the teacher's tokenizer)"
        )
    student = load_classifier(name, labels, "eager", cfg.trust_remote_code)
    return student, f"{cfg.student} from {name}"


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
    if cfg.method == "mtn":
        folders = {d: run.teacher / d for d in info.domains if (run.teacher / d / "config.json").is_file()}
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
    if not (run.teacher / name / "config.json").is_file():
        raise UserError(
            f"no single-domain teacher for '{name}': {run.teacher / name} is missing; distil from another domain's "
            "teacher with --teacher-domain, or from all of them with --method mtn"
        )
    return run.teacher / name, [run.teacher / name]


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


def _load_teacher(folder: Path):
    """A frozen teacher in eval mode (eager attention, for the attention maps) and its mtl heads, if any."""
    teacher = load_classifier(str(folder), None, "eager")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from metakd_cli.models import load_domain_classifiers

    heads = load_domain_classifiers(folder)
    return teacher, heads


def teacher_logits_of(teacher, heads: DomainClassifiers | None, encoded: Encoded, pad_id: int) -> torch.Tensor:
    """The teacher's logits [N, C]; an mtl teacher's through each row's own domain head."""
    if heads is not None:
        return torch.from_numpy(batched_logits(encoded, pad_id, 64, mtl_forward(teacher, heads)))
    return torch.from_numpy(torch_logits(teacher, encoded, pad_id))


def missing_scores(rows: Encoded, run: RunDir, prototypes: torch.Tensor, n_labels: int, pad_id: int) -> torch.Tensor:
    """t for training rows the teacher did not train on, as the module docstring says: [N].

    ``prototypes``: the fit step's [D, C, H] ([D, 1, H] for domain prototypes), zero for a
    domain (or class) it never saw.
    """
    fit_step = run.load().steps["fit"]
    known = FitConfig.__dataclass_fields__
    fit_cfg = FitConfig(**{k: v for k, v in fit_step["config"].items() if k in known})
    encoder = load_encoder(fit_step["model_path"], fit_cfg.trust_remote_code)
    from metakd_cli.fit import encode_representations

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
    """Distil the run's teacher into a student and write student/, metrics and the manifest."""
    validate(cfg)
    started = time.perf_counter()
    _, dataset = reload_dataset(run)
    info = TeacherInfo.load(run.teacher)
    domain_id = None
    if cfg.domain is not None:
        dataset.check_domains([cfg.domain], "--domain")
        domain_id = dataset.domain_id(cfg.domain)
    teacher_dir, teacher_dirs = _teacher_folders(run, info, cfg)
    if cfg.method == "mtn":
        log(f"mtn: learning from the teachers of {', '.join(d.name for d in teacher_dirs)}; the student's "
            f"tokenizer and {cfg.student} layers come from {teacher_dir.name}'s")
    tokenizer = load_tokenizer(str(teacher_dir))
    pad_id = tokenizer.pad_token_id or 0
    max_length = cfg.max_length or info.max_length
    # as fit checks it: past the position embeddings a long row crashes the teacher mid-run, and
    # metakd_student.json would hand export / eval a length no model here can take
    check_teacher_length(max_length, position_limit(str(teacher_dir)), info.base_model)
    teacher, teacher_heads = _load_teacher(teacher_dir)
    teacher_head, extra = load_head(teacher_dir, teacher.config.hidden_size, len(info.domains))
    teacher_head.eval()
    for p in teacher_head.parameters():
        p.requires_grad_(False)

    full_train = encode(dataset.train, dataset, tokenizer, max_length)
    in_fraction = set(fraction_indices(dataset.train, cfg.train_fraction, dataset.split_seed))
    keep = [i for i in full_train.rows_of(domain_id) if i in in_fraction]
    train = full_train.subset(keep)
    dev_all = encode(dataset.dev, dataset, tokenizer, max_length)
    dev = dev_all.subset(dev_all.rows_of(domain_id))
    test_all = encode(dataset.test, dataset, tokenizer, max_length)
    test = test_all.subset(test_all.rows_of(domain_id))
    scores = extra.get("scores")
    if info.mode == "meta" and scores is not None and len(scores) == len(full_train):
        t = scores[keep].float()
        missing = torch.isnan(t).nonzero().flatten().tolist()
        if missing and cfg.method == "meta":
            log(f"t for {len(missing):,} rows the teacher did not train on, from the pretrained encoder")
            t[missing] = missing_scores(train.subset(missing), run, extra["prototypes"], len(dataset.labels), pad_id)
    else:
        t = torch.ones(len(train))  # mix / mtl / single teachers: every example equally transferable

    # cached once: the teacher's logits on the training rows (and test rows, for the metrics),
    # its soft labels, p_t(gold) and lambda
    cache_started = time.perf_counter()
    if cfg.method == "mtn":
        every_train, every_test, teacher_parameters = [], [], 0
        for folder in teacher_dirs:  # one teacher in memory at a time, besides the one kept for `tiny`
            model, heads = (teacher, teacher_heads) if folder == teacher_dir else _load_teacher(folder)
            every_train.append(teacher_logits_of(model, heads, train, pad_id))
            every_test.append(teacher_logits_of(model, heads, test, pad_id))
            teacher_parameters += sum(p.numel() for p in model.parameters())
            del model, heads
        targets = multi_teacher_targets(torch.stack(every_train), cfg.temperature)
        probabilities = multi_teacher_targets(torch.stack(every_train))
        teacher_test = multi_teacher_targets(torch.stack(every_test)).argmax(-1).numpy()
    else:
        teacher_logits = teacher_logits_of(teacher, teacher_heads, train, pad_id)
        targets = soft_targets(teacher_logits, cfg.temperature)
        probabilities = teacher_logits.softmax(-1)
        teacher_test = teacher_logits_of(teacher, teacher_heads, test, pad_id).argmax(-1).numpy()
        teacher_parameters = sum(p.numel() for p in teacher.parameters())
    p_gold = probabilities[torch.arange(len(train)), torch.tensor(train.labels, dtype=torch.long)]
    lam = expertise_weight(t, p_gold) if cfg.method == "meta" else torch.ones(len(train))
    cache_seconds = time.perf_counter() - cache_started

    student, how = build_student(cfg, teacher, tokenizer, dataset.labels, warn)
    check_student_length(max_length, model_max_length(student.config), cfg.max_length is not None, how)
    log(f"student {how}; method {cfg.method}; {len(train):,} training rows"
        + (f" of domain {cfg.domain}" if cfg.domain else ""))
    for p in student.parameters():  # a `tiny` student is cut from the frozen teacher
        p.requires_grad_(True)
    teacher_layers = teacher.config.num_hidden_layers
    student_layers = student.config.num_hidden_layers
    mapping = layer_map(student_layers, teacher_layers)
    torch.manual_seed(cfg.seed)
    student_head = DomainHead(student.config.hidden_size, len(info.domains))
    projection = (
        nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
        if student.config.hidden_size != teacher.config.hidden_size
        else None
    )
    parts = nn.ModuleDict({"student": student, "head": student_head})
    if projection is not None:
        parts["projection"] = projection
    use_gamma = cfg.method == "meta" and cfg.gamma > 0

    def make_batch(indices: list[int]) -> dict:
        return collate(train, indices, pad_id)

    def intermediate_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        mask = batch["attention_mask"]
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
        s_out = parts["student"](**inputs, output_hidden_states=True, output_attentions=True)
        hidden = hidden_mse(
            list(s_out.hidden_states), [t_out.hidden_states[m] for m in mapping], mask, parts["projection"] if projection is not None else None
        )
        attention = attention_mse(list(s_out.attentions), [t_out.attentions[m - 1] for m in mapping[1:]], mask)
        per_example = hidden + attention
        terms = {"hidden": hidden.mean(), "attention": attention.mean()}
        if use_gamma:
            with torch.no_grad():
                z_t = teacher_head.features(pool(t_out.hidden_states[-1], mask, "mean"), batch["domains"])
            z_s = parts["head"].features(pool(s_out.hidden_states[-1], mask, "mean"), batch["domains"])
            domain = domain_feature_mse(z_s, z_t, parts["projection"] if projection is not None else None)
            per_example = per_example + cfg.gamma * domain
            terms["domain"] = domain.mean()
        # weight whole examples (each reduced to one number first), then average the batch
        terms["loss"] = example_weighted(per_example, lam[batch["index"]])
        return terms

    def prediction_step(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        logits = parts["student"](**inputs).logits
        loss = soft_target_cross_entropy(logits, targets[batch["index"]], cfg.temperature).mean()
        return {"loss": loss}

    def dev_accuracy() -> float:
        predictions = torch_logits(student, dev, pad_id).argmax(-1)
        return float((predictions == np.asarray(dev.labels)).mean() * 100)

    signature = json.dumps([asdict(cfg), dataset.fingerprint(), info.mode], sort_keys=True)
    signature_names = ("settings", "data fingerprint", "teacher mode")
    intermediate_lr, lr = learning_rates(cfg)
    stages = {}
    suffix = f"-{cfg.domain}" if cfg.domain else ""
    if cfg.method not in LOGIT_ONLY and cfg.intermediate_epochs > 0:
        spec = PhaseSpec(f"distill-intermediate{suffix}", cfg.intermediate_epochs, cfg.batch_size, intermediate_lr,
                         cfg.seed, constant_lr=True, max_grad_norm=1.0, weight_decay=0.0, signature=signature,
                         signature_names=signature_names)
        phase = run_phase(spec, parts, len(train), make_batch, intermediate_step, None, run.checkpoints,
                          resume, progress, log)
        stages["intermediate"] = {"seconds": phase.seconds, "examples_per_second": phase.examples_per_second,
                                  "history": phase.history}
    spec = PhaseSpec(f"distill-prediction{suffix}", cfg.epochs, cfg.batch_size, lr, cfg.seed, weight_decay=0.01,
                     signature=signature, signature_names=signature_names)
    phase = run_phase(spec, nn.ModuleDict({"student": student}), len(train), make_batch, prediction_step, dev_accuracy,
                      run.checkpoints, resume, progress, log)
    stages["prediction"] = {"seconds": phase.seconds, "examples_per_second": phase.examples_per_second,
                            "history": phase.history, "best_epoch": phase.best_epoch}

    # metrics: student vs teacher on the same rows
    domains = dataset.domains
    student_dev = torch_logits(student, dev, pad_id).argmax(-1)
    student_test = torch_logits(student, test, pad_id).argmax(-1)
    train_rows = {name: train.domains.count(d) for d, name in enumerate(domains) if d in set(train.domains)}
    metrics = {
        "step": "distill",
        "method": cfg.method,
        "student": how,
        "domain": cfg.domain,
        "teacher_mode": info.mode,
        "teachers": [folder.name for folder in teacher_dirs] if cfg.method == "mtn" else None,
        "held_out": info.held_out,
        "train_fraction": cfg.train_fraction,
        "train_rows": train_rows,
        "dev_accuracy": per_domain_accuracy(student_dev, dev, domains),
        "test_accuracy": per_domain_accuracy(student_test, test, domains),
        "teacher_test_accuracy": per_domain_accuracy(teacher_test, test, domains),
        "test_agreement_with_teacher": float((student_test == teacher_test).mean() * 100) if len(test) else None,
        "lambda": {"mean": float(lam.mean()), "min": float(lam.min()), "max": float(lam.max())},
        "teacher_cache_seconds": cache_seconds,
        "learning_rates": {"intermediate": intermediate_lr, "prediction": lr},
        "stages": stages,
        "cpu": cpu_info().to_json(),
        "parameters": {"student": sum(p.numel() for p in student.parameters()),
                       "teacher": teacher_parameters},  # mtn: all teachers together
        "seconds": time.perf_counter() - started,
        "config": asdict(cfg),
        "command": " ".join(__import__("sys").argv),
    }
    with atomic_dir(run.student) as tmp:
        if cfg.trim_vocab:
            metrics["trim"] = _save_trimmed(student, tokenizer, dataset, cfg, tmp, max_length)
        else:
            student.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        (tmp / STUDENT_JSON).write_text(json.dumps(
            {"method": cfg.method, "student": how, "domain": cfg.domain, "labels": dataset.labels,
             "domains": dataset.domains, "max_length": max_length, "teacher_mode": info.mode}, indent=2) + "\n")
    run.write_metrics("distill", metrics)
    run.record_step("distill", {"config": asdict(cfg), "student": str(run.student), "held_out": info.held_out,
                                "train_fraction": cfg.train_fraction, "train_rows": train_rows,
                                "fit_id": run.step_id("fit")})
    for finished in run.checkpoints.glob(f"distill-*{suffix}"):
        clear_checkpoints(run.checkpoints, finished.name)
    metrics["seconds"] = time.perf_counter() - started
    return DistillResult(run_dir=run.path, metrics=metrics, seconds=metrics["seconds"])


def _save_trimmed(student, tokenizer, dataset: Dataset, cfg: DistillConfig, out: Path, max_length: int) -> dict:
    """Save the student with only the word pieces of its training texts (plus --keep-top others),
    and score the trimmed model on the test rows it was distilled for."""
    import tempfile

    from metakd_cli.models import load_classifier as load
    from metakd_cli.vocab import trim_vocabulary

    domains = [cfg.domain] if cfg.domain else None
    texts = [t for ex in dataset.select("train", domains) for t in (ex.text, ex.text_pair) if t]
    with tempfile.TemporaryDirectory(dir=out.parent) as full:
        student.save_pretrained(full, safe_serialization=True)
        tokenizer.save_pretrained(full)
        report = trim_vocabulary(Path(full), out, texts, cfg.keep_top)
    trimmed_tokenizer = load_tokenizer(str(out))
    test = encode(dataset.select("test", domains), dataset, trimmed_tokenizer, max_length)
    predictions = torch_logits(load(str(out)), test, trimmed_tokenizer.pad_token_id or 0).argmax(-1)
    return {**report.to_json(), "test_accuracy_trimmed": per_domain_accuracy(predictions, test, dataset.domains)}
