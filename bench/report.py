"""Write docs/results.md and the README's results table from the JSON files in bench/results/.

    python -m bench.report

docs/results.md is written whole: each suite's results file that exists (int8_static: each of its
``report_files``), in the order of SECTIONS, as its suite file's ``report`` declares it, then the paper's figures.
In README.md only the text between the `<!-- results:start -->` and `<!-- results:end -->` markers is replaced, by
one table (teacher, student fp32 and int8, size, speed-up, Meta-KD against TinyBERT-KD) from amazon_cpu.json,
speed.json and amazon.json. Nothing is typed by hand.

A ``report`` is a list of blocks, each followed by a blank line: ``text`` (a template), ``table`` (the rows at a key
path, a dict or a list of dicts: a line of ``cells`` each under ``head``), ``each`` (a ``line`` template per row) or
``hook`` (the lines a function of HOOKS writes, blank ones included); ``when`` (a key path) skips a block whose
value is empty. A template fills each {path:spec|default} with the value at a dotted key path ("setup.cpu.model",
"ci95.0"; "*" is a dict's first value, a row's key is "name", the path "" the row itself), formatted by ``spec``:
Python's format spec, a list's separator, "yes/no" for a flag, or a name of FORMATS; ``default`` stands for a
missing or empty value. A cell that is a bare key path shows a number with one decimal and a missing value as "-".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from bench.common import DOMAINS, PAPER, RESULTS, ROOT
from bench.suite import SUITES
from metakd_cli.core.timing import why_unsteady

README = ROOT / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = [*DOMAINS, "average"]
SECTIONS = ("teachers", "students", "amazon", "scarce", "speed", "amazon_cpu", "ablation", "mpnet", "keep", "transfer",
            "int8_static")
PAPER_TABLE = [{"text": "**The paper (BERT-base teacher, TinyBERT-4 student; for comparison)**"},
               {"table": "results", "head": ["system", *COLUMNS], "cells": ["{name}", *COLUMNS]}]
FIELD = re.compile(r"\{([^{}:|]*)(?::([^{}|]*))?(?:\|([^{}]*))?\}")


def _p(p_value: float) -> str:
    """A bootstrap p-value as text: under 0.001 it is a bound (10,000 resamples cannot show 0)."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


FORMATS = {  # spec -> how a value reads
    "p": _p,
    "signed": lambda diff: f"{diff + 0.0:+.2f}",  # no difference reads +0.00, not -0.00
    "with_p": lambda p_value: f" ({_p(p_value)})",
    "spread": lambda low_high: f" ({low_high[0]:.1f}–{low_high[1]:.1f})" if len(low_high) == 2 else "",
    "paper": lambda system: f"{PAPER[system][1][-1]:.1f}" if system in PAPER else "-",
    "student_seeds": lambda results: str(sorted({s for name, row in results.items() if not name.startswith("teacher-")
                                                 for s in row.get("seeds", [])})),
    "overrides": lambda by_teacher: "".join(f"; {name} fits with " + ", ".join(f"{k} {v}" for k, v in changed.items())
                                            for name, changed in by_teacher.items()),
    "unsteady": lambda timing: f"; **unsteady**: {why_unsteady(timing['why'])}." if timing.get("unsteady") else ".",
    "speed_target": lambda row: f"{row['value']:.0%}" if row["threshold"] < 1 else f"{row['value']:.1f}x",
    "step_minutes": lambda steps: ", ".join(f"{step} {row['seconds'] / 60:.1f}" for step, row in steps.items()),
    "averages": lambda models: ", ".join(f"{name} {row['average']:.1f}" for name, row in models.items()),
    "batch_sizes": lambda results: ", ".join(map(str, sorted({(row.get("batch_invariance") or {}).get(
        "batch_size") for row in results.values()} - {None}))) or "?",
    "speed_note": lambda speed: (f"; speed and sizes {speed['measured_on']}"
                                 if isinstance(speed, dict) and speed.get("measured_on") else ""),
}


def value(data: object, path: str) -> object:
    """The value at a dotted key path, None where there is none."""
    for key in path.split(".") if path else []:
        if key == "*" and isinstance(data, dict):  # its first value
            data = next(iter(data.values()), None)
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            data = data.get(key) if isinstance(data, dict) else None
    return data


def fill(template: str, data: object) -> str:
    def one(field: re.Match) -> str:
        found, spec, default = value(data, field[1]), field[2] or "", field[3]
        if "/" in spec:
            return spec.split("/")[0 if found else 1]
        if default is not None and found in (None, [], {}, ""):
            return default
        if spec in FORMATS:
            return FORMATS[spec](found)
        return spec.join(map(str, found)) if isinstance(found, list) and spec else format(found, spec)
    return FIELD.sub(one, template)


def _row(name: str, values: list[object]) -> str:
    cells = [f"{v:.1f}" if isinstance(v, (int, float)) else "-" if v is None else str(v) for v in values]
    return f"| {name} | " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list]) -> list[str]:
    """A markdown table: ``head``, then each row (its name, then its cells) as _row writes it."""
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *(_row(row[0], row[1:]) for row in rows)]


def _cell(number: object, digits: int = 2, missing: str = "-") -> str:
    return missing if not isinstance(number, (int, float)) else f"{number:.{digits}f}"


def _rows(found: object) -> list[dict]:
    items = found.items() if isinstance(found, dict) else enumerate(found or [])
    return [{"name": name, **row} for name, row in items if isinstance(row, dict)]


def render(blocks: list[dict], data: dict) -> list[str]:
    """The lines of a ``report`` (the module's doc) over a results document."""
    lines: list[str] = []
    for block in blocks:
        if "when" in block and not value(data, block["when"]):
            continue
        if "hook" in block:
            lines += HOOKS[block["hook"]](data, block)
            continue
        if "text" in block:
            lines.append(fill(block["text"], data))
        elif "table" in block:
            lines += _table(block["head"], [[fill(c, row) if "{" in c else value(row, c) for c in block["cells"]]
                                            for row in _rows(value(data, block["table"]))])
        else:
            lines += [fill(block["line"], row) for row in _rows(value(data, block["each"]))]
        lines.append("")
    return lines


# ---------------------------------------------------------------------- hooks: what a declared block cannot say


def _held_out(data: dict, block: dict) -> list[str]:
    """amazon's held-out tables: per domain H, each row's accuracy on H, its tests beneath."""
    lines = []
    for h, section in (data.get("held_out") or {}).items():
        lines += [fill(block["caption"], {"h": h}), "", *_table(  # "paper": the MNLI figure amazon.py put beside
            ["system", h, "std", "seeds", "paper (MNLI fiction)"],
            [[name.replace("H", h), row["accuracy"], row["std"], ", ".join(map(str, row["seeds"])), row.get("paper")]
             for name, row in section["results"].items()])]
        lines += [f"- {name.replace(f'held-out/{h}/', '')}: {test['diff']:+.2f} points, {_p(test['p_value'])}"
                  for name, test in section.get("tests", {}).items()] + [""]
    return lines


def _scarce(data: dict, block: dict) -> list[str]:
    """scarce's table: a row per fraction (smallest first), the systems measured, then the tests at each."""
    setup, rows, distill = data["setup"], data["results"], data["setup"].get("distill", {})
    columns = [c for c in block["columns"] if any(c in row for row in rows.values())]
    table = [[fraction, str(row.get("train_rows", "-")), *[row.get(c, "-") for c in columns]]
             for fraction, row in sorted(rows.items(), key=lambda kv: float(kv[0]))]
    lines = [f"**Data-scarce: {setup['domain']}** (share of its training rows; the meta-teacher keeps every row of the "
             f"other domains; accuracy on {setup['domain']}'s test rows, one seed; "
             + (f"students {distill['intermediate_epochs']} + {distill['epochs']} epochs at F = 1" if distill else "")
             + (f"; epochs: {setup['epochs']}" if setup.get("epochs") else "")
             + (f"; {setup['dev']}" if setup.get("dev") else "") + "); `python -m bench run scarce`.", "",
             *_table(["fraction", "train rows", *columns], table), ""]
    for fraction, tests in sorted(data.get("tests", {}).items(), key=lambda kv: float(kv[0])):
        lines.append(f"- F = {fraction}: " + "; ".join(
            f"{name} {t['diff']:+.1f} points (95% CI {t['ci95'][0]:+.1f} to {t['ci95'][1]:+.1f}, "
            f"{_p(t['p_value'])})" for name, t in tests.items()))
    return lines + [""] * bool(data.get("tests"))


def _versus(test: dict | None) -> str:
    """A row's difference from the system it is paired with (the test's diff is that system minus this row's),
    with its p; 0.0 - diff so that no difference reads +0.00, not -0.00."""
    return f"{0.0 - test['diff']:+.2f} ({_p(test['p_value'])})" if test else "-"


def _ablation(data: dict, block: dict) -> list[str]:
    """ablation's tables but the int8 one: the students (the suite's domains), inside stage 1, the teachers."""
    domains = [*data["setup"]["domains"], "average"]
    teacher = data["setup"]["teacher"].get("test_accuracy") or {}
    students = []
    for name, row in data["results"].items():
        test = next((t for key, t in data["tests"].items() if key.endswith(f" vs {name}")), None)
        distance = row.get("weight_distance_to_meta")
        students.append([name, *(f"{row[d]:.2f}" if isinstance(row.get(d), (int, float)) else None for d in domains),
                         ", ".join(map(str, row["seeds"])), _versus(test),
                         "-" if distance is None else f"{distance:.2g}",
                         row["what"] + (" (an earlier run's figures, kept)" if row.get("kept") else "")])
    head = ["system", *domains, "seeds", "vs meta", "mean abs weight diff vs meta", "what"]
    lines = [fill(block["caption"], {"teacher": ", ".join(f"{d} {teacher[d]:.1f}" for d in domains if d in teacher)}),
             "", *_table(head, students), ""]
    terms = [f"stage1_terms.{k}" for k in ("hidden", "attention", "domain")] + [
        f"lambda.{k}" for k in ("min", "median", "max", "share_within_10pct_of_max")]
    measured = [[name, *("-" if value(row, t) is None else f"{value(row, t):.3g}" for t in terms)]
                for name, row in data["results"].items() if row.get("stage1_terms") or row.get("lambda")]
    if measured:
        head = ["system", "hidden", "attention", "domain", "lambda min", "lambda median", "lambda max",
                "rows with lambda within 10% of the max"]
        lines += [block["stage1"], "", *_table(head, measured), ""]
    teachers = (data.get("teachers") or {}).get("results") or {}
    if teachers:
        cols, rows = [c for c in COLUMNS if c in next(iter(teachers.values()))], []
        for name, row in teachers.items():
            chosen = "; ".join(f"s{seed}: {c.get('epoch')} ({', '.join(_cell(v) for v in c['dev'])})"
                               for seed, c in (row.get("dev_selection") or {}).items()) or "-"
            rows.append([name, *(row.get(c) for c in cols), ", ".join(map(str, row["seeds"])),
                         _versus(data["teachers"]["tests"].get(f"meta vs {name}")), chosen])
        lines += [block["teachers"], "", *_table(["teacher", *cols, "seeds", "vs meta",
                                                  "epoch kept (dev after each epoch)"], rows), ""]
    return lines


def _mpnet_accuracy(data: dict, block: dict) -> list[str]:
    """Test accuracy of each measured system of ``block["systems"]``, per domain, with the paper's row for it
    beneath; nothing when no system is measured yet."""
    results, paper, rows = data.get("results") or {}, value(data, "setup.paper") or {}, []
    for system, shown in block["systems"].items():
        if not isinstance(result := results.get(system), dict):
            continue
        accuracy = result.get("test_accuracy") or {}
        for model, what in shown["models"].items():  # "": the teacher's own figures
            if isinstance(values := accuracy.get(model) if model else accuracy, dict):
                rows.append((shown["label"], f"{what} (metakd)", values))
        if system in paper:
            rows.append((shown["label"], f"{shown['paper']} (the paper: {paper[system]['row']})",
                         paper[system]["test_accuracy"]))
    cells = [[label, what, *("-" if values.get(c) is None else f"{values[c]:.2f}" for c in COLUMNS)]
             for label, what, values in rows]
    return [block["caption"], "", *_table(["system", "model", *COLUMNS], cells), ""] if rows else []


def _systems(data: dict, block: dict) -> list[str]:
    """A suite's systems (bench.suite): what each is, its int8 and fp32 test, dev, stage 2's length, size, rows/s;
    ``block["at"]``: those of a suite inside (the MPNet path), nothing when it is not in the results file."""
    if "at" in block and not isinstance(data := value(data, block["at"]), dict):
        return []
    lines = _table(["system", "what", "int8 test (avg)", "fp32 test", "dev", "stage 2", "size (MB)", "rows/s"], [])
    systems = data["systems"] if "at" in block else data["setup"]["systems"]
    for name, row in data["results"].items():
        what = (systems.get(name) or {}).get("what") or (row.get("what") if isinstance(row, dict) else "") or ""
        if not isinstance(row, dict):
            lines.append(f"| {name} | {what} | {row} | | | | | |")
            continue
        accuracy = row.get("test_accuracy") or {}
        if "int8" in accuracy or "student" in accuracy:  # a metakd model: its eval's figures
            int8, fp32 = (value(accuracy, f"{model}.average") for model in ("int8", "student"))
            stage = row.get("stage_2") or {}
            length = (f"{stage['epochs']} epochs, kept step {stage['best_step']}"
                      + (", stopped" if stage.get("stopped_early") else "")) if stage.get("epochs") else "-"
            size = (row.get("size_mb") or {}).get("model_quantized.onnx")
            speed = value(row, "speed.int8.throughput_rows_per_s")
        else:  # the teacher, or a peer
            int8, fp32, length = None, accuracy.get("average"), "-"
            size, speed = row.get("size_mb"), row.get("rows_per_s")
        dev = row.get("dev_accuracy")
        dev = dev.get("average") if isinstance(dev, dict) else dev
        lines.append(_row(name, [what, _cell(int8), _cell(fp32), _cell(dev), length, _cell(size, 1), _cell(speed, 0)]))
    return lines + [""]


HOOKS = {"held_out": _held_out, "scarce": _scarce, "ablation": _ablation, "mpnet_accuracy": _mpnet_accuracy,
         "systems": _systems}


# ---------------------------------------------------------------------- the page and the README's table


def _spec(suite: str) -> dict:
    return yaml.safe_load((SUITES / f"{suite}.yaml").read_text(encoding="utf-8"))


def section(suite: str, path: Path, **more) -> list[str]:
    """A results file as its suite file's ``report`` declares it (``more``: its template's values beside the
    file's); nothing when the file is missing."""
    if not path.is_file():
        return []
    return render(_spec(suite)["report"], {**json.loads(path.read_text()), **more})


def build() -> str:
    lines = []
    for suite in SECTIONS:
        spec = _spec(suite)
        for file, what in (spec.get("report_files") or {spec.get("results", f"{suite}.json"): ""}).items():
            lines += section(suite, RESULTS / file, what=what)
    paper = {"results": {name: dict(zip(COLUMNS, figures)) for name, figures in PAPER.values()}}
    return "\n".join(lines + render(PAPER_TABLE, paper))


def summary() -> str:
    """The README's one table: the `metakd run amazon-cpu` models' test accuracy (amazon_cpu.json), their size
    and speed at batch 32 (speed.json) and the per-domain Meta-KD students against TinyBERT-KD's (amazon.json);
    a row whose file is missing reads "not measured"."""
    run, speed, amazon = (json.loads(path.read_text()) if (path := RESULTS / name).is_file() else {}
                          for name in ("amazon_cpu.json", "speed.json", "amazon.json"))
    timed = speed.get("results") or {}
    teacher_speed = value(timed, "teacher-torch-fp32.throughput_b32")
    lines = ["| model | test accuracy % | size MB | throughput ex/s (batch 32) | speed-up over the teacher |",
             "| --- | --- | --- | --- | --- |"]
    for label, model, timed_as in (("teacher (all-MiniLM-L6-v2 meta-teacher, PyTorch fp32)", "teacher",
                                    "teacher-torch-fp32"),
                                   ("student fp32 (4 layers, ONNX)", "onnx", "student-onnx-fp32"),
                                   ("student int8 (4 layers, ONNX)", "int8", "student-onnx-int8")):
        row = timed.get(timed_as) or {}
        ratio = f"{row['throughput_b32'] / teacher_speed:.1f}x" if teacher_speed and row.get("throughput_b32") else "-"
        cells = [value(run, f"accuracy.{model}.average"), row.get("size_mb"), row.get("throughput_b32")]
        lines.append(f"| {label} | " + " | ".join(_cell(c, 1, "not measured") for c in cells) + f" | {ratio} |")
    test = value(amazon, "tests.meta->meta vs meta->tinybert")
    meta, tinybert = (value(amazon, f"results.{name}") or {} for name in ("meta->meta", "meta->tinybert"))
    if test and meta.get("average") is not None and tinybert.get("average") is not None:
        seeds = ", ".join(map(str, meta.get("seeds", []))) or "-"
        lines.append(f"| Meta-KD vs TinyBERT-KD students (one per domain, seeds {seeds}) | {meta['average']:.1f} vs "
                     f"{tinybert['average']:.1f}: {test['diff']:+.2f} points (95% CI {test['ci95'][0]:+.2f} to "
                     f"{test['ci95'][1]:+.2f}), {_p(test['p_value'])} | - | - | - |")
    else:
        lines.append("| Meta-KD vs TinyBERT-KD students | not measured | - | - | - |")
    setup = speed.get("setup") or {}
    return "\n".join([*lines, "", fill(
        "Test accuracy on the Amazon reviews, averaged over {domains:, }: `metakd run amazon-cpu` (`python -m bench "
        "run amazon_cpu`); size and speed: `python -m bench run speed` on {cpu.model|?} ({cpu.cores|?} cores), every "
        "row padded to {seq_len|?} tokens; the last row: paired bootstrap over the same test rows (`python -m bench "
        "run amazon`).", {**setup, "domains": DOMAINS})])


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
