"""`metakd export`: not built yet."""

import click

from metakd_cli.errors import UserError


@click.command("export", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export(args) -> None:
    """(Not built yet.)"""
    raise UserError("`metakd export` is not built yet in this version")
