"""Safety: artifacts are safetensors, bad input writes nothing, remote code stays off by default."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_toy_dataset
from metakd_cli.cli import cli
from metakd_cli.core.config import DistillConfig, FitConfig


def test_remote_code_is_off_unless_asked():
    assert FitConfig().trust_remote_code is False
    assert DistillConfig().trust_remote_code is False


def test_fit_and_distill_write_no_pickle(tiny_model_dir, tmp_path):
    data = write_toy_dataset(tmp_path, "jsonl")
    run = tmp_path / "run"
    common = ["--quiet", "--run-dir", str(run)]
    fit = CliRunner().invoke(cli, [*common, "fit", str(data), "--teacher", str(tiny_model_dir), "--epochs", "1",
                                   "--batch-size", "16", "--max-length", "16"])
    assert fit.exit_code == 0, fit.output
    distill = CliRunner().invoke(cli, [*common, "distill", "--method", "kd", "--epochs", "1", "--batch-size", "16"])
    assert distill.exit_code == 0, distill.output
    for folder in ("teacher", "student"):
        files = {p.suffix for p in (run / folder).rglob("*") if p.is_file()}
        assert ".safetensors" in files
        assert not files & {".bin", ".pt", ".pth", ".pkl", ".ckpt"}, files


def test_bad_data_writes_nothing(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a", "domain": "x"}\n{"text": "ok", "label": \n', encoding="utf-8")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "fit", str(bad), "--teacher", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert "bad.jsonl:2:" in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_a_teacher_path_that_is_not_a_model(tmp_path):
    data = write_toy_dataset(tmp_path, "jsonl")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "run"), "fit", str(data), "--teacher", str(empty)])
    assert result.exit_code == 2
    assert f"{empty}: not a model folder" in result.output
    assert not (tmp_path / "run").exists()


def _pickled_model(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny BERT saved as a pickle (pytorch_model.bin) only, with its tokenizer."""
    from transformers import AutoTokenizer, BertModel

    BertModel.from_pretrained(tiny_model_dir).save_pretrained(folder, safe_serialization=False)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    return folder


def test_a_model_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    """Unpickling a user's pytorch_model.bin can run code: fit refuses it with how to convert it."""
    model = _pickled_model(tiny_model_dir, tmp_path / "pickled")
    data = write_toy_dataset(tmp_path, "jsonl")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "fit", str(data), "--teacher", str(model),
                                      "--epochs", "1", "--max-length", "16"])
    assert result.exit_code == 2, result.output
    assert f"'{model}': it has no safetensors weights" in result.output
    assert "save_pretrained(OUT, safe_serialization=True)" in result.output
    assert "Traceback" not in result.output
    assert not run.exists()


def test_every_model_loader_refuses_pickled_weights(tiny_model_dir, tmp_path):
    from metakd_cli.core.errors import UserError
    from metakd_cli.models.loading import load_classifier, load_encoder, require_safetensors

    model = _pickled_model(tiny_model_dir, tmp_path / "pickled")
    for load in (lambda: load_classifier(str(model), ["a", "b"]), lambda: load_classifier(str(model)),
                 lambda: load_encoder(str(model))):
        with pytest.raises(UserError, match="no safetensors weights"):
            load()
    with pytest.raises(UserError, match="no safetensors weights"):
        require_safetensors(model)
    require_safetensors(tiny_model_dir)  # save_pretrained's safetensors pass
    assert load_encoder(str(tiny_model_dir)).config.hidden_size == 32
