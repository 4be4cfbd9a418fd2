"""bench/int8_variants.py on the tiny exported run: every variant is built, runs and is scored (the
speeds of tiny models mean nothing and are not checked)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import int8_variants as variants
from export_fixtures import copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401


def test_every_variant_is_built_timed_and_scored(exported_run: Path, tmp_path: Path, capsys):  # noqa: F811
    out = tmp_path / "variants.json"
    assert variants.main(["--run-dir", str(exported_run), "--threads", "1", "--rounds", "2", "--batches", "1", "--repeats", "2",
                          "--seq-len", "16", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["fp32", "int8-shipped", "int8-matmul", "fp32-fused", "int8-fused", "int8-fused-fastgelu",
                            "int8-fused-small", "int8-export-fuse", "int8-per-channel"]
    assert results["fp32"]["agreement_with_fp32"] == 100.0
    for name, row in results.items():
        assert row["throughput_b32"] > 0 and row["size_mb"] > 0, name
        assert len(row["rounds"]["latency_b1_p50_ms"]) == 2, name
        assert row["throughput_b32_spread"][0] <= row["throughput_b32"] <= row["throughput_b32_spread"][1], name
        assert 0 <= row["test_accuracy"] <= 100 and 0 <= row["agreement_with_fp32"] <= 100, name
    assert "MatMulInteger" in results["int8-matmul"]["ops"] or "DynamicQuantizeMatMul" in results["int8-matmul"]["ops"]
    assert "Attention" in results["fp32-fused"]["ops"]  # the fusion happened on the tiny BERT too
    assert "int8-fused" in capsys.readouterr().out
