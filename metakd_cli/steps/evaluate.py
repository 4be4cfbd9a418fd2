"""Per-domain metrics for any artifact of a run, PyTorch or ONNX, through the same batching
(``metakd_cli.models.inference``).

``evaluate_run`` is `metakd eval`: accuracy and
macro-F1 per domain, agreement with the teacher, latency at batch 1, throughput at batch 32
and size on disk of each model in the run folder (teacher/, student/, onnx/onnx/model.onnx,
onnx/onnx/model_quantized.onnx; in an export from before that layout, onnx/model.onnx and
onnx/model_quantized.onnx). The models are timed together in interleaved rounds (``metakd_cli.core.timing``):
each figure is a median over rounds with its fastest and slowest round, and the speed-ups over the teacher
come from the medians of the same rounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metakd_cli.data.dataset import reload_dataset
from metakd_cli.core.config import EvalConfig, choice
from metakd_cli.core.cpu import cpu_info, target_mismatch
from metakd_cli.data.rows import Dataset, Example
from metakd_cli.data.encode import Encoded, encode
from metakd_cli.core.errors import UserError
from metakd_cli.models.inference import (
    EXPORT_JSON,
    INT8_FILE,
    ONNX_FILE,
    batched_logits,
    make_batch,
    onnx_forward,
    onnx_model_path,
    onnx_session,
    size_mb,
    torch_forward,
    weights_size_mb,
)
from metakd_cli.core.run_dir import domain_paths, folder_name, read_json_object
from metakd_cli.data.metrics import accuracy, macro_f1
from metakd_cli.core.timing import Spread, Steadiness, measured_steadiness, per_round, time_rounds, why_unsteady


# --------------------------------------------------------------------------- metakd eval

MODEL_NAMES = ("teacher", "student", "onnx", "int8")
EVAL_SPLITS = ("test", "dev")


@dataclass
class Artifact:
    """One model of the run folder that eval can score."""

    name: str  # teacher | student | onnx | int8
    kind: str  # torch | onnx
    path: Path  # a save_pretrained folder or an .onnx file
    tokenizer_dir: Path
    max_length: int
    per_domain: dict[str, Path] | None = None  # single-mode teacher: one folder per domain

    @property
    def size_mb(self) -> float:
        return weights_size_mb(self.path) if self.kind == "torch" else size_mb(*onnx_files(self.path))


@dataclass
class ModelReport:
    name: str
    path: str
    size_mb: float
    accuracy: dict[str, float]  # per domain, plus "average" over domains
    macro_f1: dict[str, float]
    agreement: dict[str, float] | None  # % rows where it predicts what the teacher predicts; None: no teacher
    latency_ms: float  # ms per row at batch 1: the median over the timing rounds
    throughput: float  # rows/s at batch `batch_size`: the median over the timing rounds
    timed_rows: dict[str, int]  # rows timed at each batch size, all rounds together
    latency_ms_spread: list[float] = field(default_factory=list)  # [fastest, slowest] round's ms per row
    throughput_spread: list[float] = field(default_factory=list)  # [lowest, highest] round's rows/s
    # from the medians of the same rounds: {"batch_1": teacher's ms / this ms, "batch_N": this rows/s / teacher's};
    # None when the teacher was not timed with it
    speedup_vs_teacher: dict[str, float] | None = None


@dataclass
class EvalResult:
    split: str
    domains: list[str]
    rows: int
    threads: dict[str, object]
    models: list[ModelReport]
    metrics_path: Path
    cpu: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    bucketing: bool = True  # length-sorted, dynamically padded batches (else input order, padded to max_length)
    held_out: str | None = None  # the domain the teacher never saw (fit --hold-out)
    timing: Steadiness | None = None  # the timing rounds: how many, the load average, and why unsteady (if so)
    student_method: str | None = None  # how the run's student was distilled ("none": no teacher, gold labels alone)

    def to_json(self) -> dict:
        out = asdict(self)
        out["metrics_path"] = str(self.metrics_path)
        return out


def onnx_files(path: Path) -> list[Path]:
    """An .onnx file and its external-data file, when it has one."""
    return [p for p in (path, path.with_name(path.name + "_data"), path.with_suffix(".onnx_data")) if p.is_file()]


def stale_models(run) -> dict[str, str]:
    """{"student" / "onnx" / "int8": why} for models on disk that an earlier fit / distill made (run_dir's
    stale_artifacts): left out of run_artifacts."""
    from metakd_cli.core.run_dir import stale_artifacts

    stale = stale_artifacts(run.load()) if run.exists() else {}
    return {name: stale[part] for name, part in (("student", "student"), ("onnx", "onnx"), ("int8", "onnx"))
            if part in stale and (run.student / "config.json" if part == "student" else run.onnx).exists()}


def run_artifacts(run) -> dict[str, Artifact]:
    """The teacher / student / onnx / int8 models present in a run folder, by name (not the stale ones)."""
    from metakd_cli.models.heads import TeacherInfo

    stale = stale_models(run)
    found: dict[str, Artifact] = {}
    teacher_max = 128
    if (run.teacher / "metakd.json").is_file():
        info = TeacherInfo.load(run.teacher)
        teacher_max = info.max_length
        if info.mode == "single":
            folders = {d: path for d, path in domain_paths(run.teacher, info.domains).items()
                       if (path / "config.json").is_file()}
            if folders:
                first = next(iter(folders.values()))
                found["teacher"] = Artifact("teacher", "torch", run.teacher, first, info.max_length, folders)
        elif (run.teacher / "config.json").is_file():
            found["teacher"] = Artifact("teacher", "torch", run.teacher, run.teacher, info.max_length)
    student_max = teacher_max
    if (run.student / "config.json").is_file():
        student_max = int(read_json_object(run.student / "metakd_student.json").get("max_length") or teacher_max)
        if "student" not in stale:
            found["student"] = Artifact("student", "torch", run.student, run.student, student_max)
    exported = read_json_object(run.onnx / EXPORT_JSON)
    onnx_max = int(exported.get("max_length") or student_max)
    for name, file in (("onnx", ONNX_FILE), ("int8", INT8_FILE)):
        path = onnx_model_path(run.onnx, file)
        if path.is_file() and name not in stale:
            found[name] = Artifact(name, "onnx", path, run.onnx, onnx_max)
    return found


def exported_target(run) -> str | None:
    """The int8 format (--target) the run's int8 ONNX file was made for: from the metakd_export.json
    beside it, else from the manifest's export step."""
    target = read_json_object(run.onnx / EXPORT_JSON).get("target")
    if target is None and run.manifest_path.is_file():
        target = run.load().steps.get("export", {}).get("target")
    return target


def load_forward(artifact: Artifact, folder: Path | None = None) -> Callable[[dict], np.ndarray]:
    """Load one model (``folder`` picks a single-mode teacher's domain) as a batch -> logits function."""
    if artifact.kind == "onnx":
        return onnx_forward(onnx_session(artifact.path))
    from metakd_cli.models.loading import load_classifier
    from metakd_cli.models.heads import load_domain_classifiers, mtl_forward

    path = Path(folder or artifact.path)
    if artifact.name == "teacher" and (path / "metakd.json").is_file():
        heads = load_domain_classifiers(path)
        if heads is not None:  # an mtl teacher: each row through its own domain's head
            return mtl_forward(load_classifier(str(path)), heads)
    return torch_forward(load_classifier(str(path)))


@dataclass
class Timed:
    """One model as eval times it: its forward on its own encoded rows."""

    forward: Callable[[dict], np.ndarray]
    encoded: Encoded
    pad_id: int
    max_length: int


@dataclass
class Speed:
    """One model's speed over the rounds: ms per row at batch 1 and rows/s at batch ``batch_size``."""

    latency_ms: Spread
    throughput: Spread
    timed_rows: dict[str, int]  # all rounds together


def _spaced(n: int, k: int) -> list[int]:
    """``k`` row indices spread evenly over ``n`` rows (all of them when k >= n)."""
    k = min(n, k)
    return [i * n // k for i in range(k)]


def _round_calls(model: Timed, cfg: EvalConfig) -> tuple[Callable[[], None], Callable[[], None], int, int]:
    """One round's work for a model: (its batch-1 call, its batched call, rows of each). The same rows every round,
    so that rounds differ only by what else the machine does; without ``cfg.bucketing`` every row, at batch 1 too,
    is padded to the model's max_length."""
    encoded, pad_id = model.encoded, model.pad_id
    length = None if cfg.bucketing else model.max_length
    single = _spaced(len(encoded), per_round(cfg.latency_rows, cfg.rounds))
    batched = encoded.subset(_spaced(len(encoded), per_round(cfg.throughput_batches, cfg.rounds) * cfg.batch_size))

    def batch_1() -> None:
        for i in single:
            model.forward(make_batch(encoded, [i], pad_id, length))

    def batch_n() -> None:
        batched_logits(batched, pad_id, cfg.batch_size, model.forward, cfg.bucketing, model.max_length)

    return batch_1, batch_n, len(single), len(batched)


def time_models(models: dict[str, Timed], cfg: EvalConfig,
                clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, Speed], Steadiness]:
    """Every model's speed from ``cfg.rounds`` interleaved rounds (each round: every model's batch-1 rows, then its
    batches, model after model), and how steady the rounds were."""
    big = f"batch_{cfg.batch_size}"
    calls: dict[tuple[str, str], Callable[[], None]] = {}
    rows: dict[tuple[str, str], int] = {}
    for name, model in models.items():
        calls[name, "batch_1"], calls[name, big], rows[name, "batch_1"], rows[name, big] = _round_calls(model, cfg)
    seconds = time_rounds(calls, cfg.rounds, clock=clock)
    speeds = {name: Speed(
        latency_ms=Spread.of([s / rows[name, "batch_1"] * 1000.0 for s in seconds[name, "batch_1"]]),
        throughput=Spread.of([rows[name, big] / max(s, 1e-12) for s in seconds[name, big]]),
        timed_rows={batch: rows[name, batch] * cfg.rounds for batch in ("batch_1", big)},
    ) for name in models}
    labelled = {f"{name} at {batch.replace('_', ' ')}": s for (name, batch), s in seconds.items()}
    return speeds, measured_steadiness(labelled)


def _speedup(speed: Speed, teacher: Speed | None, big: str) -> dict[str, float] | None:
    """How many times faster than the teacher, from the medians of the same rounds."""
    if teacher is None:
        return None
    return {"batch_1": teacher.latency_ms.median / speed.latency_ms.median,
            big: speed.throughput.median / teacher.throughput.median}


def model_logits(
    artifact: Artifact, examples, dataset, domains: list[str], bucketing: bool = True
) -> tuple[np.ndarray, Encoded, int, Callable[[dict], np.ndarray]]:
    """Logits of ``artifact`` on ``examples`` (each domain's rows by its own teacher when single-mode)."""
    from metakd_cli.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(artifact.tokenizer_dir))
    pad_id = tokenizer.pad_token_id or 0
    encoded = encode(examples, dataset, tokenizer, artifact.max_length)
    if artifact.per_domain is None:
        forward = load_forward(artifact)
        logits = batched_logits(encoded, pad_id, 64, forward, bucketing, artifact.max_length)
        return logits, encoded, pad_id, forward
    logits: np.ndarray | None = None
    timing_forward = None
    for name in domains:
        rows = encoded.rows_of(dataset.domain_id(name))
        if not rows:
            continue
        if name not in artifact.per_domain:
            raise UserError(
                f"{artifact.path}: no teacher for domain '{name}' (expected {artifact.path / folder_name(name, dataset.domains)}); "
                "leave it out with --domain, or give --model student"
            )
        forward = load_forward(artifact, artifact.per_domain[name])
        timing_forward = timing_forward or forward
        part = batched_logits(encoded.subset(rows), pad_id, 64, forward, bucketing, artifact.max_length)
        if logits is None:
            logits = np.zeros((len(encoded), part.shape[-1]), dtype=np.float32)
        logits[rows] = part
    if logits is None:
        logits = np.zeros((0, len(dataset.labels)), dtype=np.float32)
    return logits, encoded, pad_id, timing_forward


def _per_domain(encoded: Encoded, domains: list[str], score: Callable[[np.ndarray], float],
                rows: np.ndarray | None = None) -> dict[str, float]:
    """``score(mask)`` for each domain present in ``encoded`` (among ``rows``, a boolean mask, when given), plus
    their ``average``."""
    domain_ids = np.asarray(encoded.domains)
    out: dict[str, float] = {}
    for i, name in enumerate(domains):
        mask = domain_ids == i
        if rows is not None:
            mask &= rows
        if mask.any():
            out[name] = score(mask)
    if out:
        out["average"] = float(np.mean(list(out.values())))
    return out


def validate(cfg: EvalConfig) -> None:
    """The settings eval can check without a run folder (`metakd run` checks them before fitting)."""
    choice(cfg.split, EVAL_SPLITS, "--split")
    for name in cfg.models or ["all"]:
        choice(name, ("all", *MODEL_NAMES), "--model")
    for name in ("latency_rows", "throughput_batches", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"eval.{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.rounds < 1:
        raise UserError(f"--rounds (eval.rounds) must be at least 1, got {cfg.rounds}: the number of timing "
                        "rounds, whose median is reported")


def evaluate_run(
    cfg: EvalConfig, run, log: Callable[[str], None] = lambda _: None
) -> EvalResult:
    """Score the run's models on one split: accuracy, macro-F1, agreement, speed, size.

    ``bucketing=False`` scores and times every model on input-order batches padded to its
    max_length instead of length-sorted, dynamically padded ones (same predictions, other speed).
    Writes ``metrics/eval.json`` and returns the same numbers. Holds the run folder's lock.
    """
    validate(cfg)
    with run.lock("eval", log):
        return _evaluate_run(cfg, run, log)


def _evaluate_run(cfg: EvalConfig, run, log: Callable[[str], None]) -> EvalResult:
    _, dataset = reload_dataset(run)
    rows = _select_rows(cfg, dataset)
    available = run_artifacts(run)
    names = _choose_models(cfg, run, available, log)
    log(f"eval on {len(rows.examples):,} {cfg.split} rows of {', '.join(rows.domains)}: {', '.join(names)}")
    _teacher_reference(rows, cfg, available.get("teacher"), names, log)
    names = [n for n in names if n != "teacher" or rows.teacher_logits is not None]
    scored: dict[str, _Scored] = {}
    for name in names:
        log(f"{name}: {available[name].path}")
        scored[name] = _score_model(available[name], rows, cfg)
    log(f"timing {', '.join(names)} in {cfg.rounds} interleaved rounds")
    speeds, steadiness = time_models({name: s.timed for name, s in scored.items()}, cfg)
    if steadiness.unsteady:
        log(f"speed figures unsteady: {why_unsteady(steadiness.why)}. The medians of {cfg.rounds} rounds are shown; "
            "ratios between models hold better than absolute times. Rerun on a quieter machine or with more --rounds")
    reports = [_model_report(s, speeds[name], speeds.get("teacher"), cfg) for name, s in scored.items()]
    result = _eval_result(cfg, run, rows, names, reports, steadiness)
    predicted = {name: s.labelled for name, s in scored.items()}  # each model's label per row: predictions.json
    _write_records(cfg, run, result, rows, predicted, log)
    return result


@dataclass
class _Rows:
    """What every model is scored on: the split's rows of the chosen domains, and the teacher's answers on them.

    Single-mode teachers of a fit --hold-out run have no teacher for the held-out domain (``uncovered``): the
    teacher is scored (and is the agreement reference) on the ``covered`` rows only.
    """

    dataset: Dataset
    domains: list[str]
    examples: list[Example]
    uncovered: list[str] = field(default_factory=list)
    covered: np.ndarray | None = None  # one bool per row: the teacher can score it
    teacher_logits: tuple | None = None  # model_logits of the teacher on the covered rows
    teacher_predictions: np.ndarray | None = None  # the teacher's label per row, -1 on uncovered rows


def _select_rows(cfg: EvalConfig, dataset: Dataset) -> _Rows:
    """The ``cfg.split`` rows of the ``cfg.domains`` (all by default), in the dataset's domain order."""
    domains = dataset.check_domains(cfg.domains, "--domain") if cfg.domains else list(dataset.domains)
    domains = sorted(set(domains), key=dataset.domains.index)
    examples = dataset.select(cfg.split, domains)
    if not examples:
        raise UserError(f"the {cfg.split} split has no rows for {', '.join(domains)}")
    return _Rows(dataset, domains, examples)


def _choose_models(cfg: EvalConfig, run, available: dict[str, Artifact], log: Callable[[str], None]) -> list[str]:
    """The models to score, in MODEL_NAMES order: those asked for (each must be on disk and current), or with
    ``all`` every current one (the stale ones are logged)."""
    wanted = list(dict.fromkeys(cfg.models or ["all"]))
    stale = stale_models(run)
    if "all" in wanted:
        names = [n for n in MODEL_NAMES if n in available]
        for reason in dict.fromkeys(stale.values()):
            log(f"not scored: {reason}")
        if not names:
            raise UserError(f"{run.path}: no teacher/, student/ or onnx/ to evaluate; run `metakd fit` first")
        return names
    names = [n for n in MODEL_NAMES if n in wanted]
    for name in names:
        if name in stale:
            raise UserError(f"{run.path}: {stale[name]}")
        if name not in available:
            hint = {"teacher": "metakd fit", "student": "metakd distill", "onnx": "metakd export",
                    "int8": "metakd export --int8"}[name]
            raise UserError(f"{run.path}: no {name} model in this run folder; run `{hint}` first")
    return names


def _teacher_reference(rows: _Rows, cfg: EvalConfig, teacher: Artifact | None, names: list[str],
                       log: Callable[[str], None]) -> None:
    """Fill ``rows``' teacher part: which rows the teacher covers, and its logits and labels on them."""
    examples, domains = rows.examples, rows.domains
    rows.uncovered = [d for d in domains if teacher is not None and teacher.per_domain is not None
                      and d not in teacher.per_domain]
    rows.covered = np.asarray([ex.domain not in rows.uncovered for ex in examples], dtype=bool)
    covered = rows.covered
    if rows.uncovered and "teacher" in names:
        missing = f"no single teacher for {', '.join(rows.uncovered)} (held out at fit)"
        if not covered.any() and "teacher" in cfg.models:  # asked for by name, with nothing it can score
            raise UserError(f"{teacher.path}: {missing}; give --model student, or add a --domain it was fitted on")
        log(f"teacher: {missing}; " + ("scored on the other domains only" if covered.any() else "not scored"))
    if teacher is not None and covered.any():  # the reference for agreement, even when not evaluated itself
        kept = [ex for ex, keep in zip(examples, covered) if keep]
        rows.teacher_logits = model_logits(teacher, kept, rows.dataset, domains, cfg.bucketing)
        rows.teacher_predictions = np.full(len(examples), -1)
        rows.teacher_predictions[covered] = rows.teacher_logits[0].argmax(-1)


@dataclass
class _Scored:
    """A model's scores on the rows, its label for each row (None where it scored none), and what timing needs."""

    artifact: Artifact
    accuracy: dict[str, float]
    macro_f1: dict[str, float]
    agreement: dict[str, float] | None
    labelled: list
    timed: Timed


def _score_model(artifact: Artifact, rows: _Rows, cfg: EvalConfig) -> _Scored:
    """One model's scores on ``rows``, and its label for each row (None where it scored none)."""
    name, dataset, covered = artifact.name, rows.dataset, rows.covered
    partial = name == "teacher" and bool(rows.uncovered)  # scored on the covered rows only
    if name == "teacher":
        logits, encoded, pad_id, forward = rows.teacher_logits
    else:
        logits, encoded, pad_id, forward = model_logits(artifact, rows.examples, dataset, rows.domains,
                                                        cfg.bucketing)
    predictions = logits.argmax(-1)
    if partial:  # null for the rows it did not score
        rows_of = iter(predictions.tolist())
        labelled = [dataset.labels[next(rows_of)] if keep else None for keep in covered]
    else:
        labelled = [dataset.labels[i] for i in predictions.tolist()]
    labels = np.asarray(encoded.labels)
    accuracy_by = _per_domain(encoded, dataset.domains, lambda m: accuracy(predictions[m], labels[m]))
    f1_by = _per_domain(encoded, dataset.domains, lambda m: macro_f1(predictions[m], labels[m], len(dataset.labels)))
    if partial:  # an average over fewer domains than the other models' is no peer
        accuracy_by.pop("average", None)
        f1_by.pop("average", None)
    agreement = None
    teacher_predictions = rows.teacher_predictions
    if teacher_predictions is not None and name != "teacher":
        agreement = _per_domain(encoded, dataset.domains,
                                lambda m: float((predictions[m] == teacher_predictions[m]).mean() * 100.0), covered)
        agreement["all"] = float((predictions[covered] == teacher_predictions[covered]).mean() * 100.0)
    elif name == "teacher":  # the reference agrees with itself
        agreement = {k: 100.0 for k in [*accuracy_by, "all"]}
    return _Scored(artifact, accuracy_by, f1_by, agreement, labelled,
                   Timed(forward, encoded, pad_id, artifact.max_length))


def _model_report(scored: _Scored, speed: Speed, teacher: Speed | None, cfg: EvalConfig) -> ModelReport:
    artifact = scored.artifact
    return ModelReport(
        name=artifact.name, path=str(artifact.path), size_mb=artifact.size_mb, accuracy=scored.accuracy,
        macro_f1=scored.macro_f1, agreement=scored.agreement, latency_ms=speed.latency_ms.median,
        throughput=speed.throughput.median, timed_rows=speed.timed_rows, latency_ms_spread=speed.latency_ms.range(),
        throughput_spread=speed.throughput.range(),
        speedup_vs_teacher=_speedup(speed, teacher, f"batch_{cfg.batch_size}"),
    )


def _eval_result(cfg: EvalConfig, run, rows: _Rows, names: list[str], reports: list[ModelReport],
                 timing: Steadiness) -> EvalResult:
    """The reports with what they were measured on: the split's rows, threads, CPU, the timing rounds (and a warning
    when the int8 file was made for another CPU)."""
    import torch

    threads = {"torch": torch.get_num_threads(), "onnxruntime": "default (one per physical core)",
               "cpus": os.cpu_count()}
    cpu = cpu_info()
    warnings = []
    if "int8" in names:
        mismatch = target_mismatch(exported_target(run), cpu)
        if mismatch:
            warnings.append(mismatch)
    return EvalResult(split=cfg.split, domains=rows.domains, rows=len(rows.examples), threads=threads,
                      models=reports, metrics_path=run.metrics / "eval.json", cpu=cpu.to_json(), warnings=warnings,
                      bucketing=cfg.bucketing, held_out=run.load().steps["fit"].get("held_out"), timing=timing,
                      student_method=read_json_object(run.student / "metakd_student.json").get("method")
                      if any(name != "teacher" for name in names) else None)


def _write_records(cfg: EvalConfig, run, result: EvalResult, rows: _Rows, predicted: dict[str, list],
                   log: Callable[[str], None]) -> None:
    """metrics/eval.json (with the other selections' records), metrics/predictions.json and the model cards."""
    record = {"step": "eval", **result.to_json(), "config": asdict(cfg)}
    run.write_metrics("eval", with_selections(record, previous_eval(run.metrics / "eval.json")))
    _write_predictions(run, selection_key(record), cfg.split, rows.domains, rows.examples, predicted)
    from metakd_cli.ship.model_card import write_model_cards  # the cards get eval's test figures, sizes and speed
    write_model_cards(run, log)


def _write_predictions(run, key: str, split: str, domains: list[str], examples: list, predicted: dict) -> None:
    """metrics/predictions.json: per selection (as eval.json's ``selections``), each row's place in the data
    (``where``: file:line), domain, gold label and every scored model's label, so that two systems can be compared
    row by row (a paired test) without loading their models again. Other selections' entries are kept."""
    path = run.metrics / "predictions.json"
    kept = read_json_object(path) or {}
    kept[key] = {"split": split, "domains": domains, "where": [ex.where for ex in examples],
                 "domain": [ex.domain for ex in examples], "label": [ex.label for ex in examples],
                 "models": predicted}
    run.write_metrics("predictions", kept)


def selection_key(record: dict) -> str:
    """Which models, domains and split an eval record scored, as a key of eval.json's ``selections``:
    ``split=test domains=all models=all``, ``split=dev domains=kitchen models=student,int8`` ...
    A model name metakd does not know (an older or edited file) sorts after the known ones."""
    config = record.get("config") or {}
    order = ("all", *MODEL_NAMES)
    domains = ",".join(map(str, record.get("domains") or [])) if config.get("domains") else "all"
    names = {str(name) for name in config.get("models") or ["all"]}
    models = ",".join(sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name)))
    key = f"split={record.get('split')} domains={domains} models={models}"
    return key if record.get("bucketing", True) else f"{key} no-bucketing"


def previous_eval(path: Path) -> dict:
    """eval.json as it stands, before eval rewrites it: a record written before records carried ``written`` gets
    the file's time now, since the rewrite refreshes that time (model_card judges each record by its ``written``)."""
    from datetime import datetime, timezone

    previous = read_json_object(path)
    if not previous:
        return {}
    written = datetime.fromtimestamp(int(path.stat().st_mtime), timezone.utc).isoformat(timespec="seconds")
    out = {"written": written, **previous}
    if isinstance(out.get("selections"), dict):
        out["selections"] = {key: {"written": written, **entry} if isinstance(entry, dict) else entry
                             for key, entry in out["selections"].items()}
    return out


def with_selections(record: dict, previous: object) -> dict:
    """eval.json: the latest record at the top level (as before), and under ``selections`` the latest record
    of every selection of models, domains and split, so `eval --domain kitchen` keeps the all-domain record.
    A file from before ``selections`` existed keeps its one record there too; one that is not a JSON object
    (eval.json is metakd's own output: damaged) is replaced. ``record`` gets its ``written`` time (UTC), which
    says whether it scored the models on disk now (model_card)."""
    from datetime import datetime, timezone

    record = {**record, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    previous = previous if isinstance(previous, dict) else {}
    kept = previous.get("selections")
    selections = {key: entry for key, entry in (kept.items() if isinstance(kept, dict) else ())
                  if isinstance(entry, dict)}
    if previous.get("step") == "eval" and "selections" not in previous and "models" in previous:
        selections[selection_key(previous)] = previous
    selections[selection_key(record)] = record
    return {**record, "selections": selections}
