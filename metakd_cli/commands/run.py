"""`metakd run`: not built yet."""

import click

from metakd_cli.errors import UserError


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args) -> None:
    """(Not built yet.)"""
    raise UserError("`metakd run` is not built yet in this version")
