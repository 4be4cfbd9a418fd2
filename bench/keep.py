"""A student that keeps its teacher: each lever of the student's training measured on Amazon, the no-teacher
student, and the peers a user would pick instead (TF-IDF + logistic regression, model2vec), on the same test rows.

    python -m bench.keep run [--systems kd-cut none ...]   # the students (and the teacher they start from)
    python -m bench.keep peers                             # TF-IDF + LR and model2vec + LR on the same split
    python -m bench.keep table                             # bench/results/keep.json from the run folders

The MiniLM default path: recipes/amazon-cpu.yaml's meta-teacher (all-MiniLM-L6-v2, 6 x 384) and its `tiny` student
(4 of the teacher's own layers), shipped as static int8. Every system is that recipe plus the --set overrides in
SYSTEMS, run by `metakd run RECIPE --resume --steps ...` in its own folder under --runs (default bench/runs/keep),
a copy of the teacher's folder (bench.suite). Each lever is compared with the system before it on the same test
rows (a paired bootstrap stratified by domain, and exact McNemar; one seed, 42):

    kd-before   logit-only KD as stage 2 ran before this release: 3 epochs at 3e-5, the uniform cut [2, 3, 5, 6]
    kd-length   + stage 2's length chosen on dev (~10 scorings an epoch, patience 10, at most 10 epochs) at 1e-4
    kd-cut      + the cut [1, 3, 5, 6] (layer 1 kept): the new defaults, logit-only
    kd-loss     + the official code's T = 2 and a gold-label term (weight 0.5)
    meta        Meta-KD: the recipe's 1 epoch of stage 1, then stage 2 by the new defaults
    none        no teacher: the same student cut from the untouched pretrained MiniLM-L6, gold labels alone, its
                new head warmed up on the frozen body first (the default for a head not cut from the teacher)
    none-cold   the same without the head warm-up (head and body trained together from the start)

The best distilled student is the one with the best dev accuracy (test is only reported); it is tested against the
no-teacher student and against TF-IDF + LR. `peers` needs scikit-learn and model2vec (`pip install -e '.[peers]'`).
The MPNet path's students need the fitted MPNet teacher (bench.mpnet's teacher-meta folder, ~3.5 h to fit): its
target reads "not measured" until `run --systems` names the mpnet systems with that folder in place. Not part of CI.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import RESULTS, ROOT, RUNS as BENCH_RUNS, Scored, data_missing, data_path, recipe, relative_where
from bench.common import shown
from bench import mpnet
from bench.mpnet import read_student, read_teacher
from bench.suite import NOT_MEASURED, Suite, System, kept, paired_test, target
from metakd_cli.run_dir import atomic_write_json, read_json_object

RECIPE = ROOT / "recipes" / "amazon-cpu.yaml"
RUNS = BENCH_RUNS / "keep"
OUT = RESULTS / "keep.json"
SEED = 42
STUDENT = ("distill", "export", "eval")
BY_DEV = "distill.epochs=none"  # the recipe fixes 2 epochs: the new rule chooses the length on dev
# the int8 export's 1-point dev gate left off (its drop is in int8_check), so a student it would refuse still has
# int8 rows to pair: it refused meta (1.75) and a 20%-labels student (1.25)
UNGATED = "export.max_drop=100"
SYSTEMS: dict[str, System] = {
    "teacher": System((), ("fit",), None, "the MiniLM-L6 meta-teacher (the recipe's fit: 2 epochs at 5e-5)"),
    "kd-before": System(("distill.method=kd", "distill.epochs=3", "distill.lr=3e-5", "distill.student_layers=2,3,5,6"),
                        STUDENT, "teacher", "logit-only KD as stage 2 ran before: 3 epochs at 3e-5, cut [2, 3, 5, 6]"),
    "kd-length": System(("distill.method=kd", BY_DEV, "distill.student_layers=2,3,5,6"), STUDENT, "teacher",
                        "+ stage 2's length chosen on dev at the new default rate 1e-4"),
    "kd-cut": System(("distill.method=kd", BY_DEV), STUDENT, "teacher", "+ the default cut [1, 3, 5, 6]"),
    "kd-loss": System(("distill.method=kd", BY_DEV, "distill.temperature=2", "distill.gold_weight=0.5"), STUDENT,
                      "teacher", "+ T = 2 (the official code's) and a gold-label cross-entropy (weight 0.5)"),
    "meta": System((BY_DEV, UNGATED), STUDENT, "teacher",
                   "Meta-KD: 1 epoch of stage 1 (the recipe's), stage 2 by the new rules (int8 gate off)"),
    "none": System(("distill.method=none", BY_DEV, UNGATED), STUDENT, "teacher",
                   "no teacher: the pretrained MiniLM-L6's cut [1, 3, 5, 6], gold labels alone, the same length rule; "
                   "its new head warmed up on the frozen body first (the default)"),
    "none-cold": System(("distill.method=none", BY_DEV, "distill.head_warmup=0", UNGATED), STUDENT, "teacher",
                        "the no-teacher student without the head warm-up: head and body trained together at once"),
}
SUITE = Suite(RECIPE, RUNS, SYSTEMS)
# the MPNet path: bench.mpnet's fitted meta-teacher (its folder under bench/runs/mpnet) and its minilm4 students
# by the new defaults; `run --mpnet` (fits the teacher first when its folder is not there: ~3.5 h)
MPNET_SYSTEMS: dict[str, System] = {
    "teacher-meta": mpnet.SYSTEMS["teacher-meta"],
    "keep-kd": System(("distill.method=kd", BY_DEV, UNGATED), STUDENT, "teacher-meta",
                      "minilm4 by logit-only KD with the new defaults: length by dev at 1e-4, cut [1, 3, 5, 6], its new "
                      "head warmed up first"),
    "keep-meta": System((BY_DEV, UNGATED), STUDENT, "teacher-meta",
                        "Meta-KD: the recipe's 1 epoch of stage 1 (projection fitted first, no attention-score term "
                        "across position types), then stage 2 as keep-kd"),
}
MPNET_SUITE = Suite(mpnet.RECIPE, mpnet.RUNS, MPNET_SYSTEMS)
DEFAULT_ORDER = ("kd-cut", "none", "none-cold", "kd-before", "kd-length", "meta", "kd-loss")  # the most telling first
DISTILLED = ("kd-before", "kd-length", "kd-cut", "kd-loss", "meta")
# each lever against the system before it (A minus B)
PAIRS = (("kd-length", "kd-before"), ("kd-cut", "kd-length"), ("kd-cut", "kd-before"), ("kd-loss", "kd-cut"),
         ("meta", "kd-cut"), ("kd-cut", "none"), ("none", "none-cold"))  # kd-cut vs kd-before: the new defaults
# together; none vs none-cold: the head warm-up
PEERS = ("tfidf-lr", "model2vec-lr")
TARGETS = {"int8": 87.0, "gap": 0.5, "over_none": 1.0, "over_tfidf": 3.0, "mpnet_int8": 88.0, "p": 0.05}


# --------------------------------------------------------------------------- peers


def _split(dataset, name: str, data: Path) -> tuple[list[str], list[int], list[str], list[str]]:
    """(texts, label ids, domains, places relative to the data root) of one split, in the data's order."""
    rows = dataset.splits[name]
    texts = [ex.text if not ex.text_pair else f"{ex.text} {ex.text_pair}" for ex in rows]
    return (texts, [dataset.labels.index(ex.label) for ex in rows], [ex.domain for ex in rows],
            [relative_where(ex.where, data) for ex in rows])


def _choose_c(train_x, train_y, dev_x, dev_y) -> tuple[object, float, dict[str, float]]:
    """Logistic regression with C chosen on dev: (the classifier, its C, dev accuracy per C)."""
    from sklearn.linear_model import LogisticRegression

    scores, fitted = {}, {}
    for c in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
        scores[str(c)] = float((model.predict(dev_x) == dev_y).mean() * 100)
        fitted[c] = model
    best = max(fitted, key=lambda c: scores[str(c)])
    return fitted[best], best, scores


def _rows_per_second(predict, texts: list[str], rounds: int = 5) -> float:
    """Test rows a second through ``predict`` (texts -> labels): the median of ``rounds`` timed passes after one
    untimed pass (metakd_cli.timing, as eval times its models)."""
    from metakd_cli.timing import Spread, time_rounds

    seconds = time_rounds({"predict": lambda: predict(texts)}, rounds)["predict"]
    return round(len(texts) / Spread.of(seconds).median, 1)


def _peer_record(name: str, what: str, predict, size_bytes: int, chosen: dict, test: tuple) -> dict:
    texts, gold, domains, where = test
    import numpy as np

    predicted = np.asarray(predict(texts))
    correct = (predicted == np.asarray(gold)).astype(int).tolist()
    by_domain = {d: float(np.mean([c for c, dd in zip(correct, domains) if dd == d]) * 100) for d in dict.fromkeys(domains)}
    by_domain["average"] = float(np.mean(list(by_domain.values())))
    return {"system": name, "what": what, "test_accuracy": {k: round(v, 2) for k, v in by_domain.items()},
            "size_mb": round(size_bytes / 1e6, 1), "rows_per_s": _rows_per_second(predict, texts), "chosen_on_dev": chosen,
            "rows": {"where": where, "domain": domains, "correct": correct}}


def peers(out_dir: Path) -> None:
    """TF-IDF (1-2 grams) + LR, and model2vec distilled from the packaged MiniLM-L6 + LR, trained on the recipe's
    training rows with C chosen on dev; their test rows written to ``out_dir`` for the table's paired tests."""
    import pickle

    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from metakd_cli.data import load_dataset

    config = recipe([], RECIPE)
    data = data_path(config)
    config.data.path = str(data)  # as `metakd run` reads it: rows placed by absolute path, made relative below
    dataset = load_dataset(config.data)
    train, dev, test = (_split(dataset, name, data) for name in ("train", "dev", "test"))
    out_dir.mkdir(parents=True, exist_ok=True)

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    train_x = vectorizer.fit_transform(train[0])
    model, c, scores = _choose_c(train_x, np.asarray(train[1]), vectorizer.transform(dev[0]), np.asarray(dev[1]))
    size = len(pickle.dumps((vectorizer, model)))  # our own objects, measured, never loaded back
    record = _peer_record("tfidf-lr", "TF-IDF (1-2 grams, min_df 2, sublinear tf) + logistic regression",
                          lambda texts: model.predict(vectorizer.transform(texts)), size,
                          {"C": c, "dev_accuracy": scores}, test)
    atomic_write_json(out_dir / "tfidf-lr.json", record)
    print(f"tfidf-lr: test {record['test_accuracy']['average']:.2f}, {record['size_mb']} MB, {record['rows_per_s']} rows/s")

    from model2vec.distill import distill

    from metakd_cli.models import resolve_model
    from metakd_cli.packaged import MINILM

    static = distill(model_name=resolve_model(MINILM), pca_dims=256)
    embed = static.encode
    model, c, scores = _choose_c(embed(train[0]), np.asarray(train[1]), embed(dev[0]), np.asarray(dev[1]))
    with tempfile.TemporaryDirectory() as tmp:
        static.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) + model.coef_.nbytes
    record = _peer_record("model2vec-lr", "model2vec (0.7, pca 256) distilled from the packaged MiniLM-L6 + logistic "
                          "regression", lambda texts: model.predict(embed(texts)), size,
                          {"C": c, "dev_accuracy": scores}, test)
    atomic_write_json(out_dir / "model2vec-lr.json", record)
    print(f"model2vec-lr: test {record['test_accuracy']['average']:.2f}, {record['size_mb']} MB, "
          f"{record['rows_per_s']} rows/s")


def _peer_scored(record: dict, order: Scored) -> Scored:
    """A peer's rows in the order of a student's (``order``), so that the two pair row by row."""
    correct = dict(zip(record["rows"]["where"], record["rows"]["correct"]))
    missing = [w for rows in order.where.values() for w in rows if w not in correct]
    if missing:
        raise SystemExit(f"{record['system']}: {len(missing)} of the students' test rows are not its rows "
                         f"(first: {missing[0]}); run `python -m bench.keep peers` again")
    return Scored({d: [correct[w] for w in rows] for d, rows in order.where.items()}, order.where)


# --------------------------------------------------------------------------- the table


def read_distilled(metrics: dict[str, dict]) -> dict:
    """bench.mpnet's student figures, with how distillation went (``_distilled``)."""
    return {**read_student(metrics), **_distilled(metrics["distill"])}


def read_distilled_only(metrics: dict[str, dict]) -> dict:
    """A system distilled but not shipped (its int8 export failed the accuracy gate, or was not run): the fp32
    student's figures from distill.json, marked; it has no int8 rows to pair."""
    distill = metrics["distill"]
    return {"test_accuracy": {"student": {k: round(v, 2) for k, v in distill["test_accuracy"].items()}},
            **_distilled(distill),
            "not_shipped": "distilled, but no int8 export: its export failed the int8 accuracy gate or did not run"}


def _distilled(distill: dict) -> dict:
    """From distill.json: dev accuracy, the student, the rates, the length stage 2 ran (epochs begun, kept step,
    stopped by patience, the dev curve) and stage 1's start check."""
    stages = distill.get("stages") or {}
    stage = stages.get("prediction") or {}
    return {"dev_accuracy": distill.get("dev_accuracy", {}).get("average"), "student": distill.get("student"),
            "learning_rates": distill.get("learning_rates"),
            "stage_2": {"epochs": len(stage.get("history") or []), "best_step": stage.get("best_step"),
                        "stopped_early": stage.get("stopped_early"), "dev_curve": stage.get("dev_curve")},
            "start_check": (stages.get("intermediate") or {}).get("start_check")}


def system_results(suite: Suite, before: dict) -> dict[str, object]:
    """Each system's row: a teacher's (a system with no start) or a student's figures from its finished folder, a
    student distilled but not shipped, the row the results file kept (its folder gone), or not measured."""
    results: dict[str, object] = {}
    for system, declared in suite.systems.items():
        metrics, teacher = suite.finished_metrics(system), declared.start is None
        reader = read_teacher if teacher else read_distilled
        distilled = None if metrics or teacher else suite.finished_metrics(system, steps="fit,distill")
        results[system] = (reader(metrics) if metrics else read_distilled_only(distilled) if distilled
                           else kept(before.get(system)) or NOT_MEASURED)
    return results


def paired_tests(scored: dict[str, Scored], pairs, previous: dict, model: str = "int8") -> dict[str, dict]:
    """"A vs B" (A minus B) for each pair whose ``model`` test rows (int8: "A vs B"; another model: "A vs B
    (model)") are both in ``scored``; a test of the results file whose folders are gone is kept, marked."""
    tests, suffix = {}, "" if model == "int8" else f" ({model})"
    for first, second in dict.fromkeys(pairs):
        if first in scored and second in scored:
            name = f"{first} vs {second}{suffix}"
            tests[name] = {"name": name, **paired_test(scored[first], scored[second], SEED, first, second), "model": model}
    for name, test in previous.items():
        if name in tests or not isinstance(test, dict) or test.get("model", "int8") != model:
            continue
        systems = name.removesuffix(suffix).split(" vs ")
        if any(system not in scored for system in systems):  # a folder is gone: the file's figure is kept, marked
            tests[name] = kept(test)
    return tests


def significant(what: str, test: dict | None, threshold: float) -> dict:
    """A "better by at least ``threshold`` with p < 0.05" target from a paired test; not measured without one."""
    if test is None:
        return target(what, None, threshold, True, "")
    row = target(what, test["diff"], threshold, True, test["name"])
    if row["status"] == "pass" and test["p_value"] >= TARGETS["p"]:
        row["status"] = "fail"
    row["p_value"] = test["p_value"]
    return row


def table(runs: Path = RUNS, out: Path = OUT) -> dict:
    suite = Suite(RECIPE, runs, SYSTEMS)
    previous = read_json_object(out)
    before = previous.get("results") or {}
    results: dict[str, object] = system_results(suite, before)
    peer_records = {name: read_json_object(runs / "peers" / f"{name}.json") for name in PEERS}
    for name, record in peer_records.items():
        results[name] = {k: v for k, v in record.items() if k != "rows"} if record else kept(before.get(name))
        results[name] = results[name] or NOT_MEASURED
        if record:  # the dev accuracy of the C dev chose
            results[name]["dev_accuracy"] = max(record["chosen_on_dev"]["dev_accuracy"].values())
    scored = suite.scored_all([s for s in SYSTEMS if s != "teacher" and isinstance(results[s], dict)])
    if scored:
        order = next(iter(scored.values()))
        scored |= {name: _peer_scored(record, order) for name, record in peer_records.items() if record}
    # measured now, or kept; a student with no int8 export cannot be the one shipped
    best = best_on_dev(results, [s for s in suite.shipped(results) if s in DISTILLED])
    pairs = [*PAIRS, *((best, other) for other in ("none", "tfidf-lr", "model2vec-lr") if best and best != other)]
    tests = paired_tests(scored, pairs, previous.get("tests") or {})
    mpnet_path = mpnet_results(MPNET_SUITE, previous.get("mpnet") or {})
    document = {
        "setup": {"recipe": shown(RECIPE), "runs": shown(runs), "seed": SEED, "path": "MiniLM-L6 default path",
                  "systems": suite.declared(), "best_distilled": best, "best_chosen_by": "dev accuracy of the fp32 student (distill.json)"},
        "results": results,
        "tests": tests,
        "mpnet": mpnet_path,
        "targets": targets(results, tests, best, mpnet_path),
    }
    atomic_write_json(out, document)
    return document


def mpnet_results(suite: Suite, before: dict, pairs=(("keep-meta", "keep-kd"),)) -> dict:
    """The MPNet path's systems (``suite``: a teacher-meta and its students under bench/runs/mpnet): their rows,
    paired tests, and the student best on dev (None before any is finished)."""
    results = system_results(suite, before.get("results") or {})
    shipped = suite.shipped(results)
    return {"recipe": shown(suite.recipe), "runs": shown(suite.runs), "best_distilled": best_on_dev(results, shipped),
            "systems": suite.declared(), "results": results,
            "tests": paired_tests(suite.scored_all(shipped), pairs, before.get("tests") or {})}


def best_on_dev(results: dict[str, object], candidates: list[str]) -> str | None:
    """The candidate whose fp32 student scored best on dev (test is only reported); None when there is none."""
    return max(candidates, key=lambda s: results[s]["dev_accuracy"], default=None)


def best_int8(path: dict) -> tuple[float | None, float | None, str]:
    """(int8 test accuracy, teacher minus int8, where from) of a path's student best on dev."""
    best = path.get("best_distilled")
    row = (path.get("results") or {}).get(best) if best else None
    if not isinstance(row, dict):
        return None, None, ""
    return (row["test_accuracy"].get("int8", {}).get("average"), row.get("teacher_minus_int8"),
            f"{best} (eval.json, {path['runs']})")


def targets(results: dict, tests: dict, best: str | None, mpnet_path: dict | None = None) -> list[dict]:
    student = results.get(best) if best else None
    int8 = ((student or {}).get("test_accuracy") or {}).get("int8", {}).get("average") if student else None
    gap = (student or {}).get("teacher_minus_int8")
    mpnet_int8, _, mpnet_source = best_int8(mpnet_path or {})
    return [
        target("MPNet-path int8 student test accuracy (the best on dev)", mpnet_int8, TARGETS["mpnet_int8"], True,
               mpnet_source),
        target("MiniLM-path int8 student test accuracy (the best on dev)", int8, TARGETS["int8"], True,
               f"{best} (eval.json)"),
        target("MiniLM-path int8 student within 0.5 of its teacher (teacher - int8)", gap, TARGETS["gap"], False,
               f"{best} (eval.json)"),
        significant("best distilled int8 above the no-teacher int8 student (points, p < 0.05)",
                     tests.get(f"{best} vs none"), TARGETS["over_none"]),
        significant("best distilled int8 above TF-IDF + LR (points, p < 0.05)", tests.get(f"{best} vs tfidf-lr"),
                     TARGETS["over_tfidf"]),
    ]


def print_table(document: dict) -> None:
    for name, row in document["results"].items():
        if not isinstance(row, dict):
            print(f"{name:14} {row}")
            continue
        accuracy = row.get("test_accuracy") or {}
        int8 = (accuracy.get("int8") or {}).get("average") if "int8" in accuracy else accuracy.get("average")
        print(f"{name:14} test {int8}  dev {row.get('dev_accuracy')}")
    for name, test in document["tests"].items():
        print(f"{name:28} {test['diff']:+.2f} (95% CI {test['ci95'][0]:+.2f}..{test['ci95'][1]:+.2f}, p {test['p_value']})")
    for row in document["targets"]:
        print(f"{row['status']:13} {row['target']}: {row['value']} (threshold {row['threshold']})")


def suite_arguments(doc: str, commands: tuple[str, ...], systems: list[str], default: tuple[str, ...],
                    recipe_path: Path, runs: Path, out: Path) -> argparse.Namespace | None:
    """The command line bench.keep and bench.transfer share (a command, --systems, --mpnet, --runs, --out);
    None, said, when the data is not here."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=commands)
    parser.add_argument("--systems", nargs="+", choices=systems, default=list(default))
    parser.add_argument("--mpnet", action="store_true",
                        help="run the MPNet path's systems (MPNET_SYSTEMS) instead; fits the teacher when missing")
    parser.add_argument("--runs", type=Path, default=runs)
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    missing = data_missing(recipe([], recipe_path))
    if missing:
        print(missing)
        return None
    return args


def main() -> None:
    args = suite_arguments(__doc__, ("run", "peers", "table"), list(SYSTEMS), DEFAULT_ORDER, RECIPE, RUNS, OUT)
    if args is None:
        return
    suite = Suite(RECIPE, args.runs, SYSTEMS)
    if args.command == "run" and args.mpnet:
        MPNET_SUITE.run([s for s in MPNET_SYSTEMS if s != "teacher-meta"],
                        after=lambda: print_table(table(args.runs, args.out)))
    elif args.command == "run":
        suite.run(args.systems, after=lambda: print_table(table(args.runs, args.out)))
    elif args.command == "peers":
        peers(args.runs / "peers")
    print_table(table(args.runs, args.out))


if __name__ == "__main__":
    main()
