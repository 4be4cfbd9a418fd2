"""`metakd eval` and the ONNX helpers of evaluate.py: every model side by side, from the run folder."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import numpy as np
import pytest
from click.testing import CliRunner

from export_fixtures import build_tiny_run, copy_run, exported_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.data.dataset import reload_dataset
from metakd_cli.cli import cli
from metakd_cli.data.encode import Encoded

EXPECTED_MODELS = ["teacher", "student", "onnx", "int8"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_onnx_logits_feed_only_declared_inputs_and_keep_order(exported_run):
    from metakd_cli.models.inference import onnx_logits, onnx_session

    session = onnx_session(exported_run / "onnx" / "onnx" / "model.onnx")
    rows = [[2, 40, 41, 3], [2, 40, 3], [2, 40, 41, 42, 43, 3]]
    with_types = Encoded(rows, [[0] * len(r) for r in rows], [0, 1, 0], [0, 0, 1])
    without_types = Encoded(rows, None, [0, 1, 0], [0, 0, 1])
    one_by_one = np.concatenate([onnx_logits(session, without_types.subset([i]), 0) for i in range(3)])
    assert np.allclose(onnx_logits(session, with_types, 0, batch_size=2), one_by_one, atol=1e-5)
    assert np.allclose(onnx_logits(session, without_types, 0), one_by_one, atol=1e-5)
    assert onnx_logits(session, Encoded([], None, [], []), 0).shape[0] == 0


def test_eval_domain_json_has_every_model(exported_run):
    result = invoke("--run-dir", str(exported_run), "eval", "--domain", "kitchen", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["split"] == "test" and out["domains"] == ["kitchen"] and out["rows"] > 0
    assert [m["name"] for m in out["models"]] == EXPECTED_MODELS
    for model in out["models"]:
        assert set(model["accuracy"]) == {"kitchen", "average"}
        assert 0 <= model["macro_f1"]["kitchen"] <= 100
        assert model["latency_ms"] > 0 and model["throughput"] > 0 and model["size_mb"] > 0
        assert model["agreement"]["all"] >= 0
    by_name = {m["name"]: m for m in out["models"]}
    assert by_name["teacher"]["agreement"]["all"] == 100.0
    assert out["timing"]["rounds"] == 8 and isinstance(out["timing"]["unsteady"], bool)
    for model in out["models"]:  # the medians with their fastest and slowest round; ratios from the same medians
        low, high = model["latency_ms_spread"]
        assert low <= model["latency_ms"] <= high
        low, high = model["throughput_spread"]
        assert low <= model["throughput"] <= high
        speedup = model["speedup_vs_teacher"]
        assert speedup["batch_32"] == pytest.approx(model["throughput"] / by_name["teacher"]["throughput"])
        assert speedup["batch_1"] == pytest.approx(by_name["teacher"]["latency_ms"] / model["latency_ms"])
    # the fp32 ONNX file is the student: same predictions, so the same accuracy and agreement
    assert by_name["onnx"]["accuracy"] == by_name["student"]["accuracy"]
    assert by_name["onnx"]["agreement"] == by_name["student"]["agreement"]
    assert out["threads"]["torch"] >= 1
    saved = json.loads((exported_run / "metrics" / "eval.json").read_text())
    assert saved["models"][0]["name"] == "teacher" and saved["config"]["domains"] == ["kitchen"]


def test_eval_table_shows_models_side_by_side(exported_run):
    result = invoke("--run-dir", str(exported_run), "eval", "--split", "dev")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "teacher" in line and "int8" in line)
    assert header.index("teacher") < header.index("student") < header.index("onnx") < header.index("int8")
    for label in ("books acc %", "kitchen macro-F1", "average acc %", "agreement", "latency ms", "throughput",
                  "size MB"):
        assert label in result.stdout, label


def test_eval_selected_models_and_missing_ones(tiny_run):
    result = invoke("--run-dir", str(tiny_run), "eval", "--model", "student", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [m["name"] for m in out["models"]] == ["student"]
    assert out["models"][0]["agreement"] is not None  # the teacher is the reference even when not listed
    assert [m["name"] for m in json.loads(invoke("--run-dir", str(tiny_run), "eval", "--json").stdout)["models"]] \
        == ["teacher", "student"]
    result = invoke("--run-dir", str(tiny_run), "eval", "--model", "int8")
    assert result.exit_code == 2 and "metakd export --int8" in result.stderr


class _BurstyClock:
    """A fake clock that fake models advance by their cost; a forward that starts inside ``burst`` (a burst of other
    work on the machine) costs six times as much."""

    def __init__(self, burst: tuple[float, float]) -> None:
        self.now, self.burst = 0.0, burst

    def __call__(self) -> float:
        return self.now

    def forward(self, cost_per_row: float):
        def forward(batch: dict) -> np.ndarray:
            rows = len(batch["input_ids"])
            slow = 6.0 if self.burst[0] <= self.now < self.burst[1] else 1.0
            self.now += cost_per_row * rows * slow
            return np.zeros((rows, 2), dtype=np.float32)

        return forward


def _bursty_speeds(rounds: int, monkeypatch):
    """teacher 3 s a row, student 1 s a row; 4 rows at batch 1 and one batch of 4 per model and round, so one round
    is 24 + 8 s: after the warm-up round (0-32 s) and the teacher's first timed turn (32-56 s), a burst hits the
    student's first timed turn."""
    from metakd_cli.core import timing
    from metakd_cli.core.config import EvalConfig
    from metakd_cli.steps.evaluate import Timed, time_models

    monkeypatch.setattr(timing, "load_average", lambda: 0.0)
    clock = _BurstyClock(burst=(56.0, 100.0))
    encoded = Encoded([[2, 5, 3]] * 4, None, [0, 1, 0, 1], [0, 0, 1, 1])
    models = {name: Timed(clock.forward(cost), encoded, 0, 8) for name, cost in (("teacher", 3.0), ("student", 1.0))}
    cfg = EvalConfig(latency_rows=4 * rounds, throughput_batches=rounds, batch_size=4, rounds=rounds)
    return time_models(models, cfg, clock=clock)


def test_timing_in_rounds_ranks_the_models_right_where_one_pass_does_not(monkeypatch):
    speeds, steadiness = _bursty_speeds(1, monkeypatch)
    assert speeds["student"].latency_ms.median > speeds["teacher"].latency_ms.median  # backwards
    assert speeds["student"].throughput.median < speeds["teacher"].throughput.median
    speeds, steadiness = _bursty_speeds(5, monkeypatch)
    student, teacher = speeds["student"], speeds["teacher"]
    assert student.latency_ms.median == 1000.0 and teacher.latency_ms.median == 3000.0  # ms per row
    assert student.throughput.median == 1.0 and teacher.throughput.median == pytest.approx(1 / 3)  # rows/s
    assert student.latency_ms.range() == [1000.0, 6000.0] and teacher.latency_ms.range() == [3000.0, 3000.0]
    assert student.timed_rows == {"batch_1": 20, "batch_4": 20}
    # the burst's round is the widest spread: unsteady, and it says which
    assert steadiness.unsteady and steadiness.rounds == 5
    assert steadiness.why[0] == "student at batch 1: slowest round 6.0x the fastest"


def test_unsteady_rounds_are_logged_in_one_line_and_recorded(exported_run, tmp_path, monkeypatch):
    from metakd_cli.core import timing
    from metakd_cli.core.config import EvalConfig
    from metakd_cli.steps.evaluate import evaluate_run
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(copy_run(exported_run, tmp_path / "run"))
    monkeypatch.setattr(timing, "load_average", lambda: 99.0)  # far above any machine's CPUs
    lines: list[str] = []
    result = evaluate_run(EvalConfig(models=["student", "int8"], latency_rows=2, throughput_batches=1, rounds=3),
                          run, lines.append)
    unsteady = [line for line in lines if line.startswith("speed figures unsteady")]
    assert len(unsteady) == 1 and "load average 99.0" in unsteady[0] and "--rounds" in unsteady[0]
    timing_record = json.loads((run.metrics / "eval.json").read_text())["timing"]
    assert timing_record["unsteady"] and timing_record["load_average"] == 99.0 and timing_record["rounds"] == 3
    assert result.models[0].speedup_vs_teacher is None  # the teacher was not timed with them: no ratio
    table = invoke("--run-dir", str(run.path), "eval", "--model", "int8", "--rounds", "2")
    assert table.exit_code == 0 and "UNSTEADY" in table.stdout and "medians of 2 interleaved rounds" in table.stdout


@pytest.mark.parametrize("args", [("--rounds", "0"), ("--set", "eval.rounds=-3")])
def test_rounds_below_one_are_a_user_error(tiny_run, args):
    result = invoke("--run-dir", str(tiny_run), "eval", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert "--rounds (eval.rounds) must be at least 1" in line


def test_rounds_that_are_not_a_number_are_refused(tiny_run):
    result = invoke("--run-dir", str(tiny_run), "eval", "--rounds", "many")
    assert result.exit_code == 2 and "'many' is not a valid integer" in result.stderr


def test_unknown_domain_lists_the_known_ones(tiny_run):
    result = invoke("--run-dir", str(tiny_run), "eval", "--domain", "garden")
    assert result.exit_code == 2
    assert "unknown domain 'garden'" in result.stderr
    assert "books, electronics, kitchen" in result.stderr


def test_eval_without_run_folder_is_a_user_error(tmp_path):
    result = invoke("--run-dir", str(tmp_path / "missing"), "eval")
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.fixture(scope="module")
def single_teacher_run(tmp_path_factory, one_torch_thread):
    return build_tiny_run(tmp_path_factory.mktemp("single"), teacher_mode="single")


def test_single_mode_teacher_scores_each_domain_with_its_own_teacher(single_teacher_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data.encode import encode
    from metakd_cli.core.config import EvalConfig
    from metakd_cli.data.metrics import accuracy
    from metakd_cli.steps.evaluate import evaluate_run
    from metakd_cli.models.inference import torch_logits
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(single_teacher_run)
    result = evaluate_run(EvalConfig(models=["teacher"], domains=["books", "kitchen"]), run)
    (teacher,) = result.models
    assert teacher.size_mb > 0 and set(teacher.accuracy) == {"books", "kitchen", "average"}
    _, dataset = reload_dataset(run)
    for domain in ("books", "kitchen"):
        folder = single_teacher_run / "teacher" / domain
        examples = dataset.select("test", [domain])
        encoded = encode(examples, dataset, AutoTokenizer.from_pretrained(folder), 32)
        logits = torch_logits(AutoModelForSequenceClassification.from_pretrained(folder), encoded, 0)
        assert teacher.accuracy[domain] == accuracy(logits.argmax(-1), encoded.labels)


def test_export_of_single_mode_teacher_is_refused(single_teacher_run, tmp_path):
    run = copy_run(single_teacher_run, tmp_path / "run")
    result = invoke("--run-dir", str(run), "export", "--model", "teacher")
    assert result.exit_code == 2 and "one teacher per domain" in result.stderr
    shutil.rmtree(run / "student")
    result = invoke("--run-dir", str(run), "eval", "--json")
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in json.loads(result.stdout)["models"]] == ["teacher"]


# --------------------------------------------------------------------------- length bucketing


def test_bucketed_logits_equal_unbucketed_ones_in_input_order(exported_run):
    """Length-sorted, dynamically padded batches give the logits of input-order batches padded to
    max_length, row for row, for PyTorch and ONNX alike."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data.encode import encode
    from metakd_cli.models.inference import batched_logits, onnx_logits, onnx_session, torch_logits
    from metakd_cli.core.run_dir import RunDir

    _, dataset = reload_dataset(RunDir(exported_run))
    tokenizer = AutoTokenizer.from_pretrained(exported_run / "onnx")
    encoded = encode(dataset.test + dataset.dev, dataset, tokenizer, 32)
    # mix short and long rows so that sorting really reorders them
    encoded = encoded.subset(sorted(range(len(encoded)), key=lambda i: (i % 3, -i)))
    encoded.input_ids[0] = encoded.input_ids[0][:3] + encoded.input_ids[0][-1:]
    encoded.token_type_ids[0] = encoded.token_type_ids[0][:4]
    lengths = [len(ids) for ids in encoded.input_ids]
    assert len(set(lengths)) > 1

    student = AutoModelForSequenceClassification.from_pretrained(exported_run / "student")
    session = onnx_session(exported_run / "onnx" / "onnx" / "model.onnx")
    for compute in (lambda **kw: torch_logits(student, encoded, 0, batch_size=8, **kw),
                    lambda **kw: onnx_logits(session, encoded, 0, batch_size=8, **kw)):
        bucketed = compute()
        unbucketed = compute(bucketing=False, pad_to=32)
        np.testing.assert_allclose(bucketed, unbucketed, atol=1e-5)
        assert (bucketed.argmax(-1) == unbucketed.argmax(-1)).all()
    one_by_one = np.concatenate([onnx_logits(session, encoded.subset([i]), 0) for i in range(len(encoded))])
    np.testing.assert_allclose(onnx_logits(session, encoded, 0, batch_size=8), one_by_one, atol=1e-5)

    seen = []

    def record(batch):
        seen.append(tuple(batch["input_ids"].shape))
        return np.zeros((batch["input_ids"].shape[0], 2), dtype=np.float32)

    batched_logits(encoded, 0, 8, record, bucketing=False, pad_to=32)
    assert {shape[1] for shape in seen} == {32}  # every row padded to max_length
    seen.clear()
    batched_logits(encoded, 0, 8, record)
    assert [shape[1] for shape in seen] == sorted((shape[1] for shape in seen), reverse=True)
    assert seen[-1][1] < 32  # the short rows came last, padded only to their own length


def test_eval_without_bucketing_scores_the_same(exported_run):
    bucketed = json.loads(invoke("--run-dir", str(exported_run), "eval", "--split", "dev", "--model", "student",
                                 "--model", "int8", "--json").stdout)
    result = invoke("--run-dir", str(exported_run), "eval", "--split", "dev", "--model", "student", "--model", "int8",
                    "--no-bucketing", "--json")
    assert result.exit_code == 0, result.output
    unbucketed = json.loads(result.stdout)
    assert bucketed["bucketing"] is True and unbucketed["bucketing"] is False
    for a, b in zip(bucketed["models"], unbucketed["models"]):
        assert a["name"] == b["name"] and a["accuracy"] == b["accuracy"] and a["agreement"] == b["agreement"]
        assert b["throughput"] > 0 and b["latency_ms"] > 0
    assert json.loads((exported_run / "metrics" / "eval.json").read_text())["bucketing"] is False
    table = invoke("--run-dir", str(exported_run), "eval", "--model", "student", "--no-bucketing")
    assert "no bucketing" in table.stdout.replace("\n", " ")


# --------------------------------------------------------------------------- CPU facts


def test_int8_target_missing_on_this_cpu_warns_and_is_recorded(exported_run, tmp_path, monkeypatch):
    """An int8 model made for avx512_vnni, evaluated on a (pretend) AVX2-only CPU."""
    from metakd_cli.steps import evaluate
    from metakd_cli.core.cpu import CpuInfo

    run = copy_run(exported_run, tmp_path / "run")
    beside = run / "onnx" / "metakd_export.json"
    beside.write_text(json.dumps({**json.loads(beside.read_text()), "target": "avx512_vnni"}))
    avx2_only = CpuInfo(model="Test CPU 9000", machine="x86_64", cores=2, flags=["avx2", "fma"])
    monkeypatch.setattr(evaluate, "cpu_info", lambda *a, **k: avx2_only)

    result = invoke("--run-dir", str(run), "eval", "--model", "int8", "--split", "dev", "--json")
    assert result.exit_code == 0, result.output
    error = result.stderr.replace("\n", " ")
    assert "made for avx512_vnni" in error and "Test CPU 9000" in error and "lacks avx512_vnni" in error
    out = json.loads(result.stdout)
    assert out["cpu"] == {"model": "Test CPU 9000", "machine": "x86_64", "cores": 2, "flags": ["avx2", "fma"]}
    assert out["warnings"] and "avx512_vnni" in out["warnings"][0]
    saved = json.loads((run / "metrics" / "eval.json").read_text())
    assert saved["cpu"]["model"] == "Test CPU 9000" and saved["warnings"] == out["warnings"]

    with_vnni = CpuInfo(model="Test CPU 9001", machine="x86_64", cores=2, flags=["avx2", "avx512_vnni"])
    monkeypatch.setattr(evaluate, "cpu_info", lambda *a, **k: with_vnni)
    result = invoke("--run-dir", str(run), "eval", "--model", "int8", "--split", "dev", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["warnings"] == []
    assert "made for" not in result.stderr


def test_export_metrics_record_the_cpu(exported_run):
    from metakd_cli.core.cpu import cpu_info

    metrics = json.loads((exported_run / "metrics" / "export.json").read_text())
    assert metrics["cpu"] == cpu_info().to_json() and metrics["cpu"]["model"]


def test_eval_json_keeps_the_record_of_every_selection(exported_run, tmp_path):
    # `eval --domain kitchen` overwrote metrics/eval.json and lost the all-domain, four-model record
    run = copy_run(exported_run, tmp_path / "run")
    path = run / "metrics" / "eval.json"
    path.unlink(missing_ok=True)
    assert invoke("--quiet", "--run-dir", str(run), "eval", "--split", "dev").exit_code == 0
    assert invoke("--quiet", "--run-dir", str(run), "eval", "--split", "dev", "--domain", "kitchen").exit_code == 0
    result = invoke("--quiet", "--run-dir", str(run), "eval", "--split", "dev", "--model", "student", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(path.read_text())
    # the top level is the latest record, as before
    assert saved["config"]["models"] == ["student"] and [m["name"] for m in saved["models"]] == ["student"]
    assert {k: v for k, v in saved.items() if k != "selections"} == {
        "step": "eval", **json.loads(result.stdout), "config": saved["config"], "written": saved["written"]}
    assert datetime.fromisoformat(saved["written"]).tzinfo is not None  # UTC, like the manifest's `finished`
    selections = saved["selections"]
    assert list(selections) == ["split=dev domains=all models=all", "split=dev domains=kitchen models=all",
                                "split=dev domains=all models=student"]
    everything = selections["split=dev domains=all models=all"]
    assert [m["name"] for m in everything["models"]] == EXPECTED_MODELS
    assert set(everything["models"][0]["accuracy"]) == {"books", "electronics", "kitchen", "average"}
    assert selections["split=dev domains=kitchen models=all"]["domains"] == ["kitchen"]
    assert all("selections" not in record for record in selections.values())
    # the same selection again replaces its own record only
    assert invoke("--quiet", "--run-dir", str(run), "eval", "--split", "dev", "--domain", "kitchen").exit_code == 0
    assert list(json.loads(path.read_text())["selections"]) == list(selections)


def test_eval_json_from_before_selections_keeps_its_record():
    from metakd_cli.steps.evaluate import with_selections

    old = {"step": "eval", "split": "test", "domains": ["books", "kitchen"], "models": [{"name": "teacher"}],
           "bucketing": True, "config": {"models": ["all"], "domains": None, "split": "test"}}
    new = {**old, "domains": ["kitchen"], "config": {"models": ["all"], "domains": ["kitchen"], "split": "test"}}
    merged = with_selections(new, old)
    assert merged["domains"] == ["kitchen"]
    assert merged["selections"] == {"split=test domains=all models=all": old,
                                    "split=test domains=kitchen models=all": {**new, "written": merged["written"]}}


def test_eval_json_that_is_not_an_object_is_replaced():
    from metakd_cli.steps.evaluate import with_selections

    new = {"step": "eval", "split": "test", "domains": ["kitchen"], "models": [{"name": "teacher"}],
           "bucketing": True, "config": {"models": ["all"], "domains": None, "split": "test"}}
    for previous in ([], [1, 2], "text", 3, None, {"selections": []}, {"selections": {"k": "not a record"}}):
        merged = with_selections(new, previous)
        assert {k: v for k, v in merged.items() if k not in ("selections", "written")} == new, previous
        record = {k: v for k, v in merged.items() if k != "selections"}
        assert merged["selections"] == {"split=test domains=all models=all": record}, previous


def test_eval_run_over_an_eval_json_that_is_a_list(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    path = run / "metrics" / "eval.json"
    path.write_text("[]\n")
    result = invoke("--quiet", "--run-dir", str(run), "eval", "--model", "student", "--split", "dev")
    assert result.exit_code == 0, result.output
    assert list(json.loads(path.read_text())["selections"]) == ["split=dev domains=all models=student"]


def test_selection_key_of_a_model_name_it_does_not_know():
    from metakd_cli.steps.evaluate import selection_key

    record = {"split": "test", "domains": ["books"], "bucketing": True,
              "config": {"models": ["student", "fp16", "teacher"], "domains": None}}
    assert selection_key(record) == "split=test domains=all models=teacher,student,fp16"
    assert selection_key({"config": {"models": [None, "all"]}}) == "split=None domains=all models=all,None"


def test_records_from_before_written_keep_the_files_time_through_a_rewrite(tmp_path):
    """eval.json's records without ``written`` get the file's time before eval rewrites it (and refreshes it)."""
    import os

    from metakd_cli.steps.evaluate import previous_eval, with_selections

    old = {"step": "eval", "split": "test", "domains": ["books"], "models": [{"name": "student"}],
           "bucketing": True, "config": {"models": ["all"], "domains": None, "split": "test"}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({**old, "selections": {"a": old, "b": {**old, "written": "2026-01-01T00:00:00+00:00"},
                                                      "c": []}}))
    os.utime(path, (1000, 1000))
    selections = previous_eval(path)["selections"]
    assert selections["a"]["written"] == "1970-01-01T00:16:40+00:00"
    assert selections["b"]["written"] == "2026-01-01T00:00:00+00:00"
    path.write_text(json.dumps(old))  # a file from before selections
    os.utime(path, (1000, 1000))
    merged = with_selections({**old, "config": {**old["config"], "models": ["teacher"]}}, previous_eval(path))
    assert merged["selections"]["split=test domains=all models=all"]["written"] == "1970-01-01T00:16:40+00:00"
    assert previous_eval(tmp_path / "missing.json") == {}


def test_eval_reads_a_recipe_and_set_under_its_flags(exported_run, tmp_path):
    """Defaults < the recipe's eval: section < --set and flags, as for fit and distill."""
    run = copy_run(exported_run, tmp_path / "run")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("eval:\n  split: dev\n  models: [student]\n  latency_rows: 2\n  throughput_batches: 1\n",
                      encoding="utf-8")
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "eval", "--json", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["split"] == "dev" and [m["name"] for m in out["models"]] == ["student"]
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "eval", "--json", "--recipe", str(recipe),
                                      "--set", "eval.split=test", "--model", "onnx"])
    out = json.loads(result.stdout)
    assert out["split"] == "test" and [m["name"] for m in out["models"]] == ["onnx"]
