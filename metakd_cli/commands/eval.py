"""`metakd eval`: per-domain accuracy, agreement, speed and size of the run's models, side by side."""

from __future__ import annotations

import click


@click.command("eval")
@click.option("--model", "models", multiple=True, type=click.Choice(["all", "teacher", "student", "onnx", "int8"]),
              help="Model(s) to evaluate (repeatable) [all: whichever exist].")
@click.option("--domain", "domains", multiple=True, help="Domain(s) to score (repeatable) [all].")
@click.option("--split", type=click.Choice(["test", "dev"]), default=None, help="Split to score [test].")
@click.option("--bucketing/--no-bucketing", default=None,
              help="Length-sorted, dynamically padded batches; --no-bucketing pads every row to max_length in "
                   "input order (to compare speeds) [bucketing].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="YAML recipe whose eval: section sets the defaults; flags override it.")
@click.option("--set", "sets", multiple=True, help="Override a recipe key: --set eval.latency_rows=16 (repeatable).")
@click.pass_obj
def eval_(obj, models: tuple[str, ...], domains: tuple[str, ...], split: str | None, bucketing: bool | None,
          as_json: bool, recipe: str | None, sets: tuple[str, ...]) -> None:
    """Score teacher / student / ONNX / int8 from the run folder on one split.

    \b
    Per-domain accuracy and macro-F1, agreement with the teacher, mean latency at batch 1,
    throughput at batch 32 and size on disk; also written to metrics/eval.json (the latest record at
    its top level, and under "selections" the latest of every selection of models, domains and split).
      metakd eval --domain kitchen
      metakd eval --model student --model int8 --split dev --json
    """
    from metakd_cli import console
    from metakd_cli.config import apply_overrides, load_recipe
    from metakd_cli.evaluate import evaluate_run
    from metakd_cli.run_dir import RunDir

    recipe_config = load_recipe(recipe)
    flags = {"models": list(models) or None, "domains": list(domains) or None, "split": split, "bucketing": bucketing}
    apply_overrides(recipe_config, "eval", flags, sets)  # defaults < recipe < flags and --set
    result = evaluate_run(recipe_config.eval, RunDir(obj.run_dir), console.log)
    for warning in result.warnings:
        console.warn(warning)
    if as_json:
        console.print_json(result.to_json())
        return
    render(result, str(obj.run_dir))


def render(result, title: str) -> None:
    """The side-by-side table of an EvalResult (also shown at the end of `metakd run`)."""
    from metakd_cli import console

    reports = result.models
    keys = result.domains + (["average"] if len(result.domains) > 1 else [])
    rows: list[list[object]] = []

    def label(key: str) -> str:
        return f"{key} (held out)" if key == result.held_out else key

    for key in keys:
        rows.append([f"{label(key)} acc %", *[r.accuracy.get(key) for r in reports]])
    for key in keys:
        rows.append([f"{label(key)} macro-F1", *[r.macro_f1.get(key) for r in reports]])
    rows.append(["agreement w/ teacher %",
                 *[None if r.name == "teacher" or r.agreement is None else r.agreement["all"] for r in reports]])
    rows.append(["latency ms (batch 1)", *[r.latency_ms for r in reports]])
    rows.append(["throughput ex/s (batch 32)", *[r.throughput for r in reports]])
    rows.append(["size MB", *[r.size_mb for r in reports]])
    threads = result.threads
    batching = "" if result.bucketing else "; no bucketing (padded to max_length)"
    console.print_table(
        f"{title} — {result.split} split, {result.rows:,} rows; torch threads {threads['torch']}, "
        f"onnxruntime threads {threads['onnxruntime']}{batching}",
        ["", *[r.name for r in reports]],
        rows,
    )
