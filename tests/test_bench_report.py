"""bench/report.py: the README Results section is built from whatever JSON files exist, and only
between its markers (made-up figures in a temporary folder; nothing here is a measurement)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data))


def test_scarce_rows_sorted_by_fraction_and_only_present_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    _write(tmp_path, "scarce.json", {"setup": {"domain": "kitchen", "distill": {"intermediate_epochs": 1, "epochs": 2},
                                               "epochs": "matched steps"}, "results": {
        "1": {"train_rows": 1600, "single-teacher": 90.0, "single->tinybert": 88.0, "meta-teacher": 89.5,
              "meta->meta": 88.5},
        "0.05": {"train_rows": 80, "single-teacher": 70.0, "single->tinybert": 65.5},
    }, "tests": {
        "1": {"meta->meta vs single->tinybert": {"diff": 0.5, "ci95": [-2.0, 3.0], "p_value": 0.71}},
        "0.05": {"meta->meta vs single->tinybert": {"diff": 12.25, "ci95": [6.0, 18.5], "p_value": 0.0002},
                 "meta-teacher vs single-teacher": {"diff": -1.0, "ci95": [-4.5, 2.5], "p_value": 0.6}},
    }})
    text = report.build()
    assert "**Data-scarce: kitchen**" in text
    assert "one seed; students 1 + 2 epochs at F = 1; epochs: matched steps); `python -m bench.scarce`" in text
    header = "| fraction | train rows | single-teacher | single->tinybert | meta-teacher | meta->meta |"
    assert header in text and "meta->tinybert" not in text
    lines = text.splitlines()
    small, full = lines.index("| 0.05 | 80 | 70.0 | 65.5 | - | - |"), lines.index("| 1 | 1600 | 90.0 | 88.0 | 89.5 | 88.5 |")
    assert small < full
    # the paired tests at each fraction, smallest first, after the table
    tests = [lines.index("- F = 0.05: meta->meta vs single->tinybert +12.2 points (95% CI +6.0 to +18.5, p < 0.001); "
                         "meta-teacher vs single-teacher -1.0 points (95% CI -4.5 to +2.5, p = 0.600)"),
             lines.index("- F = 1: meta->meta vs single->tinybert +0.5 points (95% CI -2.0 to +3.0, p = 0.710)")]
    assert full < tests[0] < tests[1]
    assert "Teachers" not in text  # no teachers.json: no teachers table
    assert "BERT-mix" in text  # the paper's figures are always there


def test_speed_targets_say_met_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    row = {"latency_b1_p50_ms": 5.0, "latency_b1_p90_ms": 6.0, "throughput_b32": 300.0, "size_mb": 20.0}
    _write(tmp_path, "speed.json", {
        "setup": {"cpu": {"model": "Test CPU", "flags": ["avx2"]}, "threads": 2},
        "results": {"student-onnx-int8": row},
        "ceiling": {"shape": [4096, 384, 1536], "int8_gmacs_per_s": 800.0, "fp32_gmacs_per_s": 200.0,
                    "student_int8_gmacs_per_s": 320.0, "student_int8_share_of_int8_ceiling": 0.4},
        "targets": [{"target": "int8 >= 5x teacher", "value": 6.2, "threshold": 5, "met": True},
                    {"target": "int8 >= 50% of ceiling", "value": 0.4, "threshold": 0.5, "met": False}],
    })
    text = report.build()
    assert "| student-onnx-int8 | 5.0 | 6.0 | 300.0 | - | 20.0 |" in text  # no predict figures: "-"
    assert "- met: int8 >= 5x teacher (6.2x)" in text
    assert "- **not met**: int8 >= 50% of ceiling (40%)" in text
    assert "320, 40% of it" in text


def test_speed_timed_in_rounds_shows_each_figure_with_its_spread_and_unsteadiness(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    row = {"latency_b1_p50_ms": 5.0, "latency_b1_p90_ms": 6.0, "latency_b1_spread_ms": [4.5, 9.0],
           "throughput_b32": 300.0, "throughput_b32_spread": [150.0, 310.0], "size_mb": 20.0}
    timing = {"rounds": 10, "load_average": 3.5, "cpus": 2, "why": ["load average 3.5 on 2 CPUs"], "unsteady": True}
    _write(tmp_path, "speed.json", {
        "setup": {"cpu": {"model": "Test CPU", "flags": ["avx2"]}, "threads": 2, "timing": timing},
        "results": {"student-onnx-int8": row},
        "ceiling": {"shape": [4096, 384, 1536], "int8_gmacs_per_s": 800.0, "fp32_gmacs_per_s": 200.0,
                    "student_int8_gmacs_per_s": 320.0, "student_int8_share_of_int8_ceiling": 0.4}, "targets": []})
    _write(tmp_path, "int8_variants.json", {"setup": {"int8_format": "avx2"}, "results": {"int8-shipped": {
        **row, "test_accuracy": 85.0, "agreement_with_fp32": 99.0}}})
    text = report.build()
    assert "| student-onnx-int8 | 5.0 (4.5–9.0) | 6.0 | 300.0 (150.0–310.0) | - | 20.0 |" in text
    assert "Medians of 10 interleaved rounds" in text and "**unsteady**: load average 3.5 on 2 CPUs" in text
    assert "| int8-shipped | 300.0 (150.0–310.0) | 5.0 (4.5–9.0) | 20.0 | 85.0 | 99.0 |" in text


def test_the_committed_results_still_render():
    text = report.build()  # bench/results/*.json as committed, timed before rounds existed
    assert "**Speed**" in text and "Ways to build the int8 student" in text


def test_recipe_run_line_gives_minutes_steps_and_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    run = {"setup": {"cpu": {"model": "Test CPU", "cores": 2}}, "started": "2026-11-26T03:58:42+00:00",
           "steps": {"fit": {"seconds": 1200.0}, "distill": {"seconds": 1500.0}}, "minutes": 75.2,
           "target_minutes": 60, "met": False, "accuracy": {"student": {"average": 85.62}, "int8": {"average": 84.75}}}
    _write(tmp_path, "amazon_cpu.json", run)
    text = report.build()
    assert ("on Test CPU (2 cores), 2026-11-26: 75.2 minutes (fit 20.0, distill 25.0); target under 60 minutes: "
            "**not met**. Test accuracy averages: student 85.6, int8 84.8") in text


def test_main_rewrites_only_between_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold table\n{report.END}\noutro\n")
    monkeypatch.setattr(report, "README", readme)
    report.main()
    text = readme.read_text()
    assert text.startswith(f"intro\n{report.START}\n") and text.endswith(f"{report.END}\noutro\n")
    assert "old table" not in text and "BERT-mix" in text


def test_amazon_table_tests_and_held_out_section(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    row = {"books": 80.0, "dvd": 81.0, "electronics": 82.0, "kitchen": 83.0, "average": 81.5, "std": 0.5,
           "seeds": [1, 2]}
    _write(tmp_path, "amazon.json", {
        "setup": {"distill": {"intermediate_epochs": 2, "epochs": 3}, "teacher_fit": "--epochs 2 --seed 42",
                  "teacher_overrides": {"teacher-single-matched": {"epochs": 8}}},
        "results": {"meta->meta": row, "mix->tinybert": {**row, "std": None, "seeds": [1]},
                    "meta->meta-int8": row},
        "tests": {"meta->meta vs meta->tinybert": {"diff": 0.75, "p_value": 0.2, "ci95": [-0.5, 2.0]}},
        "held_out": {"books": {
            "results": {"meta-teacher without H -> tinybert": {"accuracy": 77.0, "std": None, "seeds": [1],
                                                               "paper": 78.2},
                        "dvd teacher -> tinybert": {"accuracy": 75.0, "std": 0.5, "seeds": [1, 2],
                                                    "paper": "74.1 to 77.1"},
                        "meta-teacher without H -> meta": {"accuracy": 77.5, "std": None, "seeds": [1],
                                                           "paper": None}},
            "tests": {"held-out/books/meta-without->meta vs held-out/books/meta-without->tinybert":
                      {"diff": -1.0, "p_value": 0.5}}}},
    })
    text = report.build()
    assert "student seeds [1, 2] (teachers: --epochs 2 --seed 42; teacher-single-matched fits with epochs 8)" in text
    assert "| system | books | dvd | electronics | kitchen | average | std | seeds | paper average |" in text
    # each row beside the paper's average for the same system (DESIGN.md); none for a system the paper lacks
    assert "| meta->meta | 80.0 | 81.0 | 82.0 | 83.0 | 81.5 | 0.5 | 1, 2 | 89.4 |" in text
    assert "| mix->tinybert | 80.0 | 81.0 | 82.0 | 83.0 | 81.5 | - | 1 | 87.3 |" in text  # fewer seeds: it says so
    assert "| meta->meta-int8 | 80.0 | 81.0 | 82.0 | 83.0 | 81.5 | 0.5 | 1, 2 | - |" in text
    assert "- meta->meta vs meta->tinybert: +0.75 points (95% CI -0.50 to +2.00), paired bootstrap p = 0.200" in text
    assert "**Held out: books**" in text
    # beside the paper's MNLI figure amazon.py recorded for each row (none: "-")
    assert "| meta-teacher without books -> tinybert | 77.0 | - | 1 | 78.2 |" in text
    assert "| dvd teacher -> tinybert | 75.0 | 0.5 | 1, 2 | 74.1 to 77.1 |" in text
    assert "| meta-teacher without books -> meta | 77.5 | - | 1 | - |" in text
    assert "- meta-without->meta vs meta-without->tinybert: -1.00 points, p = 0.500" in text


def test_the_transfer_suite_has_its_section(tmp_path):
    from bench import report, transfer

    transfer.table(tmp_path / "runs", tmp_path / "transfer.json")
    lines = report._transfer(tmp_path / "transfer.json")
    assert lines[0].startswith("**A transfer set the teacher labels** (MiniLM-L6 default path; one seed; "
                               "`python -m bench.transfer`)")
    text = "\n".join(lines)
    assert "| at 20% labels, the transfer student above the 20%-labels student" in text and "not measured" in text
    assert "| s20-transfer | + the other 80% of the training texts" in text
    assert report._transfer(tmp_path / "missing.json") == []
