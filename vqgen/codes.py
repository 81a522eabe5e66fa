"""The index-grid file: the one contract between a VQ-VAE and every prior (see docs/index-grid-format.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vqgen.checkpoint import KIND_CODES, CheckpointError, load_tensors, read_meta, save_tensors
from vqgen import log
from vqgen.errors import CodesError, ConfigError

# the largest codebook (K) vqgen builds or reads: a codes file or an option claiming more would make every prior
# and code histogram allocate for it (2^31 - 1 codes: an 8 GiB histogram before the first step)
MAX_NUM_CODES = 2**20


@dataclass
class CodeSet:
    """Index grids and what they are codes of."""

    codes: torch.Tensor  # (N, H, W) int64, values in [0, num_codes)
    num_codes: int  # K, the codebook size of the VQ-VAE that made them
    labels: torch.Tensor | None = None  # (N,) int64 class indices, or None
    class_names: list[str] = field(default_factory=list)  # index -> name; empty when unlabelled
    vqvae_sha256: str = ""  # sha256 of the VQ-VAE weights file that made the codes
    source: str = ""  # the data spec the images came from

    @property
    def height(self) -> int:
        return int(self.codes.shape[1])

    @property
    def width(self) -> int:
        return int(self.codes.shape[2])

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def code_dtype(num_codes: int) -> torch.dtype:
    return torch.int16 if num_codes <= 32768 else torch.int32


def write_codes(path: str | os.PathLike, cs: CodeSet) -> None:
    """Validate and write a CodeSet atomically."""
    _validate(cs, str(path))
    tensors = {"codes": cs.codes.to(code_dtype(cs.num_codes))}
    if cs.labels is not None:
        tensors["labels"] = cs.labels.to(torch.int64)
    meta = {
        "num_codes": str(cs.num_codes),
        "height": str(cs.height),
        "width": str(cs.width),
        "class_names": json.dumps(list(cs.class_names)),
        "vqvae_sha256": cs.vqvae_sha256,
        "source": cs.source,
    }
    save_tensors(path, tensors, KIND_CODES, meta)


def read_codes(path: str | os.PathLike, mapped: bool = False) -> CodeSet:
    """Read and validate an index-grid file; refuse a bad one with a message naming the problem.

    With `mapped` the codes and labels stay memory-mapped (vqgen.stream.map_tensors), the codes in the file's
    dtype (int16 or int32) rather than int64: for a set streamed through training."""
    from vqgen.stream import map_tensors

    try:
        if mapped:
            meta = read_meta(path, KIND_CODES)
            tensors = map_tensors(path)
        else:
            tensors, meta = load_tensors(path, KIND_CODES)
    except CheckpointError as e:
        raise CodesError(str(e)) from None
    p = str(path)
    for key in ("num_codes", "height", "width", "class_names", "vqvae_sha256", "source", "vqgen_version"):
        if key not in meta:
            raise CodesError(f"{p}: metadata field {key!r} is missing; re-create the file with `vqgen encode`")
    try:
        num_codes, h, w = int(meta["num_codes"]), int(meta["height"]), int(meta["width"])
        class_names = json.loads(meta["class_names"])
        assert isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)
    except Exception:
        raise CodesError(f"{p}: metadata num_codes/height/width/class_names are malformed") from None
    if not 2 <= num_codes <= MAX_NUM_CODES:
        raise CodesError(f"{p}: metadata num_codes is {num_codes}, outside the 2 to {MAX_NUM_CODES:,} codes vqgen reads; "
                         "the file is corrupt or from another program")
    if "codes" not in tensors:
        raise CodesError(f"{p}: no 'codes' tensor")
    codes = tensors["codes"]
    if codes.dtype != code_dtype(num_codes):
        raise CodesError(f"{p}: codes have dtype {codes.dtype}, expected {code_dtype(num_codes)} for K={num_codes}")
    if codes.dim() != 3 or tuple(codes.shape[1:]) != (h, w):
        raise CodesError(f"{p}: codes have shape {tuple(codes.shape)}, metadata says (N, {h}, {w})")
    cs = CodeSet(codes if mapped else codes.long(), num_codes, tensors.get("labels"), class_names,
                 meta["vqvae_sha256"], meta["source"])
    _validate(cs, p)
    return cs


def _validate(cs: CodeSet, p: str) -> None:
    c = cs.codes
    if c.dim() != 3 or c.numel() == 0:
        raise CodesError(f"{p}: codes must be a non-empty (N, H, W) grid, got shape {tuple(c.shape)}")
    if c.dtype.is_floating_point or c.dtype == torch.bool:
        raise CodesError(f"{p}: codes must be integers, got {c.dtype}")
    if cs.num_codes < 1:
        raise CodesError(f"{p}: num_codes must be >= 1, got {cs.num_codes}")
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= cs.num_codes:
        raise CodesError(f"{p}: codes range over [{lo}, {hi}], outside [0, {cs.num_codes}) for K={cs.num_codes}")
    if cs.labels is not None:
        lab = cs.labels
        if lab.dim() != 1 or lab.shape[0] != c.shape[0] or lab.dtype != torch.int64:
            raise CodesError(f"{p}: labels must be int64 of shape ({c.shape[0]},), got {lab.dtype} {tuple(lab.shape)}")
        if int(lab.min()) < 0:
            raise CodesError(f"{p}: labels must be class indices >= 0, found {int(lab.min())}")
        if cs.class_names and int(lab.max()) >= len(cs.class_names):
            raise CodesError(f"{p}: labels fall outside the {len(cs.class_names)} class names")


def relabel(labels: torch.Tensor, names: list[str], onto: list[str], what: str, onto_what: str) -> torch.Tensor:
    """Labels over the classes `names` (of `what`) as indices into `onto` (the classes of `onto_what`), matched by
    name: refused when a class in use is missing there, or when `what` names no classes; a different order is
    remapped with a note."""
    if not names:
        raise ConfigError(f"{what} has labels but no class names, so its classes cannot be matched to those of "
                          f"{onto_what} ({', '.join(onto) or 'none named'}); name its classes")
    used = sorted(set(labels.tolist()))
    missing = [names[i] for i in used if names[i] not in onto]
    if missing:
        raise ConfigError(f"{what} has class{'es' if len(missing) > 1 else ''} {', '.join(missing)}, which {onto_what} "
                          f"does not know (its classes: {', '.join(onto) or 'none'}); use data of the same classes")
    index = torch.tensor([onto.index(n) if n in onto else -1 for n in names], dtype=torch.long)
    if any(index[i] != i for i in used):
        log.note(f"{what} lists its classes in another order than {onto_what}; matched them by name")
    return index[labels]


def describe(cs: CodeSet, path: str | Path = "") -> str:
    return f"{path}: {len(cs)} grids of {cs.height}x{cs.width}, K={cs.num_codes}" + (
        f", {len(cs.class_names)} classes" if cs.class_names else ""
    )
