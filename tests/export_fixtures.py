"""A run folder with a tiny trained teacher and student, built without `fit` / `distill`.

``build_tiny_run(folder)`` writes, in about a second:

    data/toy.jsonl      3 domains x 2 labels x 25 short sentences ("the pan was very good great")
    teacher/            a 2-layer, 32-wide BERT classifier + metakd.json (mode mix, or one
                        folder per domain for mode single)
    student/            another such classifier (different seed, fewer steps) + metakd_student.json
    manifest.json       `fit` and `distill` steps, the data description and fingerprint

Both models are trained for a few dozen steps on the toy rows, so their predictions are
confident (stable under int8) and the teacher and student agree on most rows.
The fixtures are module-scoped; a test that changes the folder copies it first (``copy_run``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

DOMAINS = {
    "books": ["book", "novel", "story", "author"],
    "electronics": ["phone", "battery", "screen", "cable"],
    "kitchen": ["pan", "knife", "kettle", "toaster"],
}
SENTIMENT = {
    "negative": ["bad", "awful", "poor", "broken", "terrible"],
    "positive": ["good", "great", "excellent", "lovely", "perfect"],
}
FILLER = ["the", "this", "my", "was", "is", "really", "very", "quite"]
LABELS = ["negative", "positive"]
PER_LABEL = 25
MAX_LENGTH = 32
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def toy_rows() -> list[dict]:
    rng = random.Random("metakd-export-toy")
    rows = []
    for _ in range(PER_LABEL):
        for domain, nouns in DOMAINS.items():
            for label in LABELS:
                words = [rng.choice(FILLER[:3]), rng.choice(nouns), rng.choice(FILLER[3:5]),
                         rng.choice(FILLER[5:]), *rng.sample(SENTIMENT[label], 2)]
                rows.append({"text": " ".join(words), "label": label, "domain": domain})
    return rows


def vocab() -> list[str]:
    words = sorted({w for ws in DOMAINS.values() for w in ws} | {w for ws in SENTIMENT.values() for w in ws}
                   | set(FILLER) | {"it", "worth", "buying"})
    return SPECIAL + [chr(c) for c in range(ord("a"), ord("z") + 1)] + words


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab()) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=MAX_LENGTH)


def train_tiny_classifier(folder: Path, rows: list[dict], seed: int, steps: int) -> None:
    """A random 2-layer BERT (hidden 32, 4 heads, FFN 37) trained ``steps`` Adam steps; saved with its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer(folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=MAX_LENGTH,
                      return_tensors="pt")
    labels = torch.tensor([LABELS.index(r["label"]) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(rows), generator=generator)[:32]
        loss = model(**{k: v[idx] for k, v in batch.items()}, labels=labels[idx]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_tiny_run(folder: Path, teacher_mode: str = "mix") -> Path:
    """A complete run folder (see the module docstring); returns ``folder``."""
    from metakd_cli.core.config import DataConfig
    from metakd_cli.data.dataset import load_dataset
    from metakd_cli.steps.fit import data_manifest
    from metakd_cli.models.heads import TeacherInfo
    from metakd_cli.core.run_dir import RunDir

    rows = toy_rows()
    data_path = folder / "data" / "toy.jsonl"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_cfg = DataConfig(path=str(data_path))
    dataset = load_dataset(data_cfg)
    train = [{"text": ex.text, "label": ex.label} for ex in dataset.train]
    common = dict(labels=dataset.labels, domains=dataset.domains, base_model="tiny", domain_loss="none",
                  max_length=MAX_LENGTH, hidden_size=32)
    teacher = folder / "teacher"
    if teacher_mode == "single":
        for i, domain in enumerate(dataset.domains):
            own = [{"text": ex.text, "label": ex.label} for ex in dataset.train if ex.domain == domain]
            train_tiny_classifier(teacher / domain, own, seed=10 + i, steps=25)
            TeacherInfo(mode="single", domain=domain, **common).save(teacher / domain)
        TeacherInfo(mode="single", **{**common, "hidden_size": 0}).save(teacher)
    else:
        train_tiny_classifier(teacher, train, seed=1, steps=40)
        TeacherInfo(mode=teacher_mode, **common).save(teacher)
    student = folder / "student"
    train_tiny_classifier(student, train, seed=0, steps=30)
    (student / "metakd_student.json").write_text(json.dumps(
        {"method": "kd", "student": "tiny (test fixture)", "domain": None, "labels": dataset.labels,
         "domains": dataset.domains, "max_length": MAX_LENGTH, "teacher_mode": teacher_mode}) + "\n")
    run = RunDir(folder)
    run.record_step("fit", {"config": {"teacher_mode": teacher_mode}, "teacher": str(teacher)},
                    data=data_manifest(data_cfg, dataset))
    run.record_step("distill", {"config": {"method": "kd"}, "student": str(student), "fit_id": run.step_id("fit")})
    return folder


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread for these tiny models: on a shared 2-core machine, two threads that
    wait for each other make a 2-second fixture take a minute."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    """A run folder with teacher/ and student/ (no onnx/ yet). Copy it before changing it."""
    return build_tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    """A run folder after `metakd export --int8 --ort` (library call). Copy it before changing it."""
    from metakd_cli.core.config import ExportConfig
    from metakd_cli.steps.export import export
    from metakd_cli.core.run_dir import RunDir

    folder = build_tiny_run(tmp_path_factory.mktemp("exported"))
    result = export(ExportConfig(int8=True, ort=True), RunDir(folder))
    assert result.passed, result.failures
    return folder
