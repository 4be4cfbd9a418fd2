"""Vocabulary trimming: keep only the word pieces a corpus uses, in the model and the tokenizer together.

In a 4-layer, 312-wide student the word embeddings (30,522 x 312 for a BERT vocabulary) are
most of the parameters; a task corpus uses a few thousand pieces. ``trim_vocabulary`` writes
a new ``save_pretrained`` folder whose embedding rows are the kept rows in new-id order and
whose tokenizer (vocab.txt and tokenizer.json) holds the kept pieces in the same order, so
plain ``AutoTokenizer`` / ``AutoModel*`` (and the ONNX export of the folder) load it as usual.

Kept: every special token (and [UNK]), every piece the corpus tokenizes to, and optionally
the ``keep_top`` lowest-id other pieces (WordPiece vocabularies list pieces by frequency in
the corpus they were built on, after the reserved ``[unusedN]`` slots, which are skipped).
Pieces are kept in their original relative order, so [PAD] stays 0 in a BERT vocabulary.

Why predictions cannot change on covered text: WordPiece splits each word greedily, longest
match first. If every piece of a word's original split is kept, no longer match can appear in
the smaller vocabulary and each chosen piece is still there, so the split is the same and the
ids map one to one onto the same embedding rows. A word that needs a dropped piece is split
into other kept pieces or, failing that, becomes [UNK] (the tokenizer's normal behaviour).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metakd_cli.core.errors import UserError
from metakd_cli.data.encode import Encoded
from metakd_cli.data.metrics import per_domain_accuracy
from metakd_cli.models.inference import torch_logits
from metakd_cli.ship.onnx_tools import quiet_tools

RESERVED = re.compile(r"^\[[^\[\]]+\]$")  # [unused0] ...: placeholder slots, never worth keeping by rank
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "unk_token_id", "mask_token_id", "decoder_start_token_id")
CHUNK = 1024  # texts tokenised per call


@dataclass
class TrimReport:
    """What ``trim_vocabulary`` kept and what it saved."""

    out_dir: Path
    vocab_before: int  # embedding rows before
    vocab_after: int  # embedding rows after (= the new tokenizer's size)
    from_corpus: int  # pieces kept because the corpus uses them (special tokens excluded)
    from_top: int  # pieces kept by --keep-top
    special: int  # special tokens kept
    parameters_before: int
    parameters_after: int
    size_mb_before: float  # weight files on disk
    size_mb_after: float
    texts: int  # corpus texts the kept set was computed from
    kept_ids: list[int] = field(default_factory=list, repr=False)  # new id -> old id

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("kept_ids")
        out["out_dir"] = str(self.out_dir)
        return out


def check_trim_options(trim_vocab: bool, keep_top: int) -> None:
    """``--keep-top`` is 0 or more, and only given with ``--trim-vocab`` (export's and distill's)."""
    if keep_top < 0:
        raise UserError(f"--keep-top must be 0 or more, got {keep_top}")
    if keep_top and not trim_vocab:
        raise UserError("--keep-top only applies with --trim-vocab; add --trim-vocab or drop --keep-top")


def corpus_ids(tokenizer, texts: Sequence[str]) -> set[int]:
    """Ids of every piece the tokenizer splits ``texts`` into (no truncation, no special tokens)."""
    used: set[int] = set()
    for start in range(0, len(texts), CHUNK):
        chunk = [t for t in texts[start : start + CHUNK] if t]
        if chunk:
            for ids in tokenizer(chunk, add_special_tokens=False, truncation=False)["input_ids"]:
                used.update(ids)
    return used


def unknown_rate(input_ids: Sequence[Sequence[int]], unk_id: int, special_ids: set[int]) -> float:
    """Percentage of the non-special tokens of ``input_ids`` that are [UNK] (nan when there are none)."""
    total = unknown = 0
    for ids in input_ids:
        for i in ids:
            if i == unk_id:
                unknown += 1
                total += 1
            elif i not in special_ids:
                total += 1
    return unknown / total * 100.0 if total else float("nan")


def _wordpiece_state(tokenizer, model_dir: Path) -> dict:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{model_dir}: --trim-vocab needs a fast tokenizer (tokenizer.json); this one is "
                        f"{type(tokenizer).__name__}")
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = state.get("model", {}).get("type")
    if kind != "WordPiece":
        raise UserError(f"{model_dir}: --trim-vocab supports WordPiece (BERT-style) tokenizers; this one is {kind}")
    if tokenizer.unk_token_id is None:
        raise UserError(f"{model_dir}: the tokenizer has no unknown token, so dropped pieces would have nowhere to go")
    return state


def _top_ids(id_to_piece: dict[int, str], exclude: set[int], specials: set[str], n: int) -> list[int]:
    """The ``n`` lowest ids not in ``exclude``, skipping reserved ``[...]`` placeholders."""
    if n <= 0:
        return []
    chosen = []
    for i in sorted(id_to_piece):
        piece = id_to_piece[i]
        if i in exclude or (RESERVED.match(piece) and piece not in specials):
            continue
        chosen.append(i)
        if len(chosen) == n:
            break
    return chosen


def _remap_post_processor(post: dict | None, new_id: dict[int, int]) -> None:
    """Special-token ids inside a tokenizer.json post-processor, in place."""
    if not post:
        return
    kind = post.get("type")
    if kind == "Sequence":
        for inner in post.get("processors", []):
            _remap_post_processor(inner, new_id)
    elif kind == "TemplateProcessing":
        for special in post.get("special_tokens", {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, old = post[key]
            post[key] = [token, new_id[old]]


def _init_kwargs(tokenizer, normalizer: dict | None) -> dict:
    """The original tokenizer's constructor arguments, minus files and ids, plus its normalizer's settings."""
    import inspect

    kwargs = {k: v for k, v in tokenizer.init_kwargs.items()
              if k not in ("vocab_file", "tokenizer_file", "name_or_path", "added_tokens_decoder",
                           "special_tokens_map_file", "auto_map", "tokenizer_class")}
    kwargs["model_max_length"] = tokenizer.model_max_length
    parameters = inspect.signature(type(tokenizer).__init__).parameters
    if normalizer and normalizer.get("type") == "BertNormalizer":
        # BertTokenizerFast rewrites its normalizer from these three arguments: pass what it has now
        for key, value in (("do_lower_case", normalizer.get("lowercase")),
                           ("strip_accents", normalizer.get("strip_accents")),
                           ("tokenize_chinese_chars", normalizer.get("handle_chinese_chars"))):
            if key in parameters:
                kwargs[key] = value
    return kwargs


def _load_model(model_dir: Path):
    """The folder's model in the class its config names (a classifier stays a classifier)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    return (cls or transformers.AutoModel).from_pretrained(model_dir, use_safetensors=True)  # never a pickle


def _weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name in WEIGHT_FILES) / 1e6


def trim_vocabulary(model_dir: Path, out_dir: Path, texts: Sequence[str], keep_top: int = 0) -> TrimReport:
    """Write ``out_dir``: the model of ``model_dir`` and its tokenizer, restricted to the pieces ``texts`` use.

    ``texts`` is the training corpus (text and text_pair fields alike). Special tokens and [UNK]
    are always kept, and so are ``keep_top`` further pieces by rank (see the module docstring).
    ``out_dir`` must not exist yet or be empty. Other files of ``model_dir`` (metakd's own JSON,
    for example) are copied unchanged. Raises UserError for tokenizers it cannot rebuild.
    """
    from transformers import AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if keep_top < 0:
        raise UserError(f"--keep-top must be 0 or more, got {keep_top}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} already holds files; give an empty or new folder for the trimmed model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    state = _wordpiece_state(tokenizer, model_dir)
    model = _load_model(model_dir)
    if model.get_output_embeddings() is not None:
        raise UserError(f"{model_dir}: --trim-vocab applies to encoders and classifiers, not to models with a "
                        "language-model head over the vocabulary")
    embeddings = model.get_input_embeddings()
    rows_before = int(embeddings.weight.shape[0])
    if len(tokenizer) > rows_before:
        raise UserError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{rows_before} embedding rows")

    vocab: dict[str, int] = state["model"]["vocab"]
    id_to_piece = {i: piece for piece, i in vocab.items()}
    added = {entry["id"] for entry in state.get("added_tokens", [])}
    specials = set(tokenizer.all_special_tokens)
    special_ids = set(tokenizer.all_special_ids) | {tokenizer.unk_token_id}
    config_ids = {getattr(model.config, name, None) for name in CONFIG_TOKEN_IDS}
    config_ids = {i for i in config_ids if isinstance(i, int) and 0 <= i < len(tokenizer)}
    used = corpus_ids(tokenizer, list(texts))
    must = special_ids | added | config_ids | used
    top = _top_ids(id_to_piece, must, specials, keep_top)
    kept = sorted(must | set(top))  # new id -> old id, original relative order
    new_id = {old: new for new, old in enumerate(kept)}

    _write_trimmed_tokenizer(tokenizer, state, id_to_piece, kept, new_id, out_dir)
    parameters_before = int(sum(p.numel() for p in model.parameters()))
    _write_trimmed_model(model, embeddings, kept, new_id, out_dir)
    for path in model_dir.iterdir():  # metakd's JSON, a domain head: unchanged by trimming
        if path.is_file() and not (out_dir / path.name).exists() and path.name not in TOKENIZER_FILES + WEIGHT_FILES:
            shutil.copy2(path, out_dir / path.name)

    expected = {**state["model"]["vocab"], **{e["content"]: e["id"] for e in state.get("added_tokens", [])}}
    _check_round_trip(tokenizer, out_dir, list(texts), new_id, expected)
    return TrimReport(
        out_dir=out_dir, vocab_before=rows_before, vocab_after=len(kept),
        from_corpus=len(used - special_ids), from_top=len(top), special=len(special_ids),
        parameters_before=parameters_before, parameters_after=int(sum(p.numel() for p in model.parameters())),
        size_mb_before=_weights_mb(model_dir), size_mb_after=_weights_mb(out_dir), texts=len(texts),
        kept_ids=kept,
    )


def _write_trimmed_tokenizer(tokenizer, state: dict, id_to_piece: dict[int, str], kept: list[int],
                             new_id: dict[int, int], out_dir: Path) -> None:
    """The tokenizer into ``out_dir``: same normalizer, pre-tokenizer and decoder; only the vocabulary and its ids
    change (``state``, the tokenizer's JSON, is updated in place: the caller checks the round trip against it)."""
    from tokenizers import Tokenizer

    state["model"]["vocab"] = {id_to_piece[old]: new_id[old] for old in kept if old in id_to_piece}
    for entry in state.get("added_tokens", []):
        entry["id"] = new_id[entry["id"]]
    _remap_post_processor(state.get("post_processor"), new_id)
    if state.get("padding") and state["padding"].get("pad_id") in new_id:
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = [id_to_piece[old] for old in kept if old in id_to_piece]
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("".join(f"{piece}\n" for piece in pieces), encoding="utf-8")
    trimmed_tokenizer = type(tokenizer)(
        vocab_file=str(vocab_file), tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        **_init_kwargs(tokenizer, state.get("normalizer")),
    )
    trimmed_tokenizer.save_pretrained(out_dir)


def _write_trimmed_model(model, embeddings, kept: list[int], new_id: dict[int, int], out_dir: Path) -> None:
    """The model into ``out_dir``: the kept embedding rows in new-id order, and every token id its config names."""
    import torch

    weight = embeddings.weight.detach()[torch.tensor(kept, dtype=torch.long)].clone()
    padding_idx = new_id.get(embeddings.padding_idx) if embeddings.padding_idx is not None else None
    resized = torch.nn.Embedding(len(kept), weight.shape[1], padding_idx=padding_idx, dtype=weight.dtype)
    with torch.no_grad():
        resized.weight.copy_(weight)
    model.set_input_embeddings(resized)
    model.config.vocab_size = len(kept)
    for name in CONFIG_TOKEN_IDS:
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value in new_id:
            setattr(model.config, name, new_id[value])
    model.save_pretrained(out_dir)


def _check_round_trip(
    original, out_dir: Path, texts: list[str], new_id: dict[int, int], expected: dict[str, int]
) -> None:
    """The saved tokenizer, loaded as a user would, has the new vocabulary and splits every corpus
    text as the original did (ids mapped through ``new_id``)."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(out_dir)
    if reloaded.get_vocab() != expected:
        raise UserError(f"{out_dir}: the trimmed tokenizer did not save as expected ({len(reloaded)} tokens, "
                        f"expected {len(expected)}); this tokenizer type is not supported by --trim-vocab")
    for start in range(0, len(texts), CHUNK):
        chunk = [t for t in texts[start : start + CHUNK] if t]
        if not chunk:
            continue
        before = original(chunk, truncation=False)["input_ids"]
        after = reloaded(chunk, truncation=False)["input_ids"]
        for text, old, new in zip(chunk, before, after):
            if [new_id[i] for i in old] != new:
                raise UserError(f"the trimmed tokenizer splits {text[:60]!r} differently from the original; "
                                "this tokenizer is not supported by --trim-vocab")


def training_texts(dataset, domains: list[str]) -> list[str]:
    """text and text_pair of the training rows of ``domains``: the corpus the kept pieces come from."""
    return [t for ex in dataset.select("train", domains) for t in (ex.text, ex.text_pair) if t]


@dataclass
class TrimCheck:
    """The trimmed vocabulary, and the trimmed model against the untrimmed one on dev: what ``trim_check`` finds
    (export.json's ``trim``, less ``keep_top``; distill.json's ``trim``)."""

    vocab_before: int
    vocab_after: int
    from_corpus: int
    from_top: int
    special: int
    parameters_before: int
    parameters_after: int
    size_mb_before: float
    size_mb_after: float
    texts: int
    unknown_rate: dict[str, dict[str, float]]  # % of [UNK] pieces on dev: domain -> "before" / "after" trimming
    dev_accuracy: dict[str, dict[str, float]]  # "untrimmed" / "trimmed" -> domain (and average) -> %
    covered_rows: int  # dev rows whose pieces were all kept
    rows: int  # dev rows
    covered_agreement: float | None  # % of the covered rows on which both models agree
    passed: bool

    @property
    def unknown_rate_after(self) -> dict[str, float]:
        """% of [UNK] pieces on dev per domain, trimmed."""
        return {domain: rate["after"] for domain, rate in self.unknown_rate.items()}

    def to_json(self) -> dict:
        return asdict(self)


def trim_check(
    report: TrimReport, original_dir: Path, dev_examples, dataset, trimmed_tokenizer, trimmed_dev: Encoded,
    trimmed_predictions: np.ndarray, max_length: int,
) -> tuple[TrimCheck, dict[str, float], list[str]]:
    """Untrimmed vs trimmed on dev: unknown-token rate per domain, accuracy, and agreement on covered rows.

    A covered row is one the trimmed tokenizer splits into exactly the original pieces; there the
    two models must predict the same label. Returns (the check, untrimmed accuracy, failures).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metakd_cli.data.encode import encode

    tokenizer = AutoTokenizer.from_pretrained(original_dir)
    original_dev = encode(dev_examples, dataset, tokenizer, max_length)
    with quiet_tools():
        original = AutoModelForSequenceClassification.from_pretrained(original_dir, use_safetensors=True)
    original_predictions = torch_logits(original, original_dev, tokenizer.pad_token_id or 0).argmax(-1)
    new_id = {old: new for new, old in enumerate(report.kept_ids)}
    covered = [i for i, (old, new) in enumerate(zip(original_dev.input_ids, trimmed_dev.input_ids))
               if all(t in new_id for t in old) and [new_id[t] for t in old] == new]
    same = (original_predictions[covered] == trimmed_predictions[covered]) if covered else np.ones(0, dtype=bool)
    domain_ids = np.asarray(trimmed_dev.domains)
    unknown: dict[str, dict[str, float]] = {}
    for d, name in enumerate(dataset.domains):
        rows = [i for i in range(len(trimmed_dev)) if domain_ids[i] == d]
        if rows:
            unknown[name] = {
                "before": unknown_rate([original_dev.input_ids[i] for i in rows], tokenizer.unk_token_id,
                                       set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}),
                "after": unknown_rate([trimmed_dev.input_ids[i] for i in rows], trimmed_tokenizer.unk_token_id,
                                      set(trimmed_tokenizer.all_special_ids) - {trimmed_tokenizer.unk_token_id}),
            }
    untrimmed_accuracy = per_domain_accuracy(original_predictions, original_dev, dataset.domains)
    check = TrimCheck(**{
        **{k: v for k, v in report.to_json().items() if k != "out_dir"},
        "unknown_rate": unknown,
        "dev_accuracy": {"untrimmed": untrimmed_accuracy,
                         "trimmed": per_domain_accuracy(trimmed_predictions, trimmed_dev, dataset.domains)},
        "covered_rows": len(covered),
        "rows": len(trimmed_dev),
        "covered_agreement": float(same.mean() * 100.0) if covered else None,
        "passed": bool(same.all()),
    })
    failures = []
    if not same.all():
        failures.append(f"the trimmed model predicts differently from the untrimmed one on {int((~same).sum())} of "
                        f"{len(covered)} dev rows whose pieces were all kept")
    return check, untrimmed_accuracy, failures
