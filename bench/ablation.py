"""ablation's table: what each part of Meta-KD buys, from one meta-teacher. Each student row averages its seeds per
domain, with paired tests against full Meta-KD on the same rows and seeds, the distance of its weights from Meta-KD's
and what its run records beside them; the teacher variants against the meta-teacher; the teacher's int8 weight
scales on dev. Every finished run's 0/1 test rows are recorded in the results file ("rows"), so that a run whose
folder is gone (another machine, a cleaned disk) still counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import data_path, recipe, relative_where, shown
from bench.suite import Suite, kept, paired, setup
from metakd_cli.core.run_dir import read_json_object

KEPT = "from the results file: run before the per-row record, its run folders gone; not recomputed"
REFERENCE = "meta"
REFERENCES = {"tinybert-tinybert4-random": "meta-tinybert4-random"}  # compared with the same student by Meta-KD


def _fixed(suite: Suite, system: str) -> list[str]:
    """A system's own overrides, as its row shows them: without the per-run ones and eval's."""
    return [item for item in suite.systems[system].sets if "{" not in item and not item.startswith("eval.")]


def _accuracy(runs: list[list[int]]) -> float:
    """Accuracy (%) of 0/1 rows, averaged over runs (seeds)."""
    return round(100 * sum(sum(run) / len(run) for run in runs) / len(runs), 2)


def _with_average(per_domain: dict[str, float]) -> dict[str, float]:
    return {**per_domain, "average": round(sum(per_domain.values()) / len(per_domain), 2)}


def _bits(correct: list[int]) -> str:
    return "".join(map(str, correct))


def _unbits(bits: str) -> list[int]:
    return [int(c) for c in bits]


def dev_selection(run_dir: Path) -> dict | None:
    """The epoch a teacher's fit kept (the best on dev) and its dev score after each epoch (metrics/fit.json)."""
    teachers = read_json_object(run_dir / "metrics" / "fit.json").get("teachers")
    if not (isinstance(teachers, list) and teachers and isinstance(teachers[0], dict)):
        return None
    history = teachers[0].get("history") or []
    return {"epoch": teachers[0].get("best_epoch"), "dev": [h.get("dev_score") for h in history]}


def teacher_table(suite: Suite, record: dict) -> dict:
    """Each teacher variant's test accuracy per domain over its seeds, and paired tests against the meta-teacher:
    from the run folders, and from the record (``record["teachers"]``) for runs whose folders are gone."""
    correct: dict[str, dict[int, dict[str, list[int]]]] = {}  # teacher -> seed -> domain -> 0/1 per test row
    chosen: dict[str, dict[str, dict]] = {}  # teacher -> seed -> dev_selection, of the finished folders only
    for name, by_seed in (record.get("teachers") or {}).items():
        for seed, by_domain in by_seed.items():
            correct.setdefault(name, {})[int(seed)] = {d: _unbits(bits) for d, bits in by_domain.items()}
    variants = {s.removeprefix("teacher-"): s for s, system in suite.systems.items() if "{seed}" in (system.folder or "")
                and system.steps == ("fit", "eval")}
    for name, system in variants.items():
        for seed in dict.fromkeys([42, 1, 2, *suite.values["seeds"]]):
            rows = suite.scored(system, "teacher", {"seed": seed})
            if rows is None or not suite.finished(system, {"seed": seed}):
                continue
            correct.setdefault(name, {})[seed] = rows.correct
            if found := dev_selection(suite.folder(system, {"seed": seed})):
                chosen.setdefault(name, {})[str(seed)] = found
    results, tests = {}, {}
    for name in (n for n in variants if n in correct):
        runs = dict(sorted(correct[name].items()))
        domains = list(next(iter(runs.values())))
        results[name] = {**_with_average({d: _accuracy([run[d] for run in runs.values()]) for d in domains}),
                         "seeds": sorted(runs), "what": suite.systems[variants[name]].what,
                         "sets": _fixed(suite, variants[name]), "dev_selection": chosen.get(name, {})}
        if name != "meta" and "meta" in correct:
            tests[f"meta vs {name}"] = paired({str(s): run for s, run in correct["meta"].items()},
                                              {str(s): run for s, run in runs.items()}, domains, same_seeds=False)
    rows = {name: {str(s): {d: _bits(v) for d, v in run.items()} for s, run in sorted(runs.items())}
            for name, runs in correct.items()}
    return {"results": results, "tests": tests, "rows": rows}


def int8_table(suite: Suite) -> dict:
    """Dev accuracy of the teacher's int8 weight-scale choices against fp32 ONNX (the choice is made on dev)."""
    out = {}
    for system in (s for s in suite.systems if s.startswith("int8-teacher-")):
        metrics = read_json_object(suite.folder(system) / "metrics" / "export.json")
        check = metrics.get("int8_check") or {}
        if check:
            out[system.removeprefix("int8-teacher-")] = {
                "dev_rows": check.get("rows"), "drop": check.get("drop"), "drop_per_domain": check.get("drop_per_domain"),
                "dev_accuracy": (metrics.get("dev_accuracy") or {}).get("int8"),
                "fp32_dev_accuracy": (metrics.get("dev_accuracy") or {}).get("onnx"), "size_mb": metrics.get("size_mb")}
    return out


def weight_distance(suite: Suite, system: str, seeds: list[int]) -> float | None:
    """How far ``system``'s students sit from full Meta-KD's of the same domain and seed: the mean |w - w_meta|
    over every weight outside the embeddings (which stage 1 and 2 move least), averaged over domains and seeds;
    None when a pair of students is missing or their shapes differ (another student geometry)."""
    from safetensors.numpy import load_file

    distances = []
    for domain in suite.values["domains"]:
        for seed in seeds:
            mine, theirs = (suite.folder(name, {"domain": domain, "seed": seed}) / "student" / "model.safetensors"
                            for name in (system, REFERENCE))
            if not (mine.is_file() and theirs.is_file()):
                return None
            a, b = load_file(str(mine)), load_file(str(theirs))
            keys = [k for k in a if "embeddings" not in k]
            if set(a) != set(b) or any(a[k].shape != b[k].shape for k in keys):
                return None
            distances.append(sum(float(np.abs(a[k] - b[k]).sum()) for k in keys) / sum(a[k].size for k in keys))
    return float(f"{sum(distances) / len(distances):.3g}") if distances else None


def run_facts(run_dir: Path) -> dict:
    """What a finished student's run records beside its test rows: distill minutes; stage 1's first-epoch term
    means (hidden, attention, domain: metrics/distill.json), where recorded; and the spread of its rows' lambda
    (metrics/distill_rows.safetensors), for methods that weight rows."""
    metrics = read_json_object(run_dir / "metrics" / "distill.json")
    out: dict = {"minutes": round(float(metrics.get("seconds", 0)) / 60, 1)}
    history = ((metrics.get("stages") or {}).get("intermediate") or {}).get("history") or []
    if history and history[0].get("train_terms"):
        out["stage1_terms"] = history[0]["train_terms"]
    config = metrics.get("config") or {}
    if config.get("method") == "meta" and config.get("lambda_weights", True):
        from metakd_cli.core.run_dir import RunDir
        from metakd_cli.training.row_weights import load_row_weights

        weights = load_row_weights(RunDir(run_dir))
        if weights is not None:
            lam = np.sort(np.asarray(weights.lam, dtype=np.float64))
            out["lambda"] = {"min": float(lam[0]), "p5": float(np.quantile(lam, 0.05)),
                             "median": float(np.median(lam)), "max": float(lam[-1]),
                             # how near-uniform the weighting is: rows within 10% of the largest weight
                             "share_within_10pct_of_max": float((lam >= 0.9 * lam[-1]).mean())}
    return out


def _mean_facts(runs: list[dict]) -> dict:
    """The runs' stage-1 term means and lambda spreads, averaged key by key over the runs that have them."""
    out = {}
    for key in ("stage1_terms", "lambda"):
        present = [run[key] for run in runs if run.get(key)]
        if present:
            out[key] = {k: float(f"{np.mean([p[k] for p in present if k in p]):.4g}") for k in present[0]}
    return out


def _finished_students(suite: Suite, students: list[str], record: dict) -> tuple[dict, dict, dict, dict]:
    """Every finished student's 0/1 test rows (system -> domain -> seed), what its run records beside them
    (run_facts), each domain's test row places and the teacher's 0/1 rows on them: the record first, then the run
    folders (which win)."""
    correct: dict[str, dict[str, dict[int, list[int]]]] = {}
    facts: dict[str, dict[str, dict[int, dict]]] = {}
    data = data_path(recipe([], suite.recipe))  # a record written where the data sat elsewhere compares too
    where = {d: [relative_where(w, data) for w in places] for d, places in (record.get("where") or {}).items()}
    teacher = {d: _unbits(bits) for d, bits in (record.get("teacher") or {}).items()}
    for system, by_domain in (record.get("students") or {}).items():
        for domain, by_seed in by_domain.items():
            for seed, run in by_seed.items():
                correct.setdefault(system, {}).setdefault(domain, {})[int(seed)] = _unbits(run["correct"])
                facts.setdefault(system, {}).setdefault(domain, {})[int(seed)] = {
                    k: v for k, v in run.items() if k != "correct"}
    for system in students:
        for binding in suite.found(system):
            domain, seed = binding["domain"], binding["seed"]
            student, scored_teacher = (suite.scored(system, model, binding) for model in ("student", "teacher"))
            if student is None or scored_teacher is None or not suite.finished(system, binding):
                continue
            if where.setdefault(domain, student.where[domain]) != student.where[domain]:
                raise SystemExit(f"{suite.folder(system, binding)}: its test rows are not the other runs' rows of "
                                 f"{domain}")
            correct.setdefault(system, {}).setdefault(domain, {})[seed] = student.correct[domain]
            teacher[domain] = scored_teacher.correct[domain]
            facts.setdefault(system, {}).setdefault(domain, {})[seed] = run_facts(suite.folder(system, binding))
    return correct, facts, where, teacher


def table(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    """ablation.json from the run folders as they stand (finished students only) and the record of runs whose
    folders are gone (its "rows"); rows of the results file that predate the record and have no run folder are kept
    as they were, marked "kept"."""
    record = before.get("rows") if isinstance(before.get("rows"), dict) else {}
    students = [s for s, system in suite.systems.items() if "distill" in system.steps]
    domains = suite.values["domains"]
    correct, facts, where, teacher_correct = _finished_students(suite, students, record)
    results = {}
    for system in (s for s in students if s in correct):
        by_domain = correct[system]
        seeds = sorted(set.intersection(*(set(runs) for runs in by_domain.values())))
        found = [d for d in domains if d in by_domain]
        if not seeds or len(found) < len(domains):
            continue  # a row is reported once every domain has at least one common seed
        runs = [facts[system][d][s] for d in found for s in seeds]
        spent = [run["minutes"] for run in runs]
        distance = weight_distance(suite, system, seeds)
        old = (before.get("results") or {}).get(system) or {}
        if distance is None and old.get("seeds") == seeds:
            distance = old.get("weight_distance_to_meta")  # the folders are gone; the seeds are the same
        results[system] = {**_with_average({d: _accuracy([by_domain[d][s] for s in seeds]) for d in found}),
                           "seeds": seeds, "what": suite.systems[system].what, "sets": _fixed(suite, system),
                           "distill_minutes_mean": round(sum(spent) / len(spent), 1),
                           "weight_distance_to_meta": distance, **_mean_facts(runs)}
    tests = {}
    for system in results:
        reference = REFERENCES.get(system, REFERENCE)
        seeds = [s for s in results[system]["seeds"] if s in (results.get(reference) or {}).get("seeds", [])]
        if system != reference and seeds:
            tests[f"{reference} vs {system}"] = paired(*({str(s): {d: correct[name][d][s] for d in domains} for s in seeds}
                                                         for name in (reference, system)), domains)
    for system, row in (before.get("results") or {}).items():
        if system in students and system not in correct:  # measured before the record existed, folders gone
            results[system] = kept(row, KEPT)
            key = f"{REFERENCES.get(system, REFERENCE)} vs {system}"
            if key in (before.get("tests") or {}):
                tests[key] = before["tests"][key]
    results = {s: results[s] for s in students if s in results}
    teacher = {d: _accuracy([v]) for d, v in teacher_correct.items()}
    teacher = _with_average(teacher) if len(teacher) == len(domains) else teacher
    base = suite.folder("teacher-meta", {"seed": 42})
    fit, old_setup = read_json_object(base / "metrics" / "fit.json"), before.get("setup") or {}
    teachers = teacher_table(suite, record)
    for name, row in ((before.get("teachers") or {}).get("results") or {}).items():
        if name not in teachers["results"] and f"teacher-{name}" in suite.systems:  # kept, not recomputed
            teachers["results"][name] = kept(row, KEPT)
        elif name in teachers["results"]:  # a seed whose folder is gone keeps the epoch its fit chose
            now = teachers["results"][name]
            now["dev_selection"] = {**{seed: v for seed, v in (row.get("dev_selection") or {}).items()
                                       if int(seed) in now["seeds"]}, **now["dev_selection"]}
    return {
        "setup": {**setup(suite, extra), "teacher": {"run": shown(base), "config": fit.get("config") or (
                      old_setup.get("teacher") or {}).get("config"), "test_accuracy": teacher},
                  "cpu": fit.get("cpu") or old_setup.get("cpu"),
                  "minutes": "distill wall-clock on a 2-core machine shared with other work (not a speed figure)"},
        "results": results,
        "tests": tests,
        "teachers": {"results": teachers["results"], "tests": teachers["tests"]},
        "int8_weight_scales": int8_table(suite) or before.get("int8_weight_scales") or {},
        "rows": {"where": where, "teacher": {d: _bits(v) for d, v in teacher_correct.items()},
                 "students": {system: {d: {str(s): {"correct": _bits(v), **facts[system][d][s]}
                                           for s, v in sorted(by_seed.items())} for d, by_seed in by_domain.items()}
                              for system, by_domain in correct.items()},
                 "teachers": teachers["rows"]},
    }
