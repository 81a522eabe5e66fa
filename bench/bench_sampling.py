"""Sampling speed of each built-in prior: the fast sampler (`sample`) against the naive one (`sample_naive`,
one full forward pass per grid position), at the default config (K=512, 8x8 grid), random weights; the last
column adds decoding the 64 grids with the default VQ-VAE (what `vqgen sample` does after drawing the codes).

    python bench/bench_sampling.py [--n 64] [--repeats 3] [--threads N] [--device cpu] [--priors pixelcnn,transformer]

Prints a markdown table of the median wall time over --repeats runs (after one warm-up run of the fast
sampler) and checks that both samplers return identical grids under the same seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from priors import get_prior  # noqa: E402
from vqgen.vqvae import VQVAE, VQVAEConfig  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="grids per sample call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--priors", default="pixelcnn,transformer")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    print(f"torch {torch.__version__}, device {dev} ({where}), torch threads {torch.get_num_threads()}, "
          f"n={a.n}, median of {a.repeats}")
    print()
    print("| prior | config | params | naive (s) | fast (s) | speed-up | identical | fast + decode (s) |")
    print("|---|---|---|---|---|---|---|---|")
    vqvae = VQVAE(VQVAEConfig()).to(dev).eval()

    @torch.no_grad()
    def sample_and_decode(prior, seed):
        return vqvae.decode(prior.sample(a.n, generator=torch.Generator(dev).manual_seed(seed)))

    for name in a.priors.split(","):
        cls = get_prior(name)
        torch.manual_seed(0)
        prior = cls(cls.config_class()).to(dev).eval()
        cfg = {k: v for k, v in vars(prior.config).items() if k not in ("num_classes", "dropout")}
        params = sum(p.numel() for p in prior.parameters())
        prior.sample(a.n, generator=torch.Generator(dev).manual_seed(0))  # warm-up
        fast, naive, full, same = [], [], [], True
        for r in range(a.repeats):
            tf, sf = timed(lambda: prior.sample(a.n, generator=torch.Generator(dev).manual_seed(r)), dev)
            tn, sn = timed(lambda: prior.sample_naive(a.n, generator=torch.Generator(dev).manual_seed(r)), dev)
            fast.append(tf)
            naive.append(tn)
            full.append(timed(lambda: sample_and_decode(prior, r), dev)[0])
            same &= torch.equal(sf, sn)
        mf, mn = statistics.median(fast), statistics.median(naive)
        desc = ", ".join(f"{k}={v}" for k, v in cfg.items())
        print(f"| {name} | {desc} | {params / 1e6:.2f}M | {mn:.2f} | {mf:.3f} | {mn / mf:.0f}x | {'yes' if same else 'NO'} | {statistics.median(full):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
