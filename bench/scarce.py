"""scarce's hooks: matched epochs (a run on a fraction F of one domain's rows gets as many epochs as make the
optimizer steps it would make on all of them, so the table measures data, not an untrained head) and the table:
each system's test accuracy on the domain's rows at each F, and paired tests at each F (one seed)."""

from __future__ import annotations

import hashlib
import json
import math

from bench.common import data_path, recipe
from bench.suite import Suite, paired, setup

BATCH = 32


def matched_epochs(epochs: int, rows: int, full_rows: int) -> int:
    """Epochs on ``rows`` rows that make at least the optimizer steps of ``epochs`` on ``full_rows``."""
    return max(epochs, math.ceil(epochs * math.ceil(full_rows / BATCH) / math.ceil(rows / BATCH)))


def train_rows(data, domain: str, fractions: tuple[float, ...]) -> dict[float, int]:
    """{F: the domain's training rows at F}: the rows fit and distill keep (metakd's own sampler), F = 1 included."""
    from dataclasses import replace

    from metakd_cli.data.dataset import fraction_indices, load_dataset

    dataset = load_dataset(replace(data, domains=[domain]))
    return {f: len(fraction_indices(dataset.train, f, dataset.split_seed)) for f in (1.0, *fractions)}


_ROWS: dict[tuple, dict[float, int]] = {}  # train_rows by recipe, domain and fractions: the data is read once


def values(suite: Suite, binding: dict) -> dict:
    """The values hook: {matchedN}, N epochs at F = 1 matched to the fraction of the run; the meta-teacher's
    {fraction_domains} and {meta_teacher} folder: at F = 1, the teachers suite's own meta-teacher (the same fit)."""
    key = (suite.recipe, binding["domain"], tuple(suite.values["fractions"]))
    if key not in _ROWS:
        config = recipe([], suite.recipe)
        config.data.path = str(data_path(config))
        _ROWS[key] = train_rows(config.data, *key[1:])
    rows = _ROWS[key]
    full, domain = binding["fraction"] == 1, binding["domain"]
    return {**{f"matched{n}": matched_epochs(n, rows[binding["fraction"]], rows[1.0]) for n in range(1, 11)},
            "fraction_domains": "null" if full else domain,
            "meta_teacher": "teacher-meta-confusion" if full else f"scarce/meta-teacher-{domain}-f{binding['fraction']:g}"}


def table(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    """scarce.json from the run folders done with these settings; a run whose folder is gone counts by its rows and
    figures in the results file."""
    domain = suite.values["domains"][0]
    out: dict = {"setup": setup(suite, extra), "results": {}, "correct": {}}
    for fraction in sorted(suite.values["fractions"], reverse=True):
        key, row, rows = f"{fraction:g}", {}, {}
        old_row, old_rows = (before.get("results") or {}).get(key) or {}, (before.get("correct") or {}).get(key) or {}
        for label, system in suite.systems.items():
            binding = {"domain": domain, "fraction": fraction}
            teacher = system.start is None
            metrics = suite.finished(label, binding, extra)
            scored = suite.scored(label, "teacher" if teacher else "student", binding, extra) if metrics else None
            if scored is not None:
                where = json.dumps(scored.where[domain])
                digest = {"domain": domain, "rows": len(scored.where[domain]),
                          "sha256": hashlib.sha256(where.encode()).hexdigest()}
                if out.setdefault("test_rows", digest) != digest:
                    raise SystemExit(f"{suite.folder(label, binding)}: {domain}'s test rows differ from the other "
                                     "runs'; the paired tests need the same rows (same data and split seed)")
                config = recipe(suite.sets_of(label, binding, extra), suite.recipe)
                done = metrics["fit" if teacher else "distill"]
                correct, minutes, trained = scored.correct[domain], round(done["seconds"] / 60, 1), done["train_rows"][domain]
                epochs = config.fit.epochs if teacher else [config.distill.intermediate_epochs, config.distill.epochs]
            elif label in old_rows and label in old_row:  # its folder is gone: the results file's rows and figures
                correct, minutes = old_rows[label]["rows"], (old_row.get("minutes") or {}).get(label)
                trained = old_row.get("train_rows") if teacher else (old_row.get("student_train_rows") or {}).get(label)
                epochs = (old_row.get("epochs") or {}).get(label)
                out.setdefault("test_rows", before.get("test_rows"))
            else:
                continue
            rows[label] = {"rows": correct}
            row[label] = round(100 * sum(correct) / len(correct), 2)
            for part, value in (("minutes", minutes), ("train_rows" if teacher else "student_train_rows", trained),
                                ("epochs", epochs)):
                if value is not None and part == "train_rows":
                    row[part] = value
                elif value is not None:  # (a kept run recorded before the figure was)
                    row.setdefault(part, {})[label] = value
        if rows:
            out["results"][key], out["correct"][key] = row, rows
    out["tests"] = {}
    for key, scored in out["correct"].items():
        pairs = {f"{x} vs {y}": paired({"1": {domain: scored[x]["rows"]}}, {"1": {domain: scored[y]["rows"]}}, [domain])
                 for x, y in suite.spec["tests"] if x in scored and y in scored}
        if pairs:
            out["tests"][key] = pairs
    return out
