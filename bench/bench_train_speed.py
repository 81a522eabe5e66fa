"""Training throughput (images/s) of the default VQ-VAE: each precision x memory format, and what
`vqgen train-vqvae` picks by itself at its defaults.

    python bench/bench_train_speed.py [--steps 30] [--batch-size 128] [--device auto] [--cli-steps 60]

Prints a markdown table: amp on/off x channels_last on/off on synthetic batches (the model step alone), then one
row for the real command at its defaults (`--amp`, `--channels-last`, `--threads` all auto) on a folder of
synthetic images, from its own metrics.jsonl. To see what a CPU without native bf16 gets, cap the kernels torch
and oneDNN use: `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/bench_train_speed.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vqgen.runtime import autocast, native_bf16_cpu, resolve_device
from vqgen.vqvae import VQVAE, VQVAEConfig, VQVAEObjective


def measure(device, amp: bool, channels_last: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    obj = VQVAEObjective(model)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    for i in range(steps + 5):
        if i == 5:  # warm-up steps excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast(device, amp):
            loss, _ = obj(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def measure_cli(steps: int, batch: int, device: str) -> tuple[float, dict]:
    """images/s of `vqgen train-vqvae` at its defaults over `steps` steps, and the settings it chose."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images" / "x"
        data.mkdir(parents=True)
        g = torch.Generator().manual_seed(0)
        for i in range(2 * batch):
            px = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(data / f"{i}.png")
        env = {**os.environ, "VQGEN_CACHE": str(Path(tmp) / "cache"), "VQGEN_QUIET": "1"}
        cmd = [sys.executable, "-m", "vqgen", "train-vqvae", "--data", str(data.parent), "--out", str(Path(tmp) / "run"),
               "--steps", str(steps), "--batch-size", str(batch), "--eval-every", "0", "--log-every", str(steps // 2),
               "--device", device, "--val-fraction", "0.01", "--json"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        recs = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    speed = recs[0]["speed"]
    # the second half of the run only: the first holds the warm-up steps, which the model-step rows leave out too
    (s1, e1), (s2, e2) = [(r["step"], r["elapsed_s"]) for r in recs if "loss" in r][-2:]
    rate = (s2 - s1) * batch / (e2 - e1)
    return rate, speed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cli-steps", type=int, default=60, help="steps of the real command (0: skip that row)")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {native_bf16_cpu()}")
    print("| amp (bf16) | channels_last | images/s |\n|---|---|---|")
    for amp in (True, False):
        for cl in (True, False):
            print(f"| {amp} | {cl} | {measure(dev, amp, cl, a.steps, a.batch_size):.0f} |", flush=True)
    if a.cli_steps:
        rate, s = measure_cli(a.cli_steps, a.batch_size, a.device)
        print(f"| `vqgen train-vqvae` defaults: {'bf16' if s['amp'] else 'fp32'}, channels_last "
              f"{'on' if s['channels_last'] else 'off'}, {s['threads']} threads ({s['how']}) | | {rate:.0f} |")


if __name__ == "__main__":
    main()
