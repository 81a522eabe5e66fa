"""Prior -> index grids -> VQ-VAE decoder -> images on disk."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from priors.sampling_utils import check_sampling_args
from vqgen import log
from vqgen.checkpoint import check_parent
from vqgen.codes import CodeSet, write_codes
from vqgen.errors import ConfigError
from vqgen.images import make_grid, save_png


def resolve_class(value: str, class_names: list[str], num_classes: int) -> int:
    """A class given by name or index -> its index, or an error listing the known classes."""
    if num_classes == 0:
        raise ConfigError("this prior is unconditional; drop --class (or train one with --class-conditional)")
    names = class_names or [str(i) for i in range(num_classes)]
    if value in names:
        return names.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < num_classes:
        return int(value)
    raise ConfigError(f"unknown class {value!r}; known classes: {', '.join(names)} (or an index 0-{num_classes - 1})")


def sample(
    n: int,
    out: str | Path,
    *,
    prior: str | None = None,
    vqvae: str | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    class_: str | None = None,
    seed: int = 0,
    nrow: int = 8,
    save_codes: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> dict:
    """Draw n index grids from the prior, decode them and write a grid PNG (or a folder of PNGs)."""
    from vqgen.runtime import resolve_device
    from vqgen.stage1 import open_vqvae
    from vqgen.stage2 import check_compatible, load_prior
    from vqgen.weights import shipped

    if n <= 0:
        raise ConfigError(f"--n must be a positive number of samples, got {n}")
    check_sampling_args(temperature, top_k, top_p, as_options=True)  # before any model is loaded
    out = Path(out)
    as_grid = out.suffix.lower() == ".png"
    check_parent(out)
    if not as_grid and out.exists() and not out.is_dir():
        raise ConfigError(f"cannot write samples into {out}: it is a file; give a folder or a .png path")
    if save_codes:
        check_parent(save_codes)
    dev = resolve_device(device)
    model_p, pmeta = load_prior(prior or shipped("prior"), dev)
    model_v, vsha, _ = open_vqvae(vqvae, str(dev))
    g = model_v.config.grid
    check_compatible(model_p.config, vsha, pmeta["vqvae_sha256"], model_v.config.codebook_size, g, g,
                     "the VQ-VAE")
    num_classes = model_p.config.num_classes
    labels = None
    if class_ is not None:
        labels = torch.full((n,), resolve_class(class_, pmeta["class_names"], num_classes), dtype=torch.long)
    elif num_classes:
        labels = (torch.arange(n) // max(nrow, 1)) % num_classes  # one class per grid row
    names = list(pmeta["class_names"]) or [str(i) for i in range(num_classes)]
    drawn = [] if labels is None else [names[c] for c in dict.fromkeys(labels.tolist())]  # in grid order
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    grids, images = [], []
    for i in range(0, n, batch_size):
        lab = labels[i : i + batch_size].to(dev) if labels is not None else None
        codes = model_p.sample(min(batch_size, n - i), labels=lab, temperature=temperature, top_k=top_k,
                               top_p=top_p, generator=gen)
        grids.append(codes.cpu())
        images.append(model_v.decode(codes).cpu())
    seconds = time.perf_counter() - t0
    codes, imgs = torch.cat(grids), torch.cat(images)
    if as_grid:
        save_png(make_grid(imgs, nrow=nrow), out)
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create folder {out}: {e.strerror or e}") from None
        width = len(str(n - 1))
        for i, img in enumerate(imgs):
            save_png(img, out / f"sample_{i:0{width}d}.png")
    if class_ is None and 0 < len(drawn) < num_classes:  # said once the images are written, not before an error
        log.note(f"one class per row: the grid shows {len(drawn)} of {num_classes} classes ({', '.join(drawn)}); "
                 f"--n {nrow * num_classes} shows all of them, --class NAME picks one")
    if save_codes:
        write_codes(save_codes, CodeSet(codes, model_p.config.num_codes, labels, list(pmeta["class_names"]) if labels is not None else [],
                                        vsha, f"sample:{pmeta['path']}"))
    return {"samples": n, "out": str(out), "seconds": seconds, "prior": pmeta["prior"], "seed": seed,
            "classes": drawn}
