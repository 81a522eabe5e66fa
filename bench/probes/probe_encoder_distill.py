"""Can the encoder learn the searched codes? Fine-tunes only the encoder towards bench/probes/probe_code_search.py's grids.

    python bench/probes/probe_code_search.py DATA --split train --n 6000 --candidates 4 --sweeps 1 --save targets.safetensors
    python bench/probes/probe_encoder_distill.py DATA targets.safetensors --minutes 15 --out distilled.safetensors

The decoder and codebook stay frozen. The encoder is trained with cross-entropy over the codebook, the logits
being minus the squared distances of its output to each code over --temperature, towards the grid the search
found for each training image; so the nearest-neighbour rule, unchanged, then picks codes the decoder
reconstructs better. Held-out PSNR (nearest-neighbour codes, as vqgen encodes) every --eval-every steps; `--out`
keeps the weights with the best held-out PSNR. Progress on stderr, one JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vqgen.data import load_images, split_indices
from vqgen.metrics import mse, psnr_from_mse
from vqgen.data import SPLIT_SEED
from vqgen.vqvae import open_vqvae
from vqgen.vqvae import save_vqvae


@torch.no_grad()
def heldout_psnr(model, x: torch.Tensor) -> float:
    model.eval()
    err = torch.cat([mse(b, model.decode(model.encode(b))) for b in x.split(500)])
    return psnr_from_mse(err.mean().item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("targets", help="searched grids from probe_code_search.py --save")
    p.add_argument("--vqvae", default=None, help="weights the targets were searched with (default: shipped)")
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--temperature", type=float, default=0.1, help="typical gap between nearest and second code: ~0.5")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the best fine-tuned VQ-VAE here")
    a = p.parse_args()
    torch.manual_seed(a.seed)

    images = load_images(a.data)
    _, va = split_indices(len(images.images), 0.02, SPLIT_SEED)
    val = images.images[va].float() / 255
    t = load_file(a.targets)
    x_all, y_all = images.images[t["indices"]], t["codes"]  # uint8 (n, 3, 32, 32), int64 (n, 8, 8)

    model, _, _ = open_vqvae(a.vqvae, device="cpu")
    for prm in model.parameters():
        prm.requires_grad_(False)
    for prm in model.encoder.parameters():
        prm.requires_grad_(True)
    opt = torch.optim.AdamW(model.encoder.parameters(), lr=a.lr, weight_decay=0.0)

    start = heldout_psnr(model, val)
    best, best_state, history = start, copy.deepcopy(model.state_dict()), [(0, round(start, 4))]
    print(f"step 0: held-out {start:.3f} dB", file=sys.stderr)
    budget, t0, step = a.minutes * 60, time.time(), 0
    while time.time() - t0 < budget:
        model.encoder.train()
        perm = torch.randperm(len(x_all))
        for s in range(0, len(perm) - a.batch + 1, a.batch):
            frac = min(1.0, (time.time() - t0) / budget)
            for g in opt.param_groups:  # cosine over the wall-time budget
                g["lr"] = a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            b = perm[s : s + a.batch]
            x = (x_all[b].float() / 255).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z = model.encoder(x * 2 - 1)
            z = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (b*64, D)
            # the quantizer's distances leave out |z|^2, a per-row constant: softmax and argmin ignore it
            d = model.quantizer.distances(z)  # (b*64, K); the codebook is frozen (requires_grad off above)
            loss = F.cross_entropy(-d / a.temperature, y_all[b].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % a.eval_every == 0:
                acc = (d.argmin(1) == y_all[b].reshape(-1)).float().mean().item()
                now = heldout_psnr(model, val)
                history.append((step, round(now, 4)))
                if now > best:
                    best, best_state = now, copy.deepcopy(model.state_dict())
                print(f"step {step}: loss {loss.item():.3f}, batch target accuracy {acc:.1%}, held-out {now:.3f} dB "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr)
            if time.time() - t0 >= budget:
                break
    if a.out:
        model.load_state_dict(best_state)
        save_vqvae(model, a.out)
    print(json.dumps({"start_psnr": round(start, 4), "best_psnr": round(best, 4), "steps": step,
                      "targets": len(x_all), "history": history, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
