"""A training set larger than a memory budget: decoding throughput by worker count, then peak memory and
training images/s of `vqgen train-vqvae` with the set on the device against streamed, one process and two.

    python bench/bench_stream.py --work /tmp/stream-bench [--images 60000] [--size 64] [--steps 60]

Makes (once) a folder of synthetic JPEGs, decodes it into a fresh cache with 1 worker and with 2 (images/s), then
trains a small VQ-VAE (hidden 64: activations small beside the data) a few dozen steps from the cache with
--data-on-device yes and no, in one process and in two under torchrun, and once on a folder of 600
images: what a run takes without the data (torch alone is ~500 MiB resident). Every run is timed by
/usr/bin/time -v (peak RSS of the largest process) while this script samples the whole process tree every
0.1 s: the sum of RSS and of PSS (shared pages split between the processes that map them, so two ranks
mapping one cache count it once). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, n: int, size: int) -> None:
    """n JPEGs of size x size in 10 class folders: blocky colour fields with noise (some structure, real decoding)."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        d = folder / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = np.repeat(np.repeat(blocks, 8, 0), 8, 1).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)
    done.write_text(str(n))


class TreeSampler(threading.Thread):
    """Peak sums of RSS and PSS (kB) over a process and all its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = 0
        self.stop = threading.Event()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children.get(p, [])
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            rss = pss = 0
            for p in self._tree():
                try:
                    text = Path(f"/proc/{p}/smaps_rollup").read_text()
                except OSError:
                    continue
                rss += int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))
                pss += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.stop.wait(self.every)


def timed(cmd: list[str], env: dict) -> dict:
    """Run cmd under /usr/bin/time -v; its wall time, the peak RSS time reports, and the sampled tree peaks."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    sampler = TreeSampler(p.pid)
    sampler.start()
    out, err = p.communicate()
    sampler.stop.set()
    sampler.join()
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    max_rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"wall_s": time.perf_counter() - t0, "time_max_rss_mb": max_rss / 1024,
            "tree_rss_mb": sampler.peak_rss / 1024, "tree_pss_mb": sampler.peak_pss / 1024, "stdout": out,
            "stderr": err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="Folder for the images, caches and runs.")
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-decode", action="store_true", help="Reuse the caches of an earlier run.")
    args = ap.parse_args()
    work = args.work.resolve()
    folder = work / f"images-{args.images}x{args.size}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQGEN_QUIET": "1", "PYTHONPATH": str(REPO)}
    env.pop("VQGEN_CACHE", None)
    t0 = time.perf_counter()
    make_folder(folder, args.images, args.size)
    small = work / f"images-600x{args.size}"
    make_folder(small, 600, args.size)
    print(f"folder: {args.images} JPEGs of {args.size}x{args.size} ({time.perf_counter() - t0:.0f} s to make)",
          file=sys.stderr)
    decoded_mb = args.images * 3 * args.size * args.size / 2**20

    print(f"decoded set: {args.images} x 3 x {args.size} x {args.size} uint8 = {decoded_mb:.0f} MiB\n")
    if not args.skip_decode:
        print("| workers | decoding wall (s) | images/s | peak RSS, largest process (MiB) |")
        print("|---:|---:|---:|---:|")
        for w in (1, 2):
            cache = work / f"cache-w{w}"
            shutil.rmtree(cache, ignore_errors=True)
            code = ("import sys, time; from vqgen.data import load_images; t=time.perf_counter(); "
                    f"s=load_images({str(folder)!r}, {args.size}, cache_dir={str(cache)!r}, workers={w}); "
                    "print(len(s), time.perf_counter()-t)")
            r = timed([sys.executable, "-c", code], env)
            n, secs = r["stdout"].split()
            print(f"| {w} | {float(secs):.1f} | {int(n) / float(secs):.0f} | {r['time_max_rss_mb']:.0f} |")
        sums = {w: subprocess.run(["sha256sum", *map(str, (work / f"cache-w{w}").glob("*.safetensors"))],
                                  capture_output=True, text=True).stdout.split()[0] for w in (1, 2)}
        print(f"\ncaches built by 1 and by 2 workers identical: {sums[1] == sums[2]}\n")

    cache = work / "cache-w1"
    # a held-out split of 0.1% keeps the one evaluation at the end small beside the data too
    train = ["train-vqvae", "--image-size", str(args.size), "--hidden", "64", "--res-channels", "16", "--steps",
             str(args.steps), "--batch-size", str(args.batch_size), "--log-every", "10", "--eval-every", "0",
             "--val-fraction", "0.001", "--threads", "1", "--no-amp", "--channels-last", "--cache-dir", str(cache),
             "--json"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vqgen"]
    one = [sys.executable, "-m", "vqgen"]
    runs = [("1 process, 600 images", small, "yes", one), ("1 process", folder, "yes", one),
            ("1 process", folder, "no", one), ("2 processes (torchrun)", folder, "yes", torchrun),
            ("2 processes (torchrun)", folder, "no", torchrun)]
    print(f"train-vqvae, hidden 64, {args.steps} steps of batch {args.batch_size}, fp32, 1 thread a process:\n")
    print("| processes | --data-on-device | images/s | peak RSS, largest process (MiB) | peak RSS, all (MiB) | "
          "peak PSS, all (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for what, data, where, launcher in runs:
        out = work / f"run-{len(launcher)}-{data.name}-{where}"
        shutil.rmtree(out, ignore_errors=True)
        r = timed([*launcher, *train, "--data", str(data), "--out", str(out), "--data-on-device", where], env)
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        ips = [x["images_per_s"] for x in recs if "images_per_s" in x][-1]
        assert recs[0]["data_on_device"] is (where == "yes")
        print(f"| {what} | {where} | {ips:.0f} | {r['time_max_rss_mb']:.0f} | {r['tree_rss_mb']:.0f} | "
              f"{r['tree_pss_mb']:.0f} |")


if __name__ == "__main__":
    main()
