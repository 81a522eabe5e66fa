"""How far the shipped VQ-VAE's nearest-neighbour codes are from the best codes its decoder could be given.

    python bench/probes/probe_code_search.py DATA --candidates 8 --sweeps 2
    python bench/probes/probe_code_search.py DATA --split train --n 6000 --candidates 4 --sweeps 1 --save targets.safetensors

Encodes images, then improves each image's 8x8 grid with vqgen.search (what `--search` does in `vqgen encode` /
`reconstruct`): greedy coordinate descent that, position by position, tries the --candidates codebook vectors
nearest to that position's encoder output and keeps the one whose decoding has the lowest MSE. On held-out images
the PSNR it reaches bounds what a better encoder (same codebook, same decoder) could gain from these candidates. `--split train --save` keeps the searched grids of random training images as
distillation targets (bench/probes/probe_encoder_distill.py). A probe: it changes no weights. Progress on stderr, one JSON
summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from safetensors.torch import save_file

from vqgen.data import load_images, split_indices
from vqgen.metrics import mse, psnr_from_mse
from vqgen.search import nearest_codes, search_codes
from vqgen.data import SPLIT_SEED
from vqgen.vqvae import open_vqvae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--vqvae", default=None, help="weights (default: the shipped VQ-VAE)")
    p.add_argument("--candidates", type=int, default=8, help="nearest codes tried at each position")
    p.add_argument("--sweeps", type=int, default=2, help="passes over the 64 positions")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--n", type=int, default=1000, help="images: the first n held-out ones, or n random training ones")
    p.add_argument("--seed", type=int, default=0, help="draws the training images")
    p.add_argument("--chunk", type=int, default=1000, help="images searched at once")
    p.add_argument("--save", default=None, help="write the searched grids and their image indices (safetensors)")
    a = p.parse_args()

    images = load_images(a.data)
    tr, va = split_indices(len(images.images), 0.02, SPLIT_SEED)
    if a.split == "val":
        idx = va[: a.n]
    else:
        idx = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(a.seed))[: a.n]]
    model, _, _ = open_vqvae(a.vqvae, device="cpu")
    model.eval()

    t0, nearest_err, searched_err, all_codes, all_cand = time.time(), [], [], [], []
    for s in range(0, len(idx), a.chunk):
        x = images.images[idx[s : s + a.chunk]].float() / 255  # (n, 3, 32, 32)
        cand = nearest_codes(model, x, a.candidates).flatten(1, 2)  # (n, 64, c)
        codes = search_codes(model, x, a.candidates, a.sweeps).flatten(1)  # (n, 64)
        nearest_err.append(mse(x, model.decode(cand[:, :, 0].view(len(x), 8, 8))))
        searched_err.append(mse(x, model.decode(codes.view(len(x), 8, 8))))
        print(f"images {s}-{s + len(x)}: {psnr_from_mse(searched_err[-1].mean().item()):.3f} dB searched, "
              f"{(codes != cand[:, :, 0]).float().mean().item():.1%} of codes moved ({time.time() - t0:.0f} s)",
              file=sys.stderr)
        all_codes.append(codes)
        all_cand.append(cand)
    codes, cand = torch.cat(all_codes), torch.cat(all_cand)
    rank = (codes[..., None] == cand).float().argmax(-1)
    if a.save:
        save_file({"codes": codes.view(-1, 8, 8).contiguous(), "indices": idx.contiguous()}, a.save,
                  metadata={"candidates": str(a.candidates), "sweeps": str(a.sweeps), "split": a.split})
    print(json.dumps({
        "split": a.split, "images": len(idx), "candidates": a.candidates, "sweeps": a.sweeps,
        "nearest_psnr": round(psnr_from_mse(torch.cat(nearest_err).mean().item()), 4),
        "searched_psnr": round(psnr_from_mse(torch.cat(searched_err).mean().item()), 4),
        "fraction_moved": round((rank > 0).float().mean().item(), 4),
        "rank_histogram": torch.bincount(rank.flatten(), minlength=a.candidates).tolist(),
        "seconds": round(time.time() - t0, 1),
    }))


if __name__ == "__main__":
    main()
