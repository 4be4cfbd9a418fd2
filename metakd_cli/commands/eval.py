"""`metakd eval`: not built yet."""

import click

from metakd_cli.errors import UserError


@click.command("eval", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_(args) -> None:
    """(Not built yet.)"""
    raise UserError("`metakd eval` is not built yet in this version")
