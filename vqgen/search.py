"""Decoder-aware encoding: pick each position's code among its nearest few by how well the whole grid decodes.

The paper's posterior takes the nearest codebook vector at every position. That choice is made in z-space, one
position at a time, while the decoder reads the grid jointly, so a grid with a few second- or third-nearest codes
often reconstructs better (the K=512 CIFAR-10 model vqgen shipped first, held-out images: 25.31 dB nearest, 25.85 dB
with 8 candidates and one sweep; BENCHMARKS.md). An encoder cannot learn these joint choices (distilling them lost
PSNR), so this is a search at encode time, for reconstruction and compression; the grids stay ordinary index grids.
"""

from __future__ import annotations

from typing import Callable

import torch

from vqgen import log
from vqgen.errors import ConfigError, check_at_least
from vqgen.vqvae import VQVAE


@torch.no_grad()
def nearest_codes(model: VQVAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """The k codes nearest to each encoder output, nearest first: x (b, 3, S, S) in [0, 1] -> (b, h, w, k)."""
    z = model.encoder(x * 2 - 1).float()  # (b, D, h, w)
    b, d, h, w = z.shape
    return model.quantizer.nearest_k(z.permute(0, 2, 3, 1).reshape(-1, d), k).view(b, h, w, k)


@torch.no_grad()
def search_codes(model: VQVAE, x: torch.Tensor, candidates: int, sweeps: int = 1,
                 step: Callable[[], None] | None = None) -> torch.Tensor:
    """Index grids (b, h, w) for images x (b, 3, S, S) in [0, 1], refined by greedy coordinate descent.

    Starts from the nearest codes; each sweep visits the positions in raster order and keeps, per image, whichever
    of that position's `candidates` nearest codes gives the lowest reconstruction MSE. No image reconstructs worse
    than from its nearest codes, and candidates=1 gives exactly model.encode(x). `step` is called once per position.
    """
    cand = nearest_codes(model, x, candidates)  # (b, h, w, c)
    b, h, w, c = cand.shape
    cand = cand.view(b, h * w, c)
    codes = cand[:, :, 0].clone()  # (b, h*w)
    rows = torch.arange(b, device=x.device)

    def error(grid: torch.Tensor) -> torch.Tensor:
        return ((model.decode(grid.view(b, h, w)) - x) ** 2).mean(dim=(1, 2, 3))  # (b,)

    # one decoder call per trial: on CPU, decoding all of a position's trials in one call measured slower
    # (401 s against 338 s for 1,000 images, 8 candidates: the larger activations cost more than the calls)
    best = error(codes)
    for sweep in range(sweeps):
        for pos in range(h * w):
            # after the first sweep the nearest code may be best again, so rank 0 is tried too
            for j in range(0 if sweep else 1, c):
                trial = codes.clone()
                trial[:, pos] = cand[:, pos, j]
                err = error(trial)
                better = rows[err < best]
                codes[better, pos] = cand[better, pos, j]
                best = torch.minimum(best, err)
            if step:
                step()
    return codes.view(b, h, w)


def check_search_options(search: int, sweeps: int) -> None:
    """Refuse a search or sweep count no model can honour."""
    check_at_least("search", search, 0)
    check_at_least("search_sweeps", sweeps, 1)


def check_search(model: VQVAE, search: int) -> None:
    """Refuse a search wider than the model's codebook (before any input is read or output written)."""
    k = model.config.num_codes
    if search > k:
        raise ConfigError(f"{{search={search}}} is out of range: give 0 (nearest code) up to the codebook's {k} codes")


class SearchEncoder:
    """Images -> index grids: the nearest codes, or with search > 1 a decoder-aware search (vqgen.search).

    Shows one progress bar over all positions searched, since a search costs (search - 1) decodes per position."""

    def __init__(self, model: VQVAE, batches: int, search: int = 0, sweeps: int = 1):
        """batches: how many times it will be called, for the progress bar's total."""
        self.model, self.search, self.sweeps = model, search, sweeps
        total = batches * sweeps * model.config.grid ** 2 if search > 1 else 0
        self.bar = log.progress(total, min_total=1)
        self.task = self.bar.add_task("search", total=total)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.search <= 1:
            return self.model.encode(x)
        return search_codes(self.model, x, self.search, self.sweeps, step=lambda: self.bar.advance(self.task))
