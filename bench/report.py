"""Write docs/results.md and the README's results table from the JSON files in bench/results/.

    python -m bench.report

docs/results.md is written whole: tables built from teachers.json, students.json, amazon.json (with its
held-out tables), scarce.json, speed.json, amazon_cpu.json, int8_variants.json, int8_static*.json,
ablation.json, mpnet.json, keep.json and transfer.json (whichever exist), beside the paper's figures.
In README.md only the text between the `<!-- results:start -->` and `<!-- results:end -->` markers is
replaced, by one table (teacher, student fp32 and int8, size, speed-up, Meta-KD against TinyBERT-KD) from
amazon_cpu.json, speed.json and amazon.json. Nothing is typed by hand.
"""

from __future__ import annotations

import json
import sys

from bench.common import DOMAINS, PAPER, RESULTS, ROOT
from metakd_cli.core.timing import why_unsteady, with_spread

README = ROOT / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = [*DOMAINS, "average"]


def _p(p_value: float) -> str:
    """A bootstrap p-value as text: under 0.001 it is a bound (10,000 resamples cannot show 0)."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def _row(name: str, values: list[object], extra: str = "") -> str:
    cells = [f"{v:.1f}" if isinstance(v, (int, float)) else "-" if v is None else str(v) for v in values]
    return f"| {name} | " + " | ".join(cells) + (f" | {extra} |" if extra else " |")


def _timed(row: dict, key: str, spread: str) -> object:
    """A speed timed in rounds, with its fastest and slowest round when the results file has them (newer runs)."""
    return with_spread(row[key], row[spread], 1) if row.get(spread) else row[key]


def _accuracy_table(title: str, results: dict, extra_key: str | None = None, extra_name: str = "",
                    seeds: bool = False, paper: bool = False) -> list[str]:
    """One row per system: the domains' accuracy, an optional extra column, (``seeds``) the seeds
    each row averages and (``paper``) the paper's average for the same system."""
    extras = [extra_name] * bool(extra_key) + ["seeds"] * seeds + ["paper average"] * paper
    head = "| system | " + " | ".join(COLUMNS + extras) + " |"
    lines = [f"**{title}**", "", head, "|" + " --- |" * (len(COLUMNS) + 1 + len(extras))]
    for name, row in results.items():
        cells = [("-" if row.get(extra_key) is None else str(row[extra_key]))] if extra_key else []
        cells += [", ".join(map(str, row.get("seeds", []))) or "-"] if seeds else []
        cells += [f"{PAPER[name][1][-1]:.1f}" if name in PAPER else "-"] if paper else []
        lines.append(_row(name, [row.get(d, "-") for d in COLUMNS], " | ".join(cells)))
    return lines + [""]


def build() -> str:
    lines = []
    sections = (_teachers(RESULTS / "teachers.json"), _students(RESULTS / "students.json"),
                _amazon(RESULTS / "amazon.json"), _scarce(RESULTS / "scarce.json"), _speed(RESULTS / "speed.json"),
                _amazon_cpu(RESULTS / "amazon_cpu.json"), _int8_variants(RESULTS / "int8_variants.json"),
                _ablation(RESULTS / "ablation.json"), _mpnet(RESULTS / "mpnet.json"), _keep(RESULTS / "keep.json"),
                _transfer(RESULTS / "transfer.json"))
    for section in sections:
        lines += section
    lines += _int8_static(RESULTS / "int8_static.json", "the student of a small Amazon run")
    lines += _int8_static(RESULTS / "int8_static_teacher.json", "the teacher of the same run")
    lines += _int8_static(RESULTS / "int8_static_speed.json", "a 4-layer Amazon student, on all its dev rows")
    lines += _accuracy_table("The paper (BERT-base teacher, TinyBERT-4 student; for comparison)",
                             {name: dict(zip(COLUMNS, v)) for name, v in PAPER.values()})
    return "\n".join(lines)


def _teachers(path) -> list[str]:
    """bench/results/teachers.json: the teachers on the full Amazon data."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    setup = data["setup"]
    lines += [f"Test accuracy (%) on the Amazon data (seeded 80/10/10 split, 200 test rows per domain), "
              f"offline teacher {setup['teacher']}, {setup['epochs']} epochs, lr {setup['lr']}, "
              f"seq {setup['max_length']}, seed {setup['seed']}; `python -m bench run teachers`.", ""]
    lines += _accuracy_table("Teachers", data["results"], "minutes", "minutes")
    return lines

def _students(path) -> list[str]:
    """bench/results/students.json: all-domain students."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    setup = data["setup"]
    lines += [f"One all-domain student per system, {setup['intermediate_epochs']} intermediate + "
              f"{setup['epochs']} prediction epochs, seed {setup['seed']}; `python -m bench run students`. "
              "One seed: differences of a point or two are within noise (see `bench/suites/amazon.yaml` for seeds "
              "and paired tests).", ""]
    lines += _accuracy_table("Students (`tiny` = 4 of the teacher's 6 layers)", data["results"],
                             "minutes", "minutes")
    return lines

def _amazon(path) -> list[str]:
    """bench/results/amazon.json: the paper's table, paired tests and the held-out tables."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    setup = data["setup"]
    distill = setup["distill"]
    seeds = sorted({s for name, row in data["results"].items() if not name.startswith("teacher-")
                    for s in row.get("seeds", [])})
    overrides = "".join(f"; {name} fits with " + ", ".join(f"{k} {v}" for k, v in changed.items())
                        for name, changed in setup.get("teacher_overrides", {}).items())
    lines += [f"Per-domain students (`distill --domain D`, scored on D), {distill['intermediate_epochs']} "
              f"intermediate + {distill['epochs']} prediction epochs, student seeds {seeds} (teachers: "
              f"{setup.get('teacher_fit', 'seed 42')}{overrides}); std = sample standard deviation over seeds of each "
              "seed's average; `python -m bench run amazon`.", ""]
    lines += _accuracy_table("The paper's table (mean over seeds)", data["results"], "std", "std", seeds=True,
                             paper=True)
    for name, test in data.get("tests", {}).items():
        lo, hi = test["ci95"]
        lines.append(f"- {name}: {test['diff']:+.2f} points (95% CI {lo:+.2f} to {hi:+.2f}), paired "
                     f"bootstrap {_p(test['p_value'])}")
    lines.append("")
    for h, section in data.get("held_out", {}).items():
        lines += [f"**Held out: {h}** (its teachers never saw it; students distilled and scored on {h}; mean over "
                  "seeds). The paper's column is its MNLI experiment (fiction held out, scored on fiction).",
                  "", f"| system | {h} | std | seeds | paper (MNLI fiction) |", "| --- | --- | --- | --- | --- |"]
        for name, row in section["results"].items():  # "paper": the MNLI figure amazon.py put beside the row
            lines.append(_row(name.replace("H", h), [row["accuracy"], "-" if row["std"] is None else row["std"],
                                                     ", ".join(map(str, row["seeds"])), row.get("paper")]))
        for name, test in section.get("tests", {}).items():
            lines.append(f"- {name.replace(f'held-out/{h}/', '')}: {test['diff']:+.2f} points, "
                         f"{_p(test['p_value'])}")
        lines.append("")
    return lines

def _scarce(path) -> list[str]:
    """bench/results/scarce.json: the data-scarce table."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    setup, rows = data["setup"], data["results"]
    columns = ["single-teacher", "single->tinybert", "meta-teacher", "meta->meta", "meta->tinybert"]
    columns = [c for c in columns if any(c in row for row in rows.values())]
    distill = setup.get("distill", {})
    epochs = (f"students {distill['intermediate_epochs']} + {distill['epochs']} epochs at F = 1"
              if distill else "")
    rule = f"; epochs: {setup['epochs']}" if setup.get("epochs") else ""
    dev = f"; {setup['dev']}" if setup.get("dev") else ""
    lines += [f"**Data-scarce: {setup['domain']}** (share of its training rows; the meta-teacher keeps every "
              f"row of the other domains; accuracy on {setup['domain']}'s test rows, one seed; "
              f"{epochs}{rule}{dev}); `python -m bench run scarce`.", "",
              "| fraction | train rows | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for fraction, row in sorted(rows.items(), key=lambda kv: float(kv[0])):
        lines.append(_row(fraction, [str(row.get("train_rows", "-")), *[row.get(c, "-") for c in columns]]))
    lines.append("")
    for fraction, tests in sorted(data.get("tests", {}).items(), key=lambda kv: float(kv[0])):
        lines.append(f"- F = {fraction}: " + "; ".join(
            f"{name} {t['diff']:+.1f} points (95% CI {t['ci95'][0]:+.1f} to {t['ci95'][1]:+.1f}, "
            f"{_p(t['p_value'])})" for name, t in tests.items()))
    lines += [""] * bool(data.get("tests"))
    return lines

def _speed(path) -> list[str]:
    """bench/results/speed.json: latency, throughput, size and the int8 matmul ceiling."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    cpu = data["setup"].get("cpu", {})
    threads = data["setup"].get("threads", {})
    threads = threads.get("torch_intra_op", "?") if isinstance(threads, dict) else threads
    lines += [f"**Speed** on {cpu.get('model', '?')} ({', '.join(cpu.get('flags', []))}), {threads} threads, "
              f"seq 128, {str(data['setup'].get('date', '?'))[:10]}; `python -m bench run speed`. Fixed shape: "
              "every row padded to 128 tokens; predict: real test texts end to end (tokenisation included), "
              "length-bucketed.", "",
              "| model | latency p50 ms (b1) | latency p90 ms (b1) | throughput ex/s (b32) | predict texts/s "
              "| size MB |", "| --- | --- | --- | --- | --- | --- |"]
    for name, row in data["results"].items():
        predict = (row.get("predict") or {}).get("bucketed_texts_per_s", "-")
        lines.append(_row(name, [_timed(row, "latency_b1_p50_ms", "latency_b1_spread_ms"), row["latency_b1_p90_ms"],
                                 _timed(row, "throughput_b32", "throughput_b32_spread"), predict, row["size_mb"]]))
    timing = data["setup"].get("timing") or {}
    if timing:
        lines += ["", f"Medians of {timing['rounds']} interleaved rounds (every model in turn), the fastest and "
                      "slowest round in brackets" + (f"; **unsteady**: {why_unsteady(timing['why'])}."
                                                      if timing.get("unsteady") else ".")]
    ceiling = data["ceiling"]
    lines += ["", f"int8 matmul ceiling ({'x'.join(map(str, ceiling['shape']))}): "
                  f"{ceiling['int8_gmacs_per_s']:.0f} G multiply-accumulates/s (fp32 {ceiling['fp32_gmacs_per_s']:.0f}); "
                  f"the int8 student runs at {ceiling['student_int8_gmacs_per_s']:.0f}, "
                  f"{ceiling['student_int8_share_of_int8_ceiling']:.0%} of it.", ""]
    for target in data.get("targets", []):
        value = f"{target['value']:.0%}" if target["threshold"] < 1 else f"{target['value']:.1f}x"
        lines.append(f"- {'met' if target['met'] else '**not met**'}: {target['target']} ({value})")
    lines.append("")
    return lines

def _amazon_cpu(path) -> list[str]:
    """bench/results/amazon_cpu.json: `metakd run amazon-cpu` end to end."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    steps = ", ".join(f"{step} {row['seconds'] / 60:.1f}" for step, row in data["steps"].items())
    accuracy = ", ".join(f"{name} {row['average']:.1f}" for name, row in data["accuracy"].items())
    lines += [f"**`metakd run amazon-cpu` end to end** on {data['setup']['cpu'].get('model', '?')} "
              f"({data['setup']['cpu'].get('cores', '?')} cores), {data['started'][:10]}: "
              f"{data['minutes']:.1f} minutes ({steps}); target under {data['target_minutes']} minutes: "
              f"{'met' if data['met'] else '**not met**'}. Test accuracy averages: {accuracy}; "
              "`python -m bench run amazon_cpu`.", ""]
    return lines

def _int8_variants(path) -> list[str]:
    """bench/results/int8_variants.json: ways to build the int8 student."""
    if not path.is_file():
        return []
    lines: list[str] = []
    data = json.loads(path.read_text())
    lines += [f"**Ways to build the int8 student** ({data['setup']['int8_format']} format, same fp32 ONNX file, "
              "one process; test accuracy on the 800 test rows, agreement with fp32); "
              "`python -m bench run int8_variants`.", "",
              "| variant | throughput ex/s (b32) | latency p50 ms (b1) | size MiB | test acc % | agreement % |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, row in data["results"].items():
        lines.append(_row(name, [_timed(row, "throughput_b32", "throughput_b32_spread"),
                                 _timed(row, "latency_b1_p50_ms", "latency_b1_spread_ms"), row["size_mb"],
                                 row["test_accuracy"], row["agreement_with_fp32"]]))
    lines.append("")
    return lines

def _versus(test: dict | None) -> str:
    """A row's difference from the system it is paired with (the test's diff is that system minus this row's),
    with its p; 0.0 - diff so that no difference reads +0.00, not -0.00."""
    return f"{0.0 - test['diff']:+.2f} ({_p(test['p_value'])})" if test else "-"


def _ablation(path) -> list[str]:
    """bench/results/ablation.json: what each part of Meta-KD buys, teachers, int8 weight scales."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    domains = data["setup"]["domains"]
    teacher = data["setup"]["teacher"].get("test_accuracy") or {}
    lines = ["**Ablation**: per-domain students (`distill --domain D`, 4 of the teacher's layers, "
             "2 + 2 epochs unless named), scored on D's 200 test rows, from one meta-teacher (all-MiniLM-L6-v2, "
             "seed 42; its test accuracy on these rows: "
             + ", ".join(f"{d} {teacher[d]:.1f}" for d in [*domains, "average"] if d in teacher)
             + "); difference against full Meta-KD (or the row it is paired with) by a paired bootstrap over "
             "the same rows and seeds; `python -m bench run ablation`.", "",
             "| system | " + " | ".join([*domains, "average"]) + " | seeds | vs meta | mean abs weight diff vs meta "
             "| what |", "|" + " --- |" * (len(domains) + 6)]
    for name, row in data["results"].items():
        test = next((t for key, t in data["tests"].items() if key.endswith(f" vs {name}")), None)
        versus = _versus(test)
        distance = row.get("weight_distance_to_meta")
        lines.append(_row(name, [f"{row[d]:.2f}" if isinstance(row.get(d), (int, float)) else None
                                 for d in [*domains, "average"]],
                          f"{', '.join(map(str, row['seeds']))} | {versus} | "
                          f"{'-' if distance is None else f'{distance:.2g}'} | {row['what']}"
                          + (" (an earlier run's figures, kept)" if row.get("kept") else "")))
    lines.append("")
    measured = {name: row for name, row in data["results"].items() if row.get("stage1_terms") or row.get("lambda")}
    if measured:
        lines += ["**Inside stage 1** (each system's students: the first stage-1 epoch's mean of each term, before "
                  "weighting; the loss is lambda x (hidden + attention + gamma x domain), gamma 0.5; and the spread "
                  "of the rows' lambda)", "",
                  "| system | hidden | attention | domain | lambda min | lambda median | lambda max "
                  "| rows with lambda within 10% of the max |", "|" + " --- |" * 8]
        for name, row in measured.items():
            terms, lam = row.get("stage1_terms") or {}, row.get("lambda") or {}
            cells = [terms.get(k) for k in ("hidden", "attention", "domain")] + [
                lam.get(k) for k in ("min", "median", "max", "share_within_10pct_of_max")]
            lines.append(_row(name, ["-" if v is None else f"{v:.3g}" for v in cells]))
        lines.append("")
    teachers = (data.get("teachers") or {}).get("results") or {}
    if teachers:
        cols = [c for c in COLUMNS if c in next(iter(teachers.values()))]
        lines += ["**Teachers of the ablation** (test accuracy, every domain; paired against the meta-teacher)", "",
                  "| teacher | " + " | ".join(cols) + " | seeds | vs meta | epoch kept (dev after each epoch) |",
                  "|" + " --- |" * (len(cols) + 4)]
        for name, row in teachers.items():
            test = data["teachers"]["tests"].get(f"meta vs {name}")
            versus = _versus(test)
            lines.append(_row(name, [row.get(c) for c in cols], f"{', '.join(map(str, row['seeds']))} | {versus} | "
                                                                 f"{_dev_selection(row.get('dev_selection') or {})}"))
        lines.append("")
    scales = data.get("int8_weight_scales") or {}
    if scales:
        lines += ["**int8 weight scales, chosen on dev** (the meta-teacher, static int8, every domain's dev rows; "
                  "drop = fp32 ONNX minus int8, points)", "", "| weight scales | dev rows | int8 dev accuracy | drop |",
                  "| --- | --- | --- | --- |"]
        for name, row in scales.items():
            accuracy = (row.get("dev_accuracy") or {}).get("average")
            lines.append(_row(name, [str(row["dev_rows"]), "-" if accuracy is None else f"{accuracy:.3f}",
                                     "-" if row["drop"] is None else f"{row['drop']:.3f}"]))
        lines.append("")
    return lines


def _dev_selection(by_seed: dict) -> str:
    """'s42: 1 (89.50, 89.38)': per seed, the epoch a fit kept and its dev accuracy after each epoch."""
    cells = [f"s{seed}: {chosen.get('epoch')} ({', '.join('-' if v is None else f'{v:.2f}' for v in chosen['dev'])})"
             for seed, chosen in by_seed.items()]
    return "; ".join(cells) or "-"


# bench.mpnet's systems as the accuracy table shows them: (system, label, [(model in eval.json or None for the
# teacher's fit, what it is)])
_MPNET_ROWS = [
    ("teacher-meta", "meta-teacher", [(None, "MPNet-base")]),
    ("teacher-mix", "mix teacher", [(None, "MPNet-base")]),
    ("meta", "Meta-KD student", [("student", "minilm4, fp32"), ("int8", "minilm4, static int8")]),
    ("tinybert", "TinyBERT-KD student", [("student", "minilm4, fp32"), ("int8", "minilm4, static int8")]),
    ("kd", "logit-only KD student", [("student", "minilm4, fp32"), ("int8", "minilm4, static int8")]),
    ("kd-lr", "logit-only KD student, stage-2 lr 1e-4", [("student", "minilm4, fp32"),
                                                          ("int8", "minilm4, static int8")]),
    ("meta-lr", "Meta-KD student, stage-2 lr 1e-4", [("student", "minilm4, fp32"), ("int8", "minilm4, static int8")]),
    ("meta-trim", "Meta-KD student, --trim-vocab", [("int8", "minilm4, static int8")]),
]
_PAPER_MODEL = {"teacher-meta": "BERT-base", "teacher-mix": "BERT-base", "meta": "TinyBERT-4, fp32",
                "tinybert": "TinyBERT-4, fp32"}


def _mpnet_accuracy(data: dict) -> list[str]:
    """Test accuracy of each measured MPNet system, per domain, with the paper's row for it beneath (the paper
    reports no int8 or trimmed student); nothing when no system is measured yet."""
    results, paper = data.get("results") or {}, (data.get("setup") or {}).get("paper") or {}
    rows = []
    for system, label, models in _MPNET_ROWS:
        result = results.get(system)
        if not isinstance(result, dict):
            continue
        accuracy = result.get("test_accuracy") or {}
        for model, what in models:
            values = accuracy if model is None else accuracy.get(model)
            if isinstance(values, dict):
                rows.append((label, f"{what} (metakd)", values))
        if system in paper:
            rows.append((label, f"{_PAPER_MODEL[system]} (the paper: {paper[system]['row']})",
                         paper[system]["test_accuracy"]))
    if not rows:
        return []
    lines = ["", "Test accuracy on Amazon (one seed, 200 test rows a domain), the paper's figures beneath each system:",
             "", f"| system | model | {' | '.join(COLUMNS)} |", "| --- | --- |" + " --- |" * len(COLUMNS)]
    for label, what, values in rows:
        cells = ["-" if values.get(c) is None else f"{values[c]:.2f}" for c in COLUMNS]
        lines.append(f"| {label} | {what} | {' | '.join(cells)} |")
    return lines


def _mpnet_tests(data: dict) -> list[str]:
    """The paired tests of the MPNet students (bench.mpnet.paired_tests), one row each; nothing without any."""
    tests = {k: v for k, v in (data.get("tests") or {}).items() if isinstance(v, dict)}
    if not tests:
        return []
    lines = ["", "The students as shipped (static int8) on the same test rows, one seed (paired bootstrap stratified "
             "by domain, 10,000 resamples; exact McNemar on the rows only one gets right):", "",
             "| comparison | rows | difference (points) | 95% CI | bootstrap | only A right | only B right | McNemar |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, test in tests.items():
        mcnemar = next(iter(test["mcnemar_exact_per_seed"].values()), {})
        low, high = test["ci95"]
        lines.append(f"| {name} | {test['rows']} | {test['diff'] + 0.0:+.2f} | {low:+.2f} to {high:+.2f} | "
                     f"{_p(test['p_value'])} | {mcnemar.get('a_only', '-')} | {mcnemar.get('b_only', '-')} | "
                     f"{_p(mcnemar['p_value']) if 'p_value' in mcnemar else '-'} |")
    return lines


def _mpnet(path) -> list[str]:
    """bench/results/mpnet.json: the MPNet path's targets, each pass / fail / not measured."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    speed = data.get("speed") if isinstance(data.get("speed"), dict) else {}
    note = f"; speed and sizes {speed['measured_on']}" if speed.get("measured_on") else ""
    lines = [f"**MPNet-base teacher** (one seed; `python -m bench run mpnet`{note}): the targets", "",
             "| target | threshold | value | status |", "| --- | --- | --- | --- |"]
    for target in data["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:g}"
        lines.append(f"| {target['target']} | {target['threshold']:g} | {value} | {target['status']} |")
    lines += _mpnet_accuracy(data) + _mpnet_tests(data)
    fit = data.get("fit_speed") if isinstance(data.get("fit_speed"), dict) else {}
    if fit.get("rows_per_s"):
        lines += ["", f"The teacher's training speed (`python -m bench fit-speed mpnet`: {fit['timed_steps']} optimiser "
                  f"steps of batch {fit['batch_size']} on training rows padded to {fit['padded_lengths']} tokens, "
                  f"{fit['threads']} threads): {fit['rows_per_s']:g} rows/s, so one fit epoch's optimiser steps over "
                  f"{fit['train_rows']:,} rows take about {fit['epoch_minutes_of_optimiser_steps']:g} minutes."]
    return lines + [""]


def _keep(path) -> list[str]:
    """bench/results/keep.json: each lever of the student's training, the no-teacher student and the peers, with
    the targets and the paired tests."""
    return _suite(path, "A student that keeps its teacher", "bench run keep")


def _transfer(path) -> list[str]:
    """bench/results/transfer.json: the students with and without a transfer set, with the targets and the paired
    tests (int8, and fp32 as "(student)")."""
    return _suite(path, "A transfer set the teacher labels", "bench run transfer")


def _suite(path, title: str, driver: str) -> list[str]:
    """A suite's results file (bench.suite): its targets, one row per system, its paired tests."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    best = data["setup"].get("best_distilled")
    chosen = f"; the best distilled student chosen on dev: {best or 'none finished'}" if "best_distilled" in data["setup"] else ""
    lines = [f"**{title}** ({data['setup']['path']}; one seed; `python -m {driver}`{chosen}): the targets", "",
             "| target | threshold | value | status |", "| --- | --- | --- | --- |"]
    for target in data["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:g}"
        p_value = f" ({_p(target['p_value'])})" if target.get("p_value") is not None else ""
        lines.append(f"| {target['target']} | {target['threshold']:g} | {value}{p_value} | {target['status']} |")
    lines += ["", "| system | what | int8 test (avg) | fp32 test | dev | stage 2 | size (MB) | rows/s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    systems = data["setup"]["systems"]
    for name, row in data["results"].items():
        what = (systems.get(name) or {}).get("what") or (row.get("what") if isinstance(row, dict) else "") or ""
        if not isinstance(row, dict):
            lines.append(f"| {name} | {what} | {row} | | | | | |")
            continue
        accuracy = row.get("test_accuracy") or {}
        if "int8" in accuracy or "student" in accuracy:  # a metakd model: its eval's figures
            int8, fp32 = ((accuracy.get(m) or {}).get("average") for m in ("int8", "student"))
            stage = row.get("stage_2") or {}
            length = (f"{stage['epochs']} epochs, kept step {stage['best_step']}"
                      + (", stopped" if stage.get("stopped_early") else "")) if stage.get("epochs") else "-"
            size = (row.get("size_mb") or {}).get("model_quantized.onnx")
            speed = ((row.get("speed") or {}).get("int8") or {}).get("throughput_rows_per_s")
        else:  # the teacher, or a peer
            int8, fp32 = None, accuracy.get("average")
            length, size, speed = "-", row.get("size_mb"), row.get("rows_per_s")
        dev = row.get("dev_accuracy")
        dev = dev.get("average") if isinstance(dev, dict) else dev
        cells = [_cell(int8), _cell(fp32), _cell(dev), length, _cell(size, 1), _cell(speed, 0)]
        lines.append(f"| {name} | {what} | {' | '.join(cells)} |")
    lines += ["", "rows/s: each system's own eval (int8 at batch 32; a peer's own predict), taken at different times on a "
              "shared 2-core machine: a size-and-order-of-magnitude figure, not a speed comparison (`python -m bench run speed` times "
              "models side by side)."]
    return lines + _mpnet_tests(data) + [""]


def _cell(value: object, digits: int = 2) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _int8_static(path, what: str) -> list[str]:
    """bench/results/int8_static*.json: static against dynamic int8 on dev rows (accuracy, batch invariance,
    speed), built from one fp32 ONNX file."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    setup = data["setup"]
    lines = [f"**Static or dynamic int8: {what}** ({setup.get('target', '?')} format, {setup['dev_rows']} dev rows, "
             f"{setup.get('calibration_rows', '?')} calibration texts, {setup.get('rounds', '?')} interleaved rounds, "
             f"{str(setup.get('date', '?'))[:10]}; batch invariance: each dev row alone against in batches of "
             f"{_first_batch(data)}; `python -m bench run int8_static`). Chosen: {data.get('chosen', '-')}, by the rule: "
             f"{data.get('rule', '-')}.", "",
             "| variant | dev acc % | change vs fp32 | passes the gate | agreement % | max prob diff in a batch "
             "| labels changed | size MB | throughput ex/s (b32) | latency p50 ms (b1) |", "|" + " --- |" * 10]
    for name, row in data["results"].items():
        invariance = row.get("batch_invariance") or {}
        diff = invariance.get("max_abs_prob_diff")
        lines.append(_row(name, [(row.get("dev_accuracy") or {}).get("average"), f"{row['change_vs_fp32']:+.3f}",
                                 "yes" if row.get("passes_gate") else "no", row.get("agreement_with_fp32"),
                                 "-" if diff is None else f"{diff:.2g}", str(invariance.get("label_flips", "-")),
                                 row.get("size_mb"), row.get("throughput_b32"), row.get("latency_b1_p50_ms")]))
    return lines + [""]


def _first_batch(data: dict) -> str:
    """The batch size the invariance check used (the same for every variant)."""
    sizes = {(row.get("batch_invariance") or {}).get("batch_size") for row in data["results"].values()} - {None}
    return ", ".join(map(str, sorted(sizes))) or "?"


def summary() -> str:
    """The README's one table: the `metakd run amazon-cpu` models' test accuracy (amazon_cpu.json), their size
    and speed at batch 32 (speed.json) and the per-domain Meta-KD students against TinyBERT-KD's (amazon.json);
    a row whose file is missing reads "not measured"."""
    run, speed, amazon = (_load(RESULTS / name) for name in ("amazon_cpu.json", "speed.json", "amazon.json"))
    accuracy = (run or {}).get("accuracy") or {}
    timed = (speed or {}).get("results") or {}
    teacher_speed = (timed.get("teacher-torch-fp32") or {}).get("throughput_b32")
    head = ["| model | test accuracy % | size MB | throughput ex/s (batch 32) | speed-up over the teacher |",
            "| --- | --- | --- | --- | --- |"]
    rows = []
    for label, model, timed_as in (("teacher (all-MiniLM-L6-v2 meta-teacher, PyTorch fp32)", "teacher",
                                    "teacher-torch-fp32"),
                                   ("student fp32 (4 layers, ONNX)", "onnx", "student-onnx-fp32"),
                                   ("student int8 (4 layers, ONNX)", "int8", "student-onnx-int8")):
        average = (accuracy.get(model) or {}).get("average")
        row = timed.get(timed_as) or {}
        ratio = (f"{row['throughput_b32'] / teacher_speed:.1f}x" if teacher_speed and row.get("throughput_b32")
                 else "-")
        rows.append(f"| {label} | {_measured(average, 1)} | {_measured(row.get('size_mb'), 1)} | "
                    f"{_measured(row.get('throughput_b32'), 1)} | {ratio} |")
    results, test = (amazon or {}).get("results") or {}, ((amazon or {}).get("tests") or {}).get(
        "meta->meta vs meta->tinybert")
    meta, tinybert = results.get("meta->meta") or {}, results.get("meta->tinybert") or {}
    if test and meta.get("average") is not None and tinybert.get("average") is not None:
        low, high = test["ci95"]
        seeds = ", ".join(map(str, meta.get("seeds", []))) or "-"
        versus = (f"{meta['average']:.1f} vs {tinybert['average']:.1f}: {test['diff']:+.2f} points "
                  f"(95% CI {low:+.2f} to {high:+.2f}), {_p(test['p_value'])}")
        rows.append(f"| Meta-KD vs TinyBERT-KD students (one per domain, seeds {seeds}) | {versus} | - | - | - |")
    else:
        rows.append("| Meta-KD vs TinyBERT-KD students | not measured | - | - | - |")
    cpu = ((speed or {}).get("setup") or {}).get("cpu") or {}
    source = (f"Test accuracy on the Amazon reviews, averaged over {', '.join(DOMAINS)}: `metakd run amazon-cpu` "
              f"(`python -m bench run amazon_cpu`); size and speed: `python -m bench run speed` on {cpu.get('model', '?')} "
              f"({cpu.get('cores', '?')} cores), every row padded to {((speed or {}).get('setup') or {}).get('seq_len', '?')} "
              "tokens; the last row: paired bootstrap over the same test rows (`python -m bench run amazon`).")
    return "\n".join([*head, *rows, "", source])


def _load(path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _measured(value: object, digits: int) -> str:
    return "not measured" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def document() -> str:
    """docs/results.md, whole."""
    return "\n".join([
        "# Results", "",
        "<!-- Written by `python -m bench.report` from bench/results/*.json; edit those, not this file. -->", "",
        "Every figure here is read from the JSON files in `bench/results/`, which the benchmark drivers write; "
        "[benchmarks.md](benchmarks.md) says how each one runs and how to read its table. Minutes are wall time "
        "on shared machines, so they are generous.", "",
        build(), ""])


def main() -> None:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        sys.exit(f"{README} has no {START} ... {END} markers")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    RESULTS_DOC.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_DOC.write_text(document(), encoding="utf-8")
    README.write_text(f"{before}{START}\n{summary()}\n{END}{after}", encoding="utf-8")
    print(f"wrote {RESULTS_DOC} and the results table of {README}")


if __name__ == "__main__":
    main()
