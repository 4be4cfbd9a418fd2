"""`metakd report` (report.py, report_html.py), the per-row t and lambda file, and the model cards (model_card.py),
on a real tiny run: fit (meta) -> distill (meta) -> export --int8 -> eval."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import toy_rows, write_jsonl
from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig, DistillConfig, EvalConfig, ExportConfig, FitConfig
from metakd_cli.ship.report_page import ReportData, ModelFigures, ScoredRow
from metakd_cli.ship.report_page import render_html
from metakd_cli.core.run_dir import RunDir

MODELS = ["teacher", "student", "onnx", "int8"]
NASTY = "<script>alert('x')</script> & \"quoted\""


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A meta run with every model, one of whose training texts carries HTML."""
    import torch

    from metakd_cli.steps.distill import distill
    from metakd_cli.steps.evaluate import evaluate_run
    from metakd_cli.steps.export import export
    from metakd_cli.steps.fit import fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    rows = toy_rows()
    rows[0] = {**rows[0], "text": rows[0]["text"] + " " + NASTY}
    data = DataConfig(path=str(write_jsonl(root / "toy.jsonl", rows)))
    run = RunDir(root / "run")
    fit(data, FitConfig(teacher=str(tiny_model_dir), teacher_mode="meta", epochs=2, batch_size=8, lr=1e-3,
                        max_length=16, seed=3), run, log=_quiet)
    distill(DistillConfig(intermediate_epochs=1, epochs=2, batch_size=8, lr=1e-3, intermediate_lr=1e-3, seed=5),
            run, log=_quiet, warn=_quiet)
    export(ExportConfig(int8=True, max_drop=100.0), run)
    evaluate_run(EvalConfig(latency_rows=4, throughput_batches=1), run)
    return run.path


def test_report_page_has_every_part_and_fetches_nothing(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "report"])
    assert result.exit_code == 0, result.output
    page_path = run / "report.html"
    assert result.stdout.strip() == str(page_path)
    page = page_path.read_text(encoding="utf-8")
    # self-contained: no script, no stylesheet or image fetched, no url()
    assert "<script" not in page.replace("&lt;script", "")
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<link""", page)
    # per-domain accuracy bars for every model, size and speed, t and lambda histograms, extremes, confusion
    for model in MODELS:
        assert f"<title>{model} books:" in page, model
    assert "Size and speed" in page and "measured by <code>metakd eval</code> on" in page
    assert "What the student learnt from" in page and "<th>labelled rows</th>" in page
    for domain in ("books", "electronics", "kitchen"):
        assert f'aria-label="t — {domain}"' in page and f'aria-label="lambda — {domain}"' in page
        assert f"<h3>{domain}</h3>" in page
    assert page.count("10 most transferable (highest t)") == 3 and page.count("10 least transferable (lowest t)") == 3
    assert page.count('aria-label="teacher"') == 3 and page.count('aria-label="int8"') == 3  # a matrix per domain
    # the user's text is escaped, never markup
    assert NASTY not in page
    if any(NASTY in row.text for rows in (*_extremes(run),) for row in rows):  # shown among the extremes
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page


def _extremes(run: Path) -> list:
    from metakd_cli.steps.report import build_report

    data = build_report(RunDir(run))
    return [*data.most.values(), *data.least.values()]


def test_report_figures_match_eval_and_the_stored_scores(full_run, tmp_path):
    from metakd_cli.steps.report import build_report

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    data = build_report(run)
    evaluated = json.loads((run.metrics / "eval.json").read_text())
    for model in data.models:
        scored = next(m for m in evaluated["models"] if m["name"] == model.name)
        assert model.accuracy == pytest.approx(scored["accuracy"])
        assert model.latency_ms == pytest.approx(scored["latency_ms"])
        for domain, matrix in model.confusion.items():
            correct = sum(matrix[i][i] for i in range(len(matrix)))
            assert correct / sum(map(sum, matrix)) * 100 == pytest.approx(model.accuracy[domain])
    from safetensors.numpy import load_file

    scores = load_file(str(run.teacher / "metakd_head.safetensors"))["scores"]
    for domain, most in data.most.items():
        ts = data.t_by_domain[domain]
        assert [r.t for r in most] == pytest.approx(sorted(ts, reverse=True)[:10])
        assert [r.t for r in data.least[domain]] == pytest.approx(sorted(ts)[:10])
    assert sum(len(v) for v in data.t_by_domain.values()) == int(np.isfinite(scores).sum())


def test_lambda_file_holds_every_distilled_row(full_run):
    from metakd_cli.training.row_weights import load_row_weights

    run = RunDir(full_run)
    weights = load_row_weights(run)
    distilled = json.loads((run.metrics / "distill.json").read_text())
    assert weights.method == "meta" and len(weights.lam) == sum(distilled["train_rows"].values())
    assert float(weights.lam.mean()) == pytest.approx(distilled["lambda"]["mean"], rel=1e-5)
    assert 0.26 <= weights.lam.min() and weights.lam.max() <= 1.0
    # the student folder stays a plain classifier: nothing of metakd's beside it but its json and card
    assert not (run.student / "distill_rows.safetensors").exists()


def test_render_escapes_every_user_string():
    data = ReportData(run_dir="/runs/<x>", split="test", rows=2, labels=["<b>pos</b>", "neg&"],
                      domains=["<img src=x>"], speed_source=None, models=[ModelFigures(
                          name="student", accuracy={"<img src=x>": 50.0}, agreement=None,
                          confusion={"<img src=x>": [[1, 0], [1, 0]]}, size_mb=1.0)],
                      t_by_domain={"<img src=x>": [0.1, 0.5]}, most={"<img src=x>": [ScoredRow(NASTY, None, "<b>pos</b>", 0.5, None)]},
                      least={"<img src=x>": [ScoredRow("x", None, "neg&", 0.1, None)]})
    page = render_html(data)
    for raw in ("<img src=x>", "<b>pos</b>", "<script>", "/runs/<x>"):
        assert raw not in page, raw
    assert "&lt;img src=x&gt;" in page and "&lt;script&gt;" in page
    assert "not measured" in page  # no speed without eval


def test_report_without_a_run_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "none"), "report"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: run folder") and len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- model cards


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_cards_carry_hugging_face_metadata_and_eval_figures(full_run):
    run = RunDir(full_run)
    student, onnx = (run.student / "README.md").read_text(), (run.onnx / "README.md").read_text()
    for card, library in ((student, "transformers"), (onnx, "onnx")):
        meta = _front_matter(card)
        assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == library
        assert {"distillation", "meta-kd", "onnx", "int8"} <= set(meta["tags"])
        assert "license" in meta
        for part in ("## Results", "## How to use", "## Limits", "`books`", "int8 batch behaviour"):
            assert part in card, part
    evaluated = {m["name"]: m for m in json.loads((run.metrics / "eval.json").read_text())["models"]}
    for model in MODELS:  # every figure in the table is eval's, rounded
        assert f"{evaluated[model]['accuracy']['books']:.1f}" in student
        assert f"{evaluated[model]['latency_ms']:.2f}" in student
    assert "from_pretrained(\"PATH/TO/onnx\", file_name=\"model_quantized.onnx\")" in onnx
    assert "ort.InferenceSession" in onnx and 'pipeline("text-classification", model="PATH/TO/student")' in student
    assert 'ort.InferenceSession("PATH/TO/onnx/onnx/model_quantized.onnx"' in onnx  # the file's own path
    # transformers.js, Node and browser: the folder as-is, the int8 file by its dtype
    assert onnx.count('pipeline("text-classification", "onnx", { dtype: "q8" })') == 1
    assert 'pipeline("text-classification", "my-classifier", { dtype: "q8" })' in onnx
    assert onnx.count("env.allowRemoteModels = false;") == 2
    cpu = json.loads((run.metrics / "eval.json").read_text())["cpu"]["model"]
    assert cpu in student


def test_a_card_never_invents_figures_it_has_not_got(full_run, tmp_path):
    from metakd_cli.ship.model_card import card_text

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    (run.metrics / "eval.json").unlink()
    card = card_text(run, onnx=False)
    results = card.split("## Results")[1].split("## How to use")[0]
    int8_column = [line.split("|")[5].strip() for line in results.splitlines() if line.startswith("| books")]
    assert int8_column == ["not measured"]  # export measures int8 on dev only: no test figure
    speed = results.split("ms per row")[1].splitlines()[2:6]
    assert [line.split("|")[1].strip() for line in speed] == MODELS
    assert all(line.endswith("| not measured | not measured |") for line in speed)  # no speed without eval
    distilled = json.loads((run.metrics / "distill.json").read_text())
    assert f"{distilled['test_accuracy']['books']:.1f}" in results


def _edit_eval_records(run: RunDir, edit) -> None:
    """Apply ``edit`` to every record of eval.json (its top level and each selection) and write it back."""
    path = run.metrics / "eval.json"
    record = json.loads(path.read_text())
    for entry in (record, *record["selections"].values()):
        edit(entry)
    path.write_text(json.dumps(record))


def test_cards_and_report_show_spreads_speedups_and_unsteady_rounds(full_run, tmp_path):
    from metakd_cli.ship.model_card import card_text
    from metakd_cli.steps.report import build_report
    from metakd_cli.ship.report_page import speed_table
    from metakd_cli.core.timing import with_spread

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    unsteady = {"rounds": 8, "load_average": 5.0, "cpus": 2, "why": ["load average 5.0 on 2 CPUs"], "unsteady": True}
    _edit_eval_records(run, lambda entry: entry.update(timing=unsteady))
    evaluated = {m["name"]: m for m in json.loads((run.metrics / "eval.json").read_text())["models"]}
    student = evaluated["student"]
    card = card_text(run, onnx=False)
    assert with_spread(student["latency_ms"], student["latency_ms_spread"]) in card
    assert with_spread(student["throughput"], student["throughput_spread"], 1) in card
    assert "Medians of 8 interleaved timing rounds" in card
    assert f"student {student['speedup_vs_teacher']['batch_32']:.1f}x" in card  # from the same rounds' medians
    assert "**Unsteady** when measured (load average 5.0 on 2 CPUs)" in card
    table = speed_table(build_report(run).models)
    assert with_spread(student["latency_ms"], student["latency_ms_spread"]) in table
    assert f"{student['speedup_vs_teacher']['batch_32']:.2f}x" in table
    assert "Unsteady when measured (load average 5.0 on 2 CPUs)" in table


def test_an_eval_from_before_timing_rounds_still_reads(full_run, tmp_path):
    from metakd_cli.ship.model_card import card_text
    from metakd_cli.steps.report import build_report
    from metakd_cli.ship.report_page import speed_table

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)

    def older(entry: dict) -> None:
        entry.pop("timing")
        for model in entry["models"]:
            for key in ("latency_ms_spread", "throughput_spread", "speedup_vs_teacher"):
                model.pop(key)

    _edit_eval_records(run, older)
    student = {m["name"]: m for m in json.loads((run.metrics / "eval.json").read_text())["models"]}["student"]
    card = card_text(run, onnx=False)
    assert f"| {student['latency_ms']:.2f} | {student['throughput']:.1f} |" in card
    assert "interleaved" not in card and "Unsteady" not in card
    assert "Timed once per model" in speed_table(build_report(run).models)


def test_an_eval_older_than_the_student_is_not_used(full_run, tmp_path):
    import os

    from metakd_cli.ship.model_card import RunFigures

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    path = run.metrics / "eval.json"
    evaluated = json.loads(path.read_text())
    for record in (evaluated, *evaluated["selections"].values()):
        record["written"] = "1970-01-01T00:00:01+00:00"  # as if eval ran before distill and export
    path.write_text(json.dumps(evaluated))
    figures = RunFigures(run)
    assert figures.speed("int8") is None and figures.cpu() is None
    assert figures.accuracy("student")[1] == "metakd distill"
    for record in (evaluated, *evaluated["selections"].values()):
        del record["written"]  # a file from before records carried it: judged by the file's time
    path.write_text(json.dumps(evaluated))
    os.utime(path, (1, 1))
    figures = RunFigures(run)
    assert figures.speed("int8") is None and figures.cpu() is None


def test_the_student_with_its_card_loads_with_plain_transformers(full_run):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(RunDir(full_run).student))
    assert model.config.num_labels == 2


def test_the_cards_loading_snippets_run(full_run, capsys):
    run = RunDir(full_run)
    for folder in (run.student, run.onnx):
        card = (folder / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", card, re.S)
        assert blocks
        for block in blocks:
            exec(block.replace("PATH/TO", str(run.path)), {})
    printed = capsys.readouterr().out
    assert printed.count("'label': ") == 2 and printed.splitlines()[-1] in ("negative", "positive")


def test_a_stale_onnx_folder_keeps_its_card_and_leaves_the_students(full_run, tmp_path):
    from metakd_cli.ship.model_card import write_model_cards

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    manifest = json.loads(run.manifest_path.read_text())
    manifest["steps"]["export"]["source_id"] = "an-earlier-distill"  # as if distill ran again after export
    run.manifest_path.write_text(json.dumps(manifest))
    onnx_card = (run.onnx / "README.md").read_text()
    assert write_model_cards(run) == [run.student / "README.md"]
    assert (run.onnx / "README.md").read_text() == onnx_card
    card = (run.student / "README.md").read_text()
    assert not {"onnx", "int8"} & set(_front_matter(card)["tags"])
    assert "| domain | teacher | student |\n" in card and "| int8 |" not in card


def test_a_remade_students_card_and_report_drop_the_old_students_eval(full_run, tmp_path):
    """eval (every model), distill again, then `eval --model teacher` or `eval --domain kitchen`: eval.json's
    rewrite refreshes its file time, yet the old student's records stay the old student's (each record's own
    ``written`` time against the step that made the model)."""
    import time

    from metakd_cli.steps.distill import distill
    from metakd_cli.steps.evaluate import evaluate_run
    from metakd_cli.ship.model_card import RunFigures
    from metakd_cli.steps.report import build_report

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    time.sleep(1.1)  # the manifest's times are whole seconds: distill finishes a second after the first eval
    distill(DistillConfig(intermediate_epochs=1, epochs=1, batch_size=8, lr=1e-3, intermediate_lr=1e-3, seed=6),
            run, log=_quiet, warn=_quiet)
    evaluate_run(EvalConfig(models=["teacher"], latency_rows=4, throughput_batches=1), run)
    figures = RunFigures(run)
    assert "student" not in figures.eval and figures.speed("student") is None
    assert figures.accuracy("student")[1] == "metakd distill"
    assert figures.speed("teacher") is not None  # the teacher was not remade: its figures stand
    card = (run.student / "README.md").read_text()
    student_speed = [line for line in card.splitlines() if line.startswith("| student |")]
    assert student_speed and student_speed[0].endswith("| not measured | not measured |")
    reported = {model.name: model for model in build_report(run).models}
    assert reported["student"].latency_ms is None and reported["teacher"].latency_ms is not None
    # one domain of the new student: its own record counts, not the old student's all-domain one
    evaluate_run(EvalConfig(domains=["kitchen"], latency_rows=4, throughput_batches=1), run)
    latest = {m["name"]: m for m in json.loads((run.metrics / "eval.json").read_text())["models"]}
    figures = RunFigures(run)
    assert figures.eval["student"]["accuracy"] == latest["student"]["accuracy"]
    speed = figures.speed("student")
    assert (speed.latency_ms, speed.throughput) == (latest["student"]["latency_ms"], latest["student"]["throughput"])
    assert speed.latency_spread == latest["student"]["latency_ms_spread"] and speed.rounds == 8
    assert set(figures.eval["teacher"]["accuracy"]) == {"books", "electronics", "kitchen", "average"}


def test_the_rows_file_reads_like_the_other_metrics(full_run):
    import stat

    run = RunDir(full_run)
    rows, metrics = run.metrics / "distill_rows.safetensors", run.metrics / "distill.json"
    assert stat.S_IMODE(rows.stat().st_mode) == stat.S_IMODE(metrics.stat().st_mode)


def test_distill_saves_the_rows_before_the_manifest_records_it(full_run, tmp_path, monkeypatch):
    """A kill between the two leaves the old manifest with the new rows, never the new manifest with old rows."""
    from metakd_cli.steps.distill import distill
    from metakd_cli.training.row_weights import ROWS_FILE

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    (run.metrics / ROWS_FILE).unlink()
    seen = []
    record_step = RunDir.record_step

    def spy(self, step, *args, **kwargs):
        if step == "distill":
            seen.append((self.metrics / ROWS_FILE).is_file())
        return record_step(self, step, *args, **kwargs)

    monkeypatch.setattr(RunDir, "record_step", spy)
    distill(DistillConfig(intermediate_epochs=1, epochs=1, batch_size=8, lr=1e-3, intermediate_lr=1e-3, seed=6),
            run, log=_quiet, warn=_quiet)
    assert seen == [True]


def test_the_report_says_how_long_teacher_and_student_trained_and_what_they_kept(full_run, tmp_path):
    from metakd_cli.steps.report import _length, _method, build_report

    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run, run.path)
    data = build_report(run)
    stage = json.loads((run.metrics / "distill.json").read_text())["stages"]["prediction"]
    assert data.settings["student's stage 2"] == _length(stage)
    assert f"kept step {stage['best_step']} (epoch {stage['best_epoch']}) of 2 epochs begun" in _length(stage)
    assert "teacher's length" in data.settings
    assert _length({"dev_curve": [{}] * 3, "best_step": 5, "best_epoch": 1, "history": [{}], "stopped_early": True}) \
        == "kept step 5 (epoch 1) of 1 epochs begun, stopped by patience; dev scored 3 times"
    assert _length({"history": [{}]}) is None  # a run from before the curve was recorded
    assert _method("none").startswith("none (no teacher") and _method("meta") == "meta"


def test_the_report_says_what_the_student_learnt_from():
    from metakd_cli.steps.report import learnt_from
    from metakd_cli.ship.report_page import learnt_table

    distill = {"train_rows": {"books": 8, "kitchen": 6},
               "transfer": {"by_domain_kind": {"books": {"mask": 3, "transfer": 2}}}}
    learnt = learnt_from(distill)
    assert learnt == {"books": {"labelled": 8, "mask": 3, "transfer": 2}, "kitchen": {"labelled": 6}}
    html = learnt_table(learnt)
    assert "<th>derived: mask</th>" in html and "<th>your texts (--transfer)</th>" in html
    assert "<tr><th>kitchen</th><td>6</td><td>0</td><td>0</td></tr>" in html
    assert "<tr><th>total</th><td>14</td><td>3</td><td>2</td></tr>" in html
    assert learnt_from({}) == {}
    from metakd_cli.steps.report import learnt_note

    assert learnt_note({"method": "none"}).startswith("No teacher")
    assert learnt_note({"method": "kd", "stages": {"prediction": {}}}).endswith("the labelled ones.")
    assert learnt_note({"stages": {"intermediate": {"rows": {"transfer": 0}}}}).endswith("read the labelled rows.")
    assert learnt_note({"stages": {"intermediate": {"rows": {"transfer": 5}}}}).endswith("the transfer set too.")
