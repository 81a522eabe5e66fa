"""Safetensors files with JSON metadata: atomic writes, validated reads, training state for resume.

Every file vqgen writes or reads is safetensors: a JSON header plus raw tensor bytes, so loading a file a
user hands us never runs code. We read and check the header ourselves first so that a pickle, a PNG or a
truncated file gets a clear message instead of a parser error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vqgen._version import __version__
from vqgen.errors import CheckpointError

FORMAT_VERSION = "1"
# format names: one per kind of file, so a prior handed in as --vqvae is refused by name
KIND_VQVAE = "vqgen.vqvae"
KIND_PRIOR = "vqgen.prior"
KIND_CODES = "vqgen.index-grid"
KIND_STATE = "vqgen.train-state"
_KIND_WORDS = {
    KIND_VQVAE: "a VQ-VAE weights file",
    KIND_PRIOR: "a prior weights file",
    KIND_CODES: "an index-grid (codes) file",
    KIND_STATE: "a training-state file",
}
_MAX_HEADER = 100 * 1024 * 1024


def check_parent(path: str | os.PathLike) -> None:
    """Refuse an output path whose folder is missing or is a file, saying which (call it before any work)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        return
    p = parent
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"cannot write {path}: {p} is a file, not a folder")
    raise CheckpointError(f"cannot write {path}: folder {parent} does not exist; create it first")


def first_problem(e: BaseException) -> str:
    """The informative line of an exception (load_state_dict's first line only says that errors follow)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 200 else line[:200] + "…"  # a list of 80 missing keys is not one clear line


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    check_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror}; choose a writable folder") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file private (0600), and some writers (safetensors) recreate it that way; the result
        # should get the mode any new file gets, so set it after the writer is done
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_metadata(kind: str, meta: dict[str, Any] | None = None) -> dict[str, str]:
    """The safetensors metadata of a vqgen file of `kind`: non-string values are stored as JSON."""
    md = {"format": kind, "format_version": FORMAT_VERSION, "vqgen_version": __version__}
    for k, v in (meta or {}).items():
        md[k] = v if isinstance(v, str) else json.dumps(v)
    return md


def save_tensors(path: str | os.PathLike, tensors: dict, kind: str, meta: dict[str, Any] | None = None) -> None:
    """Write tensors and metadata atomically; non-string metadata values are stored as JSON."""
    from safetensors.torch import save_file

    md = file_metadata(kind, meta)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=md)
        except OSError as e:  # disk full, quota, I/O error: the previous file at `path` stays as it was
            raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None


def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return (tensor header, metadata) after checking the file really is a safetensors file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a .safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is empty or truncated ({size} bytes); not a safetensors file")
            (n,) = struct.unpack("<Q", head)
            raw = f.read(n) if 2 <= n <= _MAX_HEADER and 8 + n <= size else b""
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    # a safetensors header is a JSON object; judge by that, not by the first byte alone: a valid header
    # length can start with 0x80 or "PK" too (a header of 384 bytes does)
    if not raw.startswith(b"{"):
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise CheckpointError(
                f"{path} looks like a pickle / torch.save file; vqgen only loads safetensors and never unpickles"
            )
        raise CheckpointError(f"{path} is not a valid safetensors file (bad or truncated header)")
    try:
        header = json.loads(raw.decode("utf-8"))
        assert isinstance(header, dict)
    except Exception:
        raise CheckpointError(f"{path} is not a valid safetensors file (header is not JSON)") from None
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path} is not a valid safetensors file (metadata must map strings to strings)")
    end = 0
    for name, info in header.items():
        try:
            end = max(end, int(info["data_offsets"][1]))
        except Exception:
            raise CheckpointError(f"{path} is not a valid safetensors file (bad entry {name!r})") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated ({size} bytes, header promises {8 + n + end}); re-create it")
    return header, meta


def load_tensors(path: str | os.PathLike, kind: str, device: str = "cpu") -> tuple[dict, dict[str, str]]:
    """Load a vqgen safetensors file of the given kind; refuse any other kind by name."""
    from safetensors.torch import load_file

    meta = read_meta(path, kind)
    try:
        tensors = load_file(str(path), device=device)
    except Exception as e:  # safetensors' own errors are one-liners worth passing on
        raise CheckpointError(f"{path} could not be read: {e}") from None
    return tensors, meta


def read_meta(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """The metadata of a vqgen safetensors file of the given kind, without reading its tensors."""
    _, meta = read_header(path)
    found = meta.get("format")
    if found != kind:
        what = _KIND_WORDS.get(found, "not a vqgen file" if found is None else f"format {found!r}")
        raise CheckpointError(f"{path} is {what}, but {_KIND_WORDS.get(kind, kind)} is needed here")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this vqgen reads version {FORMAT_VERSION}"
        )
    return meta


def meta_json(meta: dict[str, str], key: str, path: str | os.PathLike = "file") -> Any:
    """Decode one JSON metadata field, with a clear error when it is absent or malformed."""
    if key not in meta:
        raise CheckpointError(f"{path} has no {key!r} metadata field; it was not written by vqgen")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has a malformed {key!r} metadata field") from None
