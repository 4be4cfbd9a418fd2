"""`metakd predict`: labels and probabilities from int8 / ONNX / student, from args, files or stdin."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from export_fixtures import LABELS, exported_run, one_torch_thread, tiny_run  # noqa: F401
from metakd_cli.cli import cli

POSITIVE = "the kettle was really lovely perfect"
NEGATIVE = "my cable is quite awful broken"


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_default_is_int8_with_tab_separated_lines(exported_run):
    result = invoke("--run-dir", str(exported_run), "predict", POSITIVE, NEGATIVE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]
    assert [line.split("\t")[2] for line in lines] == [POSITIVE, NEGATIVE]
    assert all(0.5 <= float(line.split("\t")[1]) <= 1.0 for line in lines)
    assert "int8" in result.stderr and "model_quantized.onnx" in result.stderr


@pytest.mark.parametrize("model", ["int8", "onnx", "student"])
def test_every_model_gives_the_same_labels_as_json(exported_run, model):
    result = invoke("--run-dir", str(exported_run), "predict", "--model", model, "--json", POSITIVE, NEGATIVE)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [p["label"] for p in out] == ["positive", "negative"]
    for p in out:
        assert set(p["probabilities"]) == set(LABELS)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["probability"] == max(p["probabilities"].values())


def test_onnx_and_student_probabilities_match(exported_run):
    texts = [POSITIVE, NEGATIVE, "this book is very good", "the screen was bad"]
    onnx = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", "onnx", "--json", *texts).stdout)
    student = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", "student", "--json",
                                *texts).stdout)
    for a, b in zip(onnx, student):
        assert a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_an_export_from_before_the_onnx_subfolder_still_predicts_and_evaluates(exported_run, tmp_path):
    """A run exported with the ONNX files at onnx/'s top (before the transformers.js layout) is read as it is."""
    import shutil

    from metakd_cli.steps.evaluate import run_artifacts
    from metakd_cli.core.run_dir import RunDir

    old = tmp_path / "old"
    shutil.copytree(exported_run, old)
    for path in (old / "onnx" / "onnx").iterdir():
        path.rename(old / "onnx" / path.name)
    (old / "onnx" / "onnx").rmdir()
    found = run_artifacts(RunDir(old))
    assert found["int8"].path == old / "onnx" / "model_quantized.onnx"
    assert found["onnx"].path == old / "onnx" / "model.onnx"
    for model in ("int8", "onnx"):
        now, before = (json.loads(invoke("--run-dir", str(run), "predict", "--model", model, "--json", POSITIVE,
                                         NEGATIVE).stdout) for run in (exported_run, old))
        assert now == before, model
    result = invoke("--run-dir", str(old), "eval", "--model", "int8", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"][0]["name"] == "int8"


def test_reads_stdin_lines(exported_run):
    result = invoke("--run-dir", str(exported_run), "predict", input=f"{POSITIVE}\n\n{NEGATIVE}\n")
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["positive", "negative"]


def test_reads_text_and_jsonl_files(exported_run, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text(f"{POSITIVE}\n{NEGATIVE}\n", encoding="utf-8")
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text(json.dumps({"text": NEGATIVE, "id": 1}) + "\n" + json.dumps({"text": POSITIVE}) + "\n")
    for path, expected in ((lines, ["positive", "negative"]), (jsonl, ["negative", "positive"])):
        result = invoke("--run-dir", str(exported_run), "predict", "--file", str(path), "--json")
        assert result.exit_code == 0, result.output
        assert [p["label"] for p in json.loads(result.stdout)] == expected


def test_long_texts_are_cut_in_the_line_output(exported_run):
    text = " ".join(["the pan was very good great"] * 10)
    result = invoke("--run-dir", str(exported_run), "predict", text)
    prefix = result.stdout.rstrip("\n").split("\t")[2]
    assert len(prefix) == 60 and prefix.endswith("...")


def test_user_errors(exported_run, tiny_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    cases = [
        (["--run-dir", str(exported_run), "predict", "--file", str(bad)], "bad.jsonl:2"),
        (["--run-dir", str(exported_run), "predict", "--file", str(tmp_path / "none.txt")], "cannot read"),
        (["--run-dir", str(exported_run), "predict"], "no text to classify"),
        (["--run-dir", str(exported_run), "predict", "--file", str(bad), "a text"], "not both"),
        (["--run-dir", str(tiny_run), "predict", "--model", "int8", "x"], "metakd export --int8"),
        (["--run-dir", str(tmp_path / "missing"), "predict", "x"], "does not exist"),
    ]
    for args, message in cases:
        result = invoke(*args, input="")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def test_an_empty_text_argument_is_refused_by_position(exported_run):
    # it used to be dropped, so 3 inputs gave 2 lines and every later line sat against the wrong input
    result = invoke("--run-dir", str(exported_run), "predict", POSITIVE, "", NEGATIVE)
    assert result.exit_code == 2, result.output
    assert "text 2 of 3 is empty" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_a_file_without_text_is_named(exported_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    result = invoke("--run-dir", str(exported_run), "predict", "--file", str(empty))
    assert result.exit_code == 2, result.output
    assert f"{empty}: no text to classify" in result.stderr


def test_falls_back_to_the_student_without_onnx(tiny_run):
    result = invoke("--run-dir", str(tiny_run), "predict", POSITIVE)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("positive\t") and "student" in result.stderr


def test_no_bucketing_gives_the_same_predictions_in_input_order(exported_run):
    texts = [POSITIVE, "the pan was good", NEGATIVE, " ".join(["this book is really excellent lovely"] * 3),
             "my cable is bad", "the kettle was very good great and the toaster was perfect"]
    # dynamic int8 quantizes activations with one scale per batch tensor, padding included: other
    # batches give slightly other probabilities (the same labels); fp32 models agree to float noise
    for model, tolerance in (("student", 1e-5), ("onnx", 1e-5), ("int8", 1e-3)):
        bucketed = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", model, "--json",
                                     *texts).stdout)
        result = invoke("--run-dir", str(exported_run), "predict", "--model", model, "--no-bucketing", "--json",
                        *texts)
        assert result.exit_code == 0, result.output
        unbucketed = json.loads(result.stdout)
        assert [p["text"] for p in bucketed] == [p["text"] for p in unbucketed] == texts
        for a, b in zip(bucketed, unbucketed):
            assert a["label"] == b["label"], model
            assert a["probability"] == pytest.approx(b["probability"], abs=tolerance), model


def test_int8_made_for_a_missing_feature_warns(exported_run, tmp_path, monkeypatch):
    import shutil

    from metakd_cli.steps import predict
    from metakd_cli.core.cpu import CpuInfo

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    beside = run / "onnx" / "metakd_export.json"
    beside.write_text(json.dumps({**json.loads(beside.read_text()), "target": "avx512_vnni"}))
    monkeypatch.setattr(predict, "cpu_info", lambda *a, **k: CpuInfo("Test CPU", "x86_64", 2, ["avx2"]))
    result = invoke("--run-dir", str(run), "predict", POSITIVE)
    assert result.exit_code == 0 and result.stdout.startswith("positive\t")
    assert "made for avx512_vnni" in result.stderr.replace("\n", " ")
    assert "made for" not in invoke("--run-dir", str(run), "predict", "--model", "onnx", POSITIVE).stderr


def _with_manifest_data(source, target, **data):
    """A copy of the run ``source`` whose manifest's data description has ``data`` merged in."""
    import shutil

    shutil.copytree(source, target)
    manifest = target / "manifest.json"
    content = json.loads(manifest.read_text(encoding="utf-8"))
    config = {**content["data"]["config"], **data.pop("config", {})}
    content["data"] = {**content["data"], **data, "config": config}
    manifest.write_text(json.dumps(content), encoding="utf-8")
    return target


def test_a_table_is_read_by_its_text_column_not_as_lines(exported_run, tmp_path):
    # a CSV used to be classified line by line, its header and every other column included
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text(f'id,text,stars\n1,"{NEGATIVE}",1\n2,"{POSITIVE}, truly",5\n', encoding="utf-8")
    tsv_file = tmp_path / "reviews.tsv"
    tsv_file.write_text(f"text\tid\n{POSITIVE}\t7\n", encoding="utf-8")
    for path, texts, labels in ((csv_file, [NEGATIVE, f"{POSITIVE}, truly"], ["negative", "positive"]),
                                (tsv_file, [POSITIVE], ["positive"])):
        result = invoke("--run-dir", str(exported_run), "predict", "--file", str(path), "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert [p["text"] for p in out] == texts and [p["label"] for p in out] == labels
        assert all("text_pair" not in p for p in out)


def test_the_text_column_defaults_to_the_runs_and_can_be_named(exported_run, tmp_path):
    run = _with_manifest_data(exported_run, tmp_path / "run", config={"text_column": "review"})
    table = tmp_path / "reviews.jsonl"
    table.write_text(json.dumps({"review": POSITIVE, "body": NEGATIVE}) + "\n", encoding="utf-8")
    labels = [json.loads(invoke("--run-dir", str(run), "predict", "--file", str(table), "--json", *extra).stdout)
              [0]["label"] for extra in ([], ["--text-column", "body"])]
    assert labels == ["positive", "negative"]
    result = invoke("--run-dir", str(exported_run), "predict", "--file", str(table))  # this run says 'text'
    assert result.exit_code == 2 and f"{table}:1: no column 'text' (columns: review, body)" in result.stderr


def test_pairs_reach_the_model_as_two_segments(exported_run, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = _with_manifest_data(exported_run, tmp_path / "run", text_pairs=True)
    rows = [("the pan was", "very good great"), ("my cable is", "quite awful broken")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text": a, "text_pair": b}) + "\n" for a, b in rows), encoding="utf-8")
    result = invoke("--run-dir", str(run), "predict", "--model", "student", "--json", "--file", str(pairs))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(p["text"], p["text_pair"]) for p in out] == rows
    student = run / "student"
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForSequenceClassification.from_pretrained(student).eval()
    alone = json.loads(invoke("--run-dir", str(exported_run), "predict", "--model", "student", "--json",
                              *[a for a, _ in rows]).stdout)
    for (a, b), p, single in zip(rows, out, alone):
        with torch.no_grad():
            expected = torch.softmax(model(**tokenizer(a, b, return_tensors="pt")).logits, -1)[0]
        assert [p["probabilities"][label] for label in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)
        assert p["probability"] != pytest.approx(single["probability"], abs=1e-5)  # the pair counted
    lines = invoke("--run-dir", str(run), "predict", "--file", str(pairs)).stdout.splitlines()
    assert lines[0].split("\t")[2] == "the pan was || very good great"
    # single texts to a model that learnt from pairs: refused, not silently misread
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"text": POSITIVE, "premise": "x"}) + "\n", encoding="utf-8")
    lines_file = tmp_path / "lines.txt"
    lines_file.write_text(POSITIVE + "\n", encoding="utf-8")
    for args, message in (([POSITIVE], "give --file with a column for each text"),
                          (["--file", str(single)], f"{single}: no second text in column 'text_pair' (columns: "
                                                    "text, premise), but the model was trained on text pairs"),
                          (["--file", str(lines_file)], f"{lines_file}: one text per line, but the model was trained "
                                                        "on text pairs")):
        refused = invoke("--run-dir", str(run), "predict", *args)
        assert refused.exit_code == 2 and message in refused.stderr, refused.output
        assert refused.stdout == ""
    assert invoke("--run-dir", str(run), "predict", "--file", str(single), "--text-pair-column", "premise").exit_code == 0


def test_a_model_of_single_texts_reads_pairs_only_when_told(exported_run, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"text,text_pair\n{POSITIVE},the pan\n", encoding="utf-8")
    result = invoke("--run-dir", str(exported_run), "predict", "--json", "--file", str(pairs))
    assert result.exit_code == 0 and "text_pair" not in json.loads(result.stdout)[0]
    assert "trained on single texts" not in result.stderr
    told = invoke("--run-dir", str(exported_run), "predict", "--json", "--file", str(pairs),
                  "--text-pair-column", "text_pair")
    assert told.exit_code == 0 and json.loads(told.stdout)[0]["text_pair"] == "the pan"
    assert "trained on single texts" in told.stderr


def test_a_multinli_file_gives_sentence1_and_sentence2(exported_run, tmp_path):
    run = _with_manifest_data(exported_run, tmp_path / "run", text_pairs=True, config={"text_column": "review"})
    mnli = tmp_path / "multinli_1.0_dev_matched.jsonl"
    mnli.write_text(json.dumps({"sentence1": "the pan was", "sentence2": "very good great", "gold_label": "-",
                                "genre": "fiction", "hypothesis": "the kettle"}) + "\n", encoding="utf-8")
    # each column the user does not name is MNLI's, whatever the run's own column names
    for extra, expected in (([], ("the pan was", "very good great")),
                            (["--text-pair-column", "hypothesis"], ("the pan was", "the kettle")),
                            (["--text-column", "hypothesis"], ("the kettle", "very good great"))):
        result = invoke("--run-dir", str(run), "predict", "--json", "--file", str(mnli), *extra)
        assert result.exit_code == 0, result.output
        assert [(p["text"], p["text_pair"]) for p in json.loads(result.stdout)] == [expected]


def test_an_mnli_run_from_before_text_pairs_was_recorded_needs_pairs(exported_run, tmp_path):
    run = _with_manifest_data(exported_run, tmp_path / "run", layout="mnli")
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["data"]["text_pairs"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("--run-dir", str(run), "predict", POSITIVE)
    assert result.exit_code == 2 and "trained on text pairs" in result.stderr


def test_column_errors(exported_run, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(f"text,other\n{POSITIVE},x\n,y\n", encoding="utf-8")
    good = tmp_path / "good.csv"
    good.write_text(f"text,other\n{POSITIVE},x\n", encoding="utf-8")
    plain = tmp_path / "plain.csv"  # one text per line, named .csv
    plain.write_text("great kettle, works\nawful pan\n", encoding="utf-8")
    cases = [
        (["--file", str(table)], f"{table}:3: field 'text' is empty"),
        (["--file", str(good), "--text-pair-column", "hypothesis"],
         f"{good}: no column 'hypothesis' in any row (columns: text, other)"),
        (["--file", str(good), "--text-column", "body"], f"{good}:2: no column 'body' (columns: text, other); fix"),
        (["--file", str(plain)], "give a file of one text per line another suffix, such as .txt"),
        (["--text-column", "body", POSITIVE], "give --file too"),
    ]
    for args, message in cases:
        result = invoke("--run-dir", str(exported_run), "predict", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output, (args, result.stderr)
