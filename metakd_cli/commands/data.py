"""`metakd data PATH`: what a dataset holds, per domain, split and label."""

from __future__ import annotations

import click

from metakd_cli.commands.options import data_config, data_options, pop_data_flags


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@data_options
@click.option("--transfer", multiple=True, metavar="PATH",
              help="Also read unlabelled texts as `metakd distill --transfer` would (repeatable): what it keeps per "
                   "domain and what it leaves out (a copy of any training text counts as one here; distill "
                   "--train-fraction keeps the texts of the rows it leaves out).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def data(path: str, transfer: tuple[str, ...], as_json: bool, **kwargs) -> None:
    """Read a domain-tagged dataset and show domains x splits x labels."""
    from metakd_cli.commands import console
    from metakd_cli.data.dataset import load_dataset

    config = data_config(path, pop_data_flags(kwargs))
    dataset = load_dataset(config)
    summary = dataset.summary()
    read = None
    if transfer:
        from metakd_cli.data.transfer import read_transfer, seen_texts

        read = read_transfer(transfer, dataset.domains, seen_texts(dataset), None, config.text_column,
                             config.text_pair_column, config.domain_column, pairs=dataset.has_pairs)
        summary["transfer"] = read.summary()
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
    if read is not None:  # the unlabelled texts --transfer would add, per domain
        columns.append("transfer")
        for row in rows:
            row.append(summary["transfer"]["by_domain"].get(row[0], 0))
    totals = ["total"] + [sum(r[i] for r in rows) for i in range(1, len(columns))]
    split = "given splits" if dataset.given_splits else f"seeded split (seed {dataset.split_seed})"
    if dataset.layout == "mnli":
        split = f"train file -> train, dev_matched -> test, dev carved from train (seed {dataset.split_seed})"
    skipped = "".join(f"; {count:,} rows skipped: {reason}" for reason, count in dataset.skipped.items())
    if read is not None:
        skipped += "".join(f"; --transfer left out {count:,}: {why}" for why, count in read.left_out.items())
    console.print_table(
        f"{dataset.source} — {dataset.layout}, {len(dataset.domains)} domains, "
        f"{len(dataset.labels)} labels, {summary['total']:,} rows, {split}{skipped}",
        columns,
        [*rows, totals],
    )
