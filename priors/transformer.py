"""`transformer`: a small GPT-style (pre-LN) causal Transformer over the H*W codes in raster order.

The input sequence is [start] + codes[:-1], where start is one learned token (or one per class for a
class-conditional prior); slot t also gets a learned 2-D position embedding (row + column embedding of the
position t it predicts). The output at slot t is the logits of code t, reshaped to (b, K, H, W).
Sampling (`generate`) uses a key/value cache: one token per step, the prefix is never recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.base import AutoregressivePrior, PriorConfig, Steps
from vqgen.errors import ConfigError


@dataclass
class TransformerConfig(PriorConfig):
    # Defaults sized for a 2-core CPU like the pixelcnn default: 1.3M parameters, an Adam step on 64 8x8 grids
    # takes ~0.5 s on one busy thread (pixelcnn: 2.1M, ~0.67 s). On a GPU, n_layer=8, n_embd=256 is affordable.
    n_layer: int = 6  # number of Transformer blocks
    n_head: int = 4  # attention heads per block (must divide n_embd)
    n_embd: int = 128  # width of the residual stream
    dropout: float = 0.0  # dropout on attention weights, residual branches and embeddings (training only)


class Block(nn.Module):
    """A pre-LN Transformer block; causal=False attends in both directions (the maskgit prior's)."""

    def __init__(self, cfg: TransformerConfig, causal: bool = True):
        super().__init__()
        d = cfg.n_embd
        self.causal = causal
        self.n_head = cfg.n_head
        self.dropout = float(cfg.dropout)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(self.dropout)

    def _heads(self, x):  # (b, t, 3d) -> q, k, v each (b, heads, t, d/heads)
        b, t, _ = x.shape
        return x.view(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self._heads(self.qkv(self.ln1(x)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))

    def step(self, x, cache_k, cache_v, t: int):
        """One new token x (b, 1, d) at slot t; cache_k/cache_v (b, heads, T, d/heads) hold slots < t."""
        b, _, d = x.shape
        q, k, v = self._heads(self.qkv(self.ln1(x)))
        cache_k[:, :, t : t + 1] = k
        cache_v[:, :, t : t + 1] = v
        # one query against the cache: plain matmuls (CPU SDPA kernels are slow for a length-1 query)
        att = torch.softmax((q @ cache_k[:, :, : t + 1].transpose(-1, -2)).float() * q.shape[-1] ** -0.5, dim=-1)
        y = att.to(v.dtype) @ cache_v[:, :, : t + 1]
        x = x + self.proj(y.transpose(1, 2).reshape(b, 1, d))
        return x + self.mlp(self.ln2(x))


def check_block_sizes(prior: str, c) -> None:
    """ConfigError unless c's n_layer, n_head, n_embd and dropout make valid Blocks."""
    for f in ("n_layer", "n_head", "n_embd"):
        v = getattr(c, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{prior}: {f} must be a positive integer, got {v!r}")
    if c.n_embd % c.n_head:
        raise ConfigError(f"{prior}: n_head ({c.n_head}) must divide n_embd ({c.n_embd})")
    if not 0.0 <= float(c.dropout) < 1.0:
        raise ConfigError(f"{prior}: dropout must be in [0, 1), got {c.dropout}")


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def init_gpt(model: nn.Module, blocks: nn.ModuleList) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 layers)."""
    model.apply(_init)
    for blk in blocks:
        nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * len(blocks)))
        nn.init.normal_(blk.mlp[2].weight, std=0.02 / math.sqrt(2 * len(blocks)))


class Transformer(AutoregressivePrior):
    config_class = TransformerConfig
    supports_null_class = True

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = self.config
        check_block_sizes("transformer", c)
        d = c.n_embd
        self.tok = nn.Embedding(c.num_codes, d)
        self.start = nn.Embedding(max(self.num_label_slots, 1), d)  # one start token per class (+ null), or one
        self.row = nn.Embedding(c.height, d)
        self.col = nn.Embedding(c.width, d)
        self.drop = nn.Dropout(float(c.dropout))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.num_codes)
        init_gpt(self, self.blocks)

    @classmethod
    def tiny_config(cls, **overrides) -> TransformerConfig:
        return super().tiny_config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, **overrides})

    def _positions(self) -> torch.Tensor:  # (H*W, d): row + column embedding of each raster position
        c = self.config
        return (self.row.weight[:, None, :] + self.col.weight[None, :, :]).reshape(c.height * c.width, -1)

    def _start(self, labels, n: int) -> torch.Tensor:  # (n, 1, d)
        idx = labels if labels is not None else torch.zeros(n, dtype=torch.long, device=self.device)
        return self.start(idx)[:, None, :]

    def logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        b, H, W = codes.shape
        labels = self.check_labels(labels, b)
        e = self.tok(codes.reshape(b, H * W))  # (b, H*W, d), slot t = code t
        x = torch.cat([self._start(labels, b), e[:, :-1]], dim=1) + self._positions()
        x = self.drop(x)
        for blk in self.blocks:
            x = blk(x)
        out = self.head(self.ln_f(x))  # (b, H*W, K)
        return out.transpose(1, 2).reshape(b, -1, H, W)

    def decode(self, n: int, labels: torch.Tensor | None) -> Steps:
        c = self.config
        T = c.height * c.width
        dev = self.device
        pos = self._positions()
        hd = c.n_embd // c.n_head
        dtype = self.tok.weight.dtype
        caches = [(torch.empty(n, c.n_head, T, hd, device=dev, dtype=dtype),
                   torch.empty(n, c.n_head, T, hd, device=dev, dtype=dtype)) for _ in self.blocks]
        codes = torch.zeros(n, T, dtype=torch.long, device=dev)
        x = self._start(labels, n)
        for t in range(T):
            x = x + pos[t]
            for blk, (ck, cv) in zip(self.blocks, caches):
                x = blk.step(x, ck, cv, t)
            code = yield self.head(self.ln_f(x))[:, 0]
            codes[:, t] = code
            x = self.tok(code)[:, None, :]
        return codes.view(n, c.height, c.width)
