"""Would guidance weighted further towards the last codes than the linear schedule keep more variety?

Runs bench/sample_quality.py with the "linear" schedule replaced by a power schedule that keeps W the mean
weight: w(s) = W * S * s^p / sum_j j^p at step s of S (p = 1 is the linear schedule, p = 0 the constant one).

    python bench/probes/guidance_power.py --power P -- sweep DATA --reference train --guidances 6 7 8 \
        --temperatures 1.05 --guidance-schedule linear --seed S [--json OUT]
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import priors.base as base  # noqa: E402


def power_weight(power: float):
    linear = base.guidance_weight

    def weight(guidance: float, schedule: str, step: int = 1, steps: int = 1) -> float:
        if schedule != "linear":
            return linear(guidance, schedule, step, steps)
        return guidance * steps * step ** power / sum(j ** power for j in range(1, steps + 1))

    return weight


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--power", type=float, required=True)
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench/sample_quality.py's arguments")
    args = ap.parse_args()
    base.guidance_weight = power_weight(args.power)  # priors.base samplers look the name up at each step
    bench = ROOT / "bench" / "sample_quality.py"
    sys.argv = [str(bench)] + [a for a in args.bench_args if a != "--"]
    runpy.run_path(str(bench), run_name="__main__")
