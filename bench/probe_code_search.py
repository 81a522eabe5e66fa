"""How far the shipped VQ-VAE's nearest-neighbour codes are from the best codes its decoder could be given.

    python bench/probe_code_search.py DATA --candidates 8 --sweeps 2
    python bench/probe_code_search.py DATA --split train --n 6000 --candidates 4 --sweeps 1 --save targets.safetensors

Encodes images, then improves each image's 8x8 grid by greedy coordinate descent: position by position, try the
--candidates codebook vectors nearest to that position's encoder output and keep the one whose decoding has the
lowest MSE. On held-out images the PSNR it reaches bounds what a better encoder (same codebook, same decoder)
could gain from these candidates. `--split train --save` keeps the searched grids of random training images as
distillation targets (bench/probe_encoder_distill.py). A probe: it changes no weights and vqgen does not use the
search. Progress on stderr, one JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from safetensors.torch import save_file

from vqgen.data import load_images, split_indices
from vqgen.evaluate import mse, psnr_from_mse
from vqgen.stage1 import SPLIT_SEED, open_vqvae


@torch.no_grad()
def candidates(model, x: torch.Tensor, c: int) -> torch.Tensor:
    """The c codes nearest to each encoder output of images x (n, 3, S, S) in [0, 1], nearest first: (n, 64, c)."""
    z = model.encoder(x * 2 - 1).float()  # (n, D, 8, 8)
    n, d = z.shape[:2]
    dist = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, d), model.quantizer.embedding.float())  # (n*64, K)
    return dist.topk(c, largest=False).indices.view(n, -1, c)


@torch.no_grad()
def search(model, x: torch.Tensor, cand: torch.Tensor, sweeps: int, log=None) -> tuple[torch.Tensor, list[float]]:
    """Greedy coordinate descent over the grid's positions; returns (codes (n, 64), PSNR after each sweep)."""
    n, positions, c = cand.shape
    side = int(positions**0.5)
    codes = cand[:, :, 0].clone()

    def err(g: torch.Tensor) -> torch.Tensor:
        return mse(x, model.decode(g.view(n, side, side)))  # (n,)

    best, history = err(codes), []
    for sweep in range(sweeps):
        for pos in range(positions):
            # after the first sweep a position may do best back on its nearest code, so rank 0 stays in play
            for j in range(0 if sweep else 1, c):
                trial = codes.clone()
                trial[:, pos] = cand[:, pos, j]
                e = err(trial)
                better = e < best
                codes[better, pos] = cand[better, pos, j]
                best = torch.where(better, e, best)
        history.append(psnr_from_mse(best.mean().item()))
        if log:
            log(sweep, history[-1], (codes != cand[:, :, 0]).float().mean().item())
    return codes, history


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
        cand = candidates(model, x, a.candidates)
        nearest_err.append(mse(x, model.decode(cand[:, :, 0].view(len(x), 8, 8))))
        codes, _ = search(model, x, cand, a.sweeps, log=lambda i, db, moved: print(
            f"images {s}-{s + len(x)}: sweep {i + 1}: {db:.3f} dB, {moved:.1%} of codes moved "
            f"({time.time() - t0:.0f} s)", file=sys.stderr))
        searched_err.append(mse(x, model.decode(codes.view(len(x), 8, 8))))
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
