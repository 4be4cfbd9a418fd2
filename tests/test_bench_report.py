"""bench/report.py: docs/results.md and the README's one results table are built from whatever JSON files exist,
the README only between its markers (made-up figures in a temporary folder; nothing here is a measurement)."""

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
    assert "one seed; students 1 + 2 epochs at F = 1; epochs: matched steps); `python -m bench run scarce`" in text
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
    text = report.build()
    assert "| student-onnx-int8 | 5.0 (4.5–9.0) | 6.0 | 300.0 (150.0–310.0) | - | 20.0 |" in text
    assert "Medians of 10 interleaved rounds" in text and "**unsteady**: load average 3.5 on 2 CPUs" in text


def test_the_committed_results_still_render():
    text = report.build()  # bench/results/*.json as committed, timed before rounds existed
    assert "**Speed**" in text and "Static or dynamic int8" in text


def test_recipe_run_line_gives_minutes_steps_and_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    run = {"setup": {"cpu": {"model": "Test CPU", "cores": 2}}, "started": "2026-11-26T03:58:42+00:00",
           "steps": {"fit": {"seconds": 1200.0}, "distill": {"seconds": 1500.0}}, "minutes": 75.2,
           "target_minutes": 60, "met": False, "accuracy": {"student": {"average": 85.62}, "int8": {"average": 84.75}}}
    _write(tmp_path, "amazon_cpu.json", run)
    text = report.build()
    assert ("on Test CPU (2 cores), 2026-11-26: 75.2 minutes (fit 20.0, distill 25.0); target under 60 minutes: "
            "**not met**. Test accuracy averages: student 85.6, int8 84.8") in text


def test_main_writes_the_results_page_and_only_the_readme_table(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    readme.write_text(f"intro\n{report.START}\nold table\n{report.END}\noutro\n")
    monkeypatch.setattr(report, "README", readme)
    monkeypatch.setattr(report, "RESULTS_DOC", page)
    report.main()
    text = readme.read_text()
    assert text.startswith(f"intro\n{report.START}\n") and text.endswith(f"{report.END}\noutro\n")
    assert "old table" not in text and "BERT-mix" not in text  # the paper's table is on the results page only
    assert "| Meta-KD vs TinyBERT-KD students | not measured | - | - | - |" in text  # no files: nothing made up
    written = page.read_text()
    assert written.startswith("# Results\n") and "BERT-mix" in written and report.START not in written


def _summary_files(folder: Path) -> None:
    _write(folder, "amazon_cpu.json", {"accuracy": {"teacher": {"average": 90.0}, "onnx": {"average": 88.0},
                                                    "int8": {"average": 87.5}}})
    _write(folder, "speed.json", {"setup": {"cpu": {"model": "Test CPU", "cores": 2}, "seq_len": 64}, "results": {
        "teacher-torch-fp32": {"throughput_b32": 50.0, "size_mb": 90.0},
        "student-onnx-fp32": {"throughput_b32": 80.0, "size_mb": 76.0},
        "student-onnx-int8": {"throughput_b32": 200.0, "size_mb": 19.0}}})
    _write(folder, "amazon.json", {"results": {"meta->meta": {"average": 85.33, "seeds": [1, 2]},
                                               "meta->tinybert": {"average": 85.0, "seeds": [1, 2]}},
                                   "tests": {"meta->meta vs meta->tinybert": {"diff": 0.33, "ci95": [-0.25, 0.9],
                                                                              "p_value": 0.04}}})


def test_the_readme_table_reads_accuracy_size_speed_and_the_paired_test(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    _summary_files(tmp_path)
    lines = report.summary().splitlines()
    assert lines[2] == "| teacher (all-MiniLM-L6-v2 meta-teacher, PyTorch fp32) | 90.0 | 90.0 | 50.0 | 1.0x |"
    assert lines[3] == "| student fp32 (4 layers, ONNX) | 88.0 | 76.0 | 80.0 | 1.6x |"
    assert lines[4] == "| student int8 (4 layers, ONNX) | 87.5 | 19.0 | 200.0 | 4.0x |"  # speed-up from the same file
    assert lines[5] == ("| Meta-KD vs TinyBERT-KD students (one per domain, seeds 1, 2) | 85.3 vs 85.0: +0.33 points "
                        "(95% CI -0.25 to +0.90), p = 0.040 | - | - | - |")
    assert "on Test CPU (2 cores), every row padded to 64 tokens" in lines[-1]
    assert sum(line.startswith("| ") for line in lines) == 6  # ONE table: header and five rows


def test_the_readme_table_says_not_measured_for_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    _summary_files(tmp_path)
    (tmp_path / "speed.json").unlink()
    text = report.summary()
    assert "| student int8 (4 layers, ONNX) | 87.5 | not measured | not measured | - |" in text


def test_static_int8_table_gives_gate_invariance_and_speed(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    common = {"agreement_with_fp32": 98.0, "size_mb": 19.9, "throughput_b32": 200.0, "latency_b1_p50_ms": 6.0}
    _write(tmp_path, "int8_static_speed.json", {
        "setup": {"target": "avx2", "dev_rows": 800, "calibration_rows": 256, "rounds": 6, "date": "2026-12-02T06:54"},
        "results": {
            "dynamic": {**common, "dev_accuracy": {"average": 86.625}, "change_vs_fp32": 0.125, "passes_gate": True,
                        "batch_invariance": {"batch_size": 32, "max_abs_prob_diff": 0.1426, "label_flips": 14}},
            "static-qdq-percentile": {**common, "dev_accuracy": {"average": 85.0}, "change_vs_fp32": -1.5,
                                      "passes_gate": False,
                                      "batch_invariance": {"batch_size": 32, "max_abs_prob_diff": 0.0,
                                                           "label_flips": 0}}},
        "chosen": "dynamic", "rule": "the made-up rule"})
    text = "\n".join(report.section("int8_static", tmp_path / "int8_static_speed.json", what="a student"))
    assert text.startswith("**Static or dynamic int8: a student** (avx2 format, 800 dev rows, 256 calibration texts, "
                           "6 interleaved rounds, 2026-12-02; batch invariance: each dev row alone against in batches "
                           "of 32; `python -m bench run int8_static`). Chosen: dynamic, by the rule: the made-up rule.")
    assert "| dynamic | 86.6 | +0.125 | yes | 98.0 | 0.14 | 14 | 19.9 | 200.0 | 6.0 |" in text
    assert "| static-qdq-percentile | 85.0 | -1.500 | no | 98.0 | 0 | 0 | 19.9 | 200.0 | 6.0 |" in text
    assert report.section("int8_static", tmp_path / "missing.json", what="a student") == []


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
    from bench import report
    from bench.suite import load, table
    from metakd_cli.core.run_dir import atomic_write_json

    atomic_write_json(tmp_path / "transfer.json", table(load("transfer", tmp_path)))  # no run folder: not measured
    lines = report.section("transfer", tmp_path / "transfer.json")
    assert lines[0].startswith("**A transfer set the teacher labels** (MiniLM-L6 default path; one seed; "
                               "`python -m bench run transfer`)")
    text = "\n".join(lines)
    assert "| at 20% labels, the transfer student above the 20%-labels student" in text and "not measured" in text
    assert "| s20-transfer | + the other 80% of the training texts" in text
    assert report.section("transfer", tmp_path / "missing.json") == []


def test_a_suite_inside_gets_its_systems_and_tests_or_nothing_when_absent():
    row = {"test_accuracy": {"student": {"average": 86.25}, "int8": {"average": 85.375}}, "dev_accuracy": 89.375,
           "stage_2": {"epochs": 4, "best_step": 520, "stopped_early": True}}
    data = {"setup": {"systems": {}}, "results": {},
            "mpnet": {"systems": {"keep-meta": {"what": "Meta-KD"}}, "results": {"keep-meta": row, "keep-x": "gone"}}}
    lines = report._systems(data, {"hook": "systems", "at": "mpnet"})
    assert "| keep-meta | Meta-KD | 85.38 | 86.25 | 89.38 | 4 epochs, kept step 520, stopped | - | - |" in lines
    assert "| keep-x |  | gone | | | | | |" in lines
    assert report._systems({"setup": {"systems": {}}, "results": {}}, {"hook": "systems", "at": "mpnet"}) == []
