"""`maskgit`: a bidirectional Transformer over masked code grids, decoded in a few parallel steps (Chang et al.
2022, "MaskGIT: Masked Generative Image Transformer").

Model: the H*W codes, each replaced by a mask token (index K) where hidden, plus a learned 2-D position (row +
column embedding), after one class token (one per class and the null class; one learned token when
unconditional), through pre-LN Transformer blocks that attend in both directions; the head gives (K) logits at
every position, used where the input is masked.

Training (`loss`): per grid a mask ratio r = cos(pi/2 * u), u ~ U(0, 1) (the cosine schedule), ceil(r * H*W)
positions chosen at random are masked, and the objective is the cross-entropy of their codes given the others,
in nats per masked code.

Sampling (`sample_codes`, `steps` S): start with every position that is not kept masked; at step s the network
gives logits at every position, a code is drawn at each masked one (temperature, top-k, top-p and guidance
apply), and the most confident draws are kept, so that after step s floor(N * cos(pi/2 * s/S)) of the N positions
to draw remain masked (at least one is revealed per step, none after step S). The confidence is the drawn
code's log-probability plus Gumbel noise scaled by choice_temperature * (1 - s/S), so early steps pick
positions in a random order. Every random number (codes and noise) comes from the sampling generator.

Likelihood: a bound. log_prob is the order-agnostic lower bound (Uria et al. 2014; Hoogeboom et al. 2022) of
the model that draws one position at a time in a random order from the same network: for m ~ U{1..H*W} positions
masked at random, (H*W / m) * the sum of their log-probabilities given the others, averaged over BOUND_DRAWS
draws from a generator seeded the same on every call (so checkpoints are compared on the same masks). The
parallel decoder draws from an approximation of that model, not from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.base import Known, Prior, PriorConfig, Sampling
from priors.transformer import Block, check_block_sizes, init_gpt
from vqgen.errors import ConfigError

BOUND_DRAWS = 4  # random masks per grid in log_prob: the bound's estimate is an average over them
BOUND_SEED = 0


@dataclass
class MaskGITConfig(PriorConfig):
    # Sized like the transformer prior, for a 2-core CPU: 1.3M parameters; a training step costs about what the
    # GPT's does (65 positions, attention both ways). On a GPU, n_layer=8, n_embd=256 is affordable.
    n_layer: int = 6  # number of Transformer blocks
    n_head: int = 4  # attention heads per block (must divide n_embd)
    n_embd: int = 128  # width of the residual stream
    dropout: float = 0.0  # dropout on attention weights, residual branches and embeddings (training only)
    # sampling only (vqgen sample -o steps=12 changes them on a trained prior)
    # S: parallel decoding steps per grid; 2 measured best of 2/4/8/12/16 on CIFAR-10 (BENCHMARKS.md, "Priors beyond
    # raster order"), for a prior trained 1,300 steps: a longer-trained one may prefer more
    steps: int = 2
    choice_temperature: float = 4.5  # Gumbel noise on the confidences at the first step, annealed to 0 at the last


class MaskGIT(Prior):
    config_class = MaskGITConfig
    likelihood = "bound"
    supports_null_class = True
    sampling_fields = ("steps", "choice_temperature")

    def __init__(self, config: MaskGITConfig):
        super().__init__(config)
        c = self.config
        check_block_sizes("maskgit", c)
        if isinstance(c.steps, bool) or not isinstance(c.steps, int) or c.steps < 1:
            raise ConfigError(f"maskgit: steps must be a positive integer, got {c.steps!r}")
        ct = c.choice_temperature
        if isinstance(ct, bool) or not isinstance(ct, (int, float)) or not 0 <= ct < math.inf:
            raise ConfigError(f"maskgit: choice_temperature must be a finite number >= 0, got {ct!r}")
        d = c.n_embd
        self.tok = nn.Embedding(c.num_codes + 1, d)  # index num_codes: the mask token
        self.cls = nn.Embedding(max(self.num_label_slots, 1), d)  # class token per class (+ null), or one
        self.row = nn.Embedding(c.height, d)
        self.col = nn.Embedding(c.width, d)
        self.drop = nn.Dropout(float(c.dropout))
        self.blocks = nn.ModuleList(Block(c, causal=False) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.num_codes)
        init_gpt(self, self.blocks)

    @classmethod
    def tiny_config(cls, **overrides) -> MaskGITConfig:
        return super().tiny_config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "steps": 4, **overrides})

    @property
    def mask_token(self) -> int:
        return self.config.num_codes

    def masked_logits(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """x (b, H*W) long, the mask token where hidden -> (b, H*W, K) logits at every position."""
        c = self.config
        b = x.shape[0]
        pos = (self.row.weight[:, None, :] + self.col.weight[None, :, :]).reshape(c.height * c.width, -1)
        cls = self.cls(labels if labels is not None else torch.zeros(b, dtype=torch.long, device=x.device))
        h = self.drop(torch.cat([cls[:, None, :], self.tok(x) + pos], dim=1))  # (b, 1 + H*W, d)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h[:, 1:]))

    @staticmethod
    def _random_subset(sizes: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(b,) sizes -> (b, T) bool, True at `sizes[i]` positions of row i chosen uniformly at random."""
        scores = torch.rand(sizes.shape[0], T, generator=generator, device=sizes.device)
        return scores.argsort(1).argsort(1) < sizes[:, None]

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the masked codes given the rest, in nats per masked code (cosine mask schedule)."""
        b, H, W = codes.shape
        labels = self.check_labels(labels, b)
        x = codes.reshape(b, H * W)
        ratio = torch.cos(math.pi / 2 * torch.rand(b, device=codes.device))
        masked = self._random_subset((ratio * H * W).ceil().long().clamp(1, H * W), H * W)
        logits = self.masked_logits(torch.where(masked, self.mask_token, x), labels)
        return F.cross_entropy(logits[masked].float(), x[masked])

    def log_prob(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(b,) lower bound on each grid's log-likelihood in nats (the order-agnostic bound: module docstring)."""
        b, H, W = codes.shape
        T = H * W
        labels = self.check_labels(labels, b)
        x = codes.reshape(b, T)
        g = torch.Generator(device=codes.device).manual_seed(BOUND_SEED)
        total = torch.zeros(b, device=codes.device)
        for _ in range(BOUND_DRAWS):
            m = torch.randint(1, T + 1, (b,), generator=g, device=codes.device)
            masked = self._random_subset(m, T, g)
            logits = self.masked_logits(torch.where(masked, self.mask_token, x), labels).float()
            lp = torch.log_softmax(logits, -1).gather(-1, x[..., None])[..., 0]  # (b, T)
            total = total + (lp * masked).sum(1) * T / m
        return total / BOUND_DRAWS

    def sample_codes(self, n: int, labels: torch.Tensor | None, known: Known | None, how: Sampling) -> torch.Tensor:
        c = self.config
        T, K, S, dev = c.height * c.width, c.num_codes, c.steps, self.device
        if known is None:
            masked = torch.ones(n, T, dtype=torch.bool, device=dev)
            x = torch.full((n, T), self.mask_token, dtype=torch.long, device=dev)
        else:
            masked = ~known.mask.reshape(n, T)
            x = torch.where(masked, self.mask_token, known.codes.reshape(n, T))  # nothing else of known is read
        to_draw = masked.sum(1).double()  # (n,)
        positions = torch.arange(T, device=dev).expand(n, T)
        for s in range(1, S + 1):
            if not bool(masked.any()):
                break
            logits = how.guided(self.masked_logits, x, labels, s, S).reshape(n * T, K)
            code = how.draw(logits).view(n, T)
            logp = torch.log_softmax(how.filter(logits), -1).gather(1, code.view(-1, 1)).view(n, T)
            left = (to_draw * math.cos(math.pi / 2 * s / S)).floor().long()  # still masked after this step
            still = masked.sum(1)
            reveal = torch.minimum(still, (still - left).clamp(min=1))
            gumbel = -torch.log(-torch.log(how.uniform(n, T, device=dev).clamp(1e-20, 1 - 1e-7)))
            confidence = logp + c.choice_temperature * (1 - s / S) * gumbel
            # only masked positions compete; a filtered-out draw (-inf) still outranks every revealed position
            confidence = torch.where(masked, confidence.nan_to_num(nan=-1e30, neginf=-1e30), float("-inf"))
            order = confidence.argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(1, order, positions)
            chosen = rank < reveal[:, None]
            x = torch.where(chosen, code, x)
            masked = masked & ~chosen
        return x.view(n, c.height, c.width)
