"""The cached PixelCNN sampler with filter_logits as it is and as it was before the float32 temperature clamp,
alternated in one process (so the load on the machine falls on both alike): 16 samples, default config, one thread.

    python bench/probes/temperature_clamp_ab.py [--pairs 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import priors.base as base  # noqa: E402
import priors.sampling_utils as su  # noqa: E402
from priors import get_prior  # noqa: E402

CLAMPED = su.filter_logits


def unclamped(logits, temperature=1.0, top_k=None, top_p=None):
    """filter_logits before the clamp (top-p left out: the bench does not use it)."""
    logits = logits.float()
    if temperature < 1:
        logits = logits - logits.amax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cls = get_prior("pixelcnn")
    prior = cls(cls.config_class(num_codes=512, height=8, width=8)).eval()
    times = {"clamped": [], "unclamped": []}
    with torch.no_grad():
        prior.sample(16, generator=torch.Generator().manual_seed(0))  # warm-up
        for i in range(args.pairs):
            order = [("clamped", CLAMPED), ("unclamped", unclamped)]
            for name, fn in order[::-1] if i % 2 else order:
                su.filter_logits = base.filter_logits = fn
                t = time.perf_counter()
                prior.sample(16, generator=torch.Generator().manual_seed(0))
                times[name].append(time.perf_counter() - t)
    for name, v in times.items():
        v = sorted(v)
        print(f"{name:<10} median {v[len(v) // 2]:.3f} s  ({', '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
