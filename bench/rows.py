"""A results row from a finished run folder's metrics ({step: metrics/<step>.json, eval: its selection's record}):
a teacher's, a shipped student's, a student distilled but not shipped, a --trim-vocab export's, a teacher's ONNX
export's. A system names its reader in its suite file (``reads``); a teacher or a distilled student by default."""

from __future__ import annotations


def models(eval_metrics: dict) -> dict[str, dict]:
    return {m["name"]: m for m in eval_metrics.get("models") or [] if isinstance(m, dict) and "name" in m}


def rounded(value: object, digits: int = 2) -> float | None:
    return round(float(value), digits) if isinstance(value, (int, float)) else None


def accuracy(values: object) -> dict[str, float] | None:
    return {k: rounded(v) for k, v in values.items()} if isinstance(values, dict) and values else None


def of(found: dict[str, dict], name: str, key: str) -> object:
    return (found.get(name) or {}).get(key)


def sizes(export: dict) -> dict[str, float | None]:
    return {name: rounded(size, 1) for name, size in (export.get("size_mb") or {}).items()}


def speed_of(model: dict) -> dict:
    """An eval record's speed of one model: medians over its timing rounds, each with its [fastest, slowest] round
    beside it (None from an eval before rounds)."""
    def spread(values: object, digits: int = 2) -> list[float] | None:
        return [rounded(v, digits) for v in values] if isinstance(values, list) and len(values) == 2 else None
    return {"throughput_rows_per_s": rounded(model.get("throughput"), 1), "latency_ms": rounded(model.get("latency_ms")),
            "size_mb": rounded(model.get("size_mb"), 1), "timed_rows": model.get("timed_rows"),
            "throughput_spread": spread(model.get("throughput_spread"), 1),
            "latency_ms_spread": spread(model.get("latency_ms_spread"))}


def hours(step: dict, parts: object) -> float | None:
    """A step's ``seconds`` in hours when they are its whole time: each training part (fit's teachers, distill's
    stages) records ``resumed_from`` (a metakd that counts a resumed run's earlier training time) and none was
    resumed from a checkpoint that did not record its time. Otherwise None: the seconds may be a last run's alone."""
    parts = list(parts.values() if isinstance(parts, dict) else parts or [])
    whole = bool(parts) and all(isinstance(p, dict) and "resumed_from" in p for p in parts)
    if not whole or any(isinstance(p["resumed_from"], dict) and p["resumed_from"].get("earlier_seconds") is None
                        for p in parts):
        return None
    return rounded(float(step.get("seconds") or 0) / 3600, 1)


def read_teacher(metrics: dict[str, dict]) -> dict:
    fit = metrics["fit"]
    return {"test_accuracy": accuracy(fit.get("test_accuracy")), "dev_accuracy": accuracy(fit.get("dev_accuracy")),
            "fit_hours": hours(fit, fit.get("teachers")), "cpu": fit.get("cpu")}


def read_student(metrics: dict[str, dict]) -> dict:
    found, distill, export = models(metrics["eval"]), metrics["distill"], metrics["export"]
    check = export.get("int8_check") or {}
    teacher, int8 = ((of(found, name, "accuracy") or {}).get("average") for name in ("teacher", "int8"))
    gap = rounded(teacher - int8) if isinstance(teacher, (int, float)) and isinstance(int8, (int, float)) else None
    return {
        "test_accuracy": {name: accuracy(found[name].get("accuracy")) for name in found},
        "teacher_minus_int8": gap,
        "int8_check": {"dev_drop": rounded(check.get("drop")), "attempt": check.get("attempt"), "mode": check.get("mode")},
        "alignment": distill.get("alignment"),
        "parameters": distill.get("parameters"),
        "distill_hours": hours(distill, distill.get("stages")),
        "size_mb": sizes(export),
        "speed": {name: speed_of(model) for name, model in found.items()},
    }


def distilled(distill: dict) -> dict:
    """How distillation went (distill.json): dev accuracy, the student, the rates, the length stage 2 ran (epochs
    begun, kept step, stopped by patience, the dev curve) and stage 1's start check."""
    stages = distill.get("stages") or {}
    stage = stages.get("prediction") or {}
    return {"dev_accuracy": distill.get("dev_accuracy", {}).get("average"), "student": distill.get("student"),
            "learning_rates": distill.get("learning_rates"),
            "stage_2": {"epochs": len(stage.get("history") or []), "best_step": stage.get("best_step"),
                        "stopped_early": stage.get("stopped_early"), "dev_curve": stage.get("dev_curve")},
            "start_check": (stages.get("intermediate") or {}).get("start_check")}


def read_distilled_only(metrics: dict[str, dict]) -> dict:
    """A system distilled but not shipped (its int8 export failed the accuracy gate, or was not run): the fp32
    student's figures from distill.json, marked; it has no int8 rows to pair."""
    distill = metrics["distill"]
    return {"test_accuracy": {"student": {k: round(v, 2) for k, v in distill["test_accuracy"].items()}},
            **distilled(distill),
            "not_shipped": "distilled, but no int8 export: its export failed the int8 accuracy gate or did not run"}


def read_trim(export: dict) -> dict:
    trim = export.get("trim") or {}
    return {"size_mb": sizes(export), "vocab_before": trim.get("vocab_before"), "vocab_after": trim.get("vocab_after"),
            "training_texts": trim.get("texts"), "dev_accuracy": export.get("dev_accuracy")}


READERS = {  # a system's ``reads`` -> its row from its metrics
    "teacher": read_teacher,
    "student": read_student,
    "distilled": lambda metrics: {**read_student(metrics), **distilled(metrics["distill"])},  # shipped, and how
    "trimmed": lambda metrics: {**read_trim(metrics["export"]), "test_accuracy": {
        "int8": accuracy((models(metrics["eval"]).get("int8") or {}).get("accuracy"))}},
    "teacher-onnx": lambda metrics: {"speed": {name: speed_of(m) for name, m in models(metrics["eval"]).items()},
                                     "size_mb": sizes(metrics["export"])},
}
