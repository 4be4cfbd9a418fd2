"""The `metakd` Click group: global options, the command table, user errors caught once."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from metakd_cli import __version__
from metakd_cli.core.errors import UserError

COMMANDS = {
    "data": ("metakd_cli.commands.data", "data"),
    "fit": ("metakd_cli.commands.fit", "fit"),
    "distill": ("metakd_cli.commands.distill", "distill"),
    "export": ("metakd_cli.commands.export", "export"),
    "eval": ("metakd_cli.commands.eval", "eval_"),
    "predict": ("metakd_cli.commands.predict", "predict"),
    "run": ("metakd_cli.commands.run", "run"),
    "recipes": ("metakd_cli.commands.recipes", "recipes"),
    "report": ("metakd_cli.commands.report", "report"),
}


RUN_FOLDER_COMMANDS = ("fit", "distill", "export", "eval", "predict", "run", "report")  # they accept --run-dir after them too


@dataclass
class Context:
    run_dir: Path
    quiet: bool


def _set_run_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None and ctx.find_object(Context) is not None:
        ctx.find_object(Context).run_dir = value  # after the command wins over before it and METAKD_RUN_DIR


def _run_dir_after_the_command() -> click.Option:
    """`metakd fit DATA --run-dir X` as well as `metakd --run-dir X fit DATA`."""
    return click.Option(
        ["--run-dir"],
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_set_run_dir,
        help="Run folder, as `metakd --run-dir` (this one wins) [env METAKD_RUN_DIR, else ./metakd-run].",
    )


class MetakdGroup(click.Group):
    """Loads each command module on demand and turns user errors into one line, exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        import importlib

        module, attr = COMMANDS[name]
        command = getattr(importlib.import_module(module), attr)
        if name in RUN_FOLDER_COMMANDS and not any(p.name == "run_dir" for p in command.params):
            command.params.append(_run_dir_after_the_command())
        return command

    def invoke(self, ctx: click.Context):
        from metakd_cli.commands import console

        try:
            return super().invoke(ctx)
        except UserError as exc:
            console.error(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            console.error(interrupted(ctx.invoked_subcommand, ctx.find_object(Context),
                                      getattr(exc, "saved_pass", None)))
            sys.exit(130)


RESUMABLE = {"fit": ("fit-",), "distill": ("distill-",), "run": ("fit-", "distill-")}  # their checkpoints


def interrupted(command: str | None, obj: Context | None, saved_pass: tuple[str, Path] | None = None) -> str:
    """What Ctrl-C left behind: the training checkpoint it saved and the command that continues from it, the
    long pass a command saved or reused before training (``saved_pass``: what, where; a meta fit's
    transferability scores, a distillation's teacher logits) when no training state was saved yet, or that
    nothing changed (every artifact and metrics file is written whole or not at all)."""
    if command not in RESUMABLE or obj is None:
        return "interrupted; nothing was changed (files are written whole or not at all)"
    saved = _latest_checkpoint(obj.run_dir / "checkpoints", RESUMABLE[command])
    if saved is None:
        if saved_pass is not None:
            what, where = saved_pass
            return (f"interrupted before any training state was saved; {what} are saved in {where}, and the same "
                    f"command with --resume reuses them: {_command_line(resume=True)}")
        if command == "run":
            return ("interrupted; the steps that had finished are kept (the run folder's manifest records them), "
                    f"and the same command skips them: {_command_line(resume=False)}")
        return ("interrupted before any training state was saved; nothing was changed, so run the same command "
                "again to start over")
    folder, done = saved
    return f"interrupted; training state saved in {folder} ({done}); continue with: {_command_line(resume=True)}"


def _latest_checkpoint(folder: Path, prefixes: tuple[str, ...]) -> tuple[Path, str] | None:
    """The most recently saved checkpoint of those phases, and how far it got."""
    import json

    found = [loop for prefix in prefixes for pattern in (f"{prefix}*/loop.json", f".{prefix}*.old/loop.json")
             for loop in folder.glob(pattern)]
    if not found:
        return None
    latest = max(found, key=lambda p: p.stat().st_mtime)
    try:
        loop = json.loads(latest.read_text(encoding="utf-8"))
        epochs, steps = int(loop["epoch"]), int(loop["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return latest.parent, "how far it got is unreadable"
    if steps:
        done = f"stopped in epoch {epochs + 1} after {steps} step{'' if steps == 1 else 's'}"
    else:
        done = f"{epochs} epoch{'' if epochs == 1 else 's'} done" if epochs else "no step trained yet"
    return latest.parent, done


def _command_line(resume: bool) -> str:
    """The command as it was typed, with --resume added when asked."""
    import shlex

    args = sys.argv[1:]
    if resume and "--resume" not in args:
        args = [*args, "--resume"]
    program = Path(sys.argv[0]).name if sys.argv else "metakd"
    prefix = [sys.executable, "-m", "metakd_cli"] if program in ("__main__.py", "-m", "-c", "") else ["metakd"]
    return shlex.join([*prefix, *args])


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
    from metakd_cli.commands import console
    from metakd_cli.core.processes import check_command, is_main

    check_command(ctx.invoked_subcommand)  # under a multi-process launch: only fit and distill
    console.settings.quiet = quiet or not is_main()  # several processes: the main one speaks for all
    ctx.obj = Context(run_dir=run_dir, quiet=quiet)


def main() -> None:
    cli(prog_name="metakd")
