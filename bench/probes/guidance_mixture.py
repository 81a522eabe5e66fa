"""Would half the samples at a second, lower guidance cover more of the real images (recall) at no cost in FD?

Runs bench/sample_quality.py with its draws split in two: half at the options given to it, half at
--mix-guidance / --mix-autoguidance / --mix-temperature (seed + 1), interleaved so that each compared set of
N = 500 holds 250 of each, 25 per class.

    python bench/probes/guidance_mixture.py --mix-guidance 7 --mix-autoguidance 4 -- \
        sweep DATA --reference train --guidances 10 --temperatures 1.05 --guidance-schedule linear --seed S
"""

from __future__ import annotations

import argparse
import dataclasses
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import vqgen.sampling as sampling  # noqa: E402


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Set i of the bench (half i of the draws) = quarter i of a's draws and quarter i of b's."""
    q = a.shape[0] // 2
    return torch.cat([a[:q], b[:q], a[q:], b[q:]])


def mixed(draw, mix: dict):
    def draw_mixed(n, **kw):
        assert n % 40 == 0 and kw.get("class_run", 1) == 1, "each quarter must cycle through the classes"
        first = draw(n // 2, **kw)
        second = draw(n // 2, **{**kw, **{k: v for k, v in mix.items() if v is not None}, "seed": kw["seed"] + 1})
        return dataclasses.replace(first, images=interleave(first.images, second.images),
                                   labels=interleave(first.labels, second.labels),
                                   codes=interleave(first.codes, second.codes))

    return draw_mixed


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix-guidance", type=float)
    ap.add_argument("--mix-autoguidance", type=float)
    ap.add_argument("--mix-temperature", type=float)
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench/sample_quality.py's arguments")
    args = ap.parse_args()
    sampling.draw_samples = mixed(sampling.draw_samples, {"guidance": args.mix_guidance,
                                                          "autoguidance": args.mix_autoguidance,
                                                          "temperature": args.mix_temperature})
    bench = ROOT / "bench" / "sample_quality.py"
    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    sys.argv = [str(bench)] + rest
    runpy.run_path(str(bench), run_name="__main__")
