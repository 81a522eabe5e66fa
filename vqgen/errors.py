"""The error family the library raises, and the checks that raise it for a bad option value.

A message names an option as `{name}` (the library's parameter name, e.g. `{batch_size}`; `{group.key}` for
a key of a dict or list option, e.g. `{prior_options.layers}`), or as `{name=value}` for the option given that
value. str() spells them as a Python caller passes them (`batch_size`, `flip=False`); the command line spells
them as its flags (`--batch-size`, `--no-flip`, `-o layers 5`), in vqgen.cli only.
The CLI turns an OptionError into a usage error (exit 2) and every other VqgenError into one line and exit 1.
"""

from __future__ import annotations

import math
import re
from typing import Callable

_OPTION = re.compile(r"\{([a-z][a-z0-9_.]*)(?:=([^{}]*))?\}")


def _as_called(name: str, value: str | None) -> str:
    """How a Python caller writes the option: batch_size, flip=False; prior_options.layers=5 -> layers=5."""
    name = name.rpartition(".")[2]
    return name if value is None else f"{name}={value}"


class VqgenError(Exception):
    """Base of every error vqgen reports to a user (message says what is wrong and what to do)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(self.spelled(_as_called))

    def spelled(self, spell: Callable[[str, str | None], str]) -> str:
        """The message with each `{name}` / `{name=value}` written by spell(name, value or None)."""
        return _OPTION.sub(lambda m: spell(m[1], m[2]), self.message)


class DataError(VqgenError):
    """An image set or data spec that cannot be used."""


class CheckpointError(VqgenError):
    """A weights or training-state file that is missing, foreign, corrupt or mismatched."""


class CodesError(VqgenError):
    """An index-grid file that fails validation."""


class ConfigError(VqgenError):
    """Options that do not fit the files, the models, the machine or the run they are used with (bad device,
    unknown prior, unknown class, a search wider than the codebook, ...)."""


class OptionError(ConfigError):
    """Misuse, wrong whatever the files and the machine: an option's value outside the range it always has,
    a required option missing, or options that cannot be given together. `option` names the option the
    message is about, `value` is what was given and `valid` the range or choices it must lie in."""

    def __init__(self, message: str, option: str, value=None, valid: str | None = None):
        self.option, self.value, self.valid = option, value, valid
        super().__init__(message)


class OutputError(VqgenError):
    """An output that cannot be written: a folder where a file goes, no permission, a full disk, a closed stdout."""


class TrainingError(VqgenError):
    """Training cannot go on (non-finite loss, resume from an empty folder, ...)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped training after a checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code  # 128 + the signal's number, as a shell reports a process that signal ended


# -- the checks every entry point shares (None: not given, nothing to check) -------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value, integer: bool = True) -> None:
    """A count (or with integer=False a finite number) that must be > 0."""
    if value is None:
        return
    ok = _is_int(value) if integer else _is_number(value) and math.isfinite(value)
    if not ok or value <= 0:
        kind = "a positive integer" if integer else "a finite positive number"
        raise OptionError(f"{{{name}}} must be {'positive' if ok else kind}, got {value!r}", name, value, kind)


def check_at_least(name: str, value, minimum: float, integer: bool = True) -> None:
    """A count (or a finite number) that must be >= minimum."""
    if value is None:
        return
    ok = _is_int(value) if integer else _is_number(value) and math.isfinite(value)
    if not ok or value < minimum:
        what = "an integer" if integer else "a finite number"
        raise OptionError(f"{{{name}}} must be {what} >= {minimum:g}, got {value!r}", name, value,
                          f">= {minimum:g}")


def check_fraction(name: str, value, low_open: bool = True, high: float = 1.0, high_open: bool = True) -> None:
    """A number in (0, high) / [0, high) / (0, high]: the bounds' brackets say which ends are allowed."""
    if value is None:
        return
    low_ok = (lambda v: v > 0) if low_open else (lambda v: v >= 0)
    high_ok = (lambda v: v < high) if high_open else (lambda v: v <= high)
    if not (_is_number(value) and math.isfinite(value) and low_ok(value) and high_ok(value)):
        valid = f"{'(' if low_open else '['}0, {high:g}{')' if high_open else ']'}"
        raise OptionError(f"{{{name}}} must be in {valid}, got {value!r}", name, value, valid)


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    """One of a few names."""
    if value is not None and value not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise OptionError(f"{{{name}}} must be {listed}, got {value!r}", name, value, listed)


SEED_LIMIT = 2**64  # seeds are 64-bit unsigned everywhere (torch generators, the data order)


def check_seed(name: str, value) -> None:
    """A seed as stored in a config: an integer from 0 to 2^64 - 1 (options are reduced to it by seed_value)."""
    if value is not None and not (_is_int(value) and 0 <= value < SEED_LIMIT):
        raise OptionError(f"{{{name}}} must be an integer from 0 to {SEED_LIMIT - 1} (2^64 - 1), got {value!r}",
                          name, value, f"0 to {SEED_LIMIT - 1}")


def seed_value(name: str, value):
    """A seed as used: an integer reduced modulo 2^64 (torch's range), saying so when that changes it, so that
    `--seed $(date +%s%N)` and negative seeds work and one seed always draws alike."""
    if value is None:
        return None
    if not _is_int(value):
        raise OptionError(f"{{{name}}} must be an integer, got {value!r}", name, value, "an integer")
    if 0 <= value < SEED_LIMIT:
        return value
    from vqgen import log

    log.note(f"seed {value} is outside 0 to 2^64 - 1: using it modulo 2^64, {value % SEED_LIMIT}")
    return value % SEED_LIMIT


MAX_HELD_BYTES = 4 * 2**30  # what one option may ask a command to hold in memory at once (4 GiB)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def check_held(name: str, count: int, bytes_each: int, what: str) -> None:
    """A count option (say --n samples) whose results are held in memory together: refuse a count that would
    need more than MAX_HELD_BYTES, with the largest that fits."""
    most = max(1, MAX_HELD_BYTES // max(1, bytes_each))
    if count > most:
        raise OptionError(f"{{{name}={count}}} would hold {_size(count * bytes_each)} of {what} in memory; at most "
                          f"{most:,} fit the {_size(MAX_HELD_BYTES)} vqgen allows (run it several times)",
                          name, count, f"1 to {most}")
