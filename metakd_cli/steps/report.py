"""`metakd report`: what a run learned and what it costs, gathered into one ReportData for the page
(metakd_cli/ship/report_page.py).

Per domain: accuracy of each model the run holds (teacher, student, ONNX, int8) and its confusion
matrix, both computed now from the models on the chosen split (evaluate.py's loading and batching);
size on disk; latency and throughput when `metakd eval` measured them after the models were made
(speed is never estimated); the transferability score t of every training row (fit stores it with
the teacher) with the 10 most and 10 least transferable rows of each domain; and the weight lambda
distillation gave each row (metrics/distill_rows.safetensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metakd_cli.data.dataset import reload_dataset
from metakd_cli.core.errors import UserError
from metakd_cli.ship.report_page import ModelFigures, ReportData, ScoredRow

REPORT_FILE = "report.html"
EXTREMES = 10  # rows shown per domain at each end of t


@dataclass
class ReportResult:
    path: Path
    data: ReportData


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, n_labels: int) -> list[list[int]]:
    """counts[gold][predicted]."""
    counts = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts.tolist()


def _scores(run) -> np.ndarray | None:
    """Every training row's t as fit stored it (NaN: a row the teacher did not train on), or None."""
    from metakd_cli.models.loading import HEAD_FILE

    path = run.teacher / HEAD_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            if "scores" not in handle.keys():
                return None
            scores = handle.get_tensor("scores")
    except Exception:  # noqa: BLE001 - a damaged head file: fit's own commands name it; here t is left out
        return None
    return scores.astype(np.float64) if scores.size else None


def _transferability(run, dataset, data: ReportData, stale: dict[str, str]) -> None:
    from metakd_cli.training.row_weights import load_row_weights

    scores = _scores(run)
    train = dataset.train
    if scores is not None and len(scores) != len(train):
        data.notes.append("t: the teacher's scores do not match the training rows; left out")
        scores = None
    weights = None if "student" in stale else load_row_weights(run)
    lam_of: dict[int, float] = {}
    if weights is not None:
        data.lam_method = weights.method
        lam_of = dict(zip(weights.train_index.tolist(), weights.lam.tolist()))
        for index, lam in lam_of.items():
            if 0 <= index < len(train):
                data.lam_by_domain.setdefault(train[index].domain, []).append(float(lam))
        data.lam_by_domain = {d: data.lam_by_domain[d] for d in dataset.domains if d in data.lam_by_domain}
    elif "distill" in run.load().steps:
        data.notes.append("lambda: no per-row weights from this run's distillation (distilled by an older metakd, "
                          "or the student is stale); re-run `metakd distill` to chart them")
    if scores is not None and weights is not None and weights.method == "meta":
        # rows the teacher did not train on (a held-out domain) get t at distillation: show those too
        for index, t in zip(weights.train_index.tolist(), weights.t.tolist()):
            if 0 <= index < len(scores) and not np.isfinite(scores[index]):
                scores[index] = t
    if scores is None:
        if "fit" in run.load().steps:
            data.notes.append("t: this teacher has no transferability scores (only `--teacher-mode meta` computes them)")
        return
    for domain in dataset.domains:
        rows = [i for i, ex in enumerate(train) if ex.domain == domain and np.isfinite(scores[i])]
        if not rows:
            continue
        data.t_by_domain[domain] = [float(scores[i]) for i in rows]
        ranked = sorted(rows, key=lambda i: (-scores[i], i))

        def scored(i: int) -> ScoredRow:
            ex = train[i]
            return ScoredRow(ex.text, ex.text_pair, ex.label, float(scores[i]), lam_of.get(i))

        count = min(EXTREMES, len(ranked) // 2) if len(ranked) < 2 * EXTREMES else EXTREMES
        data.most[domain] = [scored(i) for i in ranked[:count]]
        data.least[domain] = [scored(i) for i in reversed(ranked[len(ranked) - count:])]


def _method(method: str | None) -> str | None:
    return "none (no teacher: the student on the gold labels alone)" if method == "none" else method


def _length(record: dict) -> str | None:
    """How long a teacher or stage 2 trained and which state it kept, from its metrics (None before this was
    recorded): "kept step 350 (epoch 2) of 4 epochs begun, stopped by patience; dev scored 40 times"."""
    if not record.get("dev_curve") or record.get("best_step") is None:
        return None
    epochs = len(record.get("history") or [])
    stopped = ", stopped by patience" if record.get("stopped_early") else ""
    return (f"kept step {record['best_step']} (epoch {record.get('best_epoch')}) of {epochs} epochs begun{stopped}; "
            f"dev scored {len(record['dev_curve'])} times")


def build_report(run, split: str = "test", log: Callable[[str], None] = lambda _: None) -> ReportData:
    """Score the run's models on ``split`` and gather t, lambda, sizes and measured speed."""
    from metakd_cli.steps.evaluate import model_logits, run_artifacts, stale_models
    from metakd_cli.ship.model_card import RunFigures
    from metakd_cli.core.run_dir import stale_artifacts

    _, dataset = reload_dataset(run)
    manifest = run.load()
    examples = dataset.select(split)
    available = run_artifacts(run)
    data = ReportData(run_dir=str(run.path), split=split, rows=len(examples), labels=list(dataset.labels),
                      domains=list(dataset.domains), models=[], speed_source=None)
    for reason in dict.fromkeys(stale_models(run).values()):
        data.notes.append(f"not shown: {reason}")
    figures = RunFigures(run)
    data.speed_source = figures.cpu()
    fit_cfg = manifest.steps.get("fit", {}).get("config") or {}
    distill_cfg = manifest.steps.get("distill", {}).get("config") or {}
    data.settings = {k: str(v) for k, v in (
        ("data", manifest.data.get("source") or (manifest.data.get("config") or {}).get("path")),
        ("teacher", fit_cfg.get("teacher")), ("teacher mode", fit_cfg.get("teacher_mode")),
        ("student", distill_cfg.get("student")), ("method", _method(distill_cfg.get("method"))),
        ("teacher's length", _length(((figures.fit.get("teachers") or [{}])[0]))),
        ("student's stage 2", _length((figures.distill.get("stages") or {}).get("prediction") or {}))) if v}
    data.learnt_from, data.learnt_note = learnt_from(figures.distill), learnt_note(figures.distill)
    teacher_predictions = None
    labels = None
    for name in ("teacher", "student", "onnx", "int8"):
        artifact = available.get(name)
        if artifact is None:
            continue
        if artifact.per_domain is not None and set(artifact.per_domain) != set(dataset.domains):
            data.notes.append(f"{name}: single-domain teachers do not cover every domain; not shown")
            continue
        log(f"report: scoring {name} on {len(examples):,} {split} rows")
        logits, encoded, _, _ = model_logits(artifact, examples, dataset, list(dataset.domains))
        predictions = logits.argmax(-1)
        labels = np.asarray(encoded.labels)
        domain_ids = np.asarray(encoded.domains)
        accuracy: dict[str, float] = {}
        confusion: dict[str, list[list[int]]] = {}
        for i, domain in enumerate(dataset.domains):
            mask = domain_ids == i
            if mask.any():
                accuracy[domain] = float((predictions[mask] == labels[mask]).mean() * 100.0)
                confusion[domain] = confusion_matrix(predictions[mask], labels[mask], len(dataset.labels))
        if accuracy:
            accuracy["average"] = float(np.mean(list(accuracy.values())))
        agreement = None
        if name == "teacher":
            teacher_predictions = predictions
        elif teacher_predictions is not None:
            agreement = float((predictions == teacher_predictions).mean() * 100.0)
        speed = figures.speed(name)
        data.models.append(ModelFigures(
            name=name, accuracy=accuracy, agreement=agreement, confusion=confusion,
            size_mb=figures.size_mb(name) if figures.size_mb(name) is not None else artifact.size_mb,
            latency_ms=speed.latency_ms if speed else None, throughput=speed.throughput if speed else None,
            speed=speed))
    if not data.models:
        raise UserError(f"{run.path}: no teacher/, student/ or onnx/ to report on; run `metakd fit` first")
    _transferability(run, dataset, data, stale_artifacts(manifest))
    return data


def learnt_from(distill: dict) -> dict[str, dict[str, int]]:
    """From metrics/distill.json: per domain, the labelled training rows and the rows only the teacher labelled
    (--transfer's, and --augment's by kind); empty before a distillation."""
    labelled = distill.get("train_rows") or {}
    extra = (distill.get("transfer") or {}).get("by_domain_kind") or {}
    return {domain: {"labelled": int(labelled.get(domain, 0)), **extra.get(domain, {})}
            for domain in dict.fromkeys([*labelled, *extra])}


def learnt_note(distill: dict) -> str:
    """How the student learnt each kind of row, from metrics/distill.json."""
    if distill.get("method") == "none":
        return "No teacher (--method none): the gold labels of the labelled rows alone."
    stage_1 = (distill.get("stages") or {}).get("intermediate")
    read = ((stage_1 or {}).get("rows") or {}).get("transfer")
    return ("Stage 2 learnt the teacher's soft labels on every row, the gold label only on the labelled ones"
            + ("" if stage_1 is None else "; stage 1 read the transfer set too" if read
               else "; stage 1 read the labelled rows") + ".")


def write_report(run, output: Path | None = None, split: str = "test",
                 log: Callable[[str], None] = lambda _: None) -> ReportResult:
    """Build the report and write it as one self-contained HTML file (default: the run folder's report.html),
    holding the run folder's lock while it reads the models."""
    from metakd_cli.ship.report_page import render_html
    from metakd_cli.core.run_dir import atomic_write_text

    if split not in ("test", "dev"):
        raise UserError(f"--split must be test or dev, got '{split}'")
    with run.lock("report", log):
        data = build_report(run, split, log)
        path = Path(output) if output is not None else run.path / REPORT_FILE
        if path.is_dir():
            raise UserError(f"--output {path} is a folder; give a file name such as {path / REPORT_FILE}")
        atomic_write_text(path, render_html(data))
    return ReportResult(path=path, data=data)
