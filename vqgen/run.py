"""A training run's folder (train-vqvae / train-prior --out): its files, the decision to start a run there or
resume the one it holds, what a resumed run keeps (the options that define it, its training config and speed
settings), and the fingerprints that tell the run's data from other data.

    run_dir/
      vqvae.safetensors | prior.safetensors   the weights at the newest checkpoint
      best.safetensors                        the weights of the best held-out evaluation so far
      checkpoint.safetensors                  everything --resume needs (vqgen.train writes and reads it)
      metrics.jsonl                           one JSON object per logging step, evaluation and event
      reconstructions.png                     (VQ-VAE runs) fixed held-out images and their reconstructions
      .vqgen-run.lock                         while a process trains here: who (the lock is flock(2) on it)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shlex
import socket
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch

from vqgen import log
from vqgen.checkpoint import KIND_STATE, config_from_meta, meta_json, read_header
from vqgen.errors import CheckpointError, ConfigError, DataError, OptionError, OutputError
from vqgen.paths import check_outputs, out_folder, user_path
from vqgen.runtime import launched_rank
from vqgen.train import TrainConfig

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

STATE_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
GRID_FILE = "reconstructions.png"
WEIGHTS_FILES = {"vqvae": "vqvae.safetensors", "prior": "prior.safetensors"}
COMMANDS = {"vqvae": "vqgen train-vqvae", "prior": "vqgen train-prior"}  # the command that trains each kind
# every file a run of any kind writes: a new run refuses a folder holding one, --overwrite clears them all
RUN_FILES = (*WEIGHTS_FILES.values(), BEST_FILE, STATE_FILE, METRICS_FILE, GRID_FILE)
LOCK_FILE = ".vqgen-run.lock"  # held (flock) by the process training in the folder, removed when it ends


class RunFolder:
    """The folder of one run of `kind` ("vqvae" or "prior"). begin() decides, before any work, whether this
    command starts the run or resumes it, and holds the folder's lock while the run lives; `stored` then holds
    the resumed run's metadata (None for a new run)."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.dir, self.kind = user_path(path), kind
        self.stored: dict[str, str] | None = None
        self._replaced: list[str] = []  # run files of an earlier run that --overwrite clears before the first write

    # -- its files ------------------------------------------------------------------------------------------
    @property
    def weights(self) -> Path:
        return self.dir / WEIGHTS_FILES[self.kind]

    @property
    def best(self) -> Path:
        return self.dir / BEST_FILE

    @property
    def state(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def metrics(self) -> Path:
        return self.dir / METRICS_FILE

    @property
    def resume_command(self) -> str:
        """What Ctrl+C tells the user to run to continue."""
        return f"{COMMANDS.get(self.kind, 'the same command with')} --out {shlex.quote(str(self.dir))} --resume"

    # -- start or resume ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def begin(self, resume: bool, init_from: str | os.PathLike | None = None, *, overwrite: bool = False,
              inputs: dict | None = None) -> Iterator["RunFolder"]:
        """Resume the run this folder holds (refusing a folder with no run, or another kind's), or start one here,
        for the life of the block; a run started from other weights (init_from) is a new run.

        Refused before any work: a folder that cannot be written; one inside one of `inputs` (its data: its files
        would become data) or whose files would overwrite one (init_from); a new run over any file of an earlier
        run unless `overwrite` (which clears them once training starts); and a folder another process trains in
        (the block holds an exclusive lock on it: under torchrun, rank 0 does)."""
        if resume and init_from is not None:
            raise OptionError("{init_from} starts a new run; a resumed run continues from its own checkpoint "
                              "(drop one)", "init_from")
        if resume and overwrite:
            raise OptionError("{overwrite=True} replaces the run in {run_dir}, {resume=True} continues it: give one",
                              "overwrite")
        check_outputs({**(inputs or {}), "init_from": init_from}, [out_folder("run_dir", self.dir, RUN_FILES)])
        if resume and not self.dir.is_dir():
            raise CheckpointError(f"cannot resume: {self.dir} does not exist; start a run there without "
                                  "{resume=True}")
        with _locked(self.dir, launched_rank() == 0):
            for name in RUN_FILES:
                p = self.dir / name
                if (p.exists() or p.is_symlink()) and not stat.S_ISREG(os.lstat(p).st_mode):
                    raise CheckpointError(f"{p} is not a regular file; move it away (a run writes {name} there)")
            if resume:
                self.stored = read_run_meta(self.dir, self.kind)
            else:
                present = [n for n in RUN_FILES if (self.dir / n).exists()]
                if present and not overwrite:
                    raise ConfigError(f"{self.dir} already holds a run ({', '.join(present)}); pass {{resume=True}} to "
                                      "continue it, {overwrite=True} to replace it, or choose another {run_dir}")
                self._replaced = present
            yield self

    @property
    def resuming(self) -> bool:
        return self.stored is not None

    def prepare(self, resume: bool) -> None:
        """Ready the folder for the run's first write (the process that writes, once): create it, drop the
        temporaries a kill -9 left, clear an earlier run --overwrite replaces, and on resume cut a metrics record
        a kill left half-written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".*.tmp"):  # atomic_path's; the lock says no other process writes here
                stale.unlink(missing_ok=True)
            for name in self._replaced:
                (self.dir / name).unlink(missing_ok=True)
        except OSError as e:
            raise OutputError(f"cannot prepare run folder {self.dir}: {e.strerror or e}") from None
        if self._replaced:
            log.note(f"replaced the earlier run in {self.dir} ({', '.join(self._replaced)})")
            self._replaced = []
        if resume:
            _drop_partial_line(self.metrics)

    def record(self, key: str, *required: str):
        """One JSON field the resumed run stored (its model config, its data record, ...), with the keys
        `required` of it; a field that is absent or malformed is refused naming the file and the field."""
        d = meta_json(self.stored, key, self.state)
        if required and not isinstance(d, dict):
            raise CheckpointError(f"{self.state}: metadata field {key!r} is not a JSON object")
        for k in required:
            if k not in d:
                raise CheckpointError(f"{self.state}: metadata field {key!r} lacks {k!r}; the file is corrupt")
        return d

    def train_config(self, overrides: dict) -> TrainConfig:
        """The run's TrainConfig: a resumed run's own with the options given now (say a larger --steps) applied on
        top, else TrainConfig(**overrides); validated."""
        if self.resuming:
            cfg = replace(config_from_meta(TrainConfig, self.stored, "train_config", self.state), **overrides)
        else:
            cfg = TrainConfig(**overrides)
        cfg.validate()
        return cfg

    def speed_settings(self, channels_last: bool | None, threads: int | None) -> tuple[bool | None, int | None]:
        """The memory format and threads to compute with: those given, else a resumed run's own (so that it stays
        bit-exact), else None (measured)."""
        if not self.resuming:
            return channels_last, threads
        kept = resumed_speed(self.stored, self.state)
        return (kept["channels_last"] if channels_last is None else channels_last,
                kept["threads"] if threads is None else threads)

    def check_same_data(self, now: str, where: str) -> None:
        """On resume, refuse data whose fingerprint is not the one the run recorded."""
        if self.resuming:
            check_same_data(self.record("data"), now, where, self.dir)


@contextlib.contextmanager
def _locked(folder: Path, take: bool) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` (creating it) for the block, when `take`; a folder the block
    created and left empty is removed again, so a refused command leaves nothing behind.

    The lock is flock(2) on LOCK_FILE: the kernel drops it when its process dies, however it dies, so a lock file
    nobody holds (left by a kill -9) is taken over with a note, and a held one makes this process refuse."""
    created = []  # the folders this process creates, deepest first
    p = folder.absolute()
    while take and not p.exists():
        created.append(p)
        p = p.parent
    fd = None
    try:
        if take:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create run folder {folder}: {e.strerror or e}") from None
            fd = _take_lock(folder / LOCK_FILE)
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()  # while still held: see _take_lock for why this is safe
            os.close(fd)
        for d in created:  # deepest first; rmdir refuses a folder that is not empty
            with contextlib.suppress(OSError):
                d.rmdir()


def _take_lock(path: Path) -> int | None:
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise OutputError(f"cannot lock {path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(f"{path.parent} is in use by another training process ({holder}); wait for it to end, "
                              "or choose another {run_dir}") from None
        except OSError as e:  # a file system without locks (some network mounts)
            os.close(fd)
            log.warn(f"cannot lock {path.parent} ({e.strerror or e}); a second process training into it would not "
                     "be refused")
            return None
        # the holder that just finished unlinks the file before it lets go: a lock on that unlinked file is no
        # lock on the folder, so take the one on the file that is there now
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    left = _read_holder(fd, default="")
    if left:
        log.note(f"took over the lock of {path.parent} left by {left}, which is no longer running")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}
    with contextlib.suppress(OSError):  # the lock stands even if a full disk keeps its description out
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def _read_holder(fd: int, default: str = "its description is unreadable") -> str:
    """Who holds (or held) a lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {int(info['pid'])} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return default


def _drop_partial_line(path: Path) -> None:
    """Cut a record a kill left half-written at the end of a JSONL file, so every line stays valid JSON; a last
    record that is complete but lacks its newline is kept, and given one."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            last = data[data.rfind(b"\n") + 1 :]
            try:
                complete = isinstance(json.loads(last), dict)
            except ValueError:
                complete = False
            if complete:
                f.write(b"\n")
            else:
                f.truncate(len(data) - len(last))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OutputError(f"cannot repair {path}: {e.strerror or e}") from None


# -- the pieces, for callers that hold no RunFolder -------------------------------------------------------------
def read_run_meta(run_dir: str | os.PathLike, kind: str | None = None) -> dict[str, str]:
    """Metadata of a run folder's training state (model kind/config, train config), for --resume.

    kind ("vqvae" / "prior"), when given, must match the run's: a prior run is not resumed by train-vqvae."""
    run_dir = user_path(run_dir)
    path = run_dir / STATE_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} does not exist; start a run there without {{resume=True}}")
    if not path.exists():
        raise CheckpointError(f"cannot resume: {run_dir} holds no {STATE_FILE}; start a new run without "
                              "{resume=True}")
    _, meta = read_header(path)
    if meta.get("format") != KIND_STATE:
        raise CheckpointError(f"cannot resume: {path} is not a vqgen training state")
    if kind is not None and meta.get("kind") != kind:
        other = COMMANDS.get(meta.get("kind"), "another command")
        raise CheckpointError(f"cannot resume: {run_dir} holds a {meta.get('kind')!r} run, not a {kind!r} one; "
                              f"resume it with {other}")
    return meta


def resumed_speed(meta: dict[str, str], path: str | os.PathLike = STATE_FILE) -> dict:
    """The settings a run computed with (its memory format and threads; amp is in its train config), so that a
    resumed run keeps them and stays bit-exact. Runs from before they were recorded used channels_last."""
    stored = meta_json(meta, "speed", path) if "speed" in meta else {}
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: metadata field 'speed' is not a JSON object")
    return {"channels_last": stored.get("channels_last", True), "threads": stored.get("threads")}


def check_unchanged(given: dict, stored: dict) -> None:
    """On resume, refuse an option that defines the run (model, data split) but differs from the run's: it
    would otherwise be silently ignored. Keys are option names; None means not given."""
    for name, value in given.items():
        if value is None or name not in stored or stored[name] == value:
            continue
        raise ConfigError(f"{{{name}={value}}} does not match the run being resumed, which has "
                          f"{{{name}={stored[name]}}}; a resumed run keeps its model and data split: drop the "
                          "option, or start a new run with another {run_dir}")


FINGERPRINT_CHUNK = 1 << 26  # bytes hashed at a time: a memory-mapped set larger than memory is never copied whole


class Fingerprint:
    """fingerprint() fed piece by piece: each tensor's dtype and shape, then its bytes in order."""

    def __init__(self):
        self._h = hashlib.sha256()

    def tensor(self, dtype: torch.dtype, shape) -> None:
        self._h.update(str((dtype, tuple(shape))).encode())

    def update(self, data) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fingerprint(*tensors) -> str:
    """sha256 over tensors' contents: recorded with a run, so --resume can tell that its data changed.

    Anything with dtype, shape and row slicing will do (vqgen.stream.Rows): it is read a chunk of rows at a time."""
    f = Fingerprint()
    for t in tensors:
        if t is None:
            continue
        f.tensor(t.dtype, t.shape)
        if len(t.shape) == 0:
            t = t.reshape(1)
        row_bytes = max(1, math.prod(t.shape[1:]) * t.dtype.itemsize)
        step = max(1, FINGERPRINT_CHUNK // row_bytes)
        for i in range(0, t.shape[0], step):
            f.update(t[i : i + step].detach().cpu().contiguous().view(torch.uint8).numpy())
    return f.hexdigest()


def check_same_data(stored: dict, now: str, where: str, run_dir: str | os.PathLike) -> None:
    """Refuse to resume a run on data other than the data it trained on (runs from before fingerprints pass)."""
    then = stored.get("sha256")
    if then is not None and then != now:
        raise DataError(f"{where} is not the data the run in {run_dir} trained on (its contents differ); "
                        "resume with the same data, or start a new run with another {run_dir}")
