"""evaluate: every headline figure of a VQ-VAE (and optionally a prior) on one image set."""

from __future__ import annotations

from pathlib import Path

import torch

from vqgen import log
from vqgen.checkpoint import atomic_path
from vqgen.codes import relabel
from vqgen.data import SPLITS, load_images, select_split, spec_path
from vqgen.errors import (ConfigError, check_at_least, check_choice, check_fraction, check_held, check_positive,
                          seed_value)
from vqgen.metrics import (SSIM_WINDOW, RunningStats, bits_per_code, bits_per_dim, fid_from_features,
                           inception_features)
from vqgen.paths import check_outputs, out_file
from vqgen.prior_file import check_compatible, open_prior
from vqgen.runtime import autocast, inference_amp
from vqgen.search import SearchEncoder, check_search, check_search_options
from vqgen.vqvae import open_vqvae
from vqgen.weights import shipped


def evaluate(data: str, *, vqvae: str | None = None, prior: str | None = None, split: str = "all",
             val_fraction: float = 0.02, batch_size: int = 250, device: str = "auto", fid: int = 0, seed: int = 0,
             data_root=None, cache_dir=None, search: int = 0, search_sweeps: int = 1, amp: bool | None = None,
             json_out: str | Path | None = None) -> dict:
    """The figures as a flat dict (also written to `json_out` as one JSON object, when given).

    Without vqvae and prior the shipped pair is evaluated; with search > 1 the images' codes come from
    vqgen.search's decoder-aware search instead of the nearest codes. A prior's figures follow the likelihood it
    declares: bits_per_code (exact), bits_per_code_bound (a bound), none (no likelihood)."""
    check_positive("batch_size", batch_size)
    check_choice("split", split, SPLITS)
    check_fraction("val_fraction", val_fraction)
    check_at_least("fid", fid, 0)
    check_search_options(search, search_sweeps)
    seed = seed_value("seed", seed)
    if prior is None and vqvae is None:  # the shipped pair is evaluated together, when both are shipped
        try:
            prior = str(shipped("prior"))
        except ConfigError:
            pass
    vqvae = vqvae or shipped("vqvae")
    check_outputs({"data": spec_path(data), "vqvae": vqvae, "prior": prior},
                  [out_file("json_out", json_out)] if json_out is not None else [])
    model, vsha, vpath = open_vqvae(vqvae, device)
    check_search(model, search)
    side = model.config.image_size
    check_held("fid", fid, 3 * side * side + 2048 * 8, f"{side}x{side} samples and their features")
    dev = next(model.parameters()).device
    p_model = p_meta = None
    if prior is not None:
        p_model, p_meta = open_prior(prior, str(dev))
        g = model.config.grid
        check_compatible(p_model.config, vsha, p_meta["vqvae_sha256"], model.config.num_codes, g, g, "the VQ-VAE")
    images = load_images(data, model.config.image_size, data_root=data_root, cache_dir=cache_dir)
    idx = select_split(len(images), split, val_fraction, data)
    imgs = images.images[idx]
    labels = images.labels[idx] if images.labels is not None else None
    if p_model is not None and p_model.config.num_classes:
        if labels is None:
            raise ConfigError(f"the prior is class-conditional but {data} has no labels")
        # bits per code under the wrong labels would be a wrong figure: the data's classes are the prior's by name
        labels = relabel(labels, images.class_names, p_meta["class_names"], data, "the prior")
    with_ssim = side >= SSIM_WINDOW
    if not with_ssim:
        log.note(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels and these are {side}x{side}: "
                 "it is not reported")
    stats = RunningStats(model.config.num_codes, with_ssim=with_ssim)
    nll, nll_uncond, n_codes = 0.0, 0.0, 0
    half = inference_amp(dev, amp)
    with SearchEncoder(model, -(-imgs.shape[0] // batch_size), search, search_sweeps) as encoder, autocast(dev, half):
        for i in range(0, imgs.shape[0], batch_size):
            x = imgs[i : i + batch_size].to(dev).float() / 255
            codes = encoder(x)
            stats.update_images(x, model.decode(codes).float())
            stats.update_codes(codes)
            if p_model is not None and p_model.likelihood != "none":
                lab = labels[i : i + batch_size].to(dev) if p_model.config.num_classes else None
                with torch.no_grad():
                    nll -= float(p_model.log_prob(codes, lab).double().sum())
                    if lab is not None and p_model.has_null_class:
                        nll_uncond -= float(p_model.log_prob(codes, torch.full_like(lab, p_model.null_label)).double().sum())
                n_codes += codes.numel()
    s = stats.summary()
    out = {"num_images": s["images"], "num_codes": model.config.num_codes, "mse": s["mse"], "psnr": s["psnr"],
           **({"ssim": s["ssim"]} if with_ssim else {}), "codes_used": s["codes_used"],
           "perplexity": s["perplexity"], "unigram_entropy_bits": s["unigram_entropy_bits"]}
    if search > 1:
        out["search"], out["search_sweeps"] = search, search_sweeps
    if p_model is not None and p_model.likelihood == "none":
        log.note(f"the {p_meta['prior']} prior declares no likelihood: no bits per code are reported")
    elif p_model is not None:
        bound = "_bound" if p_model.likelihood == "bound" else ""  # an upper bound on the bits: named so
        bpc = bits_per_code(nll / n_codes)
        out[f"bits_per_code{bound}"] = bpc
        out[f"bits_per_dim{bound}"] = bits_per_dim(bpc, model.config.grid**2, tuple(imgs.shape[1:]))
        if p_model.config.num_classes and p_model.has_null_class:  # the same prior, told no class: p(grid)
            out[f"bits_per_code{bound}_unconditional"] = bits_per_code(nll_uncond / n_codes)
    if fid:
        if p_model is None:
            raise ConfigError("{fid} needs a prior to draw samples from; pass {prior}")
        gen = torch.Generator(device=dev).manual_seed(seed)
        n_cls = p_model.config.num_classes
        samples = []
        for i in range(0, fid, batch_size):
            n = min(batch_size, fid - i)
            lab = (torch.arange(i, i + n, device=dev) % n_cls) if n_cls else None
            samples.append((model.decode(p_model.sample(n, labels=lab, generator=gen)) * 255).round().byte().cpu())
        f_real = inception_features(imgs, dev, batch_size=64)
        f_fake = inception_features(torch.cat(samples), dev, batch_size=64)
        out["fid"] = fid_from_features(f_real, f_fake)
        out["fid_samples"] = fid
    out["vqvae"] = vpath
    if p_meta is not None:
        out["prior"] = p_meta["path"]
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(log.finite_json(out, indent=2) + "\n")
    return out
