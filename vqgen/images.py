"""Image grids and PNG files, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from vqgen.checkpoint import atomic_path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (or uint8 already) -> uint8 on the CPU."""
    if x.dtype == torch.uint8:
        return x.cpu()
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> torch.Tensor:
    """(n, 3, H, W) -> one (3, H', W') uint8 grid with `nrow` images per row, `pad` white pixels around each
    (the layout of torchvision's make_grid, without importing torchvision: ~4 s of every command that writes one)."""
    x = to_uint8(images)
    n, c, h, w = x.shape
    cols = max(1, min(nrow, n))
    rows = -(-n // cols)
    blank = torch.full((rows * cols - n, c, h, w), 255, dtype=torch.uint8)
    cells = torch.nn.functional.pad(torch.cat([x, blank]), (pad, 0, pad, 0), value=255)  # (rows*cols, c, h+pad, w+pad)
    hp, wp = h + pad, w + pad
    grid = cells.view(rows, cols, c, hp, wp).permute(2, 0, 3, 1, 4).reshape(c, rows * hp, cols * wp)
    return torch.nn.functional.pad(grid, (0, pad, 0, pad), value=255)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write one (3, H, W) image as PNG through a temporary file in the same folder."""
    from PIL import Image

    arr = to_uint8(image).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
