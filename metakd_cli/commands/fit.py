"""`metakd fit`: not built yet."""

import click

from metakd_cli.errors import UserError


@click.command("fit", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def fit(args) -> None:
    """(Not built yet.)"""
    raise UserError("`metakd fit` is not built yet in this version")
