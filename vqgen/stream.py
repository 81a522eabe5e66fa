"""Training sets larger than memory: tensors of a safetensors file read memory-mapped, batches gathered from
them in the trainer's seeded order and copied to the device a few steps ahead, and the choice between that
and holding the whole training split on the device (--data-on-device).

A mapped tensor costs no memory until its rows are read; the pages read are the OS page cache's, so every
process on a machine that maps the same file (the ranks of a torchrun job) shares one copy of them. Pages a
process has read stay mapped into it, and count as its resident memory, until released: reading one row can
map a whole large folio (megabytes on recent kernels), so without releasing them an epoch would map the whole
file. Batch gathering and Rows.load release them as they go; the page cache keeps them for the next read.
"""

from __future__ import annotations

import collections
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vqgen.checkpoint import read_header
from vqgen.errors import CheckpointError, check_choice
from vqgen.paths import user_path
from vqgen.runtime import Dist
from vqgen.train import TensorBatches

DATA_ON_DEVICE = ("auto", "yes", "no")
# auto puts the training split on the device when it takes at most this fraction of the device's free memory
# (a GPU's, or the machine's available memory for the CPU): the rest is left to the network, its activations
# and the optimiser, which grow with the batch
ON_DEVICE_FRACTION = 0.5
PREFETCH = 2  # batches gathered ahead of the one being trained on
_NUMPY_DTYPES = {"U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
                 "F16": np.float16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_}


def map_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a CPU tensor over a copy-on-write mapping of its bytes.

    Nothing is read until used; writing into one changes this process's copy, never the file."""
    from safetensors import safe_open

    path = user_path(path)
    header, _ = read_header(path)  # checks the file is safetensors and not truncated
    try:
        with safe_open(str(path), framework="pt"):  # and its own checks of the layout (offsets, dtypes)
            pass
    except Exception as e:
        raise CheckpointError(f"{path} could not be read: {e}") from None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    out = {}
    for name, info in header.items():
        dtype = _NUMPY_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}, which cannot be mapped")
        start, end = (int(x) for x in info["data_offsets"])
        shape = tuple(int(s) for s in info["shape"])
        if int(np.prod(shape)) * np.dtype(dtype).itemsize != end - start:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - start} bytes for shape {shape}; re-create it")
        if end == start:  # mmap refuses an empty range
            out[name] = torch.from_numpy(np.empty(shape, dtype=dtype))
            continue
        mapped = np.memmap(path, dtype=dtype, mode="c", offset=8 + n + start, shape=shape)
        out[name] = torch.from_numpy(mapped)
        out[name]._vqgen_mapping = mapped._mmap  # for release()
    return out


def release(t: torch.Tensor) -> None:
    """Unmap the pages of a tensor from map_tensors that this process has read (they stay in the page cache);
    nothing for any other tensor. Changes written into the tensor are lost: mapped data is read-only data."""
    mapping = getattr(t, "_vqgen_mapping", None)
    if mapping is not None and not mapping.closed and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


class Rows:
    """Some rows of a tensor (all of them when `rows` is None), as `dtype`, read only when indexed.

    Indexing with a slice or an index tensor gives an ordinary tensor: base[rows[index]].to(dtype)."""

    def __init__(self, base: torch.Tensor, rows: torch.Tensor | None = None, dtype: torch.dtype | None = None):
        self.base, self.rows = base, rows
        self.dtype = dtype or base.dtype
        n = base.shape[0] if rows is None else rows.shape[0]
        self.shape = torch.Size((n, *base.shape[1:]))
        self.device = base.device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        out = self.base[index] if self.rows is None else self.base[self.rows[index]]
        return out.to(self.dtype) if out.dtype != self.dtype else out

    def chunks(self, rows: int):
        """The rows in order, `rows` at a time (ordinary tensors)."""
        for i in range(0, len(self), rows):
            yield self[i : i + rows]

    def load(self, rows: int = 256) -> torch.Tensor:
        """All the rows as one tensor in memory, read `rows` at a time, releasing the mapped pages read as it goes
        (so a mapped base costs no more than the copy)."""
        out = torch.empty(self.shape, dtype=self.dtype)
        for i in range(0, len(self), rows):
            out[i : i + rows] = self[i : i + rows]
            self.release()
        return out

    def release(self) -> None:
        release(self.base)


class StreamBatches(TensorBatches):
    """TensorBatches whose tensors stay in host memory (mapped files, Rows): each batch is gathered by a
    background thread PREFETCH batches ahead and copied to `device` (from pinned memory, on a side stream,
    on CUDA). The batches, their order and the resumable position are TensorBatches' own."""

    def __init__(self, tensors: tuple, batch_size: int, seed: int, device: torch.device, dist: Dist = Dist(),
                 prefetch: int = PREFETCH):
        super().__init__(tensors, batch_size, seed, dist)
        self.device, self.prefetch = torch.device(device), max(1, prefetch)
        self._ahead: collections.deque = collections.deque()  # ((epoch, offset) before the batch, its future)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqgen-batches")
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _gather(self, idx: torch.Tensor):
        batch = tuple(t[idx] for t in self.tensors)
        for t in self.tensors:
            if isinstance(t, Rows):
                t.release()  # a page-table walk: microseconds beside the step
        if self._stream is None:
            return batch, None
        with torch.cuda.stream(self._stream):
            batch = tuple(b.pin_memory().to(self.device, non_blocking=True) for b in batch)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return batch, ready

    def __next__(self) -> tuple:
        while len(self._ahead) < self.prefetch:
            position = (self.epoch, self.offset)
            self._ahead.append((position, self._pool.submit(self._gather, self._take())))
        _, future = self._ahead.popleft()
        batch, ready = future.result()
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for b in batch:
                b.record_stream(current)  # the side stream's memory is not reused before this stream is done
        return batch

    def state_dict(self) -> dict:
        # the position of the first batch not handed out yet; the ones gathered ahead are gathered again
        epoch, offset = self._ahead[0][0] if self._ahead else (self.epoch, self.offset)
        return {"epoch": epoch, "offset": offset}

    def load_state_dict(self, s: dict) -> None:
        while self._ahead:
            self._ahead.popleft()[1].result()
        super().load_state_dict(s)


# -- where the training split lives --------------------------------------------------------------------------
@dataclass
class Placement:
    """Whether a run holds its training split on the device or streams it, and why (printed and recorded)."""

    on_device: bool
    why: str

    def record(self) -> dict:
        return {"data_on_device": self.on_device, "data_placement": self.why}

    def describe(self) -> str:
        return f"training data {'on the device' if self.on_device else 'streamed from host memory'} ({self.why})"


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device`: the GPU's free memory, or the machine's available memory for the CPU; None where
    it cannot be measured."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def place_data(choice: str, nbytes: int, device: torch.device) -> Placement:
    """Decide --data-on-device (auto | yes | no) for a training split of `nbytes` bytes on the device."""
    check_choice("data_on_device", choice, DATA_ON_DEVICE)
    if choice != "auto":
        return Placement(choice == "yes", "as asked")
    free = free_memory(device)
    if free is None:  # nothing measured: keep the behaviour of a set that fits
        return Placement(True, f"{_size(nbytes)}; the free memory of {device} cannot be measured")
    fits = nbytes <= ON_DEVICE_FRACTION * free
    return Placement(fits, f"{_size(nbytes)} against {_size(free)} free on {device.type}: "
                           f"{'within' if fits else 'more than'} {ON_DEVICE_FRACTION:.0%} of it")
