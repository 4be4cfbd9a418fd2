"""The only module that knows rich: stderr console, progress bars and tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)


@dataclass
class Settings:
    quiet: bool = False


settings = Settings()


def log(message: str) -> None:
    """A progress/log line on stderr (silenced by --quiet)."""
    if not settings.quiet:
        stderr.print(message, highlight=False)


def warn(message: str) -> None:
    """A warning on stderr, shown even with --quiet."""
    stderr.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def error(message: str) -> None:
    stderr.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)


def print_json(obj: object) -> None:
    """Machine-readable result on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A result table on stdout."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    stdout.print(table)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


@dataclass
class TrainingProgress:
    """A progress callback for the library: a rich bar on stderr, or nothing when quiet.

    The library calls ``start(phase, total)``, ``advance(n, **fields)`` and ``stop()``;
    it never imports rich itself.
    """

    _progress: Progress | None = None
    _task: int | None = None
    _fields: dict = field(default_factory=dict)

    def start(self, description: str, total: int, completed: int = 0) -> None:
        if settings.quiet:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, info="")

    def advance(self, steps: int = 1, info: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=steps, info=info)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._task = None
