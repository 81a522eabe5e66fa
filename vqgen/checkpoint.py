"""Safetensors files with JSON metadata: atomic writes, validated reads, training state for resume.

Every file vqgen writes or reads is safetensors: a JSON header plus raw tensor bytes, so loading a file a
user hands us never runs code. We read and check the header ourselves first so that a pickle, a PNG or a
truncated file gets a clear message instead of a parser error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vqgen._version import __version__
from vqgen.errors import CheckpointError, OptionError, OutputError
from vqgen.paths import check_parent, user_path

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
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. Whatever fails on
    the way (a full disk while the block writes, the sync, the rename) is one OutputError, and `path` keeps
    its previous contents."""
    path = user_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    check_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}; choose a writable folder") from None
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
    except OSError as e:  # disk full, quota, I/O error, a folder in the way
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(user_path(path), "rb") as f:
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
    from safetensors import SafetensorError

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=md)
        except SafetensorError as e:  # its own type for a full disk: "... I/O error: No space left on device (os error 28)"
            found = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?$", str(e))
            raise OutputError(f"cannot write {user_path(path)}: {found[1] if found else e}") from None


def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return (tensor header, metadata) after checking the file really is a safetensors file."""
    path = user_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a folder; pass a .safetensors file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open below, a device never end
        raise CheckpointError(f"{path} is not a regular file (a FIFO, device or socket); pass a .safetensors file")
    size = st.st_size
    try:
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

    path = user_path(path)
    meta = read_meta(path, kind)
    try:
        tensors = load_file(str(path), device=device)
    except Exception as e:  # safetensors' own errors are one-liners worth passing on
        raise CheckpointError(f"{path} could not be read: {e}") from None
    for name, t in tensors.items():  # NaN weights would give NaN figures, blank images or a sampling crash
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values; the file cannot be used "
                                  "(re-create it, or use earlier weights)")
    return tensors, meta


def read_meta(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """The metadata of a vqgen safetensors file of the given kind, without reading its tensors."""
    return read_kind_header(path, kind)[1]


def read_kind_header(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, str]]:
    """(tensor header, metadata) of a vqgen safetensors file of the given kind; any other kind refused by name."""
    header, meta = read_header(path)
    found = meta.get("format")
    if found != kind:
        what = _KIND_WORDS.get(found, "not a vqgen file" if found is None else f"format {found!r}")
        raise CheckpointError(f"{path} is {what}, but {_KIND_WORDS.get(kind, kind)} is needed here")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this vqgen reads version {FORMAT_VERSION}"
        )
    return header, meta


def meta_json(meta: dict[str, str], key: str, path: str | os.PathLike = "file") -> Any:
    """Decode one JSON metadata field, with a clear error when it is absent or malformed."""
    if key not in meta:
        raise CheckpointError(f"{path} has no {key!r} metadata field; it was not written by vqgen")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has a malformed {key!r} metadata field") from None


def config_from_meta(cls, meta: dict[str, str], key: str, path: str | os.PathLike, upgrade=None):
    """The dataclass `cls` stored as JSON in metadata field `key` of the file `path`: refused in one line naming
    the file and the field when it is malformed, has a field this vqgen does not know (a newer vqgen wrote it),
    lacks one, or holds a value its validate() refuses. `upgrade` maps an older layout of the dict to this one."""
    d = meta_json(meta, key, path)
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: metadata field {key!r} is not a JSON object")
    d = upgrade(dict(d)) if upgrade else d
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{path}: metadata field {key!r} has {unknown[0]!r}, which this vqgen ({__version__}) "
                              "does not know; it was written by a newer vqgen (upgrade) or another program")
    try:
        obj = cls(**d)
    except TypeError:
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        lacks = repr(missing[0]) if missing else "a field"
        raise CheckpointError(f"{path}: metadata field {key!r} lacks {lacks}") from None
    try:
        getattr(obj, "validate", lambda: None)()
    except OptionError as e:
        raise CheckpointError(f"{path}: metadata field {key!r} has {e.option}={e.value!r}, which must be "
                              f"{e.valid}; the file is corrupt or from another program") from None
    return obj
