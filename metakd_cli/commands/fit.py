"""`metakd fit DATA`: train the meta-teacher (or the single / mix / mtl baselines)."""

from __future__ import annotations

import click

from metakd_cli.commands.options import data_options, pop_data_flags


@click.command()
@click.argument("data", type=str)
@click.option("--teacher", default=None, help="Teacher model: all-MiniLM-L6-v2 (offline default), mpnet-base (all-mpnet-base-v2 from its five "
                   "PyPI parts, 110M), a folder, or a hub id.")
@click.option("--teacher-mode", default=None,
              help="meta (default) | mix | mtl (shared encoder, one head per domain) | single (one teacher per domain).")
@click.option("--hold-out", default=None, metavar="DOMAIN",
              help="Leave DOMAIN out of teacher training (then `metakd distill --domain DOMAIN`).")
@click.option("--train-fraction", type=float, default=None,
              help="Train on a seeded, label-stratified fraction of each domain's rows (data-scarce setting) [1].")
@click.option("--fraction-domains", default=None, metavar="D1,D2",
              help="Apply --train-fraction to these domains only (comma-separated); the others keep all rows [all].")
@click.option("--prototypes", default=None, help="class (the paper, default) | domain (the official code).")
@click.option("--pooling", default=None, help="Representation for the scores: mean (default) | cls.")
@click.option("--domain-loss", default=None, help="confusion (official, default) | reversal (DANN) | none.")
@click.option("--alpha", type=float, default=None, help="Weight of cos(h, own prototype) in t [0.5].")
@click.option("--zeta", type=float, default=None, help="Weight of cos(h, other domains' prototypes) in t [0.5].")
@click.option("--gamma", type=float, default=None, help="Weight of the domain loss [0.5].")
@click.option("--epochs", type=int, default=None, help="Training epochs, exactly [chosen on dev: --max-epochs, --patience].")
@click.option("--max-epochs", type=int, default=None, help="The ceiling when --epochs is not given [3].")
@click.option("--patience", type=int, default=None, help="Stop after N dev scorings without a gain (0: never) [10].")
@click.option("--eval-every", type=int, default=None,
              help="Score dev every N optimisation steps (0: at epoch ends) [about ten times an epoch].")
@click.option("--batch-size", type=int, default=None,
              help="Global batch size; under accelerate launch / torchrun each of N processes takes batch/N rows "
                   "(a multiple of N) [32].")
@click.option("--lr", type=float, default=None,
              help="Peak learning rate, linear warm-up and decay [5e-5 for a teacher 512 wide or less, else 2e-5].")
@click.option("--max-length", type=int, default=None, help="Tokens per example [128].")
@click.option("--seed", type=int, default=None, help="Training seed [42].")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow model code from the hub (off by default).")
@click.option("--mixed-precision", default=None, metavar="no|bf16|fp16",
              help="Mixed precision through accelerate (fp16: GPU only) [the launcher's setting, else no].")
@data_options
@click.option("--recipe", type=click.Path(dir_okay=False), default=None, help="YAML recipe; flags override it.")
@click.option("--set", "sets", multiple=True, help="Override a recipe key: --set fit.lr=3e-5 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue an interrupted fit from its last checkpoint.")
@click.pass_obj
def fit(obj, data: str, recipe: str | None, sets: tuple[str, ...], resume: bool, **kwargs) -> None:
    """Train the meta-teacher on every domain of DATA; writes teacher/ and metrics/fit.json."""
    from metakd_cli.commands import console
    from metakd_cli.core.config import apply_overrides, load_recipe, summary
    from metakd_cli.core.run_dir import RunDir

    config = load_recipe(recipe)
    data_flags = pop_data_flags(kwargs)
    apply_overrides(config, "data", {"path": data, **data_flags})
    apply_overrides(config, "fit", kwargs, sets)
    console.log(f"fit config: {summary(config.fit)} (all of it goes to manifest.json)")

    from metakd_cli.steps.fit import fit as run_fit

    result = run_fit(config.data, config.fit, RunDir(obj.run_dir), resume, console.TrainingProgress(), console.log,
                     console.warn)
    from metakd_cli.core.processes import is_main

    if not is_main():  # several processes: the main one shows the result
        return
    domains = [d for d in result.dev_accuracy if d != "average"]
    rows = [[f"{d} (held out)" if d == result.held_out else d, result.dev_accuracy[d], result.test_accuracy[d],
             result.mean_t.get(d)] for d in domains]
    rows.append(["average", result.dev_accuracy["average"], result.test_accuracy["average"], None])
    console.print_table(
        f"teacher ({result.mode}) in {obj.run_dir}/teacher — {result.seconds / 60:.1f} min",
        ["domain", "dev acc %", "test acc %", "mean t"],
        rows,
    )
