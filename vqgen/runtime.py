"""Where computation runs: device choice, autocast, and torchrun's process group."""

from __future__ import annotations

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
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device
