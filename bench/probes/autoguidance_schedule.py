"""Would autoguidance at a constant weight (the layout codes too) do better than spread like W (linear)?

Runs bench/sample_quality.py with `Sampling.autoguide` using A at every position, whatever the guidance
schedule; W keeps its own schedule.

    python bench/probes/autoguidance_schedule.py -- sweep DATA --reference train --guidances 10 \
        --temperatures 1.05 --guidance-schedule linear --autoguidance A --seed S [--json OUT]
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import priors.base as base  # noqa: E402


def constant_autoguide(self, logits, cond, weak, step=1, steps=1):
    return logits.float() + self.autoguidance * (cond.float() - weak.float())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench/sample_quality.py's arguments")
    args = ap.parse_args()
    base.Sampling.autoguide = constant_autoguide
    bench = ROOT / "bench" / "sample_quality.py"
    sys.argv = [str(bench)] + [a for a in args.bench_args if a != "--"]
    runpy.run_path(str(bench), run_name="__main__")
