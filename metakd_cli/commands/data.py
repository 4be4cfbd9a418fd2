"""`metakd data PATH`: what a dataset holds, per domain, split and label."""

from __future__ import annotations

import click

from metakd_cli.commands.options import data_config, data_options, pop_data_flags


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def data(path: str, as_json: bool, **kwargs) -> None:
    """Read a domain-tagged dataset and show domains x splits x labels."""
    from metakd_cli import console
    from metakd_cli.data import load_dataset

    dataset = load_dataset(data_config(path, pop_data_flags(kwargs)))
    summary = dataset.summary()
    if len(dataset.labels) == 1:
        console.warn(f"every row has the same label ('{dataset.labels[0]}'): a classifier has nothing to tell apart "
                     "(is --label-column the right column?)")
    if as_json:
        console.print_json(summary)
        return
    columns = ["domain", "train", "dev", "test", *[f"label {label}" for label in summary["labels"]]]
    rows = [
        [name, d["train"], d["dev"], d["test"], *[d["labels"][label] for label in summary["labels"]]]
        for name, d in summary["domains"].items()
    ]
    totals = ["total"] + [sum(r[i] for r in rows) for i in range(1, len(columns))]
    split = "given splits" if dataset.given_splits else f"seeded split (seed {dataset.split_seed})"
    if dataset.layout == "mnli":
        split = f"train file -> train, dev_matched -> test, dev carved from train (seed {dataset.split_seed})"
    skipped = "".join(f"; {count:,} rows skipped: {reason}" for reason, count in dataset.skipped.items())
    console.print_table(
        f"{dataset.source} — {dataset.layout}, {len(dataset.domains)} domains, "
        f"{len(dataset.labels)} labels, {summary['total']:,} rows, {split}{skipped}",
        columns,
        [*rows, totals],
    )
