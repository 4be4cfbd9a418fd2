"""amazon's table: the paper's Amazon table with several student seeds, paired tests and the held-out tables, read
from each run's record: a folder done with its settings (its accuracy and 0/1 correctness per test row from
metrics/predictions.json, the same rows for every system; minutes from fit.json, distill.json, export.json), else
the record the results files hold (amazon.json's "runs", amazon_predictions.json's rows), so a run whose folder is
gone still counts. Per-domain values are means over seeds, "average" their mean, "std" the sample standard
deviation over seeds of each seed's average; a paired test of two students uses the seeds both have."""

from __future__ import annotations

import json

import numpy as np

from bench.common import DOMAINS, PAPER, PAPER_HELD_OUT, recipe, run_command, shown
from bench.suite import Suite, paired, setup
from metakd_cli.core.run_dir import read_json_object

TEACHER_FIT_KEYS = ("teacher", "teacher_mode", "domain_loss", "epochs", "lr", "max_length", "seed")


class Table:
    """Every run of the suite, its record and the rows each model got right, and the tables built from them."""

    def __init__(self, suite: Suite, extra: tuple[str, ...], before: dict):
        self.suite, self.domains, self.extra = suite, suite.values["domains"], extra
        self.runs: dict = {}  # system -> domain or "all" -> seed -> record
        self.correct: dict = {}  # system -> domain or "all" -> seed -> {"domains": {domain: [0/1 per row]}}
        self.rows_setup: dict = {}
        self.where: dict[str, list[str]] = {}  # domain -> its test rows' places: every model's must be these
        self.teachers = set()
        for system, declared in suite.systems.items():
            for binding in suite.bindings(system) if declared.start is None else suite.found(system):
                self._read(system, binding)
        rows = read_json_object(suite.out.with_name("amazon_predictions.json")).get("correct") or {}
        for system, keys in (before.get("runs") or {}).items():  # the runs whose folders are gone: their record
            for key, seeds in keys.items():
                for seed, record in seeds.items():
                    kept = ((rows.get(system) or {}).get(key) or {}).get(seed)
                    if seed not in self.runs.get(system, {}).get(key, {}) and kept:
                        self.runs.setdefault(system, {}).setdefault(key, {})[seed] = record
                        self.correct.setdefault(system, {}).setdefault(key, {})[seed] = kept
                        self.teachers |= {system} if key == "all" and "config" in record else set()
        self.rows_setup = self.rows_setup or {k: v for k, v in (read_json_object(suite.out.with_name(
            "amazon_predictions.json")).get("setup") or {}).items() if k in ("data_fingerprint", "split_seed", "rows")}

    def _read(self, system: str, binding: dict) -> None:
        """One run's record, and the rows its model got right, when its folder is done with its settings."""
        suite, label = self.suite, self.suite.fill(system, binding)
        teacher, folder = suite.systems[system].start is None, suite.folder(system, binding)
        model = "teacher" if teacher else "int8" if "export" in suite.systems[system].steps else "student"
        metrics = suite.finished(system, binding, self.extra)
        scored = suite.scored(system, model, binding, self.extra) if metrics else None
        if scored is None:
            return
        data = read_json_object(folder / "manifest.json").get("data") or {}
        for domain, where in scored.where.items():
            if self.where.setdefault(domain, where) != where:
                raise SystemExit(f"{folder}: other {domain} test rows than the earlier runs' (other data or split); "
                                 "paired tests need the same rows")
            self.rows_setup.setdefault("rows", {})[domain] = len(where)
        self.rows_setup.update(data_fingerprint=data.get("fingerprint"),
                               split_seed=(data.get("config") or {}).get("split_seed"))
        correct, domain = scored.correct, binding.get("domain") or binding.get("held")
        key, seed = ("all", str(metrics["fit"]["config"]["seed"])) if teacher else (domain or "all", str(binding["seed"]))
        self.correct.setdefault(label, {}).setdefault(key, {})[seed] = {"domains": correct}
        if teacher:
            self.teachers.add(label)
            fit = metrics["fit"]
            record = {"accuracy": {d: 100.0 * sum(v) / len(v) for d, v in correct.items() if v},
                      "minutes": {"fit": fit["seconds"] / 60}, "run_dir": shown(folder),
                      "config": {k: fit["config"].get(k) for k in TEACHER_FIT_KEYS}}
        else:
            scored_on = [domain] if domain else self.domains
            record = {"accuracy": {d: 100.0 * sum(correct[d]) / len(correct[d]) for d in scored_on if correct.get(d)}}
            if model == "int8":
                export = metrics["export"]
                check = export.get("int8_check") or {}
                record.update({
                    "dev_drop": check.get("drop"), "attempt": check.get("attempt"), "per_channel": check.get("per_channel"),
                    "target": export.get("target"), "size_mb": export.get("size_mb"),
                    "export_failures": export.get("failures", []), "minutes": {"export": export["seconds"] / 60}})
            else:
                distill = metrics["distill"]
                record.update({
                    "teacher_accuracy": {d: distill["teacher_test_accuracy"][d] for d in scored_on},
                    "agreement_with_teacher": distill["test_agreement_with_teacher"],
                    "lambda_mean": distill["lambda"]["mean"], "minutes": {"distill": distill["seconds"] / 60},
                    "stage_minutes": {k: v["seconds"] / 60 for k, v in distill["stages"].items()},
                    "teacher_cache_minutes": distill["teacher_cache_seconds"] / 60, "train_rows": distill["train_rows"]})
            record.update(run_dir=shown(folder), command=run_command(
                folder, suite.sets_of(system, binding, self.extra), suite.chain(system), suite.recipe))
        self.runs.setdefault(label, {}).setdefault(key, {})[seed] = record

    def per_seed(self, system: str, domains: list[str] | None = None) -> dict[str, dict[str, float]]:
        """{seed: {domain: accuracy}} over ``domains`` (the table's)."""
        domains, out = domains or self.domains, {}
        for key, seeds in self.runs.get(system, {}).items():
            for seed, record in seeds.items():
                for domain, value in record["accuracy"].items():
                    if domain in domains and key in ("all", domain):
                        out.setdefault(seed, {})[domain] = value
        return out

    def correctness(self, system: str, domains: list[str]) -> dict[str, dict[str, list[int]]]:
        """{seed: {domain: 0/1 per test row}}, for the seeds complete on every one of ``domains``."""
        out = {}
        for seed in sorted({s for runs in self.correct.get(system, {}).values() for s in runs}):
            found = {d: ((self.correct[system].get(d, {}).get(seed) or self.correct[system].get("all", {}).get(seed)
                          or {}).get("domains") or {}).get(d) for d in domains}
            if all(rows is not None for rows in found.values()):
                out[seed] = found
        return out

    def results(self) -> dict:
        table = {}
        for system in (s for s in self.suite.systems if "{" not in s):
            seeds = self.per_seed(system)
            if not seeds:
                continue
            row: dict = {}
            for domain in self.domains:
                values = [accuracy[domain] for accuracy in seeds.values() if domain in accuracy]
                row[domain] = round(float(np.mean(values)), 2) if values else None
            complete = [a for a in seeds.values() if all(d in a for d in self.domains)]
            averages = [float(np.mean([a[d] for d in self.domains])) for a in complete]
            row["average"] = round(float(np.mean(averages)), 2) if averages else None
            row["std"] = round(float(np.std(averages, ddof=1)), 2) if len(averages) > 1 else None
            row["std_per_domain"] = {d: round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None
                                     for d in self.domains for v in [[a[d] for a in seeds.values() if d in a]]}
            row["seeds"] = sorted(int(s) for s in seeds)
            row["complete_seeds"] = len(averages)
            records = [record for key, runs in self.runs[system].items() if key == "all" or key in self.domains
                       for seed, record in runs.items() if seed in seeds]
            minutes: dict[str, list[float]] = {}
            for record in records:
                for step, value in record["minutes"].items():
                    minutes.setdefault(step, []).append(value)
            row["minutes"] = {step: round(float(np.mean(v)), 2) for step, v in minutes.items()}
            row["runs"] = max(len(v) for v in minutes.values())
            if "dev_drop" in records[0]:
                row["dev_drop_vs_fp32"] = round(float(np.mean([r["dev_drop"] for r in records])), 2)
            table[system] = row
        return table

    def tests(self, pairs: list[tuple[str, str]] | None = None, domains: list[str] | None = None) -> dict:
        """"A vs B" for each pair (the suite's ``tests``) with runs on ``domains``; two students on the seeds both
        have."""
        domains, pairs = domains or self.domains, pairs or self.suite.spec["tests"]
        tests = {f"{a} vs {b}": paired(self.correctness(a, domains), self.correctness(b, domains), domains,
                                       not ({a, b} & self.teachers)) for a, b in pairs}
        return {name: test for name, test in tests.items() if test}

    def held_out(self) -> dict:
        """{H: {"results": {row: {"accuracy", "std", "seeds"}}, "tests": {..}}}: the held-out table per domain H
        (accuracy on H's test rows; mean and sample standard deviation over seeds)."""
        out = {}
        for h in self.suite.values["held_out"]:
            prefix = f"held-out/{h}/"
            if not any(s.startswith(prefix) for s in self.runs):
                continue
            others = [d for d in DOMAINS if d != h]
            rows = {"in-domain teacher": "teacher-single", "meta-teacher without H": f"{prefix}meta-teacher-without",
                    "in-domain teacher -> tinybert": "single->tinybert",
                    **{f"{d} teacher -> tinybert": f"{prefix}{d}-teacher->tinybert" for d in others},
                    "meta-teacher without H -> tinybert": f"{prefix}meta-without->tinybert",
                    "meta-teacher without H -> meta": f"{prefix}meta-without->meta"}
            table = {}
            for name, system in rows.items():
                values = {seed: a[h] for seed, a in self.per_seed(system, [h]).items()}
                if values:
                    v = list(values.values())
                    paper = PAPER_HELD_OUT["other domains' teachers -> tinybert"] if name.split(" ")[0] in DOMAINS \
                        else PAPER_HELD_OUT.get(name)
                    table[name] = {"accuracy": round(float(np.mean(v)), 2),
                                   "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None,
                                   "seeds": sorted(int(s) for s in values), "system": system, "paper": paper}
            pairs = [(f"{prefix}meta-without->meta", f"{prefix}meta-without->tinybert"),
                     (f"{prefix}meta-without->tinybert", "single->tinybert"),
                     *[(f"{prefix}meta-without->tinybert", f"{prefix}{d}-teacher->tinybert") for d in others]]
            out[h] = {"results": table, "tests": self.tests(pairs, [h])}
        return out


def table(suite: Suite, extra: tuple[str, ...], before: dict, previous: dict) -> dict:
    """amazon.json (and, beside it, amazon_predictions.json: every row's correctness, so that the tests can be
    recomputed without the run folders)."""
    found = Table(suite, extra, before)
    teachers = [s for s, system in suite.systems.items() if system.start is None and "{" not in s]
    fit, overrides = recipe(list(extra), suite.recipe).fit, {}  # fit settings a teacher changes (besides its mode)
    for system in teachers:
        changed = recipe(suite.sets_of(system, {}, extra), suite.recipe).fit
        differs = {k: getattr(changed, k) for k in ("epochs", "lr", "max_length", "seed", "batch_size")
                   if getattr(changed, k) != getattr(fit, k)}
        if differs:
            overrides[system] = differs
    paper = {"source": "DESIGN.md Reference figures: the authors' slides, BERT-base teacher, TinyBERT-4 student",
             "results": {s: {"name": n, **dict(zip([*DOMAINS, "average"], v))} for s, (n, v) in PAPER.items()},
             "held_out": {"source": "DESIGN.md Reference figures: MNLI, fiction held out, tested on fiction",
                          "results": PAPER_HELD_OUT}}
    setup_values = setup(suite, extra, seeds=suite.values["seeds"], domains=suite.values["domains"],
                         teacher_overrides=overrides)
    setup_values["teacher_fit"] = setup_values["teacher_fit"].format(fit=fit)
    teacher_configs = {system: runs["all"][seed]["config"] for system, runs in found.runs.items()
                       if system in found.teachers for seed in runs.get("all", {})}
    rows = {**found.rows_setup, "order": "per domain, the test rows of dataset.select('test', [domain]) in order",
            "value": "1 = the model predicts the gold label"}
    suite.files[suite.out.with_name("amazon_predictions.json")] = json.dumps(
        {"setup": rows, "correct": found.correct}, separators=(",", ":")) + "\n"
    return {"setup": {**setup_values, "teachers": teacher_configs}, "results": found.results(), "tests": found.tests(),
            "held_out": found.held_out(), "runs": found.runs, "paper": paper}
