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
@click.option("--rounds", type=int, default=None,
              help="Timing rounds: every model is timed once per round, in turn, and each speed is the median "
                   "over rounds with its fastest and slowest round [8].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="YAML recipe whose eval: section sets the defaults; flags override it.")
@click.option("--set", "sets", multiple=True, help="Override a recipe key: --set eval.latency_rows=16 (repeatable).")
@click.pass_obj
def eval_(obj, models: tuple[str, ...], domains: tuple[str, ...], split: str | None, bucketing: bool | None,
          rounds: int | None, as_json: bool, recipe: str | None, sets: tuple[str, ...]) -> None:
    """Score teacher / student / ONNX / int8 from the run folder on one split.

    \b
    Per-domain accuracy and macro-F1, agreement with the teacher, latency at batch 1, throughput
    at batch 32 and size on disk; also written to metrics/eval.json (the latest record at its top
    level, and under "selections" the latest of every selection of models, domains and split).
    The models are timed together in interleaved rounds: speeds are medians over the rounds with
    the fastest and slowest round beneath, speed-ups over the teacher come from the same rounds,
    and a line on stderr says when the rounds were unsteady (a busy machine).
      metakd eval --domain kitchen
      metakd eval --model student --model int8 --split dev --json
      metakd eval --rounds 16
    """
    from metakd_cli.commands import console
    from metakd_cli.core.config import apply_overrides, load_recipe
    from metakd_cli.steps.evaluate import evaluate_run
    from metakd_cli.core.run_dir import RunDir

    recipe_config = load_recipe(recipe)
    flags = {"models": list(models) or None, "domains": list(domains) or None, "split": split, "bucketing": bucketing,
             "rounds": rounds}
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
    from metakd_cli.commands import console

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
    rows += _speed_rows(reports)
    rows.append(["size MB", *[r.size_mb for r in reports]])
    threads = result.threads
    batching = "" if result.bucketing else "; no bucketing (padded to max_length)"
    timing = result.timing
    rounds = (f"; speed: medians of {timing.rounds} interleaved rounds"
              + (", UNSTEADY (why: the log above, or --json's timing)" if timing.unsteady else "")) if timing else ""
    baseline = ("; student, onnx and int8: the no-teacher baseline (distill --method none: gold labels alone)"
                if result.student_method == "none" else "")
    console.print_table(
        f"{title} — {result.split} split, {result.rows:,} rows; torch threads {threads['torch']}, "
        f"onnxruntime threads {threads['onnxruntime']}{batching}{rounds}{baseline}",
        ["", *[r.name for r in reports]],
        rows,
    )


def _speed_rows(reports) -> list[list[object]]:
    """Latency and throughput, each the median over the rounds with the fastest and slowest round beneath it, and
    the speed-up over the teacher from the same rounds (when the teacher was timed with them)."""
    big = next((k for k in reports[0].timed_rows if k != "batch_1"), "batch_32") if reports else "batch_32"
    at = big.replace("_", " ")
    rows: list[list[object]] = [["latency ms (batch 1)", *[r.latency_ms for r in reports]],
                                ["  fastest–slowest", *[_range(r.latency_ms_spread, 2) for r in reports]],
                                [f"throughput ex/s ({at})", *[r.throughput for r in reports]],
                                ["  lowest–highest", *[_range(r.throughput_spread, 0) for r in reports]]]
    if any(r.speedup_vs_teacher for r in reports):
        rows.append([f"speed-up vs teacher ({at})",
                     *[f"{r.speedup_vs_teacher[big]:.2f}x" if r.speedup_vs_teacher else None for r in reports]])
    return rows


def _range(low_high: list[float], digits: int) -> str | None:
    return f"{low_high[0]:.{digits}f}–{low_high[1]:.{digits}f}" if len(low_high) == 2 else None
