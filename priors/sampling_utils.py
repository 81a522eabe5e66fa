"""The one place where a prior's logits become a drawn code: temperature, top-k, top-p, then a seeded draw.

Every prior (built-in or plugin) samples through `draw`, so `--temperature/--top-k/--top-p/--seed` mean the
same thing whichever prior is loaded, and a fast sampler and its naive reference consume the
torch.Generator in exactly the same order (one uniform number per grid and position).
"""

from __future__ import annotations

import torch

from vqgen.errors import OptionError, check_at_least, check_fraction, check_positive

# guided logits uncond + (1 + W)(cond - uncond) overflow to inf - inf = NaN for a huge W; useful weights are a
# few units
MAX_GUIDANCE = 1000.0
_TINY = torch.finfo(torch.float32).tiny  # the smallest temperature that is not 0 in float32
# how the guidance weight W is spread over the steps of one draw (raster positions; maskgit's steps).
# "constant": W at every step. "linear": rising in proportion to the step, 2W * s / (S + 1) at step s of S, so
# the first codes, which fix a sample's layout, are drawn nearly unguided and the last ones at ~2W, with W
# the mean either way (the cfg schedules of MUSE and LlamaGen); on CIFAR-10 it keeps more variety at the same
# distance (BENCHMARKS.md, "Guidance schedule")
GUIDANCE_SCHEDULES = ("constant", "linear")


def guidance_weight(guidance: float, schedule: str, step: int = 1, steps: int = 1) -> float:
    """The weight used at step `step` (1-based) of `steps`; its mean over the steps is `guidance`."""
    return 2 * guidance * step / (steps + 1) if schedule == "linear" else guidance


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        guidance: float | None = None, guidance_schedule: str | None = None,
                        autoguidance: float | None = None) -> None:
    """Raise OptionError for a filter setting that has no meaning."""
    if guidance_schedule is not None and guidance_schedule not in GUIDANCE_SCHEDULES:
        raise OptionError(f"{{guidance_schedule}} must be one of {', '.join(GUIDANCE_SCHEDULES)}, got "
                          f"{guidance_schedule!r}", "guidance_schedule", guidance_schedule,
                          " or ".join(GUIDANCE_SCHEDULES))
    check_positive("temperature", temperature, integer=False)
    for name, weight in (("guidance", guidance), ("autoguidance", autoguidance)):
        check_at_least(name, weight, 0, integer=False)
        if weight is not None and weight > MAX_GUIDANCE:
            raise OptionError(f"{{{name}}} must be between 0 and {MAX_GUIDANCE:g}, got {weight!r}", name, weight,
                              f"0 to {MAX_GUIDANCE:g}")
    check_positive("top_k", top_k)
    check_fraction("top_p", top_p, high_open=False)


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """(n, K) logits -> (n, K) float32 logits with temperature applied and filtered entries set to -inf.

    Order (as in most LM samplers): divide by temperature, keep the top_k largest, then keep the smallest
    set of the most likely codes whose probability mass reaches top_p (the most likely code is always kept).
    """
    logits = logits.float()
    if temperature < 1:  # shifted so the largest is 0: a tiny temperature gives -inf, never inf - inf = NaN
        logits = logits - logits.amax(-1, keepdim=True)
    # and never 0 / 0: a temperature below float32's smallest normal number (1.2e-38) acts as that number
    logits = logits / max(temperature, _TINY)
    k = logits.shape[-1]
    if top_k is not None and top_k < k:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely codes
        drop_sorted = mass_before >= top_p  # position 0 has mass_before 0 < top_p: always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n, K) logits -> (n,) long codes by inverse-CDF sampling: one uniform number per row.

    torch.multinomial draws K exponentials per row (an (n, K) tensor of random numbers per position: ~12% of
    the cached PixelCNN's sampling time at K=512); the inverse CDF needs n. The cumulative sum is in float64,
    and the first code whose cumulative mass exceeds u is drawn, so a filtered (zero-probability) code never is."""
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    cdf = probs.double().cumsum(-1)  # (n, K)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)
