"""metakd_cli.ship.trim: trimming a model and its WordPiece tokenizer to the pieces a corpus uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import one_torch_thread, tiny_run, toy_rows  # noqa: F401
from metakd_cli.core.errors import UserError
from metakd_cli.ship.trim import trim_vocabulary, unknown_rate


def _texts(domain: str) -> list[str]:
    return [r["text"] for r in toy_rows() if r["domain"] == domain]


def _logits(folder: Path, texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits.numpy()
    return logits, tokenizer(texts)["input_ids"]


@pytest.fixture(scope="module")
def trimmed(tiny_run, tmp_path_factory):
    """The tiny run's student trimmed to the pieces of the books rows (half of them: the rest is unseen)."""
    books = _texts("books")
    out = tmp_path_factory.mktemp("trimmed") / "student"
    return trim_vocabulary(tiny_run / "student", out, books[: len(books) // 2]), books


def test_trimmed_folder_is_a_plain_save_pretrained_folder(trimmed, tiny_run):
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    report, _ = trimmed
    out, original = report.out_dir, tiny_run / "student"
    assert report.vocab_after < report.vocab_before == AutoConfig.from_pretrained(original).vocab_size
    assert report.parameters_after < report.parameters_before and report.size_mb_after < report.size_mb_before
    assert report.vocab_after == report.special + report.from_corpus + report.from_top
    assert AutoConfig.from_pretrained(out).vocab_size == report.vocab_after

    old_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(original), AutoTokenizer.from_pretrained(out)
    pieces = old_tokenizer.convert_ids_to_tokens(report.kept_ids)
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines() == pieces
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == {p: i for i, p in enumerate(pieces)}
    assert new_tokenizer.all_special_tokens == old_tokenizer.all_special_tokens
    assert new_tokenizer.pad_token_id == 0 and new_tokenizer.unk_token == "[UNK]"
    assert new_tokenizer.model_max_length == old_tokenizer.model_max_length
    assert new_tokenizer.do_lower_case == old_tokenizer.do_lower_case

    key = "bert.embeddings.word_embeddings.weight"
    old_rows, new_rows = load_file(original / "model.safetensors")[key], load_file(out / "model.safetensors")[key]
    assert new_rows.shape == (report.vocab_after, old_rows.shape[1])
    assert np.array_equal(new_rows, old_rows[report.kept_ids])
    assert (out / "metakd_student.json").is_file()  # metakd's own files travel along


def test_predictions_are_identical_on_texts_whose_pieces_are_all_kept(trimmed, tiny_run):
    report, books = trimmed
    kept = set(report.kept_ids)
    new_id = {old: new for new, old in enumerate(report.kept_ids)}
    texts = books + _texts("electronics")
    old_logits, old_ids = _logits(tiny_run / "student", texts)
    new_logits, new_ids = _logits(report.out_dir, texts)
    covered = [i for i, ids in enumerate(old_ids) if set(ids) <= kept]
    assert len(covered) >= len(books) // 2, "every training text is covered"
    for i in covered:
        assert new_ids[i] == [new_id[t] for t in old_ids[i]]
    np.testing.assert_allclose(new_logits[covered], old_logits[covered], atol=1e-5)
    assert (new_logits[covered].argmax(-1) == old_logits[covered].argmax(-1)).all()
    # electronics nouns were never seen: they became [UNK] (id 1 in both vocabularies)
    uncovered = [i for i in range(len(texts)) if i not in covered]
    assert uncovered and all(1 in new_ids[i] and 1 not in old_ids[i] for i in uncovered)


def test_keep_top_adds_the_lowest_ranked_unused_pieces_and_skips_placeholders(tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "the", "good",
             "bad", "##s"]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=16).save_pretrained(folder)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8,
                                             max_position_embeddings=16)).save_pretrained(folder)

    report = trim_vocabulary(folder, tmp_path / "top", ["the goods", "bad"], keep_top=2)
    assert AutoTokenizer.from_pretrained(tmp_path / "top").convert_ids_to_tokens(list(range(report.vocab_after))) \
        == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "the", "good", "bad", "##s"]
    assert (report.from_corpus, report.from_top, report.special) == (4, 2, 5)
    assert AutoTokenizer.from_pretrained(tmp_path / "top").tokenize("the goods c") == ["the", "good", "##s", "[UNK]"]

    report = trim_vocabulary(folder, tmp_path / "none", ["the"], keep_top=0)
    assert report.vocab_after == 6


def test_unsupported_tokenizers_and_bad_arguments_are_user_errors(tiny_run, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(UserError, match="--keep-top"):
        trim_vocabulary(tiny_run / "student", tmp_path / "x", ["the book"], keep_top=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("")
    with pytest.raises(UserError, match="already holds files"):
        trim_vocabulary(tiny_run / "student", tmp_path / "full", ["the book"])

    word_level = tmp_path / "word-level"
    import shutil

    shutil.copytree(tiny_run / "student", word_level)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (word_level / name).unlink()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "the", "book"])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(word_level)
    with pytest.raises(UserError, match="WordPiece"):
        trim_vocabulary(word_level, tmp_path / "out", ["the book"])


def test_unknown_rate_counts_unk_among_non_special_tokens():
    # [CLS]=2 [SEP]=3 are special, 1 is [UNK]: 2 unknown of 5 word-piece tokens
    assert unknown_rate([[2, 7, 1, 3], [2, 1, 8, 9, 3]], unk_id=1, special_ids={0, 2, 3}) == pytest.approx(40.0)
    assert np.isnan(unknown_rate([[2, 3]], unk_id=1, special_ids={2, 3}))
