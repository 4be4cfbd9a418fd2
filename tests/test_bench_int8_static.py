"""bench/int8_static.py on the tiny exported run: every variant is built, scored for accuracy, speed and batch
invariance, and a batch-invariant default is named (the speeds of tiny models mean nothing and are not checked)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import int8_static
from export_fixtures import copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401


def test_every_variant_is_built_and_the_default_is_batch_invariant(exported_run: Path, tmp_path: Path,
                                                                   capsys):  # noqa: F811
    out = tmp_path / "int8_static.json"
    assert int8_static.main(["--run-dir", str(exported_run), "--threads", "1", "--rounds", "1", "--batches", "1",
                       "--repeats", "2", "--calibration-rows", "32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results)[:2] == ["fp32", "dynamic"]
    assert {f"static-{f}-{m}" for f in ("qdq", "qoperator") for m in ("minmax", "percentile", "entropy")} \
        <= set(results)
    for name, row in results.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["throughput_b32"] > 0 and row["latency_b1_p50_ms"] > 0 and row["size_mb"] > 0, name
        assert 0 <= row["agreement_with_fp32"] <= 100, name
        if name.startswith("static-"):
            assert row["invariant"] and row["calibration_rows"] == 32, name
    assert results["dynamic"]["batch_invariance"]["max_abs_prob_diff"] > 1e-6 and not results["dynamic"]["invariant"]
    assert report["chosen"].startswith("static-") and "chosen default" in capsys.readouterr().out


def test_skips_without_an_exported_model(tiny_run: Path, capsys):  # noqa: F811
    assert int8_static.main(["--run-dir", str(tiny_run)]) == 0
    assert "skipped" in capsys.readouterr().out
