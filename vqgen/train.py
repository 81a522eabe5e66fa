"""One training loop for both stages. It takes an objective (batch -> loss, metrics) and a batch source
and knows nothing about which model it trains (minGPT's trainer), nor which command runs it: the run's
folder (vqgen.run) tells it where its files go. It owns progress, the metrics records, atomic checkpoints,
bit-exact resume, Ctrl+C, non-finite losses and DistributedDataParallel."""

from __future__ import annotations

import inspect
import json
import math
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as tdist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from vqgen import log
from vqgen.checkpoint import KIND_STATE, first_problem, load_tensors, meta_json, save_tensors
from vqgen.errors import (CheckpointError, ConfigError, Interrupted, OptionError, OutputError, TrainingError,
                          check_at_least, check_choice, check_positive, check_seed, seed_value)
from vqgen.runtime import Dist, Speed, any_rank, autocast, barrier, inference_amp

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both checkpoint and stop at the next step


class RunFiles(Protocol):
    """Where a run's files go (vqgen.run.RunFolder is one)."""

    dir: Path  # the folder
    state: Path  # the training state: everything resume needs
    weights: Path  # what export() writes: the run's result
    metrics: Path  # metrics.jsonl
    best: Path  # the weights of the held-out evaluation with the best figure so far
    resume_command: str  # what to run to continue (said on Ctrl+C)

    def prepare(self, resume: bool) -> None:
        """Called once, by the process that writes, before the run's first write."""


@dataclass
class KeepBest:
    """Which held-out figure picks a run's best weights, and how to write them."""

    metric: str  # key of the evaluate() result, e.g. "val_psnr"
    higher_is_better: bool  # True for PSNR, False for bits per code
    save: Callable[[], None]  # writes the current weights as the run's best

    def improves(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.higher_is_better else value < best)


LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    steps: int = 13_000  # optimiser steps in total (~30 min of the default VQ-VAE on a 2-core AVX-512 CPU)
    batch_size: int = 128  # global batch; each of N processes takes batch_size / N
    lr: float = 2e-3  # peak learning rate (AdamW)
    lr_schedule: str = "cosine"  # "cosine" decays to min_lr_ratio * lr at the last step; "constant" holds it
    warmup: int = 100  # linear warmup steps
    min_lr_ratio: float = 0.1  # floor of the cosine schedule, as a fraction of lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 0.0  # clip the global gradient norm to this (0 = off)
    seed: int = 0  # seeds weights, data order, augmentation and sampling inside training
    log_every: int = 50  # steps between metrics.jsonl records
    eval_every: int = 1000  # steps between held-out evaluations (0 = only at the end)
    checkpoint_every: int = 1000  # steps between checkpoints (always one at the end)
    amp: bool | None = None  # bf16 autocast for the network (the quantiser stays fp32); None: runtime.choose_speed

    def validate(self) -> None:
        """Refuse a value no run can use (OptionError naming the field)."""
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            check_positive(name, getattr(self, name))
        for name in ("warmup", "eval_every"):
            check_at_least(name, getattr(self, name), 0)
        check_positive("lr", self.lr, integer=False)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_seed("seed", self.seed)

    def train_for_epochs(self, epochs: float, examples: int) -> None:
        """Set steps to make `epochs` passes over `examples` at this batch size."""
        self.steps = max(1, math.ceil(epochs * examples / self.batch_size))


def check_training_options(given: dict, epochs: float | None = None) -> None:
    """The training options given (TrainConfig fields, None = not given) and `epochs`, each judged alone; a seed
    given is reduced modulo 2^64 in `given` (saying so), and the run stores it so."""
    if given.get("seed") is not None:
        given["seed"] = seed_value("seed", given["seed"])
    TrainConfig(**{k: v for k, v in given.items() if v is not None}).validate()
    check_positive("epochs", epochs, integer=False)
    if epochs is not None and given.get("steps") is not None:
        raise OptionError("give {steps} or {epochs}, not both", "epochs")


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class TensorBatches:
    """Batches as slices of a seeded permutation of tensors already on the device; resumable.

    Epoch e uses the permutation seeded by (seed, e), so the position (epoch, offset) is the whole state.
    Under torchrun each rank takes its contiguous share of every global batch.
    """

    def __init__(self, tensors: tuple, batch_size: int, seed: int, dist: Dist = Dist()):
        self.tensors = tuple(t for t in tensors if t is not None)
        self.n = int(self.tensors[0].shape[0])
        if batch_size % dist.world_size:
            raise ConfigError(f"{{batch_size={batch_size}}} must be divisible by the {dist.world_size} processes")
        self.batch_size = min(batch_size, self.n)
        self.batch_size -= self.batch_size % dist.world_size  # fewer examples than the batch: equal shares still
        if self.batch_size == 0:
            raise TrainingError(f"{self.n} training examples cannot be shared by {dist.world_size} processes")
        self.seed, self.dist = seed, dist
        self.epoch, self.offset = 0, 0
        self._perm = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            # modulo 2^64: any 64-bit seed works, and seeds below 2^64 / 1_000_003 keep their data order
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**64)
            self._perm = torch.randperm(self.n, generator=g).to(self.tensors[0].device)
        return self._perm

    def _take(self) -> torch.Tensor:
        """The indices of this rank's share of the next batch; moves the position past it."""
        if self.offset + self.batch_size > self.n:  # drop the ragged tail: every step sees a full batch
            self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
        idx = self._permutation()[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        share = self.batch_size // self.dist.world_size
        return idx[self.dist.rank * share : (self.dist.rank + 1) * share]

    def __next__(self) -> tuple:
        idx = self._take()
        return tuple(t[idx] for t in self.tensors)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.offset, self._perm = int(s["epoch"]), int(s["offset"]), None


# -- training state on disk -------------------------------------------------------------------------------
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, info: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in info["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": info["param_groups"]}


class Trainer:
    """Fits `objective` (a module whose forward(*batch) returns (loss, metrics)) on `batches`."""

    def __init__(
        self,
        objective: nn.Module,
        batches: TensorBatches,
        cfg: TrainConfig,
        run: RunFiles,
        device: torch.device,
        dist: Dist = Dist(),
        run_meta: dict | None = None,
        export: Callable[[], None] | None = None,
        evaluate: Callable[[], dict] | None = None,
        describe_metrics: Callable[[dict], dict] | None = None,
        compile: bool = False,
        keep_best: KeepBest | None = None,
        speed: Speed | None = None,
    ):
        cfg.validate()
        if cfg.amp is None:  # a caller that measured nothing: what a forward-only command would use
            cfg.amp = inference_amp(device, None)
        self.speed = speed  # recorded in metrics.jsonl; the caller applied it to the network
        self.objective, self.batches, self.cfg = objective, batches, cfg
        self.run, self.device, self.dist = run, device, dist
        self.run_meta = run_meta or {}  # model kind/config: stored in the state so --resume can rebuild it
        self.export, self.evaluate, self.keep_best = export, evaluate, keep_best
        self.best: dict | None = None  # {"step", "value"} of the best held-out evaluation so far
        self.describe_metrics = describe_metrics or (lambda m: m)
        params = [p for p in objective.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        self.step = 0
        self.net: nn.Module = objective
        if dist.world_size > 1:
            # codebook statistics are all-reduced inside the quantiser, so buffers need no broadcast per step
            # (they are synced once at construction; every rank built them from the same seed anyway)
            ddp = DistributedDataParallel
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                       else {"broadcast_buffers": False})
            self.net = ddp(objective, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
        if compile:
            self.net = torch.compile(self.net)
        self._stop_requested: signal.Signals | None = None  # the signal that asked training to stop
        self._last_saved: int | None = None  # step of the newest checkpoint on disk, None before the first

    # -- state ------------------------------------------------------------------------------------------
    def _last_good(self) -> str:
        if self._last_saved is None:
            return "no checkpoint was written yet"
        return (f"the last good checkpoint (step {self._last_saved}) is in {self.run.dir}; "
                "resume with {resume=True} and a lower {lr}")

    def save_state(self) -> None:
        state = self.objective.state_dict()
        # a finite loss can still come with infinite gradients: never overwrite a good checkpoint with NaNs
        # (checked on every rank: the weights are the same everywhere, so all ranks stop together)
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise TrainingError(f"the weights became NaN or infinite by step {self.step}; stopped without saving. "
                                + self._last_good())
        if not self.dist.main:
            self._last_saved = self.step  # rank 0 writes it
            return
        tensors = {f"model.{k}": v for k, v in state.items()}
        opt_tensors, opt_info = _flatten_optimizer(self.opt)
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        meta = {
            "step": str(self.step),
            "train_config": asdict(self.cfg),
            "optimizer": opt_info,
            "batches": self.batches.state_dict(),
            "python_rng": _py_rng_to_json(random.getstate()),
            "world_size": self.dist.world_size,
            "best": self.best,
            **self._speed_record(),
            **self.run_meta,
        }
        self.run.dir.mkdir(parents=True, exist_ok=True)
        # one file holds everything resume needs and is renamed into place in one step, so a kill at any
        # moment leaves either the previous state or the new one, never a mixture
        save_tensors(self.run.state, tensors, KIND_STATE, meta)
        self._last_saved = self.step
        if self.export is not None:
            self.export()

    def load_state(self) -> None:
        path = self.run.state
        tensors, meta = load_tensors(path, KIND_STATE, device="cpu")
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.objective.load_state_dict(model_sd)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this model: {first_problem(e)}") from None
        field = "optimizer"
        try:  # the fields are this file's JSON: any that does not hold what it should is named
            self.opt.load_state_dict(_unflatten_optimizer(tensors, meta_json(meta, "optimizer", path)))
            field = "step"
            self.step = int(meta["step"])
            field = "batches"
            self.batches.load_state_dict(meta_json(meta, "batches", path))
            field = "rng.torch"
            torch.set_rng_state(tensors["rng.torch"])
            cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if cuda_states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
            field = "python_rng"
            random.setstate(_py_rng_from_json(meta_json(meta, "python_rng", path)))
            field = "best"
            self.best = meta_json(meta, "best", path) if "best" in meta else None  # older runs kept no best
            if self.best is not None:
                self.best = {"step": int(self.best["step"]), "value": float(self.best["value"])}
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its {field!r} record cannot be used ({first_problem(e)}); the file is "
                                  "corrupt: resume from a copy, or start a new run") from None

    # -- metrics ----------------------------------------------------------------------------------------
    def _write_metrics(self, record: dict) -> None:
        if self.dist.main:
            try:
                with open(self.run.metrics, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # a full disk: resume cuts the partial record and continues from the checkpoint
                where = "no checkpoint was written yet" if self._last_saved is None else \
                    f"the checkpoint of step {self._last_saved} stays: resume with {{resume=True}} once it can be written"
                raise OutputError(f"cannot write {self.run.metrics}: {e.strerror or e}; {where}") from None

    # -- loop -------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train to cfg.steps; returns the final evaluation (or the last metrics when there is none)."""
        cfg = self.cfg
        if self.dist.main:
            self.run.prepare(resume)
        if resume:
            self.load_state()
            self._last_saved = self.step
            self._write_metrics({"event": "resume", "step": self.step, "time": time.time(),
                                 "world_size": self.dist.world_size, **self._speed_record()})
            log.note(f"resuming {self.run.dir} at step {self.step}")
        else:
            random.seed(cfg.seed)  # torch is seeded by the caller before it builds the model; Python's RNG here
            self._write_metrics({"event": "config", "train": asdict(cfg), "world_size": self.dist.world_size,
                                 **self._speed_record(), **self.run_meta})
        # every rank: torchrun starts its workers in their own session, so a Ctrl+C reaches them only as the
        # one SIGINT torchrun forwards to each; the ranks agree at the next step to stop (see _loop). SIGTERM
        # (kill, a batch scheduler's preemption, `timeout`) is treated the same: checkpoint, then stop.
        prev = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        try:
            result = self._loop()
        finally:
            for sig, handler in prev.items():
                signal.signal(sig, handler)
        barrier(self.dist)  # every rank returns once rank 0 has written the final files
        return result

    def _speed_record(self) -> dict:
        return {"speed": asdict(self.speed)} if self.speed is not None else {}

    def _on_signal(self, signum, _frame):
        if self._stop_requested:  # a second signal: leave now, without the checkpoint
            raise KeyboardInterrupt
        self._stop_requested = signal.Signals(signum)

    def _loop(self) -> dict:
        cfg, last, result = self.cfg, {}, None
        self.objective.train()
        start_step, t0 = self.step, time.perf_counter()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=log.console, disable=log.quiet() or not self.dist.main,
            transient=False,
        )
        with progress:
            task = progress.add_task("train", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                # under DDP a collective every step: all ranks stop at the same step when any was interrupted
                if any_rank(bool(self._stop_requested), self.dist, self.device):
                    progress.stop()
                    self.save_state()
                    barrier(self.dist)  # the others wait for rank 0's save: torchrun ends all once one exits
                    sig = self._stop_requested or signal.SIGINT  # a rank told by another rank has no signal
                    what = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
                    raise Interrupted(f"{what} at step {self.step}; checkpoint saved in {self.run.dir}; "
                                      f"resume with: {self.run.resume_command}", exit_code=128 + int(sig))
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(cfg, self.step)
                batch = next(self.batches)
                with autocast(self.device, cfg.amp):
                    loss, metrics = self.net(*batch)
                if any_rank(not torch.isfinite(loss), self.dist, self.device):  # every rank stops together
                    progress.stop()
                    what = "non-finite on another process" if torch.isfinite(loss) else loss.item()
                    raise TrainingError(f"loss became {what} at step {self.step + 1}; stopped without saving; "
                                        + self._last_good())
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.grad_clip)
                self.opt.step()
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    if self.dist.world_size > 1:
                        loss, metrics = _mean_over_ranks(loss, metrics, self.dist.world_size)
                    elapsed = time.perf_counter() - t0
                    rec = {"step": self.step, "loss": loss.item(), "lr": self.opt.param_groups[0]["lr"]}
                    rec.update(self.describe_metrics(metrics))
                    rec["images_per_s"] = (self.step - start_step) * cfg.batch_size / max(elapsed, 1e-9)
                    rec["elapsed_s"] = elapsed
                    self._write_metrics(rec)
                    last = rec
                    progress.update(task, completed=self.step, info=_fmt(rec))
                elif not progress.disable:
                    progress.update(task, completed=self.step)
                final = self.step == cfg.steps
                # the last evaluation comes before the last checkpoint, so that checkpoint records the best
                if self.evaluate and (final or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                    result = self._run_eval()
                if self.step % cfg.checkpoint_every == 0 or final:
                    self.save_state()
        if result is None:  # a resumed run that had already reached cfg.steps only re-evaluates
            result = self._run_eval() if self.evaluate else {}
        if self.step == start_step and self.dist.main and self.export is not None and not self.run.weights.exists():
            self.export()  # ... and writes its weights again when they are gone: the summary names them
        out = {**last, **result, "images_per_s": last.get("images_per_s", 0.0)}
        if self.keep_best and self.best is not None:
            if self.run.best.exists():
                out.update({"best_step": self.best["step"], f"best_{self.keep_best.metric}": self.best["value"],
                            "best_weights": str(self.run.best)})
            elif self.dist.main:
                log.warn(f"{self.run.best} (the weights of step {self.best['step']}) is missing; the summary names "
                         "no best weights")
        return out

    def _run_eval(self) -> dict:
        self.objective.eval()
        res = self.evaluate() if self.dist.main else {}
        self.objective.train()
        if self.dist.main:
            self._write_metrics({"event": "eval", "step": self.step, **res})
            if log.quiet():
                log.note(f"step {self.step}: " + _fmt(res))
            kb = self.keep_best
            if kb is not None and kb.metric in res and kb.improves(res[kb.metric], self.best and self.best["value"]):
                kb.save()
                self.best = {"step": self.step, "value": res[kb.metric]}
                self._write_metrics({"event": "best", "step": self.step, kb.metric: res[kb.metric]})
        return res


def _mean_over_ranks(loss: torch.Tensor, metrics: dict, world_size: int) -> tuple[torch.Tensor, dict]:
    """The loss and floating-point tensor metrics averaged over the ranks (one all-reduce): each rank's are
    means over its equal share, so these are the global batch's, as one process would log them. Metrics that
    are already global (the quantiser's all-reduced code counts) are the same on every rank and stay so."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v) and v.is_floating_point()]
    parts = [loss.detach().float().reshape(-1)] + [metrics[k].detach().float().reshape(-1) for k in keys]
    flat = torch.cat(parts)
    tdist.all_reduce(flat)
    flat /= world_size
    out = dict(metrics)
    chunks = flat.split([p.numel() for p in parts])
    for k, c in zip(keys, chunks[1:]):
        out[k] = c.reshape(metrics[k].shape).to(metrics[k].dtype)
    return chunks[0].reshape(loss.shape).to(loss.dtype), out


def _fmt(rec: dict) -> str:
    skip = {"step", "elapsed_s", "lr", "event"}
    parts = []
    for k, v in rec.items():
        if k in skip:
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


def _py_rng_to_json(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_rng_from_json(s) -> tuple:
    return (s[0], tuple(s[1]), s[2])
