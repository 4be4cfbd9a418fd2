"""What the ablation bench (bench/ablation.py) relies on: the stage-1 switches, `metakd run --steps`,
eval's per-row predictions, and a run recorded before a setting existed still counting as finished."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from metakd_cli.cli import cli


def _run(run_dir, tiny_model_dir, *args):
    command = ["--run-dir", str(run_dir), "run", "smoke", "--set", f"fit.teacher={tiny_model_dir}"]
    for item in args:
        command += ["--set", item] if "=" in item and not item.startswith("--") else [item]
    return CliRunner().invoke(cli, command)


def _distill_metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics" / "distill.json").read_text())


def test_steps_leave_out_export_and_eval_writes_each_rows_prediction(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = _run(run_dir, tiny_model_dir, "--steps", "distill,fit,eval")
    assert result.exit_code == 0, result.output
    assert not (run_dir / "onnx").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["steps"]) == {"fit", "distill"}
    assert "ran fit, distill, eval" in result.output.replace("\n", " ")

    evaluated = json.loads((run_dir / "metrics" / "eval.json").read_text())
    rows = json.loads((run_dir / "metrics" / "predictions.json").read_text())
    entry = rows["split=test domains=all models=all"]
    assert entry["split"] == "test" and set(entry["models"]) == {"teacher", "student"}
    n = len(entry["where"])
    assert n == evaluated["rows"] > 0
    assert len(entry["label"]) == len(entry["domain"]) == n
    assert all(":" in where for where in entry["where"])  # file:line of each row
    for report in evaluated["models"]:  # the rows give back eval's own accuracy, per domain
        predicted = entry["models"][report["name"]]
        assert len(predicted) == n
        for domain in entry["domains"]:
            mine = [p == g for p, g, d in zip(predicted, entry["label"], entry["domain"]) if d == domain]
            assert report["accuracy"][domain] == pytest.approx(100 * sum(mine) / len(mine))


def test_a_second_selection_keeps_the_first_ones_rows(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert _run(run_dir, tiny_model_dir, "--steps", "fit,distill,eval").exit_code == 0
    result = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(run_dir), "eval", "--model", "student",
                                      "--domain", "kitchen"])
    assert result.exit_code == 0, result.output
    rows = json.loads((run_dir / "metrics" / "predictions.json").read_text())
    assert set(rows) == {"split=test domains=all models=all", "split=test domains=kitchen models=student"}
    assert set(rows["split=test domains=kitchen models=student"]["domain"]) == {"kitchen"}


def test_unknown_step_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run"), "run", "smoke", "--steps", "fit,deploy"])
    assert result.exit_code == 2
    assert "--steps fit,deploy: give one or more of fit,distill,export,eval" in result.output
    assert "deploy is not one" in result.output
    assert "Traceback" not in result.output


def test_a_step_recorded_before_a_setting_existed_is_still_finished(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert _run(run_dir, tiny_model_dir, "--steps", "fit").exit_code == 0
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    fitted = manifest["steps"]["fit"]["finished"]
    del manifest["steps"]["fit"]["config"]["mixed_precision"]  # as an older metakd recorded it (default None)
    path.write_text(json.dumps(manifest))
    again = _run(run_dir, tiny_model_dir, "--steps", "fit")
    assert again.exit_code == 0, again.output
    assert "fit: already done with this configuration, skipped" in again.output
    assert json.loads(path.read_text())["steps"]["fit"]["finished"] == fitted
    manifest["steps"]["fit"]["config"]["mixed_precision"] = "bf16"  # a recorded value that differs still refits
    path.write_text(json.dumps(manifest))
    third = _run(run_dir, tiny_model_dir, "--steps", "fit")
    assert third.exit_code == 0, third.output
    assert "fit: running" in third.output
    assert json.loads(path.read_text())["steps"]["fit"]["config"]["mixed_precision"] is None


def test_lambda_weights_off_gives_every_row_weight_one(tiny_model_dir, tmp_path):
    weighted, uniform = tmp_path / "weighted", tmp_path / "uniform"
    assert _run(weighted, tiny_model_dir, "--steps", "fit,distill").exit_code == 0
    result = _run(uniform, tiny_model_dir, "--steps", "fit,distill", "distill.lambda_weights=false")
    assert result.exit_code == 0, result.output
    on, off = _distill_metrics(weighted)["lambda"], _distill_metrics(uniform)["lambda"]
    assert on["min"] < on["max"] < 1  # lambda proper: (1 + t) / (e^((1-p)^2) + 1) varies and stays under 1
    assert off == {"mean": 1.0, "min": 1.0, "max": 1.0}
    rows = load_file(str(uniform / "metrics" / "distill_rows.safetensors"))
    assert (rows["lambda"] == 1).all()
    student = {k: v for k, v in load_file(str(weighted / "student" / "model.safetensors")).items()}
    other = load_file(str(uniform / "student" / "model.safetensors"))
    assert any((student[k] != other[k]).any() for k in student)  # the weights change what is learnt


def test_attention_weight_zero_takes_no_attention_scores(tiny_model_dir, tmp_path, monkeypatch):
    import metakd_cli.steps.distill as distill_module

    calls = []
    real = distill_module.attention_scores

    def counting(model, layers):
        calls.append(len(layers))
        return real(model, layers)

    monkeypatch.setattr(distill_module, "attention_scores", counting)
    with_term, without = tmp_path / "with", tmp_path / "without"
    assert _run(with_term, tiny_model_dir, "--steps", "fit,distill").exit_code == 0
    assert calls  # teacher and student scores, every stage-1 batch
    calls.clear()
    result = _run(without, tiny_model_dir, "--steps", "fit,distill", "distill.attention_weight=0")
    assert result.exit_code == 0, result.output
    assert calls == []
    history = _distill_metrics(without)["stages"]["intermediate"]["history"]
    assert history and all(epoch["train_terms"]["attention"] == 0.0 for epoch in history)
    assert all(epoch["train_terms"]["hidden"] > 0 for epoch in history)
    assert all(epoch["train_terms"]["attention"] > 0  # each stage-1 term's epoch mean is recorded
               for epoch in _distill_metrics(with_term)["stages"]["intermediate"]["history"])
    a = load_file(str(with_term / "student" / "model.safetensors"))
    b = load_file(str(without / "student" / "model.safetensors"))
    assert any((a[k] != b[k]).any() for k in a)


@pytest.mark.parametrize("key", ["gamma", "attention_weight"])
def test_a_negative_term_weight_is_refused(tmp_path, key):
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run"), "run", "smoke", "--set", f"distill.{key}=-1"])
    assert result.exit_code == 2
    assert f"distill.{key} must be 0 or more, got -1" in result.output


def test_a_step_left_out_is_not_checked(tiny_model_dir, tmp_path):
    # distill.domain names no domain of the data: an error when distill runs, nothing when it is left out
    result = _run(tmp_path / "a", tiny_model_dir, "--steps", "fit,distill", "distill.domain=nowhere")
    assert result.exit_code == 2
    assert "distill.domain" in result.output and "nowhere" in result.output
    result = _run(tmp_path / "b", tiny_model_dir, "--steps", "fit", "distill.domain=nowhere")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "teacher").is_dir() and not (tmp_path / "b" / "student").exists()


def test_set_none_is_the_word_where_the_key_cannot_be_empty():
    from metakd_cli.core.config import Recipe, apply_overrides

    recipe = Recipe()
    recipe.fit.hold_out = "books"
    apply_overrides(recipe, "fit", {}, ("fit.domain_loss=none", "fit.hold_out=null", "eval.domains=None"))
    assert recipe.fit.domain_loss == "none"  # a domain loss of "none" (the meta-teacher ablation)
    assert recipe.fit.hold_out is None and recipe.eval.domains is None  # keys that may be empty are cleared


def test_each_named_loss_term_gets_its_epoch_mean_in_the_history(tiny_model_dir, tmp_path):
    run_dir, no_domain = tmp_path / "run", tmp_path / "no-domain"
    assert _run(run_dir, tiny_model_dir, "--steps", "fit,distill").exit_code == 0
    assert _run(no_domain, tiny_model_dir, "--steps", "fit,distill", "distill.gamma=0").exit_code == 0
    stage1 = _distill_metrics(run_dir)["stages"]["intermediate"]["history"]
    assert all(set(epoch["train_terms"]) == {"hidden", "attention", "domain"} for epoch in stage1)
    assert all(epoch["train_terms"]["domain"] > 0 for epoch in stage1)
    assert all("domain" not in epoch["train_terms"]
               for epoch in _distill_metrics(no_domain)["stages"]["intermediate"]["history"])
    assert all("train_terms" not in epoch  # stage 2 has one term, the loss itself
               for epoch in _distill_metrics(run_dir)["stages"]["prediction"]["history"])
    fit = json.loads((run_dir / "metrics" / "fit.json").read_text())
    history = fit["teachers"][0]["history"]  # the meta-teacher: task cross-entropy and domain confusion
    assert history and all(set(epoch["train_terms"]) == {"ce", "domain"} for epoch in history)
