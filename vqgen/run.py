"""A training run's folder (train-vqvae / train-prior --out): its files, the decision to start a run there or
resume the one it holds, what a resumed run keeps (the options that define it, its training config and speed
settings), and the fingerprints that tell the run's data from other data.

    run_dir/
      vqvae.safetensors | prior.safetensors   the weights at the newest checkpoint
      best.safetensors                        the weights of the best held-out evaluation so far
      checkpoint.safetensors                  everything --resume needs (vqgen.train writes and reads it)
      metrics.jsonl                           one JSON object per logging step, evaluation and event
      reconstructions.png                     (VQ-VAE runs) fixed held-out images and their reconstructions
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from pathlib import Path

import torch

from vqgen.checkpoint import KIND_STATE, read_header
from vqgen.errors import CheckpointError, ConfigError, DataError, OptionError
from vqgen.train import TrainConfig

STATE_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
GRID_FILE = "reconstructions.png"
WEIGHTS_FILES = {"vqvae": "vqvae.safetensors", "prior": "prior.safetensors"}
COMMANDS = {"vqvae": "vqgen train-vqvae", "prior": "vqgen train-prior"}  # the command that trains each kind


class RunFolder:
    """The folder of one run of `kind` ("vqvae" or "prior"). begin() decides, before any work, whether this
    command starts the run or resumes it; `stored` then holds the resumed run's metadata (None for a new run)."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.dir, self.kind = Path(path), kind
        self.stored: dict[str, str] | None = None

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
    def begin(self, resume: bool, init_from: str | os.PathLike | None = None) -> None:
        """Resume the run this folder holds (refusing a folder with no run, or another kind's), or start one here
        (refusing a folder that holds a run already, or one that cannot be written). A run started from other
        weights (init_from) is a new run."""
        if resume and init_from is not None:
            raise OptionError("{init_from} starts a new run; a resumed run continues from its own checkpoint "
                              "(drop one)", "init_from")
        if resume:
            self.stored = read_run_meta(self.dir, self.kind)
            return
        if self.state.exists():
            raise ConfigError(f"{self.dir} already holds a run; pass {{resume=True}} to continue it or choose another "
                              "{run_dir}")
        check_run_dir(self.dir)

    @property
    def resuming(self) -> bool:
        return self.stored is not None

    def record(self, key: str):
        """One JSON field the resumed run stored (its model config, its data record, ...)."""
        return json.loads(self.stored[key])

    def train_config(self, overrides: dict) -> TrainConfig:
        """The run's TrainConfig: a resumed run's own with the options given now (say a larger --steps) applied on
        top, else TrainConfig(**overrides); validated."""
        cfg = resumed_config(self.stored, overrides) if self.resuming else TrainConfig(**overrides)
        cfg.validate()
        return cfg

    def speed_settings(self, channels_last: bool | None, threads: int | None) -> tuple[bool | None, int | None]:
        """The memory format and threads to compute with: those given, else a resumed run's own (so that it stays
        bit-exact), else None (measured)."""
        if not self.resuming:
            return channels_last, threads
        kept = resumed_speed(self.stored)
        return (kept["channels_last"] if channels_last is None else channels_last,
                kept["threads"] if threads is None else threads)

    def check_same_data(self, now: str, where: str) -> None:
        """On resume, refuse data whose fingerprint is not the one the run recorded."""
        if self.resuming:
            check_same_data(self.record("data"), now, where, self.dir)


# -- the pieces, for callers that hold no RunFolder -------------------------------------------------------------
def read_run_meta(run_dir: str | os.PathLike, kind: str | None = None) -> dict[str, str]:
    """Metadata of a run folder's training state (model kind/config, train config), for --resume.

    kind ("vqvae" / "prior"), when given, must match the run's: a prior run is not resumed by train-vqvae."""
    path = Path(run_dir) / STATE_FILE
    if not Path(run_dir).is_dir():
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


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Refuse, before any work, a run folder that cannot be created or written (say, one under a file)."""
    p = Path(run_dir).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise CheckpointError(f"cannot create run folder {run_dir}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write run folder {run_dir}: {p} is not writable; choose another {{run_dir}}")


def resumed_speed(meta: dict[str, str]) -> dict:
    """The settings a run computed with (its memory format and threads; amp is in its train config), so that a
    resumed run keeps them and stays bit-exact. Runs from before they were recorded used channels_last."""
    stored = json.loads(meta["speed"]) if "speed" in meta else {}
    return {"channels_last": stored.get("channels_last", True), "threads": stored.get("threads")}


def resumed_config(meta: dict[str, str], overrides: dict) -> TrainConfig:
    """The stored TrainConfig of a run, with the options given now (say a larger --steps) applied on top."""
    stored = json.loads(meta["train_config"])
    stored.update(overrides)
    return TrainConfig(**stored)


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
