"""inpaint: complete images from a prior and write, per image, the original, the masked input and the completions."""

from __future__ import annotations

from pathlib import Path

import torch

from vqgen.codes import CodeSet, write_codes
from vqgen.data import spec_path
from vqgen.errors import OptionError
from vqgen.images import make_grid, save_png
from vqgen.inpainting import REGIONS, inpaint_images
from vqgen.paths import check_outputs, out_file, user_path
from vqgen.weights import shipped


def inpaint(inputs: list[str], out: str | Path, *, region: str, n: int = 4, save_codes: str | None = None,
            class_: str | None = None, **options) -> dict:
    """Complete every input image n times and write a PNG with one row per image (original, masked input,
    completions); optionally the completed grids as an index-grid file."""
    out = user_path(out)
    if out.suffix.lower() != ".png":
        raise OptionError(f"{{out}} must be a .png file (one row per image), got {str(out)!r}", "out", str(out),
                          "a .png path")
    options = {**options, "prior": options.get("prior") or shipped("prior"),
               "vqvae": options.get("vqvae") or shipped("vqvae")}
    given = {"inputs": [spec_path(i) for i in inputs], "prior": options["prior"], "vqvae": options["vqvae"],
             "region": None if str(region) in REGIONS else region}
    check_outputs(given, [out_file("out", out)] + ([out_file("save_codes", save_codes)] if save_codes else []))
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
            "prior": r.prior_name, "seed": options.get("seed", 0), "guidance": r.guidance,
            "guidance_schedule": r.guidance_schedule, "temperature": r.temperature, "out": str(out)}
