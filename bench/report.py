"""Write the README's Results section from the JSON files in bench/results/.

    python bench/report.py

Replaces the text between the `<!-- results:start -->` and `<!-- results:end -->` markers of
README.md with tables built from teachers.json, students.json, amazon.json and speed.json
(whichever exist), beside the paper's figures; nothing is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
DOMAINS = ["books", "dvd", "electronics", "kitchen", "average"]
PAPER = {  # DESIGN.md "Reference figures": BERT-base teacher, TinyBERT-4 student (the authors' slides)
    "BERT-mix": [89.9, 85.9, 90.1, 92.1, 89.5],
    "Meta-teacher": [92.5, 87.0, 91.1, 89.2, 89.9],
    "mix -> TinyBERT-KD": [88.4, 81.6, 89.7, 89.7, 87.3],
    "Meta-teacher -> TinyBERT-KD": [89.9, 84.3, 87.3, 91.6, 88.3],
    "Meta-teacher -> Meta-distillation": [91.5, 86.5, 90.1, 89.7, 89.4],
}


def _row(name: str, values: list[object], extra: str = "") -> str:
    cells = [f"{v:.1f}" if isinstance(v, (int, float)) else str(v) for v in values]
    return f"| {name} | " + " | ".join(cells) + (f" | {extra} |" if extra else " |")


def _accuracy_table(title: str, results: dict, extra_key: str | None = None, extra_name: str = "") -> list[str]:
    head = "| system | " + " | ".join(DOMAINS) + (f" | {extra_name} |" if extra_key else " |")
    lines = [f"**{title}**", "", head, "|" + " --- |" * (len(DOMAINS) + 1 + bool(extra_key))]
    for name, row in results.items():
        extra = str(row.get(extra_key, "")) if extra_key else ""
        lines.append(_row(name, [row.get(d, "-") for d in DOMAINS], extra))
    return lines + [""]


def build() -> str:
    lines: list[str] = []
    teachers = RESULTS / "teachers.json"
    if teachers.is_file():
        data = json.loads(teachers.read_text())
        setup = data["setup"]
        lines += [f"Test accuracy (%) on the Amazon data (seeded 80/10/10 split, 200 test rows per domain), "
                  f"offline teacher {setup['teacher']}, {setup['epochs']} epochs, lr {setup['lr']}, "
                  f"seq {setup['max_length']}, seed {setup['seed']}; `python bench/teachers.py`.", ""]
        lines += _accuracy_table("Teachers", data["results"], "minutes", "minutes")
    students = RESULTS / "students.json"
    if students.is_file():
        data = json.loads(students.read_text())
        setup = data["setup"]
        lines += [f"One all-domain student per system, {setup['intermediate_epochs']} intermediate + "
                  f"{setup['epochs']} prediction epochs, seed {setup['seed']}; `python bench/students.py`. "
                  "One seed: differences of a point or two are within noise (see `bench/amazon.py` for seeds "
                  "and paired tests).", ""]
        lines += _accuracy_table("Students (`tiny` = 4 of the teacher's 6 layers)", data["results"],
                                 "minutes", "minutes")
    amazon = RESULTS / "amazon.json"
    if amazon.is_file():
        data = json.loads(amazon.read_text())
        lines += _accuracy_table("The paper's table (per-domain students, mean over seeds)", data["results"],
                                 "std", "std")
        for name, test in data.get("tests", {}).items():
            lines.append(f"- {name}: diff {test['diff']:+.2f} points, p = {test['p_value']:.3f}")
        lines.append("")
    speed = RESULTS / "speed.json"
    if speed.is_file():
        data = json.loads(speed.read_text())
        cpu = data["setup"].get("cpu", {})
        lines += [f"**Speed** on {cpu.get('model', '?')} ({', '.join(cpu.get('flags', []))}), "
                  f"{data['setup'].get('threads', '?')} threads, seq 128; `python bench/speed.py`.", "",
                  "| model | latency p50 ms (b1) | latency p90 ms (b1) | throughput ex/s (b32) | size MB |",
                  "| --- | --- | --- | --- | --- |"]
        for name, row in data["results"].items():
            lines.append(_row(name, [row["latency_b1_p50_ms"], row["latency_b1_p90_ms"], row["throughput_b32"],
                                     row["size_mb"]]))
        lines.append("")
    lines += _accuracy_table("The paper (BERT-base teacher, TinyBERT-4 student; for comparison)",
                             {k: dict(zip(DOMAINS, v)) for k, v in PAPER.items()})
    return "\n".join(lines)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        sys.exit(f"{README} has no {START} ... {END} markers")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    README.write_text(f"{before}{START}\n{build()}\n{END}{after}", encoding="utf-8")
    print(f"updated the Results section of {README}")


if __name__ == "__main__":
    main()
