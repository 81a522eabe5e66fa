"""Where computation runs: device choice, precision and memory format (measured, not assumed), autocast,
thread count, and torchrun's process group."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as tdist

from vqgen import log
from vqgen.errors import ConfigError, OptionError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a usable torch.device, or a ConfigError saying why not."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{{device={name}}} was asked for but CUDA is not available here; use {{device=cpu}} or "
                              "auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{{device={name}}}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    raise OptionError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", "device", name, "auto, cpu, cuda, cuda:N")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU or CUDA; bf16 keeps fp32's range, so no gradient scaler is needed."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# -- precision, memory format and threads ------------------------------------------------------------------
# bf16 autocast is 1.5x faster than fp32 for the default VQ-VAE on a CPU with AMX / AVX512_BF16 and 13x slower on
# one without (emulated): the choice is made per machine and per network, never assumed (BENCHMARKS.md).
SPEED_CACHE_VERSION = 1
PROBE_BATCH = 16  # examples per probe step: a few hundred ms for the default networks on 2 CPU cores
PROBE_STEPS = 2  # timed steps per candidate, after one warm-up step; the fastest of them counts


@dataclass
class Speed:
    """How a training run computes: chosen once at its start, printed, and recorded in metrics.jsonl."""

    amp: bool  # bf16 autocast for the network (the quantiser stays fp32)
    channels_last: bool  # channels_last memory format for the network's convolutions
    threads: int  # torch's intra-op CPU threads
    how: str  # one line: what decided each setting (capability, measurement, the user, the run being resumed)
    probe: dict | None = None  # candidate -> seconds per probe step, when a measurement decided

    def describe(self) -> str:
        return (f"{'bf16 autocast' if self.amp else 'fp32'}, channels_last {'on' if self.channels_last else 'off'}, "
                f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} ({self.how})")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux reports them; None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16_cpu() -> bool | None:
    """True when this CPU computes bf16 matrix products natively (AVX512_BF16 or AMX), False when it cannot
    (x86 below AVX-512: torch and oneDNN emulate bf16 there), None when that cannot be told from here."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    cap = torch.backends.cpu.get_cpu_capability()
    if x86 and cap != "AVX512":
        return False
    flags = _cpu_flags()
    if not x86 or flags is None:
        return None
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"):
        return None  # oneDNN may have been capped below what the CPU has
    return True


def inference_amp(device: torch.device, amp: bool | None) -> bool:
    """bf16 autocast for a command that only runs networks forward (sample, reconstruct, encode, evaluate).

    auto (None): bf16 on CUDA devices that support it; fp32 on CPUs, where it was measured to be no faster for
    the cached samplers (BENCHMARKS.md) and keeps reported figures the same on every machine."""
    if amp is not None:
        return bool(amp)
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _speed_cache_file() -> Path:
    env = os.environ.get("VQGEN_CACHE")
    if env:
        return Path(env).expanduser() / "speed.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vqgen" / "speed.json"


def _machine_key(device: torch.device) -> str:
    """What makes a measurement valid elsewhere: the processor, torch, the caps set in the environment."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    parts = [SPEED_CACHE_VERSION, device.type, platform.machine(), platform.processor(), model,
             sorted(_cpu_flags() or []), torch.__version__, torch.backends.cpu.get_cpu_capability(), usable_cores(),
             torch.get_num_threads(), os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("ATEN_CPU_CAPABILITY"),
             os.environ.get("OMP_NUM_THREADS")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _read_speed_cache() -> dict:
    try:
        data = json.loads(_speed_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_speed_cache(key: str, entry: dict) -> None:
    """Best effort: a cache that cannot be written only means measuring again next time."""
    path = _speed_cache_file()
    data = _read_speed_cache()
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def _time_step(step: Callable[[], None], limit: float | None) -> float:
    """Seconds of the fastest of PROBE_STEPS timed calls after one warm-up; inf when the warm-up alone
    exceeds `limit` (a candidate far slower than the best so far is not worth finishing)."""
    t0 = time.perf_counter()
    step()
    if limit is not None and time.perf_counter() - t0 > limit:
        return float("inf")
    best = float("inf")
    for _ in range(PROBE_STEPS):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def choose_speed(
    device: torch.device,
    workload: str,
    make_step: Callable[[bool, bool], Callable[[], None]] | None,
    *,
    amp: bool | None = None,
    channels_last: bool | None = None,
    threads: int | None = None,
    memory_format_matters: bool = True,
    dist: "Dist | None" = None,
) -> Speed:
    """Pick bf16 or fp32, channels_last or not, and the thread count for training `workload`.

    Settings given (not None: the user's, or a resumed run's own) are kept, and so is a thread count set
    through OMP_NUM_THREADS / MKL_NUM_THREADS. Otherwise capability decides where it settles the matter (CUDA: bf16 when
    supported, channels_last; a CPU without native bf16: fp32), and a measurement of the network's own training
    step decides the rest: make_step(amp, channels_last) returns a function running one forward and backward pass
    on a small synthetic batch of a copy of the network. The measurement is cached per machine and workload, so
    it runs once; under torchrun rank 0 measures and every rank takes its choice."""
    dist = dist or Dist()
    why = []
    if amp is not None:
        amps, _ = [bool(amp)], why.append("precision given")
    elif device.type == "cuda":
        amps, _ = [torch.cuda.is_bf16_supported()], why.append("precision by CUDA bf16 support")
    else:
        native = native_bf16_cpu()
        if native is False:
            amps = [False]
            why.append(f"fp32: this CPU has no native bf16 ({torch.backends.cpu.get_cpu_capability()})")
        else:
            amps = [False, True]
    if channels_last is not None:
        formats = [bool(channels_last)]
    elif not memory_format_matters:
        formats = [False]
    elif device.type == "cuda":
        formats = [True]
    else:
        formats = [True, False]
    if threads is not None:
        thread_counts = [int(threads)]
    elif device.type == "cpu" and not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        thread_counts = sorted({torch.get_num_threads(), usable_cores()})
    else:
        thread_counts = [torch.get_num_threads()]
    candidates = [(a, c, t) for a in amps for c in formats for t in thread_counts]
    probe = None
    if len(candidates) == 1 or make_step is None:
        a, c, t = candidates[0]
    else:
        key = f"{_machine_key(device)}:{workload}"
        cached = _read_speed_cache().get(key) if dist.main else None
        hit = (isinstance(cached, dict) and isinstance(cached.get("choice"), list)
               and tuple(cached["choice"]) in candidates)
        found = _broadcast((1, *cached["choice"]) if hit else (0, 0, 0, 0), dist, device)
        if found[0]:
            choice, probe = found[1:], cached.get("probe") if dist.main else None
            why.append("measured earlier on this machine")
        else:
            # under torchrun every rank measures at once (the quantiser's collectives need them all), and all
            # take rank 0's verdict; the early stop is off there so that every rank runs the same steps
            choice, probe = _measure(candidates, make_step, early_stop=dist.world_size < 2)
            choice = _broadcast(choice, dist, device)
            if dist.main:
                _write_speed_cache(key, {"choice": list(choice), "probe": probe, "time": time.time()})
            why.append("measured now")
        a, c, t = bool(choice[0]), bool(choice[1]), int(choice[2])
    if device.type == "cpu":
        torch.set_num_threads(t)
    return Speed(amp=a, channels_last=c, threads=t, how="; ".join(why) or "the only candidate", probe=probe)


def _measure(candidates, make_step, early_stop: bool = True) -> tuple[tuple, dict]:
    before = torch.get_num_threads()
    times: dict[str, float] = {}
    best, best_t = candidates[0], float("inf")
    try:
        with torch.random.fork_rng(devices=[]):  # the probe draws nothing from the run's random streams
            for a, c, t in candidates:
                torch.set_num_threads(t)
                limit = 4 * best_t if early_stop and best_t < float("inf") else None
                secs = _time_step(make_step(a, c), limit)
                times[f"{'bf16' if a else 'fp32'}{' channels_last' if c else ''} {t} threads"] = round(secs, 5)
                if secs < best_t:
                    best, best_t = (a, c, t), secs
    finally:
        torch.set_num_threads(before)
    return best, times


def _broadcast(values: tuple, dist: "Dist", device: torch.device) -> tuple:
    """Rank 0's values on every rank (as they are, for a single process)."""
    if dist.world_size < 2:
        return tuple(values)
    t = torch.tensor([int(v) for v in values], dtype=torch.long,
                     device=device if device.type == "cuda" else "cpu")
    tdist.broadcast(t, 0)
    return tuple(t.tolist())


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as torchrun's environment states it (0 without torchrun), before any process group."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return 0
    return int(os.environ["RANK"])


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group when its environment is present; otherwise a single process, untouched."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return Dist(), resolve_device(device_name)
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if d.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {d.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many processes per machine (torchrun --nproc_per_node)")
        device = torch.device("cuda", d.local_rank)  # one GPU per process, whatever --device cuda:N said
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        if device.type == "cuda":
            tdist.init_process_group("nccl", device_id=device)
        else:
            tdist.init_process_group("gloo")
        # the group is ours: leave it when the process ends (the command is over by then)
        atexit.register(_leave_group)
    if d.rank > 0:
        # only rank 0 talks: progress bars, notes and warnings of the other ranks would repeat its own
        log.console.quiet = True
    return d, device


def _leave_group() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: every rank must call it)."""
    if d.world_size < 2:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if d.world_size > 1:
        tdist.barrier()


@contextlib.contextmanager
def local_main_first(d: Dist):
    """Let local rank 0 of each machine run the block first (say, download a data set into a shared cache),
    then the other ranks, which then find it there. Every rank passes one barrier."""
    if d.world_size > 1 and d.local_rank != 0:
        barrier(d)
    yield
    if d.world_size > 1 and d.local_rank == 0:
        barrier(d)
