"""The stage-2 plugin seam: the PriorConfig/Prior interface every prior implements (the registry of names is
priors.registry).

A prior models a (H, W) grid of code indices in [0, K) autoregressively in raster order (row by row,
left to right), optionally conditioned on a class label. train-prior, sample and evaluate only ever call
`logits`, `loss`, `log_prob` and `sample`, and rebuild a saved prior with
`get_prior(name)(get_prior(name).config_class(**config_dict))`. A prior never imports the VQ-VAE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.sampling_utils import check_sampling_args, draw
from vqgen.errors import ConfigError, check_positive

Pick = Callable[[torch.Tensor], torch.Tensor]  # (n, K) logits of one position -> (n,) long codes


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


class Prior(nn.Module):
    """Base class of every prior. Subclasses set `config_class` and implement `logits`; they may override
    `generate` with a fast sampler (the contract test checks it against `generate_naive`) and `tiny_config`."""

    name: ClassVar[str] = ""  # registry name, set by register_prior (or the entry-point loader)
    config_class: ClassVar[type[PriorConfig]] = PriorConfig
    # True: the logits at (i, j) depend on *every* earlier position (the contract test checks it). Set False
    # for a prior that deliberately sees only part of the past; causality itself is always checked.
    full_context: ClassVar[bool] = True
    # True: the prior sizes its class embeddings by `num_label_slots`, so it can have a null class (label dropout,
    # classifier-free guidance, unconditional draws from a conditional prior)
    supports_null_class: ClassVar[bool] = False

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

    # -- the model -----------------------------------------------------------------------------------------
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
    ) -> torch.Tensor:
        """Draw n grids -> (n, H, W) long on the model's device (uses the fast `generate`).

        guidance W > 0 (classifier-free guidance; needs a null class) draws every position from
        uncond + (1 + W) * (cond - uncond) of the logits given the label and given no class, both streams
        computed in one batch of 2n; None or 0 is plain conditional sampling. labels=prior.null_label draws
        from p(grid)."""
        return self._sample(self.generate, n, labels, temperature, top_k, top_p, generator, guidance)

    @torch.no_grad()
    def sample_naive(
        self,
        n: int,
        labels: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """Reference sampler: a full `logits` pass per position (H*W passes). Same draws as `sample`."""
        return self._sample(self.generate_naive, n, labels, temperature, top_k, top_p, generator, guidance)

    def _sample(self, gen_fn, n, labels, temperature, top_k, top_p, generator, guidance=None) -> torch.Tensor:
        check_positive("n", n)
        check_sampling_args(temperature, top_k, top_p, guidance=guidance)
        w = float(guidance or 0.0)
        if w and not self.has_null_class:
            raise ConfigError("guidance needs a class-conditional prior trained with label dropout (it has a null "
                              "class); this one has none: drop {guidance}, or train one with {label_dropout=0.1}")
        dev = self.device
        if generator is not None and generator.device.type != dev.type:
            raise ConfigError(f"the torch.Generator is on {generator.device} but the prior is on {dev}; "
                              "create it with torch.Generator(device=...) on the prior's device")
        labels = self.check_labels(labels, n, strict_range=True)

        def pick(step_logits: torch.Tensor) -> torch.Tensor:
            return draw(step_logits, temperature, top_k, top_p, generator)

        def guided_pick(step_logits: torch.Tensor) -> torch.Tensor:  # (2n, K): n conditional rows, then n without class
            cond, uncond = step_logits[:n].float(), step_logits[n:].float()
            code = draw(uncond + (1 + w) * (cond - uncond), temperature, top_k, top_p, generator)
            return code.repeat(2)  # both streams continue from the same drawn code

        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                if w:
                    both = torch.cat([labels, torch.full_like(labels, self.null_label)])
                    codes = gen_fn(2 * n, both, guided_pick)[:n]
                else:
                    codes = gen_fn(n, labels, pick)
        finally:
            self.train(was_training)
        return codes.clone()  # cloned outside inference mode: an ordinary tensor the caller may modify

    def generate(self, n: int, labels: torch.Tensor | None, pick: Pick) -> torch.Tensor:
        """The raster-order decoding loop: for each position, compute its (n, K) logits given the codes drawn
        so far and set the codes to pick(logits). Override with a faster exact equivalent (caching)."""
        return self.generate_naive(n, labels, pick)

    def generate_naive(self, n: int, labels: torch.Tensor | None, pick: Pick) -> torch.Tensor:
        c = self.config
        codes = torch.zeros(n, c.height, c.width, dtype=torch.long, device=self.device)
        for i in range(c.height):
            for j in range(c.width):
                codes[:, i, j] = pick(self.logits(codes, labels)[:, :, i, j])
        return codes


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
    if obj.logits is Prior.logits:
        return "it does not implement logits(codes, labels)"
    return None
