"""Training throughput (images/s) of the VQ-VAE at the default config, on synthetic batches.

    python bench/bench_train_speed.py [--steps 30] [--batch-size 128] [--device auto]

Prints a markdown table: amp on/off x channels_last on/off. Synthetic data isolates the model step from
data loading (vqgen keeps the data set on the device, so the real loop adds only a gather per batch).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from vqgen.runtime import autocast, resolve_device
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print("| amp (bf16) | channels_last | images/s |\n|---|---|---|")
    for amp in (True, False):
        for cl in (True, False):
            print(f"| {amp} | {cl} | {measure(dev, amp, cl, a.steps, a.batch_size):.0f} |")


if __name__ == "__main__":
    main()
