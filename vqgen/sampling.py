"""Prior -> index grids -> VQ-VAE decoder -> images, in memory (vqgen.generate; the sample command writes them)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from priors.sampling_utils import check_sampling_args
from vqgen.checkpoint import file_sha256
from vqgen.errors import ConfigError, OptionError, check_held, check_positive, seed_value
from vqgen.prior_file import check_compatible, open_prior
from vqgen.runtime import autocast, inference_amp, resolve_device
from vqgen.vqvae import open_vqvae
from vqgen.weights import shipped

# classifier-free guidance used when --guidance is not given, for priors with a null class, how it is spread over
# the positions of a draw (priors.sampling_utils), and the temperature a guided draw uses when --temperature is not
# given. Chosen on the shipped pair against training images (BENCHMARKS.md, "Sample quality"): at T = 1.05 the
# Frechet distance falls to 16.3 at W = 7 (mean of three seeds; 16.9 at T = 1, W = 6; 16.9 at T = 1.1, W = 7; over
# five seeds 16.6 against 16.9, within the seed noise), with higher class accuracy for every seed and the same
# recall. A likely reason, not a measured one: guidance sharpens each position's distribution, and a slightly
# higher temperature gives some of the spread back. The constant schedule gave less recall at its best (0.40
# against 0.49 for linear at the same W). Unguided draws keep T = 1: no other temperature was measured for them.
# Completions (vqgen inpaint) have their own defaults (vqgen.inpainting.INPAINT_GUIDANCE, INPAINT_TEMPERATURE).
DEFAULT_GUIDANCE = 7.0
GUIDED_TEMPERATURE = 1.05
DEFAULT_GUIDANCE_SCHEDULE = "linear"
# autoguidance (Karras et al. 2024) of the shipped prior, by default away from the shipped weak prior
# (vqgen/weights/prior-weak.safetensors: a 64-channel, 8-layer PixelCNN trained 2,500 steps on the same grids, 7.03
# bits per code against the shipped prior's 6.80), and the guidance weight used with it. Chosen on training images
# (BENCHMARKS.md, "Autoguidance"): at A = 3, W = 10 the Frechet distance is 15.81 (five seeds), against 16.58 at the
# defaults without it (W = 7), lower for every seed, recall 0.506 against 0.483, class accuracy 0.944 against
# 0.949. Less-trained priors of the shipped size moved the draws less, a 32-channel one made them worse. A prior
# other than the shipped one is autoguided only when a weak prior is given; unguided draws (--guidance 0) are
# not autoguided unless asked for (the weight was chosen for guided ones).
DEFAULT_AUTOGUIDANCE = 3.0
AUTOGUIDED_GUIDANCE = 10.0


def resolve_class(value: str | int, class_names: list[str], num_classes: int) -> int:
    """A class given by name or index -> its index, or an error listing the known classes."""
    if num_classes == 0:
        raise ConfigError("this prior is unconditional; drop {class_name} (or train one with {class_conditional=True})")
    names = class_names or [str(i) for i in range(num_classes)]
    value = str(value)
    if value in names:
        return names.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < num_classes:
        return int(value)
    raise ConfigError(f"unknown class {value!r}; known classes: {', '.join(names)} (or an index 0-{num_classes - 1})")


def is_shipped_prior(meta: dict) -> bool:
    """True when the prior loaded (its metadata, with path and sha256) is the shipped file or a copy of it."""
    try:
        path = shipped("prior")
    except ConfigError:  # an installation without shipped weights
        return False
    if Path(meta["path"]).resolve() == path.resolve():  # the usual case: no second hash of the same file
        return True
    return meta["sha256"] == file_sha256(path)


def shipped_weak_prior() -> str | None:
    """Path of the shipped weak prior, or None in an installation without it."""
    try:
        return str(shipped("weak_prior"))
    except ConfigError:
        return None


def check_count(n: int, image_size: int) -> None:
    """Refuse more samples of this size than fit in memory together (their float images and long codes)."""
    g = image_size // 4
    check_held("n", n, 3 * image_size * image_size * 4 + g * g * 8, f"{image_size}x{image_size} samples")


def open_pair(prior: str | None, vqvae: str | None, dev: torch.device, prior_options=None):
    """A prior and the VQ-VAE it is used with (default: the shipped ones), refused when they do not belong
    together; returns (prior, prior metadata, VQ-VAE, VQ-VAE sha256)."""
    model_p, pmeta = open_prior(prior, str(dev), prior_options)
    model_v, vsha, _ = open_vqvae(vqvae, str(dev))
    g = model_v.config.grid
    check_compatible(model_p.config, vsha, pmeta["vqvae_sha256"], model_v.config.num_codes, g, g, "the VQ-VAE")
    return model_p, pmeta, model_v, vsha


@dataclass
class Samples:
    """What one draw produced."""

    images: torch.Tensor  # (n, 3, H, W) float in [0, 1], on the CPU
    codes: torch.Tensor  # (n, h, w) long index grids, on the CPU
    labels: torch.Tensor | None  # (n,) class asked for per sample (the null label for unconditional draws); None
    class_names: list[str] = field(default_factory=list)  # the prior's class names ([] when unconditional)
    guidance: float = 0.0  # the guidance weight used
    guidance_schedule: str = "constant"  # how it was spread over the positions
    autoguidance: float = 0.0  # the autoguidance weight used (0: none)
    weak_prior_path: str = ""  # the weak prior autoguided away from ("" when none)
    temperature: float = 1.0  # the softmax temperature used
    seconds: float = 0.0  # sampling and decoding, once the models were loaded
    prior_name: str = ""  # registry name of the prior
    prior_path: str = ""
    vqvae_sha256: str = ""
    num_codes: int = 0  # K of the codes


def draw_samples(
    n: int,
    *,
    prior: str | None = None,
    vqvae: str | None = None,
    class_name: str | int | None = None,
    class_run: int = 1,
    unconditional: bool = False,
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
    weak_prior: str | None = None,
    autoguidance: float | None = None,
) -> Samples:
    """Draw n index grids from a prior (default: the shipped one) and decode them with its VQ-VAE.

    Without class_name a class-conditional prior cycles through its classes, `class_run` consecutive samples per
    class (the CLI passes its grid width: one class per row); unconditional=True draws from p(grid) with the null
    class. guidance None means DEFAULT_GUIDANCE for a prior that has a null class, 0 otherwise, spread over the
    positions by guidance_schedule (None: DEFAULT_GUIDANCE_SCHEDULE; "constant" or "linear"). temperature None means
    GUIDED_TEMPERATURE when the draw is guided (guidance > 0), else 1. prior_options
    change the prior's sampling options (maskgit: steps, choice_temperature): a dict or `key=value` strings.
    weak_prior (a smaller or less-trained raster prior of the same codes and classes) with autoguidance A > 0
    adds A * (cond - weak) to the logits, under the same schedule (Karras et al. 2024). weak_prior None means the
    shipped weak prior when the prior is the shipped one, else none; autoguidance None means DEFAULT_AUTOGUIDANCE
    when there is a weak prior, a class to draw and guidance (None or > 0), else 0; with autoguidance on, guidance
    None means AUTOGUIDED_GUIDANCE."""
    check_positive("n", n)
    check_positive("batch_size", batch_size)
    seed = seed_value("seed", seed)
    schedule = DEFAULT_GUIDANCE_SCHEDULE if guidance_schedule is None else guidance_schedule
    check_sampling_args(1.0 if temperature is None else temperature, top_k, top_p, guidance=guidance,
                        guidance_schedule=schedule, autoguidance=autoguidance)  # before loading
    if autoguidance and unconditional:
        raise OptionError("{autoguidance} is measured given a class; {unconditional=True} draws without one: drop "
                          "one of them", "autoguidance")
    if weak_prior is not None and unconditional:
        raise OptionError("{weak_prior} autoguides draws given a class; {unconditional=True} draws without one: drop "
                          "one of them", "weak_prior")
    if unconditional and class_name is not None:
        raise OptionError("{unconditional=True} draws without a class; drop {class_name} (or {unconditional=True})",
                          "unconditional")
    if guidance and unconditional:
        raise OptionError("{guidance} steers towards a class; {unconditional=True} draws without one: drop one of "
                          "them", "guidance")
    dev = resolve_device(device)
    model_p, pmeta, model_v, vsha = open_pair(prior, vqvae, dev, prior_options)
    if weak_prior is None and is_shipped_prior(pmeta):
        weak_prior = shipped_weak_prior()
    if autoguidance and weak_prior is None:
        raise OptionError("{autoguidance} guides away from a weak prior: pass {weak_prior} too (a smaller or "
                          "less-trained prior of the same codes)", "autoguidance")
    if autoguidance is None:  # chosen for guided draws: --guidance 0 stays the prior's own samples
        guided = guidance is None or guidance > 0
        autoguidance = DEFAULT_AUTOGUIDANCE if weak_prior is not None and not unconditional and guided else 0.0
    weak, wmeta = None, {}
    if autoguidance:
        weak, wmeta = open_prior(weak_prior, str(dev))
        g = model_v.config.grid
        try:
            check_compatible(weak.config, vsha, wmeta["vqvae_sha256"], model_v.config.num_codes, g, g, "the VQ-VAE")
            model_p.check_weak(weak)
        except ConfigError as e:  # the messages speak of "the prior": say which one
            raise ConfigError(f"{{weak_prior}} {weak_prior}: {e}") from None
    check_count(n, model_v.config.image_size)
    num_classes = model_p.config.num_classes
    if guidance is None:
        default = AUTOGUIDED_GUIDANCE if autoguidance else DEFAULT_GUIDANCE
        guidance = default if model_p.has_null_class and not unconditional else 0.0
    if temperature is None:
        temperature = GUIDED_TEMPERATURE if guidance > 0 else 1.0
    labels = None
    if unconditional:
        if not model_p.has_null_class:
            why = "it is unconditional already: drop {unconditional=True}" if not num_classes else \
                "it has no null class (train it with {label_dropout=0.1}); draw one class with {class_name}"
            raise ConfigError(f"this prior cannot draw without a class: {why}")
        labels = torch.full((n,), model_p.null_label, dtype=torch.long)
    elif class_name is not None:
        labels = torch.full((n,), resolve_class(class_name, pmeta["class_names"], num_classes), dtype=torch.long)
    elif num_classes:
        labels = (torch.arange(n) // max(class_run, 1)) % num_classes
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    grids, images = [], []
    with autocast(dev, inference_amp(dev, amp)):
        for i in range(0, n, batch_size):
            lab = labels[i : i + batch_size].to(dev) if labels is not None else None
            codes = model_p.sample(min(batch_size, n - i), labels=lab, temperature=temperature, top_k=top_k,
                                   top_p=top_p, generator=gen, guidance=guidance, guidance_schedule=schedule,
                                   weak=weak, autoguidance=autoguidance)
            grids.append(codes.cpu())
            images.append(model_v.decode(codes).float().cpu())
    return Samples(images=torch.cat(images), codes=torch.cat(grids), labels=labels,
                   class_names=list(pmeta["class_names"]) if num_classes else [], guidance=float(guidance),
                   guidance_schedule=schedule, autoguidance=float(autoguidance),
                   weak_prior_path=wmeta.get("path", ""), temperature=float(temperature),
                   seconds=time.perf_counter() - t0,
                   prior_name=pmeta["prior"], prior_path=pmeta["path"], vqvae_sha256=vsha,
                   num_codes=model_p.config.num_codes)
