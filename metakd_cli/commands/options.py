"""Option groups shared by several commands."""

from __future__ import annotations

import click

from metakd_cli.core.config import DataConfig


def data_options(func):
    """Column names, split seed, row limit and domain filter: how a dataset is read."""
    options = [
        click.option("--text-column", default=None, help="Column with the text [text]."),
        click.option("--text-pair-column", default=None, help="Optional second text for pair tasks [text_pair]."),
        click.option("--label-column", default=None, help="Column with the label [label]."),
        click.option("--domain-column", default=None, help="Column with the domain [domain]."),
        click.option("--split-seed", type=int, default=None, help="Seed of the 80/10/10 split when none is given [42]."),
        click.option("--limit-per-domain", type=int, default=None, help="Keep about N rows per domain (stratified)."),
        click.option("--domains", default=None,
                     help="Keep only these domains, comma-separated (e.g. MNLI's fiction,government,...) [all]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


DATA_FLAGS = (
    "text_column", "text_pair_column", "label_column", "domain_column", "split_seed", "limit_per_domain", "domains",
)


def pop_data_flags(kwargs: dict) -> dict:
    return {name: kwargs.pop(name) for name in DATA_FLAGS}


def data_config(path: str, flags: dict) -> DataConfig:
    from metakd_cli.core.config import apply_values

    cfg = DataConfig(path=path)
    apply_values(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")
    return cfg
