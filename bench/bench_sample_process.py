"""`vqgen sample --n 64 --out grid.png` as a whole process against `python -c "import torch"` alone.

    python bench/bench_sample_process.py [--repeat 5] [-- extra sample options]

Each command runs --repeat times in a fresh process (after one untimed warm-up run, which fills the OS page
cache); the table gives the median wall time, and the in-process sampling time `vqgen sample` reports itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], repeat: int) -> tuple[float, list[str]]:
    subprocess.run(cmd, check=True, capture_output=True)
    times, outs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        outs.append(p.stdout)
    return statistics.median(times), outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("extra", nargs="*", help="more `vqgen sample` options")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch_s, _ = wall([sys.executable, "-c", "import torch"], a.repeat)
        cmd = [sys.executable, "-m", "vqgen", "sample", "--n", "64", "--out", str(Path(tmp) / "grid.png"), "--json",
               *a.extra]
        sample_s, outs = wall(cmd, a.repeat)
    inner = statistics.median(json.loads(o.strip().splitlines()[-1])["seconds"] for o in outs)
    print("| command | median wall (s) |\n|---|---:|")
    print(f"| `python -c \"import torch\"` | {torch_s:.2f} |")
    print(f"| `vqgen sample --n 64 --out grid.png {' '.join(a.extra)}` | {sample_s:.2f} |")
    print(f"| difference | **{sample_s - torch_s:.2f}** |")
    print(f"| of which sampling and decoding in-process (its `seconds`) | {inner:.2f} |")


if __name__ == "__main__":
    main()
