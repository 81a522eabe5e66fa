"""vqgen_mixprior: a small third-party prior for vqgen (a masked linear mixer over earlier codes)."""
from dataclasses import dataclass

import torch
import torch.nn as nn

from priors import Prior, PriorConfig


@dataclass
class MixConfig(PriorConfig):
    dim: int = 64  # width of the code embedding and of the hidden features


class MixPrior(Prior):
    config_class = MixConfig

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        T = c.height * c.width
        self.embed = nn.Embedding(c.num_codes, c.dim)
        self.mix = nn.Parameter(torch.randn(T, T) / T)  # mix[p, q]: weight of position q's code at position p
        self.register_buffer("mask", torch.ones(T, T).tril(-1), persistent=False)  # only q < p
        self.pos = nn.Parameter(torch.zeros(T, c.dim))
        self.cls = nn.Embedding(c.num_classes, c.dim) if c.num_classes else None
        self.head = nn.Linear(c.dim, c.num_codes)

    @classmethod
    def tiny_config(cls, **overrides):
        return super().tiny_config(**{"dim": 8, **overrides})

    def logits(self, codes, labels=None):
        b, H, W = codes.shape
        labels = self.check_labels(labels, b)  # ConfigError if a conditional prior gets none
        e = self.embed(codes.reshape(b, H * W))  # (b, T, dim), laid out by raster position
        h = torch.einsum("pq,bqd->bpd", self.mix * self.mask, e) + self.pos
        if labels is not None:
            h = h + self.cls(labels)[:, None]
        return self.head(torch.tanh(h)).transpose(1, 2).reshape(b, -1, H, W)
