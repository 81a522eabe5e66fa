"""Where computation runs: device choice, autocast, and torchrun's process group."""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass

import torch

from vqgen.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a usable torch.device, or a ConfigError saying why not."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU or CUDA; bf16 keeps fp32's range, so no gradient scaler is needed."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group when its environment is present; otherwise a single process, untouched."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if d.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {d.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many processes per machine (torchrun --nproc_per_node)")
        device = torch.device("cuda", d.local_rank)  # one GPU per process, whatever --device cuda:N said
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        # the group is ours: leave it when the process ends (the command is over by then)
        atexit.register(_leave_group)
    if d.rank > 0:
        # only rank 0 talks: progress bars, notes and warnings of the other ranks would repeat its own
        from vqgen import log

        log.console.quiet = True
    return d, device


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: every rank must call it)."""
    if d.world_size < 2:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def local_main_first(d: Dist):
    """Let local rank 0 of each machine run the block first (say, download a data set into a shared cache),
    then the other ranks, which then find it there. Every rank passes one barrier."""
    if d.world_size > 1 and d.local_rank != 0:
        barrier(d)
    yield
    if d.world_size > 1 and d.local_rank == 0:
        barrier(d)
