"""`metakd predict`: labels and probabilities for new texts, from the exported model by default.

The model is the run's int8 ONNX file when it exists, else the fp32 ONNX file, else the
PyTorch student. Texts (and, for a model trained on pairs, second texts) come from the caller
(arguments, a file, or stdin lines). Batches are length-sorted and dynamically padded
(``bucketing``); results come back in input order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from metakd_cli.core.cpu import cpu_info, target_mismatch
from metakd_cli.data.rows import read_texts
from metakd_cli.core.errors import UserError
from metakd_cli.steps.evaluate import Artifact, exported_target, load_forward, run_artifacts, stale_models
from metakd_cli.models.inference import batched_logits, softmax

PREDICT_MODELS = ("int8", "onnx", "student")


@dataclass
class PredictConfig:
    texts: list[str]
    text_pairs: list[str | None] | None = None  # the second text of each (MNLI's sentence2), None where it has none
    model: str | None = None  # int8 | onnx | student; None: the first of those that exists
    batch_size: int = 32  # 1: each text alone, the answer it gets whatever else is classified with it
    bucketing: bool = True  # length-sorted, dynamically padded batches; False: input order, padded to max_length


@dataclass
class PredictInputs:
    """Where the texts come from: TEXT arguments, or a table / text file (``file``, read by its columns), or
    with neither the lines of ``stdin``."""

    texts: tuple[str, ...] = ()
    file: Path | None = None
    text_column: str | None = None  # None: the run's --text-column, else "text"
    text_pair_column: str | None = None  # None: the run's --text-pair-column for a pair-trained model
    stdin: TextIO | None = None


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]
    text_pair: str | None = None


@dataclass
class PredictResult:
    model: str
    path: Path
    predictions: list[Prediction]
    warnings: list[str] = field(default_factory=list)


def _data(run) -> dict:
    """The run's data description (manifest ``data``); empty without a manifest."""
    return run.load().data if run.exists() else {}


def pair_trained(data: dict) -> bool | None:
    """Whether the run whose manifest ``data`` this is learnt from text pairs; None when it does not
    say (made before metakd recorded it, and not MNLI)."""
    if "text_pairs" in data:
        return bool(data["text_pairs"])
    return True if data.get("layout") == "mnli" else None


def file_inputs(path: Path, run, text_column: str | None = None,
                text_pair_column: str | None = None) -> tuple[list[str], list[str | None]]:
    """The texts (and second texts) of ``path`` for ``run``'s model: its columns are the run's
    unless named; a model of single texts reads no pairs unless a pair column is named."""
    data = _data(run)
    columns = data.get("config", {})
    trained = pair_trained(data)
    pair_column = text_pair_column
    if pair_column is None and trained is not False:
        pair_column = columns.get("text_pair_column", "text_pair")
    return read_texts(path, text_column or columns.get("text_column", "text"), pair_column,
                      text_named=text_column is not None, pair_named=text_pair_column is not None,
                      pairs_required=bool(trained))


def read_inputs(source: PredictInputs, run) -> tuple[list[str], list[str | None] | None]:
    """The texts to classify and, read from a file, their second texts (None otherwise); no text is a UserError.

    An empty TEXT argument is kept: ``predict`` refuses it, naming its position.
    """
    if source.texts and source.file is not None:
        raise UserError("give TEXT arguments or --file, not both")
    if source.file is None and (source.text_column or source.text_pair_column):
        raise UserError("--text-column / --text-pair-column name columns of --file; give --file too")
    if source.file is not None:
        inputs, pairs = file_inputs(source.file, run, source.text_column, source.text_pair_column)
        if not inputs:
            raise UserError(f"{source.file}: no text to classify (the file has no non-blank lines or rows)")
        return inputs, pairs
    if source.texts:
        return list(source.texts), None
    if source.stdin is None or source.stdin.isatty():
        raise UserError("no text to classify: give TEXT arguments, --file F, or pipe lines on stdin")
    inputs = [line.strip() for line in source.stdin if line.strip()]
    if not inputs:
        raise UserError("no text to classify: stdin held no non-blank lines")
    return inputs, None


def choose_model(available: dict[str, Artifact], wanted: str | None, run_path: Path,
                 stale: dict[str, str] | None = None) -> Artifact:
    """The model asked for, or the first of PREDICT_MODELS present; a ``stale`` one (made from an earlier
    fit / distill) is refused when asked for by name."""
    stale = stale or {}
    if wanted is not None:
        if wanted not in PREDICT_MODELS:
            raise UserError(f"unknown --model '{wanted}' (valid: {', '.join(PREDICT_MODELS)})")
        if wanted in stale:
            raise UserError(f"{run_path}: {stale[wanted]}")
        if wanted not in available:
            hint = {"int8": "metakd export --int8", "onnx": "metakd export", "student": "metakd distill"}[wanted]
            raise UserError(f"{run_path}: no {wanted} model in this run folder; run `{hint}` first")
        return available[wanted]
    for name in PREDICT_MODELS:
        if name in available:
            return available[name]
    if stale:  # on disk, but made from an earlier teacher / student: say which and why, as export does
        reasons = "; ".join(dict.fromkeys(stale[n] for n in reversed(PREDICT_MODELS) if n in stale))  # cause first
        raise UserError(f"{run_path}: nothing current to predict with: {reasons}")
    raise UserError(
        f"{run_path}: no onnx/ or student/ to predict with; run `metakd distill` (and `metakd export`) first"
    )


def _label_names(folder: Path, n_labels: int) -> list[str]:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(n_labels)]


def predict(cfg: PredictConfig, run, log: Callable[[str], None] = lambda _: None) -> PredictResult:
    """Classify ``cfg.texts`` with one model of the run folder."""
    from metakd_cli.data.encode import Encoded, tokenize
    from metakd_cli.models.loading import load_tokenizer

    texts = cfg.texts
    pairs = cfg.text_pairs if cfg.text_pairs is not None else [None] * len(texts)
    if not texts:
        raise UserError("no text to classify: give TEXT arguments, --file F, or lines on stdin")
    for position, text in enumerate(texts, start=1):
        if not text.strip():  # one prediction per text, in order: dropping one would misalign the rest
            raise UserError(f"text {position} of {len(texts)} is empty: each text gets one output line, "
                            "so give it some text or leave it out")
    if not Path(run.path).is_dir():
        raise UserError(f"run folder {run.path} does not exist; point --run-dir / METAKD_RUN_DIR at a run")
    warnings = []
    trained_on_pairs = pair_trained(_data(run))
    if trained_on_pairs and all(p is None for p in pairs):
        raise UserError(
            f"{run.path}: the model was trained on text pairs (a second text per row, as MNLI's sentence2); give "
            "--file with a column for each text (--text-column / --text-pair-column name them)"
        )
    if trained_on_pairs is False and any(p is not None for p in pairs):
        warnings.append("the model was trained on single texts; the second texts are passed as a second segment, "
                        "which it never saw")
    stale = stale_models(run)
    artifact = choose_model(run_artifacts(run), cfg.model, run.path, stale)
    if cfg.model is None:
        for reason in dict.fromkeys(stale[n] for n in PREDICT_MODELS if n in stale):
            log(f"not used: {reason}")
    log(f"predicting with {artifact.name} ({artifact.path})")
    tokenizer = load_tokenizer(str(artifact.tokenizer_dir))
    out = tokenize(tokenizer, texts, pairs, artifact.max_length)
    encoded = Encoded(input_ids=out["input_ids"], token_type_ids=out.get("token_type_ids"),
                      labels=[0] * len(texts), domains=[0] * len(texts))
    logits = batched_logits(encoded, tokenizer.pad_token_id or 0, cfg.batch_size, load_forward(artifact),
                            cfg.bucketing, artifact.max_length)
    probabilities = softmax(logits)
    labels = _label_names(artifact.tokenizer_dir, probabilities.shape[-1])
    predictions = [_prediction(text, pair, row, labels) for text, pair, row in zip(texts, pairs, probabilities)]
    if artifact.name == "int8":
        mismatch = target_mismatch(exported_target(run), cpu_info())
        if mismatch:
            warnings.append(mismatch)
        if cfg.batch_size > 1 and len(texts) > 1 and dynamic_int8(artifact.tokenizer_dir):
            warnings.append(f"{artifact.path} is dynamic int8: a text's probability can change with the other texts "
                            "of its batch; --batch-size 1 gives each text the answer it gets alone, or re-export with "
                            "`metakd export --int8` (static int8, the default)")
    return PredictResult(model=artifact.name, path=artifact.path, predictions=predictions, warnings=warnings)


def dynamic_int8(folder: Path) -> bool:
    """Whether export folder ``folder``'s int8 file was quantized dynamically (its ort_config.json, beside
    config.json, says so; a folder without one is taken as dynamic, what metakd exported before static int8)."""
    try:
        quantization = json.loads((folder / "ort_config.json").read_text(encoding="utf-8")).get("quantization") or {}
    except (OSError, ValueError):
        return True
    return not quantization.get("is_static", False)


def _prediction(text: str, pair: str | None, row: Iterable[float], labels: list[str]) -> Prediction:
    row = np.asarray(row, dtype=np.float64)
    best = int(row.argmax())
    return Prediction(text=text, label=labels[best], probability=float(row[best]),
                      probabilities={label: float(p) for label, p in zip(labels, row)}, text_pair=pair)
