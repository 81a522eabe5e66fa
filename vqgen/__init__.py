"""vqgen: VQ-VAE discrete codes for images and autoregressive priors over them.

The Python API (docs/python-api.md); each function imports torch only when called, so `import vqgen` stays
light for the command line:

    import vqgen
    images = vqgen.generate(16, class_name="cat", seed=0)   # (16, 3, 32, 32) float in [0, 1]
    vq = vqgen.load_vqvae()                                 # the shipped CIFAR-10 VQ-VAE
    codes = vq.encode(images)                               # (16, 8, 8) long
    done = vqgen.inpaint(images, region="bottom", n=2)      # (16, 2, 3, 32, 32): lower halves drawn anew
"""

from __future__ import annotations

from vqgen._version import __version__

__all__ = ["load_vqvae", "load_prior", "generate", "inpaint", "__version__"]


def load_vqvae(path=None, device="cpu"):
    """A trained VQ-VAE in eval mode (None: the shipped weights), with .encode(images) and .decode(codes)."""
    from vqgen.vqvae import open_vqvae

    return open_vqvae(path, device)[0]


def load_prior(path=None, device="cpu"):
    """A trained prior in eval mode (None: the shipped weights), with .sample(n, labels=..., guidance=...)."""
    from vqgen.prior_file import open_prior

    return open_prior(path, device)[0]


def generate(n, class_name=None, seed=0, *, prior=None, vqvae=None, temperature=None, top_k=None, top_p=None,
             guidance=None, guidance_schedule=None, unconditional=False, batch_size=256, device="cpu",
             return_labels=False, prior_options=None, weak_prior=None, autoguidance=None):
    """What `vqgen sample` draws, as a (n, 3, H, W) float tensor in [0, 1] (with return_labels: and the (n,) class
    asked for per image, None for an unconditional prior). Classes cycle when class_name is None; guidance and
    temperature None mean sample's defaults; prior_options (a dict, e.g. {"steps": 12} for maskgit) change the
    prior's sampling options; weak_prior with autoguidance A > 0 guides away from that weaker prior (None: sample's
    defaults, which autoguide the shipped prior away from the shipped weak prior)."""
    from vqgen.sampling import draw_samples

    s = draw_samples(n, prior=None if prior is None else str(prior), vqvae=None if vqvae is None else str(vqvae),
                     class_name=class_name, unconditional=unconditional, seed=seed, temperature=temperature,
                     top_k=top_k, top_p=top_p, guidance=guidance, guidance_schedule=guidance_schedule,
                     batch_size=batch_size, device=device, prior_options=prior_options,
                     weak_prior=None if weak_prior is None else str(weak_prior), autoguidance=autoguidance)
    return (s.images, s.labels) if return_labels else s.images


def inpaint(images, region="bottom", n=4, class_name=None, seed=0, *, prior=None, vqvae=None, temperature=None,
            top_k=None, top_p=None, guidance=None, guidance_schedule=None, batch_size=256, device="cpu",
            prior_options=None, return_codes=False):
    """What `vqgen inpaint` draws: (b, n, 3, H, W) float completions in [0, 1] of `images` ((b, 3, H, W) uint8 or
    [0, 1] float, or image paths); the codes outside `region` (top, bottom, left, right, center or a mask image)
    are the images' own, those inside are drawn from the prior. With return_codes: and the (b, n, h, w) grids."""
    from vqgen.inpainting import inpaint_images

    r = inpaint_images(images, region, n, prior=None if prior is None else str(prior),
                       vqvae=None if vqvae is None else str(vqvae), class_name=class_name, seed=seed,
                       temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                       guidance_schedule=guidance_schedule, batch_size=batch_size, device=device,
                       prior_options=prior_options)
    return (r.images, r.codes) if return_codes else r.images
