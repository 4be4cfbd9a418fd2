"""keep's peers: what a user would pick instead of a distilled student, trained on the recipe's training rows with
C chosen on dev, their test rows written to <runs>/peers/ so that the table pairs them with the students row by
row (needs scikit-learn and model2vec: `pip install -e '.[peers]'`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Scored, data_path, recipe, relative_where
from bench.suite import NOT_MEASURED, Suite, kept
from metakd_cli.core.run_dir import atomic_write_json, read_json_object

PEERS = ("tfidf-lr", "model2vec-lr")


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


def _record(name: str, what: str, predict, size_bytes: int, chosen: dict, test: tuple) -> dict:
    """A peer's test accuracy per domain, size, rows/s (the median of 5 timed passes after an untimed one, as eval
    times its models) and its 0/1 test rows."""
    import numpy as np

    from metakd_cli.core.timing import Spread, time_rounds

    texts, gold, domains, where = test
    correct = (np.asarray(predict(texts)) == np.asarray(gold)).astype(int).tolist()
    by_domain = {d: float(np.mean([c for c, dd in zip(correct, domains) if dd == d]) * 100) for d in dict.fromkeys(domains)}
    by_domain["average"] = float(np.mean(list(by_domain.values())))
    seconds = time_rounds({"predict": lambda: predict(texts)}, 5)["predict"]
    record = {"system": name, "what": what, "test_accuracy": {k: round(v, 2) for k, v in by_domain.items()},
              "size_mb": round(size_bytes / 1e6, 1), "rows_per_s": round(len(texts) / Spread.of(seconds).median, 1),
              "chosen_on_dev": chosen, "rows": {"where": where, "domain": domains, "correct": correct}}
    print(f"{name}: test {record['test_accuracy']['average']:.2f}, {record['size_mb']} MB, {record['rows_per_s']} rows/s")
    return record


def peers(suite: Suite, extra: tuple[str, ...] = ()) -> None:
    """TF-IDF (1-2 grams) + LR, and model2vec distilled from the packaged MiniLM-L6 + LR, into <runs>/peers/."""
    import pickle

    import numpy as np
    from model2vec.distill import distill
    from sklearn.feature_extraction.text import TfidfVectorizer

    from metakd_cli.data.dataset import load_dataset
    from metakd_cli.models.loading import resolve_model
    from metakd_cli.models.packaged import MINILM

    config = recipe(list(extra), suite.recipe)
    data = data_path(config)
    config.data.path = str(data)  # as `metakd run` reads it: rows placed by absolute path, made relative below
    dataset = load_dataset(config.data)
    train, dev, test = (_split(dataset, name, data) for name in ("train", "dev", "test"))
    out = suite.runs / "peers"
    out.mkdir(parents=True, exist_ok=True)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model, c, scores = _choose_c(vectorizer.fit_transform(train[0]), np.asarray(train[1]),
                                 vectorizer.transform(dev[0]), np.asarray(dev[1]))
    atomic_write_json(out / "tfidf-lr.json", _record(
        "tfidf-lr", "TF-IDF (1-2 grams, min_df 2, sublinear tf) + logistic regression",
        lambda texts: model.predict(vectorizer.transform(texts)), len(pickle.dumps((vectorizer, model))),
        {"C": c, "dev_accuracy": scores}, test))  # its size: our own objects, measured, never loaded back
    static = distill(model_name=resolve_model(MINILM), pca_dims=256)
    embed = static.encode
    model2, c, scores = _choose_c(embed(train[0]), np.asarray(train[1]), embed(dev[0]), np.asarray(dev[1]))
    with tempfile.TemporaryDirectory() as tmp:
        static.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) + model2.coef_.nbytes
    atomic_write_json(out / "model2vec-lr.json", _record(
        "model2vec-lr", "model2vec (0.7, pca 256) distilled from the packaged MiniLM-L6 + logistic regression",
        lambda texts: model2.predict(embed(texts)), size, {"C": c, "dev_accuracy": scores}, test))


def peer_scored(record: dict, order: Scored) -> Scored:
    """A peer's rows in the order of a student's (``order``), so that the two pair row by row."""
    correct = dict(zip(record["rows"]["where"], record["rows"]["correct"]))
    missing = [w for rows in order.where.values() for w in rows if w not in correct]
    if missing:
        raise SystemExit(f"{record['system']}: {len(missing)} of the students' test rows are not its rows "
                         f"(first: {missing[0]}); run `python -m bench peers keep` again")
    return Scored({d: [correct[w] for w in rows] for d, rows in order.where.items()}, order.where)


def rows(suite: Suite, results: dict, before: dict) -> dict:
    """The table's hook: each peer's row (its record without the rows; the dev accuracy of the C dev chose), or the
    row the results file kept, or not measured; and how to pair its rows with the students'."""
    records = {name: read_json_object(suite.runs / "peers" / f"{name}.json") for name in PEERS}
    for name, record in records.items():
        row = {k: v for k, v in record.items() if k != "rows"} if record else kept(before.get(name))
        results[name] = row or NOT_MEASURED
        if record:
            row["dev_accuracy"] = max(record["chosen_on_dev"]["dev_accuracy"].values())
    return {name: (lambda order, record=record: peer_scored(record, order)) for name, record in records.items() if record}
