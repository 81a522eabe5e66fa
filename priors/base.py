"""The stage-2 plugin seam, in two levels (the registry of names is priors.registry).

`Prior` is any model of a (H, W) grid of code indices in [0, K), optionally conditioned on a class label:
it implements `loss` (its training objective, in nats per code) and `sample_codes` (its sampler, given the
positions to keep and a `Sampling` that holds the filters, the guidance weight and the generator), and
declares what `log_prob` is: an exact log-likelihood, a bound on it, or nothing.

`AutoregressivePrior(Prior)` is a prior in raster order (row by row, left to right): it implements `logits`,
and gets loss and an exact log_prob by cross-entropy, and sampling from its decoding loop `generate` (which it
may make fast with a cache; `generate_naive` is the reference). A class written against the earlier,
raster-only interface (subclassing `Prior` and implementing `logits`) is made an AutoregressivePrior when it is
defined, so it keeps working unchanged.

train-prior, sample, inpaint and evaluate only ever call `loss`, `log_prob` and `sample`, and rebuild a saved
prior with `get_prior(name)(get_prior(name).config_class(**config_dict))`. A prior never imports the VQ-VAE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Callable, ClassVar, Generator

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.sampling_utils import check_sampling_args, draw, filter_logits, guidance_weight
from vqgen.errors import ConfigError, check_positive

Pick = Callable[[torch.Tensor], torch.Tensor]  # (n, K) logits of one position -> (n,) long codes
# a raster decoding loop as a generator: yields each position's (n, K) logits, is sent its (n,) drawn codes,
# returns the (n, H, W) grid
Steps = Generator[torch.Tensor, torch.Tensor, torch.Tensor]

# what a prior's log_prob is: the log-likelihood itself, a lower bound on it, or nothing (no log_prob)
LIKELIHOODS = ("exact", "bound", "none")


@dataclass
class PriorConfig:
    """Fields every prior shares; a prior subclasses this to add its own size fields (JSON-able values only)."""

    num_codes: int = 512  # K: codebook size of the VQ-VAE whose codes are modelled
    height: int = 8  # grid height
    width: int = 8  # grid width
    num_classes: int = 0  # 0 = unconditional; else labels in [0, num_classes) condition the prior
    # training only: the chance a label is replaced by the null class (label num_classes); > 0 gives a conditional
    # prior that extra class, so one network models p(grid | class) and p(grid) and can be guided (Ho & Salimans)
    label_dropout: float = 0.0


@dataclass(frozen=True)
class Known:
    """Positions a draw must keep: codes (n, H, W) long, mask (n, H, W) bool, True where codes[mask] is kept.
    The codes at positions not kept mean nothing and must not be read."""

    codes: torch.Tensor
    mask: torch.Tensor


class Sampling:
    """How one `sample` call draws: temperature, top-k, top-p, the guidance weight and schedule, the weak prior and
    autoguidance weight, the torch.Generator.

    Every random number of a draw comes from `generator` (through `draw` and `uniform`), so the same seed gives
    the same grids; every code comes from `draw`, so the filters mean the same thing for every prior."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, guidance: float = 0.0, null_label: int | None = None,
                 guidance_schedule: str = "constant", weak: "AutoregressivePrior | None" = None,
                 autoguidance: float = 0.0):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator, self.guidance, self.null_label = generator, float(guidance or 0.0), null_label
        self.guidance_schedule = guidance_schedule
        self.weak, self.autoguidance = weak, float(autoguidance or 0.0)

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """(m, K) logits -> (m, K) float32 logits with temperature applied and filtered codes at -inf."""
        return filter_logits(logits, self.temperature, self.top_k, self.top_p)

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """(m, K) logits -> (m,) long codes drawn from the filtered distribution (one uniform number per row)."""
        return draw(logits, self.temperature, self.top_k, self.top_p, self.generator)

    def uniform(self, *shape: int, device: torch.device) -> torch.Tensor:
        """Uniform numbers in [0, 1), float32, from the generator (for a sampler's other random choices)."""
        return torch.rand(*shape, generator=self.generator, device=device)

    def guide(self, logits: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
        """(2m, ...) logits, m rows given their labels then the same m given the null class -> (m, ...) logits
        uncond + (1 + w) * (cond - uncond), in float32; w is the schedule's weight at step `step` (1-based) of
        the draw's `steps` (raster positions, or decoding steps), which the sampler passes."""
        m = logits.shape[0] // 2
        cond, uncond = logits[:m].float(), logits[m:].float()
        w = guidance_weight(self.guidance, self.guidance_schedule, step, steps)
        return uncond + (1 + w) * (cond - uncond)

    def autoguide(self, logits: torch.Tensor, cond: torch.Tensor, weak: torch.Tensor, step: int = 1,
                  steps: int = 1) -> torch.Tensor:
        """(m, K) logits to draw from, plus a * (cond - weak): away from the weak prior's (m, K) logits given the
        same class and codes (autoguidance); a is the autoguidance weight under the guidance schedule."""
        a = guidance_weight(self.autoguidance, self.guidance_schedule, step, steps)
        return logits.float() + a * (cond.float() - weak.float())

    def guided(self, fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], codes: torch.Tensor,
               labels: torch.Tensor | None, step: int = 1, steps: int = 1) -> torch.Tensor:
        """fn(codes, labels) (logits of a batch), guided when W > 0: fn runs once on the 2m rows [labels; null]."""
        if not self.guidance:
            return fn(codes, labels)
        both = torch.cat([labels, torch.full_like(labels, self.null_label)])
        return self.guide(fn(torch.cat([codes, codes]), both), step, steps)


class Prior(nn.Module):
    """Base class of every prior. A subclass sets `config_class` and `likelihood` and implements `loss` and
    `sample_codes` (and `log_prob` unless its likelihood is "none"); or it subclasses AutoregressivePrior."""

    name: ClassVar[str] = ""  # registry name, set by register_prior (or the entry-point loader)
    config_class: ClassVar[type[PriorConfig]] = PriorConfig
    # what log_prob returns: "exact" (the log-likelihood), "bound" (a lower bound on it) or "none" (no
    # log_prob); train-prior keeps its best weights, and evaluate reports, by what is declared here
    likelihood: ClassVar[str] = "none"
    # True: the prior sizes its class embeddings by `num_label_slots`, so it can have a null class (label dropout,
    # classifier-free guidance, unconditional draws from a conditional prior)
    supports_null_class: ClassVar[bool] = False
    # config fields that shape only sampling (a decoding schedule, say): they may be changed on a trained prior
    # (vqgen sample -o key=value) without changing what its weights compute
    sampling_fields: ClassVar[tuple[str, ...]] = ()
    # integer size fields along which the prior can start from a smaller trained one of its kind (train-prior
    # --init-from with larger values); a prior that lists any implements grow_from
    growable_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a prior written against the raster-only interface subclasses Prior and implements logits: it is an
        # autoregressive prior, and gets that level's loss, log_prob and sampler (AutoregressivePrior itself is
        # the first subclass defining logits, while its name is not bound yet)
        ar = globals().get("AutoregressivePrior")
        if ar is not None and "logits" in cls.__dict__ and not issubclass(cls, ar) and Prior in cls.__bases__:
            cls.__bases__ = tuple(AutoregressivePrior if b is Prior else b for b in cls.__bases__)

    def __init__(self, config: PriorConfig):
        super().__init__()
        if isinstance(config, dict):
            config = self.config_class(**config)
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        for f in ("num_codes", "height", "width"):
            v = getattr(config, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if f == "num_codes" else 1):
                raise ConfigError(f"prior config: {f} must be a positive integer (num_codes >= 2), got {v!r}")
        nc = config.num_classes
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 0:
            raise ConfigError(f"prior config: num_classes must be an integer >= 0, got {nc!r}")
        ld = config.label_dropout
        if isinstance(ld, bool) or not isinstance(ld, (int, float)) or not 0.0 <= ld < 1.0:
            raise ConfigError(f"prior config: label_dropout must be in [0, 1), got {ld!r}")
        if ld > 0 and nc == 0:
            raise ConfigError("label dropout needs a class-conditional prior; an unconditional one has no labels to drop")
        if ld > 0 and not type(self).supports_null_class:
            raise ConfigError(f"the {type(self).name or type(self).__name__} prior has no null class, so it cannot be "
                              "trained with label dropout; use {label_dropout=0}")
        try:
            json.dumps(asdict(config))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"prior config is not JSON-serialisable: {e}") from None
        self.config = config

    # -- configuration -----------------------------------------------------------------------------------
    @classmethod
    def tiny_config(cls, **overrides) -> PriorConfig:
        """A config small enough for unit tests (K=16, 4x4 grid). Subclasses override this to shrink their
        own size fields too, by calling super().tiny_config(**{<small sizes>, **overrides})."""
        base = {"num_codes": 16, "height": 4, "width": 4}
        return cls.config_class(**{**base, **overrides})

    @property
    def has_null_class(self) -> bool:
        """True when label `null_label` means "no class": the prior also models p(grid) and can be guided."""
        return self.config.num_classes > 0 and self.config.label_dropout > 0

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    @property
    def num_label_slots(self) -> int:
        """Rows a class embedding needs: the classes, and the null class when there is one."""
        return self.config.num_classes + int(self.has_null_class)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def grow_from(self, tensors: dict[str, torch.Tensor], old: PriorConfig) -> None:
        """Load the weights of a smaller trained prior of this kind (config `old`, smaller only in
        growable_fields) so that this one starts computing what that one computes."""
        raise ConfigError(f"the {type(self).name or type(self).__name__} prior cannot be grown from a smaller one")

    # -- the model -----------------------------------------------------------------------------------------
    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The training objective (scalar) on codes (b, H, W) long, in nats per code. It may be random (a
        masking schedule, say): it draws from torch's global generator, which training seeds and checkpoints."""
        raise NotImplementedError  # abstract: registration refuses a prior class that does not override it

    def log_prob(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(b,) log-likelihood of each grid in nats ("exact"), or a lower bound on it ("bound"): see likelihood."""
        raise ConfigError(f"the {type(self).name or type(self).__name__} prior declares no likelihood, so it has no "
                          "log_prob; compare it by its held-out objective (loss) instead")

    def check_labels(self, labels, n: int, strict_range: bool = False) -> torch.Tensor | None:
        """Labels as a (n,) long tensor on the model's device (None for an unconditional prior).

        A class-conditional prior requires labels; an unconditional one refuses them. An int is broadcast to
        all n grids. strict_range=True also checks values are in [0, num_classes) (it reads the values, so a
        CUDA sync; sample() does it, training does not)."""
        nc = self.config.num_classes
        if nc == 0:
            if labels is not None:
                raise ConfigError("this prior is unconditional; it takes no class labels")
            return None
        if labels is None:
            raise ConfigError(
                f"this prior is class-conditional ({nc} classes); pass labels (a class index in [0, {nc}) per grid)"
            )
        if isinstance(labels, int):
            labels = torch.full((n,), labels, dtype=torch.long)
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (n,):
            raise ConfigError(f"labels must be {n} integer class indices, got a {tuple(labels.shape)} {labels.dtype} tensor")
        labels = labels.to(device=self.device, dtype=torch.long)
        if strict_range and n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_label_slots):
            extra = f" or {self.null_label} (no class)" if self.has_null_class else ""
            raise ConfigError(f"labels must be class indices in [0, {nc}){extra}, got values "
                              f"{int(labels.min())}..{int(labels.max())}")
        return labels

    # -- positions to keep ---------------------------------------------------------------------------------
    def keep_problem(self, mask: torch.Tensor) -> str | None:
        """None when the sampler can keep the positions of `mask` ((n, H, W) or (H, W) bool, True: kept) and
        draw the others given them; else why not. A Prior conditions on any positions."""
        return None

    def check_known(self, known, n: int) -> Known | None:
        """`known` (None, a Known or a (codes, mask) pair; codes (n, H, W) or (H, W), mask likewise) checked and
        broadcast to n grids on the model's device, or ConfigError."""
        if known is None:
            return None
        codes, mask = (known.codes, known.mask) if isinstance(known, Known) else known
        c = self.config
        codes, mask = torch.as_tensor(codes), torch.as_tensor(mask)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or mask.dtype != torch.bool:
            raise ConfigError(f"known must be (codes, mask): integer codes and a bool mask, got {codes.dtype} and "
                              f"{mask.dtype}")
        grid = (c.height, c.width)
        try:
            codes = codes.to(self.device, torch.long).expand(n, *grid)
            mask = mask.to(self.device).expand(n, *grid)
        except RuntimeError:
            raise ConfigError(f"known codes {tuple(codes.shape)} and mask {tuple(mask.shape)} must be (n, H, W) or "
                              f"(H, W) with (H, W) = {grid} and n = {n}") from None
        kept = codes[mask]
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= c.num_codes):
            raise ConfigError(f"known codes must lie in [0, {c.num_codes}), got {int(kept.min())}..{int(kept.max())}")
        problem = self.keep_problem(mask)
        if problem:
            raise ConfigError(problem)
        return Known(codes, mask)

    # -- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
        known=None,
        guidance_schedule: str = "constant",
        weak: "Prior | None" = None,
        autoguidance: float | None = None,
    ) -> torch.Tensor:
        """Draw n grids -> (n, H, W) long on the model's device.

        guidance W > 0 (classifier-free guidance; needs a null class) draws from logits
        uncond + (1 + W) * (cond - uncond), given the label and given no class; None or 0 is plain conditional
        sampling; guidance_schedule "linear" raises the weight from ~0 to ~2W over the draw, W on average.
        labels=prior.null_label draws from p(grid). known=(codes, mask) keeps codes[mask] exactly and
        draws the other positions given them (an AutoregressivePrior only when the kept ones are a raster prefix).
        autoguidance A > 0 with a `weak` prior (a smaller or less-trained AutoregressivePrior of the same grids and
        classes) adds A * (cond - weak) to the logits drawn from, under the same schedule (Karras et al. 2024): away
        from the weak prior's logits given the same class and codes."""
        return self._sample(self.sample_codes, n, labels, temperature, top_k, top_p, generator, guidance, known,
                            guidance_schedule, weak, autoguidance)

    def _sample(self, sampler, n, labels, temperature, top_k, top_p, generator, guidance, known,
                guidance_schedule="constant", weak=None, autoguidance=None) -> torch.Tensor:
        check_positive("n", n)
        check_sampling_args(temperature, top_k, top_p, guidance=guidance, guidance_schedule=guidance_schedule,
                            autoguidance=autoguidance)
        w = float(guidance or 0.0)
        if w and not self.has_null_class:
            raise ConfigError("guidance needs a class-conditional prior trained with label dropout (it has a null "
                              "class); this one has none: drop {guidance}, or train one with {label_dropout=0.1}")
        a = float(autoguidance or 0.0)
        if a:
            self.check_weak(weak)
        dev = self.device
        if generator is not None and generator.device.type != dev.type:
            raise ConfigError(f"the torch.Generator is on {generator.device} but the prior is on {dev}; "
                              "create it with torch.Generator(device=...) on the prior's device")
        labels = self.check_labels(labels, n, strict_range=True)
        if a and labels is not None:
            weak.check_labels(labels, n, strict_range=True)
        known = self.check_known(known, n)
        how = Sampling(temperature, top_k, top_p, generator, w, self.null_label if self.has_null_class else None,
                       guidance_schedule, weak if a else None, a)
        models = [self, weak] if a else [self]
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        try:
            with torch.inference_mode():
                codes = sampler(n, labels, known, how)
        finally:
            for m, mode in zip(models, modes):
                m.train(mode)
        return codes.clone()  # cloned outside inference mode: an ordinary tensor the caller may modify

    def check_weak(self, weak) -> None:
        """Refuse a weak prior this one cannot be autoguided with (ConfigError)."""
        if not isinstance(self, AutoregressivePrior):
            raise ConfigError(f"autoguidance needs a raster-order prior; the {type(self).name or type(self).__name__} "
                              "prior is not one: drop {autoguidance}")
        if not isinstance(weak, AutoregressivePrior):
            raise ConfigError("autoguidance needs a weak prior in raster order (a smaller or less-trained PixelCNN or "
                              "Transformer of the same codes): pass {weak_prior}, or drop {autoguidance}")
        c, wc = self.config, weak.config
        mine = (c.num_codes, c.height, c.width, c.num_classes)
        theirs = (wc.num_codes, wc.height, wc.width, wc.num_classes)
        if mine != theirs:
            raise ConfigError(f"the weak prior models {wc.num_codes} codes on {wc.height}x{wc.width} grids with "
                              f"{wc.num_classes} classes, this prior {c.num_codes} on {c.height}x{c.width} with "
                              f"{c.num_classes}; autoguide with a weak prior of the same codes and classes")
        if weak.device != self.device:
            raise ConfigError(f"the weak prior is on {weak.device} but the prior is on {self.device}; move both to "
                              "one device")

    def sample_codes(self, n: int, labels: torch.Tensor | None, known: Known | None, how: Sampling) -> torch.Tensor:
        """The sampler: n grids (n, H, W) long, keeping known.codes[known.mask] exactly, every code drawn with
        how.draw and every other random number from how.uniform (or how.generator). Called by `sample` in eval
        mode under inference mode with checked arguments; labels (n,) or None; guidance: how.guided."""
        raise NotImplementedError  # abstract: registration refuses a prior class that does not override it


class AutoregressivePrior(Prior):
    """A prior in raster order. Subclasses implement `logits`; they may override `generate` with a fast exact
    sampler (the contract checks it against `generate_naive`) and `tiny_config`."""

    likelihood: ClassVar[str] = "exact"
    # True: the logits at (i, j) depend on *every* earlier position (the contract checks it). Set False
    # for a prior that deliberately sees only part of the past; causality itself is always checked.
    full_context: ClassVar[bool] = True

    def logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes (b, H, W) long -> (b, K, H, W) logits; the logits at (i, j) depend only on codes strictly
        before (i, j) in raster order (and on the label)."""
        raise NotImplementedError  # abstract: registration refuses a prior class that does not override it

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(codes, labels)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code (scalar): F.cross_entropy(logits, codes)."""
        return F.cross_entropy(self.logits(codes, labels).float(), codes)

    def log_prob(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(b,) log-likelihood of each grid in nats (sum over its H*W codes); -log_prob.sum()/codes.numel() == loss."""
        nll = F.cross_entropy(self.logits(codes, labels).float(), codes, reduction="none")
        return -nll.flatten(1).sum(1)

    def keep_problem(self, mask: torch.Tensor) -> str | None:
        """Raster order draws each position given the ones before it: it can keep a raster prefix only."""
        flat = mask.reshape(-1, self.config.height * self.config.width)
        if torch.equal(flat, flat.long().cumprod(1).bool()):
            return None
        return (f"the {type(self).name or type(self).__name__} prior draws codes in raster order, so it can keep "
                "only a raster prefix (the first rows, and the start of the next one) and draw what follows; "
                "use a prior that conditions on any positions")

    @torch.no_grad()
    def sample_naive(self, n: int, labels: torch.Tensor | int | None = None, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                     guidance: float | None = None, known=None, guidance_schedule: str = "constant",
                     weak: "Prior | None" = None, autoguidance: float | None = None) -> torch.Tensor:
        """Reference sampler: a full `logits` pass per position (H*W passes), the weak prior's too. Same draws as
        `sample`."""
        return self._sample(lambda *a: self._raster(self.generate_naive, *a, naive=True), n, labels, temperature,
                            top_k, top_p, generator, guidance, known, guidance_schedule, weak, autoguidance)

    def sample_codes(self, n: int, labels: torch.Tensor | None, known: Known | None, how: Sampling) -> torch.Tensor:
        return self._raster(self.generate, n, labels, known, how)

    def _raster(self, gen_fn, n: int, labels, known: Known | None, how: Sampling, naive: bool = False) -> torch.Tensor:
        """Run a raster decoding loop with a pick that draws through `how`, guides, autoguides, and keeps `known`."""
        kept_codes = known.codes.flatten(1) if known is not None else None  # (n, H*W)
        kept = known.mask.flatten(1) if known is not None else None
        T = self.config.height * self.config.width
        position = iter(range(T))  # pick is called once per position
        weak_steps = weak_logits = None
        if how.autoguidance:  # the weak prior decodes in lockstep, sent the codes drawn here
            weak_steps = AutoregressivePrior.decode(how.weak, n, labels) if naive else how.weak.decode(n, labels)
            weak_logits = next(weak_steps)

        def pick(step_logits: torch.Tensor) -> torch.Tensor:  # (n, K), or (2n, K) guided: n rows, then n without class
            nonlocal weak_logits
            t = next(position)
            logits = how.guide(step_logits, t + 1, T) if how.guidance else step_logits
            if weak_steps is not None:
                logits = how.autoguide(logits, step_logits[:n], weak_logits, t + 1, T)
            code = how.draw(logits)
            if kept is not None:  # drawn anyway, so the generator advances as without known positions
                code = torch.where(kept[:, t], kept_codes[:, t], code)
            if weak_steps is not None and t + 1 < T:
                weak_logits = weak_steps.send(code)
            return code.repeat(2) if how.guidance else code  # both streams continue from the same code

        if how.guidance:
            both = torch.cat([labels, torch.full_like(labels, self.null_label)])
            return gen_fn(2 * n, both, pick)[:n]
        return gen_fn(n, labels, pick)

    def generate(self, n: int, labels: torch.Tensor | None, pick: Pick) -> torch.Tensor:
        """The raster-order decoding loop: for each position, compute its (n, K) logits given the codes drawn
        so far and set the codes to pick(logits). It runs `decode`; a prior makes it fast by overriding `decode`
        (or, as before `decode` existed, this) with an exact cached equivalent."""
        steps = self.decode(n, labels)
        logits = next(steps)
        try:
            while True:
                logits = steps.send(pick(logits))
        except StopIteration as done:
            return done.value

    def decode(self, n: int, labels: torch.Tensor | None) -> Steps:
        """The decoding loop as a generator (see Steps), so that two priors can decode in lockstep (autoguidance):
        this one is the reference, a full `logits` pass per position."""
        c = self.config
        codes = torch.zeros(n, c.height, c.width, dtype=torch.long, device=self.device)
        for i in range(c.height):
            for j in range(c.width):
                codes[:, i, j] = yield self.logits(codes, labels)[:, :, i, j]
        return codes

    def generate_naive(self, n: int, labels: torch.Tensor | None, pick: Pick) -> torch.Tensor:
        c = self.config
        codes = torch.zeros(n, c.height, c.width, dtype=torch.long, device=self.device)
        for i in range(c.height):
            for j in range(c.width):
                codes[:, i, j] = pick(self.logits(codes, labels)[:, :, i, j])
        return codes


def _overrides(cls, base: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(base, name)


def prior_class_problem(obj) -> str | None:
    """None when obj can be registered as a prior, else what is wrong with it."""
    if not (isinstance(obj, type) and issubclass(obj, Prior)):
        return f"it is {obj!r}, not a subclass of priors.Prior"
    cc = getattr(obj, "config_class", None)
    if not (isinstance(cc, type) and issubclass(cc, PriorConfig) and is_dataclass(cc)):
        return "its config_class is not a dataclass subclass of priors.PriorConfig"
    missing = {f.name for f in fields(PriorConfig)} - {f.name for f in fields(cc)}
    if missing:
        return f"its config_class lacks {sorted(missing)}"
    if obj.likelihood not in LIKELIHOODS:
        return f"its likelihood is {obj.likelihood!r}; declare one of {', '.join(LIKELIHOODS)}"
    unknown = set(obj.sampling_fields) - {f.name for f in fields(cc)}
    if unknown:
        return f"its sampling_fields {sorted(unknown)} are not fields of its config_class"
    unknown = set(obj.growable_fields) - {f.name for f in fields(cc)}
    if unknown:
        return f"its growable_fields {sorted(unknown)} are not fields of its config_class"
    if obj.growable_fields and not _overrides(obj, Prior, "grow_from"):
        return "it lists growable_fields but does not implement grow_from(tensors, old)"
    if issubclass(obj, AutoregressivePrior):
        if not _overrides(obj, AutoregressivePrior, "logits"):
            return "it does not implement logits(codes, labels)"
        return None
    if "logits" in {n for k in obj.__mro__ if k not in (Prior, AutoregressivePrior) for n in vars(k)}:
        return "it implements logits but is not a priors.AutoregressivePrior; subclass that (raster order)"
    todo = [m for m in ("loss", "sample_codes") if not _overrides(obj, Prior, m)]
    if obj.likelihood != "none" and not _overrides(obj, Prior, "log_prob"):
        todo.append(f"log_prob (it declares a likelihood: {obj.likelihood})")
    if todo:
        return (f"it does not implement logits(codes, labels) (an autoregressive prior), nor {' and '.join(todo)} "
                "(any other prior)")
    return None

