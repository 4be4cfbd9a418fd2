"""The exported folder runs as-is in transformers.js (@huggingface/transformers on onnxruntime-node), with
`metakd predict`'s labels and probabilities, int8 and fp32, full and trimmed vocabulary.

Real Node and the real npm package: it is installed once into ``~/.cache/metakd-js-test`` (or
``$METAKD_JS_CACHE``) and reused; the test skips, saying why, where node or npm is missing or the install
fails (no registry). About 15 s once the package is there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from export_fixtures import copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401

PACKAGE = "@huggingface/transformers@4"  # the major version the snippets of docs/usage.md are written for
TOLERANCE = 1e-5
# what transformers.js users write (README, docs/usage.md, the model card): the folder that holds onnx/, never the Hub
PROBE = """
import { readFileSync } from "node:fs";
import { env, pipeline } from "@huggingface/transformers";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
env.allowRemoteModels = false;
env.localModelPath = job.localModelPath;
const out = {};
for (const dtype of job.dtypes) {
  const classify = await pipeline("text-classification", job.model, { dtype });
  out[dtype] = await classify(job.texts, { top_k: null });
}
console.log(JSON.stringify(out));
"""
# unseen words ([UNK] after --trim-vocab), capitals, punctuation and a repeated text
TEXTS = ["The KETTLE is great, really!", "my toaster was awful; broken after a week", "a wonderful story",
         "cable", "the pan was very good great", "the pan was very good great"]


def _install(cache: Path) -> Path:
    """``cache`` with @huggingface/transformers in node_modules (installed there once); skips when it cannot be."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH: the transformers.js test needs Node.js and npm")
    cache.mkdir(parents=True, exist_ok=True)
    installed = cache / "node_modules" / "@huggingface" / "transformers" / "package.json"
    with open(cache / ".install.lock", "w") as lock:  # two test processes: one installs, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed.is_file():
            (cache / "package.json").write_text('{"name": "metakd-js-test", "private": true}\n')
            # onnxruntime-node's install script would download CUDA binaries, which fails offline
            env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip", "ONNXRUNTIME_NODE_INSTALL_CUDA": "skip"}
            try:
                done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--fetch-retries=0", PACKAGE],
                                      cwd=cache, env=env, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                pytest.skip(f"npm install {PACKAGE} took over 300 s (no registry?)")
            if done.returncode != 0 or not installed.is_file():
                lines = [line for line in done.stderr.splitlines() if "FetchError" in line or "code E" in line]
                why = (lines or done.stderr.strip().splitlines() or ["no output"])[0]
                pytest.skip(f"npm install {PACKAGE} into {cache} failed: {why}")
    (cache / "metakd_probe.mjs").write_text(PROBE)  # beside node_modules, where its import resolves
    return cache


@pytest.fixture(scope="module")
def transformers_js() -> Path:
    return _install(Path(os.environ.get("METAKD_JS_CACHE", Path.home() / ".cache" / "metakd-js-test")))


@pytest.fixture(scope="module")
def trimmed_run(tiny_run, tmp_path_factory) -> Path:
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import export
    from metakd_cli.core.run_dir import RunDir

    run = copy_run(tiny_run, tmp_path_factory.mktemp("trimmed") / "run")
    result = export(ExportConfig(int8=True, trim_vocab=True), RunDir(run))
    assert result.passed, result.failures
    return run


def _javascript(cache: Path, run: Path, tmp_path: Path) -> dict[str, list[list[dict]]]:
    """transformers.js's answers on TEXTS from ``run``'s onnx/, by dtype: q8 (int8) and fp32."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"localModelPath": f"{run}/", "model": "onnx", "dtypes": ["q8", "fp32"],
                               "texts": TEXTS}))
    done = subprocess.run(["node", str(cache / "metakd_probe.mjs"), str(job)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["full", "trimmed"])
def test_transformers_js_answers_what_metakd_predict_answers(transformers_js, exported_run, trimmed_run, which,
                                                              tmp_path):
    from metakd_cli.steps.predict import PredictConfig, predict
    from metakd_cli.core.run_dir import RunDir

    run = exported_run if which == "full" else trimmed_run
    if which == "trimmed":  # the trimmed vocabulary has no piece for "wonderful": both sides read [UNK]
        assert "wonderful" not in (run / "onnx" / "vocab.txt").read_text().split()
    answers = _javascript(transformers_js, run, tmp_path)
    for dtype, model in (("q8", "int8"), ("fp32", "onnx")):
        expected = predict(PredictConfig(list(TEXTS), model=model), RunDir(run)).predictions
        assert len(answers[dtype]) == len(expected)
        for text, scores, prediction in zip(TEXTS, answers[dtype], expected):
            where = f"{which} {dtype}: {text!r}"
            assert scores[0]["label"] == prediction.label, where  # top_k null: best first
            got = {s["label"]: s["score"] for s in scores}
            assert set(got) == set(prediction.probabilities), where
            for label, probability in prediction.probabilities.items():
                assert abs(got[label] - probability) <= TOLERANCE, (where, label, got[label], probability)


def test_the_documented_snippets_are_the_ones_tested():
    """docs/usage.md's Node and browser snippets load the major version this test runs, from the run folder only."""
    usage = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text(encoding="utf-8")
    assert f"https://cdn.jsdelivr.net/npm/{PACKAGE}" in usage  # the browser snippet
    assert "env.allowRemoteModels = false;" in usage and 'env.localModelPath = "metakd-run/";' in usage
