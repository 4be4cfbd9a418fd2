"""The timing suites (bench/suites/speed.yaml, int8_static.yaml; bench/timing.py) on the tiny
exported run: every model or variant is built, timed and scored, and a run folder without what a suite needs is
skipped with one line (the speeds of tiny models mean nothing and are not checked)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from bench import timing
from bench.__main__ import main
from export_fixtures import copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401

# Small enough for a few seconds on one busy core: tiny models at seq 32, a 1-layer "BERT-base",
# a small ceiling MatMul. Only the keys and the bookkeeping are checked, never the speeds.
QUICK = ["--quick", "--threads", "1", "--seq-len", "32", "--reference-layers", "1", "--ceiling-shape", "256,64,128"]


def test_macs_per_example_by_hand():
    # MiniLM-L6 geometry at L = 128: 6 * (4*384*384*128 + 2*384*1536*128 + 2*128*128*384) + 384*384 + 384*2
    config = SimpleNamespace(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_labels=2)
    per_layer = 75_497_472 + 150_994_944 + 12_582_912
    assert timing.macs_per_example(config, 128) == 6 * per_layer + 147_456 + 768


def test_speed_quick_run_writes_every_model(exported_run: Path, tmp_path: Path, capsys):  # noqa: F811
    out = tmp_path / "speed.json"
    assert main(["run", "speed", "--run-dir", str(exported_run), *QUICK, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"setup", "results", "ceiling", "targets"}
    assert list(report["results"]) == list(timing.MODELS)
    for name, row in report["results"].items():
        for key in ("latency_b1_p50_ms", "latency_b1_p90_ms", "throughput_b32", "size_mb", "macs_per_example"):
            assert row[key] > 0, (name, key)
        assert ("predict" in row) == (name != "bert-base-torch-fp32")
        low, high = row["throughput_b32_spread"]  # the median over the interleaved rounds, their spread beside it
        assert low <= row["throughput_b32"] <= high and len(row["rounds"]["throughput_b32"]) == 2
        assert row["latency_b1_spread_ms"][0] <= row["latency_b1_p50_ms"] <= row["latency_b1_spread_ms"][1]
    from transformers import BertConfig, BertForSequenceClassification

    reference = BertForSequenceClassification(BertConfig(num_hidden_layers=1))  # its size: its parameters x 4 bytes
    assert report["results"]["bert-base-torch-fp32"]["size_mb"] == sum(p.numel() for p in reference.parameters()) * 4 / 1e6
    predict = report["results"]["student-onnx-int8"]["predict"]
    assert predict["bucketed_texts_per_s"] > 0 and predict["padded_texts_per_s"] > 0
    setup = report["setup"]
    assert setup["rounds"] == 2 and setup["timing"]["rounds"] == 2 and isinstance(setup["timing"]["unsteady"], bool)
    assert setup["threads"]["torch_intra_op"] == setup["threads"]["onnxruntime_intra_op"] == 1
    assert setup["cpu"]["model"] and setup["inputs"]["identical_token_ids_for_all_models"]
    assert setup["seq_len"] == 32 and setup["reference_layers"] == 1 and setup["predict"]["rows"] <= 64
    ceiling = report["ceiling"]
    assert ceiling["shape"] == [256, 64, 128] and ceiling["int8_gmacs_per_s"] > 0 and ceiling["fp32_gmacs_per_s"] > 0
    assert 0 < ceiling["student_int8_share_of_int8_ceiling"]
    assert len(report["targets"]) == 5 and all(isinstance(t["met"], bool) for t in report["targets"])
    printed = capsys.readouterr().out
    assert "student-onnx-int8" in printed and "matmul ceiling" in printed


def test_each_timing_suite_skips_a_run_without_its_export(tiny_run: Path, tmp_path: Path, capsys):  # noqa: F811
    for suite, hint in (("speed", "metakd export --int8"), ("int8_static", "export` first")):
        out = tmp_path / f"{suite}.json"
        assert main(["run", suite, "--run-dir", str(tiny_run), *(QUICK if suite == "speed" else []),
                     "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("skipped:") and hint in printed and not out.exists(), suite


def test_int8_static_builds_every_variant_and_names_a_batch_invariant_default(exported_run: Path, tmp_path: Path,
                                                                              capsys):  # noqa: F811
    out = tmp_path / "int8_static.json"
    assert main(["run", "int8_static", "--run-dir", str(exported_run), "--threads", "1", "--rounds", "1",
                 "--batches", "1", "--repeats", "2", "--calibration-rows", "32", "--out", str(out)]) == 0
    results = (report := json.loads(out.read_text()))["results"]
    assert list(results)[:2] == ["fp32", "dynamic"]
    assert {f"static-{f}-{m}" for f in ("qdq", "qoperator") for m in ("minmax", "percentile", "entropy")} <= set(results)
    for name, row in results.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["throughput_b32"] > 0 and row["latency_b1_p50_ms"] > 0 and row["size_mb"] > 0, name
        assert 0 <= row["agreement_with_fp32"] <= 100, name
        if name.startswith("static-"):
            assert row["invariant"] and row["calibration_rows"] == 32, name
    assert results["dynamic"]["batch_invariance"]["max_abs_prob_diff"] > 1e-6 and not results["dynamic"]["invariant"]
    assert report["chosen"].startswith("static-") and "chosen default" in capsys.readouterr().out
