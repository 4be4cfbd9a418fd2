"""`metakd run RECIPE`: every step in order, then skipping what is already done."""

from __future__ import annotations

import json

from click.testing import CliRunner

from metakd_cli.cli import cli


def _run(run_dir, tiny_model_dir, *sets):
    args = ["--quiet", "--run-dir", str(run_dir), "run", "smoke", "--set", f"fit.teacher={tiny_model_dir}"]
    for item in sets:
        args += ["--set", item]
    return CliRunner().invoke(cli, args)


def test_run_smoke_then_skip_finished_steps(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = _run(run_dir, tiny_model_dir)
    assert first.exit_code == 0, first.output
    for name in ("teacher", "student", "onnx"):
        assert (run_dir / name).is_dir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["steps"]) == {"fit", "distill", "export"}
    assert (run_dir / "metrics" / "eval.json").is_file()
    assert "student" in first.stdout and "onnx" in first.stdout
    fitted = manifest["steps"]["fit"]["finished"]

    again = CliRunner().invoke(cli, ["--run-dir", str(run_dir), "run", "smoke", "--set", f"fit.teacher={tiny_model_dir}"])
    assert again.exit_code == 0, again.output
    assert "skipped fit, distill, export" in again.output.replace("\n", " ")
    assert json.loads((run_dir / "manifest.json").read_text())["steps"]["fit"]["finished"] == fitted

    changed = CliRunner().invoke(cli, ["--run-dir", str(run_dir), "run", "smoke", "--set", f"fit.teacher={tiny_model_dir}",
                                       "--set", "distill.temperature=2"])
    assert changed.exit_code == 0, changed.output
    text = changed.output.replace("\n", " ")
    assert "ran distill, export, eval" in text and "skipped fit" in text


def test_unknown_recipe_and_bad_set_are_user_errors(tmp_path):
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path), "run", "nosuch"])
    assert result.exit_code == 2
    assert "no recipe file or bundled recipe named 'nosuch'" in result.output
    assert "quickstart" in result.output
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path), "run", "smoke", "--set", "fit.epochz=3"])
    assert result.exit_code == 2
    assert "unknown key 'epochz'" in result.output


def test_recipes_ls_and_cp(tmp_path):
    listed = CliRunner().invoke(cli, ["recipes", "ls"])
    assert listed.exit_code == 0
    for name in ("quickstart", "smoke", "amazon-cpu", "amazon-paper"):
        assert name in listed.stdout
    from metakd_cli.commands.recipes import purpose

    # the whole opening comment, not its first line cut mid-sentence, and not the command after it
    assert purpose("# Smoke test: one epoch. Used by the tests\n# with a tiny model: metakd run smoke --set x=1\n"
                   "data:\n") == "Smoke test: one epoch. Used by the tests with a tiny model"
    assert purpose("# On a CPU,\n# offline teacher:\n#   metakd run amazon-cpu\n# more\n") == "On a CPU, offline teacher"
    target = tmp_path / "mine.yaml"
    copied = CliRunner().invoke(cli, ["recipes", "cp", "quickstart", str(target)])
    assert copied.exit_code == 0, copied.output
    assert "teacher: all-MiniLM-L6-v2" in target.read_text()
    again = CliRunner().invoke(cli, ["recipes", "cp", "quickstart", str(target)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_a_later_steps_mistake_fails_before_fitting(tiny_model_dir, tmp_path):
    # the messages name the recipe keys, not the flags of `metakd distill` / `export` ...
    for mistakes, message in (
        (["distill.method=tinyber"], "unknown distill.method 'tinyber'"),
        (["export.opset=9"], "export.opset 9 is too old"),
        # steps that each pass alone but not together: the teacher fit makes cannot serve the distill asked for
        (["distill.method=mtn"],
         "distill.method mtn learns from one teacher per domain, but this run's teacher is meta"),
        (["fit.teacher_mode=single"],
         "pick which with distill.domain, or learn from all of them with distill.method mtn"),
        (["fit.teacher_mode=single", "fit.hold_out=kitchen", "distill.domain=kitchen"],
         "no single-domain teacher for 'kitchen': it was held out"),
        # eval's settings, and domains the data does not have, are checked before fitting too
        (["eval.split=train"], "eval.split"),
        (["distill.domain=garden"], "distill.domain: unknown domain 'garden'"),
        (["eval.domains=garden"], "eval.domains: unknown domain 'garden'"),
        (["data.limit_per_domain=0"], "data.limit_per_domain must be a positive number"),
        # distill's length against the teacher's positions (128 in the tiny model): distill alone checks
        # it only once the teacher is fitted
        (["distill.max_length=200"], "distill.max_length 200 is above the teacher's limit of 128 positions"),
    ):
        run_dir = tmp_path / "-".join(mistakes).replace("=", "-")
        result = _run(run_dir, tiny_model_dir, "export.int8=false", *mistakes)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not (run_dir / "teacher").exists()  # nothing was fitted


def test_edited_data_refits(tiny_model_dir, tmp_path):
    """The same data settings over edited rows: fit runs again (eval would refuse the old fit's data)."""
    import shutil

    from metakd_cli.core.config import bundled

    data = shutil.copytree(bundled("examples", "reviews"), tmp_path / "reviews")
    run_dir = tmp_path / "run"
    first = _run(run_dir, tiny_model_dir, f"data.path={data}")
    assert first.exit_code == 0, first.output
    fitted = json.loads((run_dir / "manifest.json").read_text())["steps"]["fit"]["id"]
    edited = data / "books.jsonl"  # every row: the recipe keeps a sample of them (limit_per_domain)
    rows = [json.loads(line) for line in edited.read_text(encoding="utf-8").splitlines()]
    edited.write_text("".join(json.dumps({**r, "text": r["text"] + " (edited)"}) + "\n" for r in rows), encoding="utf-8")
    again = _run(run_dir, tiny_model_dir, f"data.path={data}")
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "manifest.json").read_text())["steps"]["fit"]["id"] != fitted


def test_recipe_terms_name_keys_outside_commands_only():
    from metakd_cli.steps.pipeline import recipe_terms

    assert recipe_terms("--max-length 9 is above", "distill") == "distill.max_length 9 is above"
    assert recipe_terms("--max-length 9 is above", "fit") == "fit.max_length 9 is above"
    # a step named before the flag says whose key it is
    assert (recipe_terms("the teacher's max length (fit --max-length); give distill --max-length 8", "distill")
            == "the teacher's max length (fit.max_length); give distill.max_length 8")
    # a flag of one section only, named from another step; eval's --domain sets eval.domains
    assert recipe_terms("a --teacher-mode single run", "distill") == "a fit.teacher_mode single run"
    assert recipe_terms("--domain: unknown", "eval") == "eval.domains: unknown"
    # flags no section has, a name two other sections share, --no-X (its key would read as the
    # opposite), paths, quoted values and commands in backticks stay as they are
    assert recipe_terms("give --set or --run-dir", "fit") == "give --set or --run-dir"
    assert recipe_terms("--lr must be positive", "export") == "--lr must be positive"
    assert recipe_terms("--no-bucketing pads", "eval") == "--no-bucketing pads"
    assert (recipe_terms("with --int8: run `metakd export --int8` first", "export")
            == "with export.int8: run `metakd export --int8` first")
    for text in ("/tmp/a--epochs/x: cannot read", "/data/--lr.csv: cannot read", "unknown domain '--lr'"):
        assert recipe_terms(text, "fit") == text


def test_a_student_with_fewer_positions_and_int8_not_exported_fail_before_fitting(tiny_model_dir, tmp_path):
    short = tmp_path / "short-student"
    short.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    pickled = tmp_path / "pickled-student"  # a model folder with only pytorch_model.bin
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    (short / "model.safetensors").write_bytes(b"not read either: the config says enough")
    for mistakes, message in (
        ([f"distill.student={pickled}"], f"distill.student {pickled}: it has no safetensors weights"),
        ([f"distill.student={short}"],
         f"the teacher's max length (fit.max_length) 64 is above the student's limit of 16 positions ({short}); "
         "give distill.max_length 16 or less"),
        ([f"distill.student={short}", "distill.max_length=32"], "distill.max_length 32 is above the student's"),
        (["export.int8=false", "eval.models=int8"], "eval.models int8 asks eval for the int8 model, but export.int8"),
    ):
        run_dir = tmp_path / str(len(mistakes)) / mistakes[-1].split("=")[0]
        result = _run(run_dir, tiny_model_dir, "fit.max_length=64", *mistakes)
        assert result.exit_code == 2, result.output
        assert message in result.output.replace("\n", " ") and "Traceback" not in result.output
        assert not (run_dir / "teacher").exists()


def test_failed_export_checks_exit_1_as_metakd_export_does(tiny_model_dir, tmp_path, monkeypatch):
    import numpy as np

    def wrong(attempt, path, dev, pad_id):  # every int8 attempt gets every dev row wrong
        return (np.asarray(dev.labels) + 1) % 2

    monkeypatch.setattr("metakd_cli.steps.export.int8_dev_predictions", wrong)
    run_dir = tmp_path / "run"
    result = _run(run_dir, tiny_model_dir, "export.int8=true", "export.max_drop=0")
    assert result.exit_code == 1, result.output
    assert "export checks failed" in result.output and "Traceback" not in result.output
    assert (run_dir / "student").is_dir() and not (run_dir / "onnx").exists()


def test_a_hub_student_without_safetensors_fails_before_fitting(tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo, name: asked.append((repo, name)) or False)
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # online, as the file_exists above pretends
        monkeypatch.delenv(offline, raising=False)
    monkeypatch.setattr("metakd_cli.models.loading.hub_reachable", lambda timeout=2.0: True)
    run_dir = tmp_path / "run"
    result = _run(run_dir, tiny_model_dir, "distill.student=tinybert4", "distill.student_init=someone/pickled-4l")
    assert result.exit_code == 2, result.output
    assert "distill.student_init someone/pickled-4l: it has no safetensors weights" in result.output
    assert ("someone/pickled-4l", "model.safetensors") in asked and not (run_dir / "teacher").exists()


def test_a_hub_that_cannot_answer_leaves_the_weights_to_distill(monkeypatch):
    import huggingface_hub

    from metakd_cli.models.loading import safe_weights_known_missing

    def offline(repo, name):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "file_exists", offline)
    assert safe_weights_known_missing("someone/model") is False
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo, name: name == "model.safetensors")
    assert safe_weights_known_missing("someone/model") is False
