"""One stderr console for progress, warnings and notes; stdout is kept for each command's result."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

# no colour codes when stderr is not a terminal (pipes, CI logs); NO_COLOR is honoured by rich itself
console = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(msg)}", markup=True, highlight=False)


def note(msg: str) -> None:
    console.print(msg, markup=False, highlight=False)


def error(msg: str) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(msg)}", markup=True, highlight=False)


def quiet() -> bool:
    """True when progress bars should stay off (stderr not a terminal, or VQGEN_QUIET set)."""
    return bool(os.environ.get("VQGEN_QUIET")) or not sys.stderr.isatty()


def progress(total: int, min_total: int = 200):
    """A transient rich progress bar on stderr, off when quiet() or for fewer than min_total items."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet() or total < min_total,
    )
