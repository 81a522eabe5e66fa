"""inpaint: complete images from a prior and write, per image, the original, the masked input and the completions."""

from __future__ import annotations

from pathlib import Path

import torch

from vqgen.checkpoint import check_parent
from vqgen.codes import CodeSet, write_codes
from vqgen.errors import ConfigError, OptionError
from vqgen.images import make_grid, save_png
from vqgen.inpainting import inpaint_images


def _refuse_overwriting_inputs(inputs: list[str], outputs: dict[str, str | Path | None]) -> None:
    """Refuse an output that is one of the input images (or an image inside an input folder)."""
    for option, out in outputs.items():
        if out is None:
            continue
        target = Path(out).expanduser().resolve()
        for given in inputs:
            src = Path(given).expanduser()
            if not src.exists():
                continue
            src = src.resolve()
            if target == src or (src.is_dir() and target.exists() and src in target.parents):
                raise ConfigError(f"{{{option}}} {out} would overwrite the input {given}; write it elsewhere")


def inpaint(inputs: list[str], out: str | Path, *, region: str, n: int = 4, save_codes: str | None = None,
            class_: str | None = None, **options) -> dict:
    """Complete every input image n times and write a PNG with one row per image (original, masked input,
    completions); optionally the completed grids as an index-grid file."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise OptionError(f"{{out}} must be a .png file (one row per image), got {str(out)!r}", "out", str(out),
                          "a .png path")
    check_parent(out)
    if save_codes:
        check_parent(save_codes)
    _refuse_overwriting_inputs(inputs, {"out": out, "save_codes": save_codes})
    r = inpaint_images(inputs, region, n, class_name=class_, **options)
    m = r.originals.shape[0]
    rows = torch.cat([r.originals[:, None], r.masked[:, None], r.images], dim=1)  # (m, n + 2, 3, S, S)
    save_png(make_grid(rows.flatten(0, 1), nrow=n + 2), out)
    if save_codes:
        labels = r.labels.repeat_interleave(n, 0) if r.conditioned else None
        write_codes(save_codes, CodeSet(r.codes.flatten(0, 1), r.num_codes, labels,
                                        r.class_names if labels is not None else [], r.vqvae_sha256,
                                        f"inpaint:{region}:{r.prior_path}"))
    g = r.regenerate
    return {"images": m, "completions": n, "region": str(region), "regenerated": int(g.sum()), "positions": g.numel(),
            "kept_psnr": r.kept_psnr, "kept_psnr_reconstruction": r.kept_psnr_reconstruction, "seconds": r.seconds,
            "prior": r.prior_name, "seed": options.get("seed", 0), "guidance": r.guidance, "out": str(out)}
