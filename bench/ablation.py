"""Issue 25's ablation on Amazon: what each part of Meta-KD buys, from one meta-teacher.

    python -m bench.ablation run [--systems meta tinybert ...] [--seeds 42 1 2] [--domains books electronics]
    python -m bench.ablation teachers [--teachers meta mix meta-none meta-reversal] [--seeds 42 1 2]
    python -m bench.ablation int8       # the meta-teacher's static int8, per-channel vs per-tensor, on dev
    python -m bench.ablation table

Every system is bench/recipes/ablation.yaml plus the --set overrides in SYSTEMS, run by
`metakd run` in its own run folder, bench/runs/ablation/<system>/<domain>-s<seed>, which
starts as a copy of the teacher's folder (hard links for the weights), so `metakd run` finds
the fit finished and skips it. Students are per domain (the paper's setting) on two domains
fixed before any student ran, books and electronics (one media domain, one product domain),
to fit the issue's CPU budget. `run` continues interrupted steps (--resume) and skips
finished ones; after each folder it rewrites the table. `table` reads the run folders only:
each student's test rows from metrics/predictions.json (written by `metakd eval`), its
minutes from metrics/distill.json, and paired tests of every system against full Meta-KD on
the same rows and seeds. `teachers` fits the teacher variants (TEACHERS) the same way, each
scored by `metakd eval` on every domain's test rows, with paired tests against the meta-teacher.
Results: bench/results/ablation.json. Not part of CI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import RESULTS, RUNS as BENCH_RUNS, ROOT, data_missing, data_path, done, metakd_run, recipe
from bench.common import relative_where, scored_rows, selection, shown, start_from
from bench.stats import compare
from metakd_cli.run_dir import atomic_write_json, read_json_object

RECIPE = ROOT / "bench" / "recipes" / "ablation.yaml"
RUNS = BENCH_RUNS / "ablation"
TEACHER = RUNS / "teacher-meta"
KEPT = "from the results file: run before the per-row record, its run folders gone; not recomputed"
OUT = RESULTS / "ablation.json"
DOMAINS = ("books", "electronics")
REFERENCE = "meta"

# name -> (--set overrides on the recipe, what the row measures)
SYSTEMS: dict[str, tuple[list[str], str]] = {
    "meta": ([], "full Meta-KD: lambda-weighted hidden + attention + domain features, 2 stage-1 epochs"),
    "tinybert": (["distill.method=tinybert"], "TinyBERT-KD: lambda = 1, no domain-feature term"),
    "kd": (["distill.method=kd", "distill.intermediate_epochs=0"], "stage 2 only (logit KD)"),
    "lambda=1": (["distill.lambda_weights=false"], "Meta-KD with every row's weight 1"),
    "no-domain-term": (["distill.gamma=0"], "Meta-KD without the domain-feature term"),
    "no-attention": (["distill.attention_weight=0"], "Meta-KD without the attention-score term"),
    "meta-s1-5": (["distill.intermediate_epochs=5"], "full Meta-KD, 5 stage-1 epochs"),
    "meta-s1-10": (["distill.intermediate_epochs=10"], "full Meta-KD, 10 stage-1 epochs (the official count)"),
    "meta-tinybert4-random": (["distill.student=tinybert4", "distill.student_init=random"],
                              "Meta-KD into a randomly initialised 4L-312 student"),
    "tinybert-tinybert4-random": (["distill.student=tinybert4", "distill.student_init=random",
                                   "distill.method=tinybert"], "TinyBERT-KD into a randomly initialised 4L-312 student"),
}
# what each random-init row is compared with (the same student from the same weights by Meta-KD)
REFERENCES = {"tinybert-tinybert4-random": "meta-tinybert4-random"}
# teachers: name -> --set overrides on the recipe's fit (meta, domain confusion, is the recipe itself)
TEACHERS: dict[str, tuple[list[str], str]] = {
    "meta": ([], "meta-teacher, domain confusion (shuffled domain labels)"),
    "meta-none": (["fit.domain_loss=none"], "meta-teacher without a domain loss"),
    "meta-reversal": (["fit.domain_loss=reversal"], "meta-teacher, gradient reversal (DANN schedule)"),
    "mix": (["fit.teacher_mode=mix"], "one teacher on the union of the domains, every row weight 1"),
}


def teacher_folder(name: str, seed: int) -> Path:
    """The teacher every student starts from is meta at seed 42 (TEACHER); the others sit beside it."""
    return TEACHER if (name, seed) == ("meta", 42) else RUNS / f"teacher-{name}-s{seed}"


def teacher_sets(name: str, seed: int) -> list[str]:
    return [*TEACHERS[name][0], f"fit.seed={seed}", "eval.models=teacher", "eval.domains=null"]


def run_teacher(name: str, seed: int) -> bool:
    run_dir, sets = teacher_folder(name, seed), teacher_sets(name, seed)
    config = recipe(sets, RECIPE)
    if done(run_dir, config, "fit,eval", selection(config)):
        return False
    metakd_run(run_dir, sets, "fit,eval", RECIPE)
    return True


def _accuracy(runs: list[list[int]]) -> float:
    """Accuracy (%) of 0/1 rows, averaged over runs (seeds)."""
    return round(100 * sum(sum(run) / len(run) for run in runs) / len(runs), 2)


def _with_average(per_domain: dict[str, float]) -> dict[str, float]:
    return {**per_domain, "average": round(sum(per_domain.values()) / len(per_domain), 2)}


def _bits(correct: list[int]) -> str:
    return "".join(map(str, correct))


def _unbits(bits: str) -> list[int]:
    return [int(c) for c in bits]


def record() -> dict:
    """The per-row record in the results file as it stands ("rows": every finished run's 0/1 test rows, by
    system, domain and seed): a run whose folder is gone (another machine, a cleaned disk) still counts."""
    rows = read_json_object(OUT).get("rows")
    return rows if isinstance(rows, dict) else {}


def dev_selection(run_dir: Path) -> dict | None:
    """The epoch a teacher's fit kept (the best on dev) and its dev score after each epoch, from
    metrics/fit.json; None without one."""
    teachers = read_json_object(run_dir / "metrics" / "fit.json").get("teachers")
    if not (isinstance(teachers, list) and teachers and isinstance(teachers[0], dict)):
        return None
    history = teachers[0].get("history") or []
    return {"epoch": teachers[0].get("best_epoch"), "dev": [h.get("dev_score") for h in history]}


def teacher_table(kept: dict | None = None) -> dict:
    """Each teacher's test accuracy per domain over its seeds, and paired tests against the meta-teacher: from
    the run folders, and from the record (``kept["teachers"]``) for runs whose folders are gone."""
    correct: dict[str, dict[int, dict[str, list[int]]]] = {}  # teacher -> seed -> domain -> 0/1 per test row
    chosen: dict[str, dict[str, dict]] = {}  # teacher -> seed -> dev_selection, of the finished folders only
    for name, by_seed in ((kept or {}).get("teachers") or {}).items():
        for seed, by_domain in by_seed.items():
            correct.setdefault(name, {})[int(seed)] = {d: _unbits(bits) for d, bits in by_domain.items()}
    for name in TEACHERS:
        for seed in (42, 1, 2):
            config = recipe(teacher_sets(name, seed), RECIPE)
            rows = scored_rows(teacher_folder(name, seed), config, "teacher")
            if rows is None or not done(teacher_folder(name, seed), config, "fit,eval", selection(config)):
                continue
            correct.setdefault(name, {})[seed] = rows.correct
            if found := dev_selection(teacher_folder(name, seed)):
                chosen.setdefault(name, {})[str(seed)] = found
    results, tests = {}, {}
    for name in (n for n in TEACHERS if n in correct):
        runs = dict(sorted(correct[name].items()))
        domains = list(next(iter(runs.values())))
        results[name] = {**_with_average({d: _accuracy([run[d] for run in runs.values()]) for d in domains}),
                         "seeds": sorted(runs), "what": TEACHERS[name][1], "sets": TEACHERS[name][0],
                         "dev_selection": chosen.get(name, {})}
        if name != "meta" and "meta" in correct:
            def flat(by_seed: dict[int, dict[str, list[int]]]) -> dict[str, list[int]]:
                return {str(s): sum((run[d] for d in domains), []) for s, run in by_seed.items()}

            strata = [d for d in domains for _ in runs[next(iter(runs))][d]]
            tests[f"meta vs {name}"] = compare(flat(correct["meta"]), flat(runs), strata)
    rows = {name: {str(s): {d: _bits(v) for d, v in run.items()} for s, run in sorted(runs.items())}
            for name, runs in correct.items()}
    return {"results": results, "tests": tests, "rows": rows}


INT8_SCALES = {"per-channel": "export.per_channel=true", "per-tensor": "export.per_channel=false"}


def run_int8(scales: str) -> bool:
    """The meta-teacher exported to static int8 with one weight scale per output column or per matrix, scored
    on every domain's dev rows by export's own check (max_drop 100: no fallback to another attempt)."""
    run_dir = RUNS / f"int8-teacher-{scales}"
    sets = ["export.model=teacher", "export.int8=true", "export.max_drop=100", INT8_SCALES[scales]]
    if done(run_dir, recipe(sets, RECIPE), "fit,export"):
        return False
    start_from(TEACHER, run_dir)
    metakd_run(run_dir, sets, "fit,export", RECIPE)
    return True


def int8_table() -> dict:
    """Dev accuracy of the two int8 weight-scale choices against fp32 ONNX (the choice is made on dev)."""
    out = {}
    for scales in INT8_SCALES:
        metrics = read_json_object(RUNS / f"int8-teacher-{scales}" / "metrics" / "export.json")
        check = metrics.get("int8_check") or {}
        if not check:
            continue
        out[scales] = {"dev_rows": check.get("rows"), "drop": check.get("drop"),
                       "drop_per_domain": check.get("drop_per_domain"),
                       "dev_accuracy": (metrics.get("dev_accuracy") or {}).get("int8"),
                       "fp32_dev_accuracy": (metrics.get("dev_accuracy") or {}).get("onnx"),
                       "size_mb": metrics.get("size_mb")}
    return out


def folder(system: str, domain: str, seed: int) -> Path:
    return RUNS / system.replace("=", "") / f"{domain}-s{seed}"


def student_sets(system: str, domain: str, seed: int) -> list[str]:
    return [*SYSTEMS[system][0], f"distill.domain={domain}", f"distill.seed={seed}", f"eval.domains={domain}"]


def run_one(system: str, domain: str, seed: int) -> bool:
    """One student: a copy of the teacher's folder, then `metakd run` (fit skipped, distill, eval)."""
    run_dir, sets = folder(system, domain, seed), student_sets(system, domain, seed)
    config = recipe(sets, RECIPE)
    if done(run_dir, config, "fit,distill,eval", selection(config)):
        return False
    start_from(TEACHER, run_dir)
    metakd_run(run_dir, sets, "fit,distill,eval", RECIPE)
    return True


def weight_distance(system: str, seeds: list[int]) -> float | None:
    """How far ``system``'s students sit from full Meta-KD's of the same domain and seed: the mean |w - w_meta|
    over every weight outside the embeddings (which stage 1 and 2 move least), averaged over domains and seeds;
    None when a pair of students is missing or their shapes differ (another student geometry)."""
    from safetensors.numpy import load_file

    distances = []
    for domain in DOMAINS:
        for seed in seeds:
            mine, theirs = (folder(name, domain, seed) / "student" / "model.safetensors" for name in (system, REFERENCE))
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
        from metakd_cli.run_dir import RunDir
        from metakd_cli.row_weights import load_row_weights

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


def _finished_students(kept: dict) -> tuple[dict, dict, dict, dict]:
    """Every finished student's 0/1 test rows (system -> domain -> seed), what its run records beside them
    (run_facts), each domain's test row ids and the teacher's 0/1 rows on them: the record first, then the run
    folders (which win)."""
    correct: dict[str, dict[str, dict[int, list[int]]]] = {}
    facts: dict[str, dict[str, dict[int, dict]]] = {}
    data = data_path(recipe([], RECIPE))  # a record written where the data sat elsewhere (absolute places) compares too
    where = {d: [relative_where(w, data) for w in places] for d, places in (kept.get("where") or {}).items()}
    teacher = {d: _unbits(bits) for d, bits in (kept.get("teacher") or {}).items()}
    for system, by_domain in (kept.get("students") or {}).items():
        for domain, by_seed in by_domain.items():
            for seed, run in by_seed.items():
                correct.setdefault(system, {}).setdefault(domain, {})[int(seed)] = _unbits(run["correct"])
                facts.setdefault(system, {}).setdefault(domain, {})[int(seed)] = {
                    k: v for k, v in run.items() if k != "correct"}
    for system in SYSTEMS:
        for run_dir in sorted((RUNS / system.replace("=", "")).glob("*-s*")):
            domain, seed = run_dir.name.rsplit("-s", 1)
            if domain not in DOMAINS or not seed.isdigit():
                continue
            config = recipe(student_sets(system, domain, int(seed)), RECIPE)
            student = scored_rows(run_dir, config, "student")
            scored_teacher = scored_rows(run_dir, config, "teacher")
            if student is None or scored_teacher is None or not done(run_dir, config, "fit,distill,eval",
                                                                      selection(config)):
                continue
            if where.setdefault(domain, student.where[domain]) != student.where[domain]:
                raise SystemExit(f"{run_dir}: its test rows are not the other runs' rows of {domain}")
            correct.setdefault(system, {}).setdefault(domain, {})[int(seed)] = student.correct[domain]
            teacher[domain] = scored_teacher.correct[domain]
            facts.setdefault(system, {}).setdefault(domain, {})[int(seed)] = run_facts(run_dir)
    return correct, facts, where, teacher


def table() -> dict:
    """bench/results/ablation.json from the run folders as they stand (finished students only) and the record of
    runs whose folders are gone (its "rows"); rows of the results file that predate the record and have no
    run folder are kept as they were, marked "kept"."""
    previous = read_json_object(OUT)
    kept = record()
    correct, facts, where, teacher_correct = _finished_students(kept)
    results = {}
    for system in (s for s in SYSTEMS if s in correct):
        by_domain = correct[system]
        seeds = sorted(set.intersection(*(set(runs) for runs in by_domain.values())))
        domains = [d for d in DOMAINS if d in by_domain]
        if not seeds or len(domains) < len(DOMAINS):
            continue  # a row is reported once every domain has at least one common seed
        per_domain = {d: _accuracy([by_domain[d][s] for s in seeds]) for d in domains}
        runs = [facts[system][d][s] for d in domains for s in seeds]
        spent = [run["minutes"] for run in runs]
        distance = weight_distance(system, seeds)
        before = (previous.get("results") or {}).get(system) or {}
        if distance is None and before.get("seeds") == seeds:
            distance = before.get("weight_distance_to_meta")  # the folders are gone; the seeds are the same
        results[system] = {**_with_average(per_domain), "seeds": seeds, "what": SYSTEMS[system][1],
                           "sets": SYSTEMS[system][0], "distill_minutes_mean": round(sum(spent) / len(spent), 1),
                           "weight_distance_to_meta": distance, **_mean_facts(runs)}
    tests = {}
    for system in results:
        reference = REFERENCES.get(system, REFERENCE)
        if system == reference or reference not in results:
            continue
        seeds = [s for s in results[system]["seeds"] if s in results[reference]["seeds"]]
        if not seeds:
            continue
        a = {str(s): sum((correct[reference][d][s] for d in DOMAINS), []) for s in seeds}
        b = {str(s): sum((correct[system][d][s] for d in DOMAINS), []) for s in seeds}
        strata = sum(([d] * len(correct[reference][d][seeds[0]]) for d in DOMAINS), [])
        tests[f"{reference} vs {system}"] = compare(a, b, strata)
    for system, row in (previous.get("results") or {}).items():
        if system in SYSTEMS and system not in correct:  # measured before the record existed, folders gone
            results[system] = {**row, "kept": row.get("kept") or KEPT}
            key = f"{REFERENCES.get(system, REFERENCE)} vs {system}"
            if key in (previous.get("tests") or {}):
                tests[key] = previous["tests"][key]
    results = {s: results[s] for s in SYSTEMS if s in results}
    teacher = {d: _accuracy([v]) for d, v in teacher_correct.items()}
    if len(teacher) == len(DOMAINS):
        teacher = _with_average(teacher)
    fit = read_json_object(TEACHER / "metrics" / "fit.json")
    setup_before = (previous.get("setup") or {}).get("teacher") or {}
    teachers = teacher_table(kept)
    for name, row in ((previous.get("teachers") or {}).get("results") or {}).items():
        if name in TEACHERS and name not in teachers["results"]:  # as for students: kept, not recomputed
            teachers["results"][name] = {**row, "kept": row.get("kept") or KEPT}
        elif name in teachers["results"]:  # a seed whose folder is gone keeps the epoch its fit chose
            now = teachers["results"][name]
            now["dev_selection"] = {**{seed: v for seed, v in (row.get("dev_selection") or {}).items()
                                       if int(seed) in now["seeds"]}, **now["dev_selection"]}
    out = {
        "setup": {"recipe": shown(RECIPE), "domains": list(DOMAINS),
                  "students": "one per domain (distill.domain), scored on that domain's 200 test rows",
                  "teacher": {"run": shown(TEACHER), "config": fit.get("config") or setup_before.get("config"),
                              "test_accuracy": teacher},
                  "cpu": fit.get("cpu") or (previous.get("setup") or {}).get("cpu"),
                  "minutes": "distill wall-clock on a 2-core machine shared with other work (not a speed figure)"},
        "results": results,
        "tests": tests,
        "teachers": {"results": teachers["results"], "tests": teachers["tests"]},
        "int8_weight_scales": int8_table() or previous.get("int8_weight_scales") or {},
        "rows": {"where": where, "teacher": {d: _bits(v) for d, v in teacher_correct.items()},
                 "students": {system: {d: {str(s): {"correct": _bits(v), **facts[system][d][s]}
                                           for s, v in sorted(by_seed.items())}
                                       for d, by_seed in by_domain.items()}
                              for system, by_domain in correct.items()},
                 "teachers": teachers["rows"]},
    }
    atomic_write_json(OUT, out)
    return out


def print_table(out: dict) -> None:
    for name, row in out["teachers"]["results"].items():
        test = out["teachers"]["tests"].get(f"meta vs {name}")
        versus = f"{-test['diff']:+.2f} ({test['p_value']:.3f})" if test else "-"
        print(f"teacher {name:20} average {row['average']:6.2f}   seeds {row['seeds']}  vs meta (p) {versus}")
    print(f"{'system':28} " + " ".join(f"{d:>12}" for d in (*DOMAINS, "average")) + "   seeds  vs meta (p)")
    for system, row in out["results"].items():
        test = out["tests"].get(f"{REFERENCES.get(system, REFERENCE)} vs {system}")
        versus = f"{-test['diff']:+.2f} ({test['p_value']:.3f})" if test else "-"
        print(f"{system:28} " + " ".join(f"{row[d]:12.2f}" for d in (*DOMAINS, "average"))
              + f"   {len(row['seeds']):5}  {versus}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "teachers", "int8", "table"))
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[42])
    parser.add_argument("--domains", nargs="*", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--teachers", nargs="*", default=list(TEACHERS), choices=list(TEACHERS))
    args = parser.parse_args()
    missing = data_missing(recipe([], RECIPE))
    if missing:
        print(missing)
        return
    if args.action == "int8":
        for scales in INT8_SCALES:
            run_int8(scales)
    if args.action == "teachers":
        for seed in args.seeds:
            for name in args.teachers:
                if run_teacher(name, seed):
                    print_table(table())
    if args.action == "run":
        run_teacher("meta", 42)
        for seed in args.seeds:
            for system in args.systems:
                for domain in args.domains:
                    if run_one(system, domain, seed):
                        print_table(table())
    print_table(table())


if __name__ == "__main__":
    main()
