"""`metakd run RECIPE`: the whole pipeline from a YAML recipe."""

from __future__ import annotations

import click


@click.command()
@click.argument("recipe")
@click.option("--set", "sets", multiple=True, help="Override a recipe key: --set fit.epochs=1 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue an interrupted fit or distill step from its last checkpoint.")
@click.option("--steps", default=None, metavar="STEP,...",
              help="Only these of fit,distill,export,eval (e.g. distill,eval: no ONNX export) [all four].")
@click.pass_obj
def run(obj, recipe: str, sets: tuple[str, ...], resume: bool, steps: str | None) -> None:
    """Fit, distill, export and eval as RECIPE says (a file, or a bundled name: quickstart, amazon-cpu ...).

    Steps already finished in the run folder with the same configuration are skipped.
    """
    from metakd_cli.commands import console
    from metakd_cli.core.config import apply_sets, find_recipe, load_recipe, summary
    from metakd_cli.core.run_dir import RunDir

    path = find_recipe(recipe)
    config = load_recipe(path)
    apply_sets(config, sets)
    console.log(f"recipe {path}: {summary(config)} (all of it goes to manifest.json)")

    from metakd_cli.commands.eval import render
    from metakd_cli.steps.pipeline import parse_steps, run_pipeline

    wanted = parse_steps(steps)

    result = run_pipeline(config, RunDir(obj.run_dir), console.TrainingProgress(), console.log, console.warn,
                          resume=resume, steps=wanted)
    console.log(f"ran {', '.join(result.ran) or 'nothing'}; skipped {', '.join(result.skipped) or 'nothing'}")
    if result.eval_result is not None:
        render(result.eval_result, f"{obj.run_dir} ({path.stem})")
