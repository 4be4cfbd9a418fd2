"""The only module that knows rich: stderr console, progress bars and tables.

Messages and table text carry user data (paths, labels, domains, --set keys) that may hold
square brackets, so none of it goes through rich markup: it is wrapped in ``Text`` or printed
with ``markup=False``, and the only styling is the one metakd adds itself (``error:``, ``warning:``).
"""

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
from rich.text import Text

stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)


@dataclass
class Settings:
    quiet: bool = False


settings = Settings()


def log(message: str) -> None:
    """A progress/log line on stderr (silenced by --quiet)."""
    if not settings.quiet:
        stderr.print(message, highlight=False, markup=False)


def warn(message: str) -> None:
    """A warning on stderr, shown even with --quiet."""
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)


def error(message: str) -> None:
    stderr.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


def print_json(obj: object) -> None:
    """Machine-readable result on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                left: int = 1) -> None:
    """A result table on stdout: the first ``left`` columns (names, text) left-aligned, the rest (numbers) right."""
    table = Table(title=Text(title, style="table.title"), title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(Text(column), justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*[Text(_cell(v)) for v in row])
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

    The library calls ``start(phase, total)``, ``advance(n, **fields)``, ``epoch_end(...)`` and
    ``stop()``; it never imports rich itself. When stderr is no terminal (a log file, a pipe) a bar
    would be cut off mid-line, so each epoch ends in one plain line instead.
    """

    _progress: Progress | None = None
    _task: int | None = None
    _fields: dict = field(default_factory=dict)
    _phase: str = ""

    def start(self, description: str, total: int, completed: int = 0) -> None:
        self._phase = description
        if settings.quiet or not stderr.is_terminal:
            return
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),  # a phase name holds a domain name
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}", markup=False),
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

    def epoch_end(self, epoch: int, epochs: int, loss: float, dev_score: float | None,
                  examples_per_second: float) -> None:
        """One plain line per epoch (phase, epoch, loss, dev score, ex/s) when stderr is no terminal."""
        if self._progress is None:
            dev = f" dev acc {dev_score:.2f}%" if dev_score is not None else ""
            log(f"{self._phase}: epoch {epoch}/{epochs} loss {loss:.4f}{dev} {examples_per_second:.1f} ex/s")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._task = None
