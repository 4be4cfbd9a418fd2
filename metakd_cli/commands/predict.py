"""`metakd predict`: label and probability for each text, from the exported model by default."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from metakd_cli.steps.predict import PredictResult

PREFIX_CHARS = 60


@click.command("predict")
@click.argument("texts", nargs=-1)
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .csv / .tsv / .jsonl / .json table (JSON: an object per line) read by its text column "
                   "(and pair column, for a model trained on pairs), a MultiNLI file, or any other file with "
                   "one text per line.")
@click.option("--text-column", default=None,
              help="Column (JSONL field) of --file that holds the text [the run's --text-column, else 'text'].")
@click.option("--text-pair-column", default=None,
              help="Column of --file with the second text, for a model trained on pairs [the run's "
                   "--text-pair-column, else 'text_pair'; a model of single texts reads none unless named].")
@click.option("--model", type=click.Choice(["int8", "onnx", "student"]), default=None,
              help="Model to use [int8 if exported, else onnx, else student].")
@click.option("--bucketing/--no-bucketing", default=True, show_default=True,
              help="Length-sorted, dynamically padded batches; --no-bucketing pads every text to max_length in "
                   "input order. Output order is the input order either way.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Texts per forward pass. Static int8 (the default export), fp32 and the student give a text "
                   "the same answer at any size (to float rounding); with a dynamic int8 model, 1 gives each "
                   "text the answer it gets alone.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of label<TAB>prob<TAB>text lines.")
@click.pass_obj
def predict(obj, texts: tuple[str, ...], file: Path | None, text_column: str | None,
            text_pair_column: str | None, model: str | None, bucketing: bool, batch_size: int, as_json: bool) -> None:
    """Classify TEXT arguments, the texts of --file, or (with neither) the lines on stdin.

    One output line (or JSON entry) per text, in input order. A .csv / .tsv / .jsonl file is a
    table: the text column of each row (the run's column names unless given), and the pair
    column where rows have one, which a model trained on pairs (MNLI) needs. Blank lines of a
    plain file and of stdin are skipped; an empty TEXT argument is an error, so each TEXT gets
    exactly one line.

    \b
      metakd predict "the kettle broke after a week"
      metakd predict --file reviews.csv --json
      metakd predict --file pairs.jsonl --text-column premise --text-pair-column hypothesis
      cat reviews.txt | metakd predict --model student
    """
    import sys

    from metakd_cli.commands import console
    from metakd_cli.steps.predict import PredictConfig, PredictInputs, read_inputs
    from metakd_cli.steps.predict import predict as run_predict
    from metakd_cli.core.run_dir import RunDir

    run = RunDir(obj.run_dir)
    inputs, pairs = read_inputs(PredictInputs(texts, file, text_column, text_pair_column, sys.stdin), run)
    result = run_predict(PredictConfig(texts=inputs, text_pairs=pairs, model=model, bucketing=bucketing,
                                       batch_size=batch_size), run, console.log)
    for warning in result.warnings:
        console.warn(warning)
    _render(result, as_json)


def _render(result: PredictResult, as_json: bool) -> None:
    """One JSON list, or a label<TAB>probability<TAB>text line per prediction (the text cut to PREFIX_CHARS)."""
    import sys

    from metakd_cli.commands import console

    if as_json:
        console.print_json([
            {"text": p.text, **({"text_pair": p.text_pair} if p.text_pair is not None else {}), "label": p.label,
             "probability": p.probability, "probabilities": p.probabilities}
            for p in result.predictions
        ])
        return
    for p in result.predictions:
        text = " ".join(p.text.split() + (["||", *p.text_pair.split()] if p.text_pair is not None else []))
        prefix = text if len(text) <= PREFIX_CHARS else text[: PREFIX_CHARS - 3] + "..."
        sys.stdout.write(f"{p.label}\t{p.probability:.4f}\t{prefix}\n")
    sys.stdout.flush()
