"""Shared fixtures: a toy domain-tagged dataset in every layout, a tiny random BERT, real data.

* ``write_toy_dataset(tmp_path, fmt)`` (also the ``toy_dataset`` fixture) writes 3 domains x
  2 labels x 20 rows of short synthetic sentences whose sentiment words ("good great" vs
  "bad awful") make the task learnable, in any layout ``metakd_cli.data.dataset`` reads.
* ``tiny_model_dir`` is a ``save_pretrained`` folder with a random 4-layer, 32-wide BERT and
  a word-level tokenizer covering the toy rows and ``examples/reviews``: it loads offline
  with ``AutoModel`` / ``AutoTokenizer`` in well under a second.
* ``shared_data`` is ``../shared/data/amazon-mds`` or a skip with the reason.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

# Nothing in the tests may reach the network; local folders load without it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and do not fight a busy machine for both cores."""
    import torch

    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples" / "reviews"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# --------------------------------------------------------------------------- toy rows

TOY_DOMAINS = {
    "books": ["book", "novel", "story", "author", "chapter"],
    "electronics": ["phone", "battery", "screen", "cable", "charger"],
    "kitchen": ["pan", "knife", "kettle", "blender", "toaster"],
}
TOY_SENTIMENT = {
    "positive": ["good", "great", "excellent", "lovely", "perfect"],
    "negative": ["bad", "awful", "poor", "broken", "terrible"],
}
TOY_LABELS = ("negative", "positive")
TOY_FILLER = {
    "det": ["the", "this", "my", "a"],
    "verb": ["was", "is", "looks", "feels"],
    "adverb": ["really", "very", "quite", "so", "truly"],
}
TOY_PAIR = ["is", "it", "worth", "buying", "?"]  # text_pair: "is the <noun> worth buying ?"
TOY_PER_LABEL = 20


def toy_rows(per_label: int = TOY_PER_LABEL, pairs: bool = False) -> list[dict]:
    """Rows {"text", "label", "domain"[, "text_pair"]}, domains and labels interleaved.

    Deterministic: the same call gives the same rows on every machine.
    """
    rng = random.Random("metakd-toy-rows")
    rows = []
    for i in range(per_label):
        for domain, nouns in TOY_DOMAINS.items():
            for label in TOY_LABELS:
                noun = rng.choice(nouns)
                words = [
                    rng.choice(TOY_FILLER["det"]),
                    noun,
                    rng.choice(TOY_FILLER["verb"]),
                    rng.choice(TOY_FILLER["adverb"]),
                    *rng.sample(TOY_SENTIMENT[label], 2),
                ]
                row = {"text": " ".join(words), "label": label, "domain": domain}
                if pairs:
                    row["text_pair"] = f"is the {noun} worth buying ?"
                rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_table(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    """A CSV/TSV file whose header is the union of the rows' keys, in first-seen order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows in the format the suffix names (.jsonl, .csv, .tsv)."""
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    return write_table(path, rows, "\t" if path.suffix == ".tsv" else ",")


def review_xml(texts: list[str]) -> str:
    """The Amazon multi-domain sentiment pseudo-XML for ``texts`` (unescaped, as the real files)."""
    parts = ["<reviews>\n"]
    for i, text in enumerate(texts):
        parts.append(
            "<review>\n<unique_id>\nid-{i}\n</unique_id>\n<rating>\n4.0\n</rating>\n"
            "<title>\nA title & more\n</title>\n<review_text>\n{text}\n</review_text>\n</review>\n".format(
                i=i, text=text
            )
        )
    parts.append("</reviews>\n")
    return "".join(parts)


def toy_split(index: int) -> str:
    """The given split of the ``index``-th row of a (domain, label) group: 60/20/20."""
    return {3: "dev", 4: "test"}.get(index % 5, "train")


def _without(rows: list[dict], key: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k != key} for row in rows]


TOY_FORMATS = ("jsonl", "csv", "tsv", "folder", "splits", "domain-splits", "amazon")


def write_toy_dataset(
    tmp_path: Path, fmt: str = "jsonl", *, rows: list[dict] | None = None, pairs: bool = False
) -> Path:
    """Write the toy rows (or ``rows``) under ``tmp_path`` in one layout; return the data path.

    Formats: ``jsonl`` / ``csv`` / ``tsv`` (one file with a domain column), ``folder`` (one
    JSONL per domain), ``splits`` (train/dev/test.jsonl with a domain column), ``domain-splits``
    (<domain>/train|dev|test.jsonl), ``amazon`` (<domain>/positive.review + negative.review).
    Given splits are 60/20/20 per (domain, label) group (see ``toy_split``), so they are
    easy to tell from the default 80/10/10 split.
    """
    rows = toy_rows(pairs=pairs) if rows is None else rows
    if fmt in ("jsonl", "csv", "tsv"):
        return write_rows(tmp_path / f"toy.{fmt}", rows)
    root = tmp_path / f"toy-{fmt}"
    domains = list(dict.fromkeys(row["domain"] for row in rows))
    if fmt == "folder":
        for domain in domains:
            write_jsonl(root / f"{domain}.jsonl", _without([r for r in rows if r["domain"] == domain], "domain"))
        return root
    if fmt in ("splits", "domain-splits"):
        seen: dict[tuple[str, str], int] = {}
        by_split: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            group = (row["domain"], str(row["label"]))
            split = toy_split(seen.get(group, 0))
            seen[group] = seen.get(group, 0) + 1
            key = (row["domain"] if fmt == "domain-splits" else "", split)
            by_split.setdefault(key, []).append(row if fmt == "splits" else _without([row], "domain")[0])
        for (domain, split), split_rows in by_split.items():
            write_jsonl(root / domain / f"{split}.jsonl", split_rows)
        return root
    if fmt == "amazon":
        for domain in domains:
            for label in ("positive", "negative"):
                texts = [r["text"] for r in rows if r["domain"] == domain and r["label"] == label]
                (root / domain).mkdir(parents=True, exist_ok=True)
                (root / domain / f"{label}.review").write_text(review_xml(texts), encoding="utf-8")
        return root
    raise ValueError(f"unknown toy format {fmt!r} (valid: {', '.join(TOY_FORMATS)})")


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``toy_dataset(fmt="jsonl", rows=None, pairs=False) -> Path`` under this test's tmp_path."""

    def make(fmt: str = "jsonl", **kwargs) -> Path:
        return write_toy_dataset(tmp_path, fmt, **kwargs)

    return make


@pytest.fixture(name="toy_rows")
def toy_rows_fixture() -> list[dict]:
    return toy_rows()


# --------------------------------------------------------------------------- tiny model

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORD_PIECES = ["##s", "##ed", "##ing", "##ly", "##er", "##est", "##ness"]


def tiny_vocab() -> list[str]:
    """Special tokens ([PAD] = 0), characters, word pieces, then every word of the toy rows
    and of ``examples/reviews``: no word of those datasets becomes [UNK]."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars = letters + list("0123456789") + list(".,!?;:'\"-()&<>/")
    words = {w for row in toy_rows(pairs=True) for w in row["text"].split() + row.get("text_pair", "").split()}
    words |= {w for ws in TOY_DOMAINS.values() for w in ws} | {w for ws in TOY_SENTIMENT.values() for w in ws}
    words |= {w for ws in TOY_FILLER.values() for w in ws} | set(TOY_PAIR)
    for path in sorted(EXAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            words.update(re.findall(r"[a-z0-9]+", json.loads(line)["text"].lower()))
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in letters] + WORD_PIECES + sorted(words)
    return list(dict.fromkeys(vocab))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT (4 layers, hidden 32, 4 heads, FFN 37) and its tokenizer, saved with
    ``save_pretrained`` into one folder; the weights are the same on every run (seed 0)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- real data


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_data: needs ../shared/data (skips with a reason when absent)")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data/amazon-mds`` (relative to the repository root), or skip."""
    path = SHARED_DATA / "amazon-mds"
    if not path.is_dir():
        pytest.skip("../shared/data/amazon-mds not present: real-data test skipped")
    return path


class InterruptAfter:
    """A progress callback that raises KeyboardInterrupt after ``n`` optimisation steps
    (an in-process Ctrl-C at a known point; tests/test_reliability.py sends real signals)."""

    def __init__(self, n: int):
        self.n = n
        self.counting = True

    def start(self, name="", *args, **kwargs):
        self.counting = not str(name).startswith("teacher ")  # a labelling pass's rows are no optimisation steps

    def advance(self, steps=1, info=""):
        if not self.counting:
            return
        self.n -= steps
        if self.n == 0:
            raise KeyboardInterrupt

    def stop(self):
        pass



def scores_by_hand(model, hidden_states, layer: int, mask):
    """Q K^T / sqrt(d) + (1 - mask) * min from a BERT layer's own query/key weights: [B, heads, L, L]
    (what metakd_cli.models.attention must capture as the layer's pre-softmax scores)."""
    import math

    import torch

    attention = model.bert.encoder.layer[layer].attention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size
    batch, length, _ = hidden_states.shape
    q = (hidden_states @ attention.query.weight.T + attention.query.bias).view(batch, length, heads, size)
    k = (hidden_states @ attention.key.weight.T + attention.key.bias).view(batch, length, heads, size)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(size)
    return scores + (1.0 - mask[:, None, None, :].float()) * torch.finfo(scores.dtype).min


@pytest.fixture
def fitted_toy_run(tmp_path, tiny_model_dir):
    """A run folder whose meta-teacher (the tiny BERT, 1 epoch) is fitted on the toy rows: distill's starting point."""
    from metakd_cli.core.config import DataConfig, FitConfig
    from metakd_cli.steps.fit import fit
    from metakd_cli.core.run_dir import RunDir

    data = DataConfig(path=str(write_toy_dataset(tmp_path / "data")))
    run = RunDir(tmp_path / "run")
    fit(data, FitConfig(teacher=str(tiny_model_dir), epochs=1, batch_size=8, lr=1e-3, max_length=16, seed=7), run,
        log=lambda _: None)
    return run


def check_bench_system(suite, name: str, binding: dict | None = None) -> None:
    """A bench system (bench/suites/*.yaml) is valid on its suite's recipe: its --set overrides, with those it
    inherits from the system it starts from, apply and pass the checks `metakd run` makes before its first step for
    the steps its folder holds; and it changes no step it copies (its own sets name its own steps, or data and fit
    for a system that fits)."""
    from metakd_cli.core.config import apply_overrides, load_recipe
    from metakd_cli.steps import distill, evaluate, export, fit, pipeline

    binding = binding if binding is not None else suite.bindings(name)[0]
    config = load_recipe(suite.recipe)
    apply_overrides(config, "fit", {}, tuple(suite.sets_of(name, binding)))
    steps = suite.chain(name).split(",")
    fit.validate(config.fit)
    if "distill" in steps:
        distill.validate(config.distill)
        distill.check_teacher(config.distill, config.fit.teacher_mode, config.fit.hold_out)
        pipeline._check_student(config)
    if "export" in steps:
        export.validate(config.export)
    if "eval" in steps:
        evaluate.validate(config.eval)
        if "export" in steps:
            pipeline._check_outputs(config)
    system = suite.systems[name]
    own = {*system.steps, *(["data"] if "fit" in system.steps else [])}
    assert all(item.split(".")[0] in own for item in system.sets), name
