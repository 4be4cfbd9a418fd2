"""`metakd predict`: not built yet."""

import click

from metakd_cli.errors import UserError


@click.command("predict", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def predict(args) -> None:
    """(Not built yet.)"""
    raise UserError("`metakd predict` is not built yet in this version")
