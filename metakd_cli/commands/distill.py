"""`metakd distill`: not built yet."""

import click

from metakd_cli.errors import UserError


@click.command("distill", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def distill(args) -> None:
    """(Not built yet.)"""
    raise UserError("`metakd distill` is not built yet in this version")
