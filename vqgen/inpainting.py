"""Complete images: encode each, keep its codes outside a region, draw the codes inside it from a prior given the
kept ones, decode (vqgen.inpaint; the inpaint command writes the result).

With a raster-order prior the kept codes must come first in raster order (region `bottom`, or a mask of that
shape): the completion is then exact conditional sampling. Any other region needs a prior that conditions on
any positions (maskgit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from priors import Prior, get_prior, list_priors
from priors.sampling_utils import check_sampling_args
from vqgen.codes import relabel
from vqgen.data import load_inputs, open_image
from vqgen.errors import ConfigError, DataError, OptionError, check_held, check_positive, seed_value
from vqgen.metrics import psnr_from_mse
from vqgen.paths import user_path
from vqgen.runtime import autocast, inference_amp, resolve_device
from vqgen.sampling import open_pair, resolve_class

REGIONS = ("top", "bottom", "left", "right", "center")
MASKED_GREY = 0.5  # the value shown where the masked input hides its region


def region_mask(region: str | Path, height: int, width: int) -> torch.Tensor:
    """(height, width) bool, True where the codes are regenerated: a half of the grid (top, bottom, left, right),
    its middle half in each direction (center), or a mask image whose white pixels (> 127 in grey) mark what to
    regenerate, resized to the grid: a position is regenerated if any of its pixels is."""
    m = torch.zeros(height, width, dtype=torch.bool)
    h2, w2, h4, w4 = height // 2, width // 2, height // 4, width // 4
    if region == "top":
        m[:h2] = True
    elif region == "bottom":
        m[height - h2:] = True
    elif region == "left":
        m[:, :w2] = True
    elif region == "right":
        m[:, width - w2:] = True
    elif region == "center":
        m[h4:height - h4, w4:width - w4] = True
    else:
        path = user_path(region)
        if not path.is_file():  # a FIFO or device too: never opened
            raise OptionError(f"{{region}} must be {', '.join(REGIONS)} or a mask image file, got {str(region)!r}",
                              "region", region, f"{', '.join(REGIONS)} or a mask image")
        import numpy as np
        from PIL import UnidentifiedImageError

        try:
            with open_image(path) as img:
                grey = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32))  # (H, W)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read the mask image {path}: {e}") from None
        m = F.adaptive_max_pool2d((grey > 127).float()[None, None], (height, width))[0, 0] > 0
    if not m.any():
        raise ConfigError(f"the mask {region} regenerates no position: white pixels mark what to regenerate")
    return m


def priors_keeping_any_positions() -> list[str]:
    """Registered priors whose sampler keeps any positions (they do not narrow Prior.keep_problem)."""
    return [name for name in list_priors() if get_prior(name).keep_problem is Prior.keep_problem]


# the guidance weight and schedule completions use when they are not given, chosen for them on training images
# apart from sampling's (BENCHMARKS.md, "Completing images"): for the shipped prior linear is ahead of constant at
# every W, and linear W=6 ahead of each schedule's pick by the 5%-a-step rule on every figure; sampling's guided
# temperature (1.05) made completions worse at W = 6 and 7, so they keep T = 1
INPAINT_GUIDANCE = 6.0
INPAINT_GUIDANCE_SCHEDULE = "linear"
INPAINT_TEMPERATURE = 1.0


@dataclass
class Completions:
    """What one inpainting call produced; images are float in [0, 1] on the CPU."""

    originals: torch.Tensor  # (m, 3, S, S)
    masked: torch.Tensor  # (m, 3, S, S): the originals with the regenerated region grey
    images: torch.Tensor  # (m, n, 3, S, S): the completions
    codes: torch.Tensor  # (m, n, h, w) long: the completed grids
    image_codes: torch.Tensor  # (m, h, w) long: each image's own codes
    regenerate: torch.Tensor  # (h, w) bool: True where codes were drawn
    labels: torch.Tensor | None  # (m,) class asked for per image (the null label when drawn without); None
    class_names: list[str] = field(default_factory=list)
    conditioned: bool = False  # a class was asked for (not the null class)
    guidance: float = 0.0
    guidance_schedule: str = "constant"
    temperature: float = INPAINT_TEMPERATURE
    kept_psnr: float = 0.0  # completions against the originals, on the pixels of the kept codes
    kept_psnr_reconstruction: float = 0.0  # the plain reconstructions against them on the same pixels: the ceiling
    seconds: float = 0.0  # encoding, sampling and decoding, once the models were loaded
    prior_name: str = ""
    prior_path: str = ""
    vqvae_sha256: str = ""
    num_codes: int = 0


def _labels(model_p, pmeta, m: int, class_name, image_labels, image_class_names) -> tuple[torch.Tensor | None, bool]:
    """Per image the class the completions are drawn given, and whether it is a class (not the null class)."""
    nc = model_p.config.num_classes
    if class_name is not None:
        return torch.full((m,), resolve_class(class_name, pmeta["class_names"], nc), dtype=torch.long), True
    if nc == 0:
        return None, False
    known = list(pmeta["class_names"])
    if image_labels is not None and image_class_names and \
            all(image_class_names[i] in known for i in set(image_labels.tolist())):
        # a class-folder layout named like the prior's classes: each image's own, matched by name
        return relabel(image_labels, image_class_names, known, "the images", "the prior"), True
    if model_p.has_null_class:
        return torch.full((m,), model_p.null_label, dtype=torch.long), False
    raise ConfigError("this prior is class-conditional and has no null class, so it cannot complete an image "
                      "without a class: give {class_name}")


def inpaint_images(
    images,
    region: str | Path,
    n: int = 4,
    *,
    prior: str | None = None,
    vqvae: str | None = None,
    class_name: str | int | None = None,
    seed: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float | None = None,
    guidance_schedule: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    amp: bool | None = None,
    prior_options: dict | list[str] | None = None,
    labels: torch.Tensor | None = None,
    data_root=None,
    cache_dir=None,
) -> Completions:
    """Complete `images` ((m, 3, S, S) uint8 or [0, 1] float, or image files / folders) n times each: the codes
    inside `region` (see region_mask) are drawn from the prior given the others, which are kept exactly.

    The completions are drawn given class_name, else given `labels` ((m,) class indices, one per image), else
    given each image's class when they come from class folders named like the prior's classes, else without a
    class (a prior with a null class). guidance None means
    INPAINT_GUIDANCE when drawing given a class from a prior with a null class, 0 otherwise; guidance_schedule
    spreads it over the grid's raster positions (or a prior's steps), kept ones included, as in sampling
    (None: INPAINT_GUIDANCE_SCHEDULE); temperature None means INPAINT_TEMPERATURE."""
    check_positive("n", n)
    check_positive("batch_size", batch_size)
    seed = seed_value("seed", seed)
    guidance_schedule = guidance_schedule or INPAINT_GUIDANCE_SCHEDULE
    temperature = INPAINT_TEMPERATURE if temperature is None else temperature
    check_sampling_args(temperature, top_k, top_p, guidance=guidance, guidance_schedule=guidance_schedule)
    dev = resolve_device(device)
    model_p, pmeta, model_v, vsha = open_pair(prior, vqvae, dev, prior_options)
    S, g = model_v.config.image_size, model_v.config.grid
    regenerate = region_mask(region, g, g)
    if model_p.keep_problem(~regenerate):
        able = priors_keeping_any_positions() or ["NAME"]
        shown = region if region in REGIONS else Path(region).name
        raise ConfigError(f"the {pmeta['prior']} prior draws codes in raster order, so it can only complete what "
                          "follows the codes it keeps ({region=bottom}, or a mask of that shape); region "
                          f"{shown} needs a prior that conditions on any positions, such as {' or '.join(able)} "
                          f"(vqgen train-prior --prior {able[0]})")
    image_labels, image_names = None, []
    if isinstance(images, torch.Tensor):
        pixels = images
    else:
        loaded = load_inputs([str(i) for i in images], S, data_root=data_root, cache_dir=cache_dir)
        pixels, image_labels, image_names = loaded.images, loaded.labels, list(loaded.class_names)
    if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, S, S):
        raise ConfigError(f"images must be (m, 3, {S}, {S}) for this VQ-VAE, got {tuple(pixels.shape)}")
    m = pixels.shape[0]
    check_held("n", n, m * (3 * S * S * 4 + g * g * 8), f"completions of {m} {S}x{S} images")
    x = (pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()).clamp(0, 1)
    if labels is not None:
        image_labels, image_names = torch.as_tensor(labels).long().view(m), list(pmeta["class_names"])
    labels, conditioned = _labels(model_p, pmeta, m, class_name, image_labels, image_names)
    if guidance is None:
        guidance = INPAINT_GUIDANCE if conditioned and model_p.has_null_class else 0.0
    if guidance and not conditioned:
        raise ConfigError("{guidance} steers towards a class; the completions are drawn without one: give "
                          "{class_name}, or drop {guidance}")
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    with autocast(dev, inference_amp(dev, amp)):
        own = torch.cat([model_v.encode(x[i : i + batch_size].to(dev)).cpu() for i in range(0, m, batch_size)])
        recon = torch.cat([model_v.decode(own[i : i + batch_size].to(dev)).float().cpu() for i in range(0, m, batch_size)])
        rows = own.repeat_interleave(n, 0)  # (m * n, h, w): image i's completions are rows i*n .. i*n + n - 1
        row_labels = labels.repeat_interleave(n, 0) if labels is not None else None
        grids, pictures = [], []
        for i in range(0, m * n, batch_size):
            known = (rows[i : i + batch_size].to(dev), ~regenerate.to(dev))
            lab = row_labels[i : i + batch_size].to(dev) if row_labels is not None else None
            codes = model_p.sample(known[0].shape[0], labels=lab, temperature=temperature, top_k=top_k, top_p=top_p,
                                   generator=gen, guidance=guidance, known=known,
                                   guidance_schedule=guidance_schedule)
            grids.append(codes.cpu())
            pictures.append(model_v.decode(codes).float().cpu())
    seconds = time.perf_counter() - t0
    codes = torch.cat(grids).view(m, n, g, g)
    completed = torch.cat(pictures).view(m, n, 3, S, S)
    pixel_region = regenerate.repeat_interleave(S // g, 0).repeat_interleave(S // g, 1)  # (S, S)
    kept = (~pixel_region).float()

    def kept_psnr(y: torch.Tensor) -> float:  # mean over images of the MSE on the kept pixels, as PSNR
        err = ((y - (x if y.dim() == 4 else x[:, None])) ** 2 * kept).flatten(y.dim() - 3).sum(-1)
        return psnr_from_mse(float(err.mean()) / (3 * float(kept.sum())))

    return Completions(
        originals=x, masked=torch.where(pixel_region, torch.tensor(MASKED_GREY), x), images=completed, codes=codes,
        image_codes=own, regenerate=regenerate, labels=labels,
        class_names=list(pmeta["class_names"]) if model_p.config.num_classes else [], conditioned=conditioned,
        guidance=float(guidance), guidance_schedule=guidance_schedule, temperature=float(temperature),
        kept_psnr=kept_psnr(completed),
        kept_psnr_reconstruction=kept_psnr(recon),
        seconds=seconds, prior_name=pmeta["prior"], prior_path=pmeta["path"], vqvae_sha256=vsha,
        num_codes=model_p.config.num_codes)
