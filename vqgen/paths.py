"""Where a command's files go, and the check every command makes before any work: no output may overwrite,
replace or write inside one of the command's inputs, no two outputs may be the same file, and each output must
be writable where it is (its folder exists, a file is not a folder, a folder is not a file).

A command (a new one too) makes one call, after its option checks and before it reads or computes anything:

    check_outputs({"vqvae": vqvae_file, "data": spec_path(data)}, [out_file("out", out)])

Inputs and outputs are named by the parameter that gave them ({vqvae}, {out}: the CLI spells them as flags). An
input is a path, a list of paths or None (not given); one that does not exist is skipped (its loader says so).
Identity is what the file system says (device and inode), for files and for every folder above an output, so
`~`, `..`, symlinks, hard links and bind mounts do not hide an input.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from vqgen.errors import ConfigError, OutputError


def user_path(path: str | os.PathLike) -> Path:
    """A path as given, `~` expanded (the shell leaves `--out=~/x` alone)."""
    return Path(os.path.expanduser(os.fspath(path)))


@dataclass(frozen=True)
class Out:
    """One output of a command: a file, or a folder receiving `files` (relative names, when known)."""

    name: str  # the parameter that gave it: "out", "save_codes", "json_out", "run_dir"
    path: Path
    folder: bool = False
    files: tuple[str, ...] = ()


def out_file(name: str, path: str | os.PathLike) -> Out:
    return Out(name, user_path(path))


def out_folder(name: str, path: str | os.PathLike, files: Iterable[str] = ()) -> Out:
    return Out(name, user_path(path), True, tuple(files))


def check_parent(path: str | os.PathLike) -> None:
    """Refuse an output path whose folder is missing or is a file, saying which (call it before any work)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        return
    p = _existing_ancestor(parent)
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot write {path}: {p} is a file, not a folder")
    raise OutputError(f"cannot write {path}: folder {parent} does not exist; create it first")


def png_names(rels: list[str]) -> list[str]:
    """The PNG each input image (relative path) is written to in an output folder, in order: cat/001.jpg ->
    cat/001.png; images whose names would then collide keep their extension (x.jpg -> x.jpg.png beside x.png)."""
    plain = [str(PurePosixPath(r).with_suffix(".png")) if PurePosixPath(r).suffix else r + ".png" for r in rels]
    taken = Counter(plain)
    names = [p if taken[p] == 1 or p == r else r + ".png" for r, p in zip(rels, plain)]
    first: dict[str, str] = {}
    for r, n in zip(rels, names):
        if n in first:
            raise ConfigError(f"{first[n]} and {r} would both be written as {n}; rename one of them")
        first[n] = r
    return names


def check_outputs(inputs: Mapping[str, object], outputs: Iterable[Out]) -> None:
    """Refuse, before any work, an output that is (or is inside) one of `inputs`, two outputs that are one file,
    and an output that cannot be written where it is (see the module's docstring for the one call)."""
    files: dict[tuple[int, int], tuple[str, Path]] = {}
    folders: dict[tuple[int, int], tuple[str, Path]] = {}
    for name, value in inputs.items():
        for p in _given(value):
            try:
                st = os.stat(p)
            except OSError:
                continue
            (folders if stat.S_ISDIR(st.st_mode) else files)[(st.st_dev, st.st_ino)] = (name, p)
    seen: dict[object, tuple[str, Path]] = {}
    idents: dict[str, tuple[int, int] | None] = {}  # folder -> identity, each folder stat'ed once

    def inside(path: Path, stop: Path | None = None) -> tuple[str, Path] | None:
        """The input folder `path` is, or is inside (up to `stop`, whose own ancestors are known to be clear)."""
        for d in (path, *path.parents):
            if stop is not None and d == stop:
                return None
            key = str(d)
            if key not in idents:
                idents[key] = _ident(d)
            if idents[key] in folders:
                return folders[idents[key]]
        return None

    for out in outputs:
        real = Path(os.path.realpath(out.path))
        if out.folder:
            _check_folder(out)
            hit = inside(real)
            if hit:
                raise ConfigError(_inside_message(out.name, out.path, *hit))
            targets = [(out.path / f, Path(os.path.realpath(out.path / f))) for f in out.files]
        else:
            _check_file(out.name, out.path)
            targets = [(out.path, real)]
        for target, real_target in targets:
            ident = _ident(target)
            if ident in files:
                name, p = files[ident]
                raise ConfigError(f"{{{out.name}}} {target} would overwrite the {{{name}}} file {p}; choose another "
                                  f"{{{out.name}}}")
            if out.folder:
                if ident is not None and stat.S_ISDIR(os.stat(target).st_mode):
                    raise OutputError(f"cannot write {target}: it is a folder; move it away or choose another "
                                      f"{{{out.name}}}")
                hit = inside(real_target.parent, stop=real)
            else:
                hit = inside(real_target.parent)
            if hit:
                raise ConfigError(_inside_message(out.name, target, *hit))
            key = ident or str(real_target)
            if key in seen:
                other, p = seen[key]
                raise ConfigError(f"{{{other}}} {p} and {{{out.name}}} {target} are the same file; give them "
                                  "different paths")
            seen[key] = (out.name, target)


def _inside_message(out_name: str, out_path: Path, name: str, folder: Path) -> str:
    return (f"{{{out_name}}} {out_path} is inside the {{{name}}} folder {folder}: what is written there would mix with "
            f"that input (and become part of it); choose an {{{out_name}}} outside it")


def _given(value) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [user_path(value)]
    return [p for v in value for p in _given(v)]


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_file(name: str, path: Path) -> None:
    """A file output: not an existing folder or device, in a folder that exists and can be written."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {path}: it is a folder; give a file path as {{{name}}}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        # renaming a file onto /dev/stdout or a FIFO would replace that node, not write into it
        raise OutputError(f"cannot write {path}: it is not a regular file (a device, FIFO or socket); give a file "
                          f"path as {{{name}}}")
    check_parent(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: Permission denied in {parent}; choose a writable folder")


def _check_folder(out: Out) -> None:
    """A folder output: not a file, and either there and writable or creatable under a writable folder."""
    if out.path.exists() and not out.path.is_dir():
        raise OutputError(f"cannot write into {out.path}: it is a file; give a folder as {{{out.name}}}")
    p = _existing_ancestor(out.path)
    if not p.is_dir():
        raise OutputError(f"cannot create folder {out.path}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {out.path}: {p} is not writable; choose another {{{out.name}}}")
