"""The `metakd` Click group: global options, the command table, user errors caught once."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from metakd_cli import __version__
from metakd_cli.errors import UserError

COMMANDS = {
    "data": ("metakd_cli.commands.data", "data"),
    "fit": ("metakd_cli.commands.fit", "fit"),
    "distill": ("metakd_cli.commands.distill", "distill"),
    "export": ("metakd_cli.commands.export", "export"),
    "eval": ("metakd_cli.commands.eval", "eval_"),
    "predict": ("metakd_cli.commands.predict", "predict"),
    "run": ("metakd_cli.commands.run", "run"),
    "recipes": ("metakd_cli.commands.recipes", "recipes"),
}


@dataclass
class Context:
    run_dir: Path
    quiet: bool


class MetakdGroup(click.Group):
    """Loads each command module on demand and turns user errors into one line, exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        import importlib

        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        from metakd_cli import console

        try:
            return super().invoke(ctx)
        except UserError as exc:
            console.error(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.error("interrupted; nothing half-written was kept (use --resume where the command offers it)")
            sys.exit(130)


@click.group(cls=MetakdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="metakd")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="METAKD_RUN_DIR",
    default=Path("metakd-run"),
    show_default=True,
    help="Run folder that chains fit -> distill -> export -> eval (env METAKD_RUN_DIR).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only results on stdout and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, run_dir: Path, quiet: bool) -> None:
    """Meta-KD: compress a multi-domain text classifier into a small, fast, quantized model.

    \b
      metakd fit data/               train a meta-teacher on all domains
      metakd distill --student tiny  meta-distil it into a 4-layer student
      metakd export --int8           ONNX + int8 for CPU and mobile
      metakd eval --domain kitchen   per-domain accuracy: teacher vs student vs int8
    """
    from metakd_cli import console

    console.settings.quiet = quiet
    ctx.obj = Context(run_dir=run_dir, quiet=quiet)


def main() -> None:
    cli(prog_name="metakd")
