"""One stderr console for progress, warnings and notes; stdout is kept for each command's result."""

from __future__ import annotations

import json
import math
import os
import re
import sys

from rich.console import Console
from rich.markup import escape

# no colour codes when stderr is not a terminal (pipes, CI logs); NO_COLOR is honoured by rich itself
console = Console(stderr=True, highlight=False, soft_wrap=True)


# what a file name may hold that a terminal would act on: C0/C1 controls (escape sequences, newlines, carriage
# returns), line separators, bidirectional overrides (text shown reversed) and the lone surrogates that stand
# for bytes of a name that is not UTF-8 (a terminal cannot even be sent those)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's stand-in for the byte o - 0xdc00
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text: str) -> str:
    """text with every character a terminal would interpret (or cannot show) written as a \\x.. / \\u.... escape:
    every message goes through it, so a file named with an escape sequence prints as its name."""
    return _UNPRINTABLE.sub(lambda m: _escaped(m[0]), str(text))


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(printable(msg))}", markup=True, highlight=False)


def note(msg: str) -> None:
    console.print(printable(msg), markup=False, highlight=False)


def error(msg: str) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(printable(msg))}", markup=True, highlight=False)


def finite_json(obj, **kwargs) -> str:
    """JSON that every parser reads: a non-finite float (an infinite PSNR, a NaN figure) becomes null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


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
