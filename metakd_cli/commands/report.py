"""`metakd report`: one self-contained HTML page of what the run learned and what it costs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page [RUN_DIR/report.html].")
@click.option("--split", type=click.Choice(["test", "dev"]), default="test", show_default=True,
              help="Split the models are scored on for accuracy and confusion matrices.")
@click.pass_obj
def report(obj, output: Path | None, split: str) -> None:
    """Write report.html: accuracy, size, speed, t and lambda, the most and least transferable rows.

    \b
    Per-domain accuracy bars and confusion matrices of teacher / student / ONNX / int8 (scored now),
    size and the speed `metakd eval` measured, histograms of t per domain and of lambda, and the
    10 most and 10 least transferable training rows of each domain. One file: inline SVG, no
    script, nothing fetched over the network.
      metakd report
      metakd report --output /tmp/run.html
    """
    from metakd_cli.commands import console
    from metakd_cli.steps.report import write_report
    from metakd_cli.core.run_dir import RunDir

    result = write_report(RunDir(obj.run_dir), output, split, console.log)
    click.echo(str(result.path))
