"""Vector quantisation: nearest-code search, straight-through gradient, VQ or EMA codebook updates,
codebook initialisation from data and dead-code restarts. Computes in fp32 even under autocast."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


USAGE_DECAY = 0.9
GRADIENTS = ("ste", "rotation")  # how the decoder's gradient reaches the encoder
QUANTIZERS = ("ema", "vq")  # how the codebook learns


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (b, D, h, w) quantised vectors carrying the straight-through gradient
    indices: torch.Tensor  # (b, h, w) int64 code indices
    loss: torch.Tensor  # codebook + beta * commitment (codebook term is 0 for EMA: the EMA moves the codes)
    commitment: torch.Tensor  # ||z_e - sg[e]||^2, mean over elements
    counts: torch.Tensor  # (K,) how often each code was picked in this batch (all ranks)


def rotate_onto(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotate and rescale each row of z (n, D) onto the matching row of q, the map held constant for the gradient.

    The rotation trick (Fifty et al. 2024): where the straight-through estimator hands z the decoder's gradient
    unchanged, this hands it back through the rotation, so vectors at different angles to their code get
    different updates. Uses the two-reflection form of the rotation taking z/|z| to q/|q|."""
    z_norm = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    q_norm = q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u, v = (z / z_norm).detach(), (q / q_norm).detach()
    w = F.normalize(u + v, dim=1)  # the bisector; zero if z and q point opposite ways, where the map still takes u to v
    scale = (q_norm / z_norm).detach()
    return scale * (z - 2 * w * (w * z).sum(1, keepdim=True) + 2 * v * (u * z).sum(1, keepdim=True))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        kind: str = "ema",
        gradient: str = "ste",
        decay: float = 0.99,
        restart_threshold: float = 0.03,
        eps: float = 1e-5,
    ):
        super().__init__()
        if kind not in QUANTIZERS:
            raise ValueError(f"quantizer kind must be 'vq' or 'ema', got {kind!r}")
        if gradient not in GRADIENTS:
            raise ValueError(f"quantizer gradient must be one of {GRADIENTS}, got {gradient!r}")
        self.num_codes, self.dim, self.beta, self.kind, self.gradient = num_codes, dim, beta, kind, gradient
        self.decay, self.restart_threshold, self.eps = decay, restart_threshold, eps
        init = torch.randn(num_codes, dim) / dim**0.5
        if kind == "vq":
            self.embedding = nn.Parameter(init)
        else:
            self.register_buffer("embedding", init)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", init.clone())
        # EMA of how many vectors each code receives per step; a code whose share falls below
        # restart_threshold * (fair share) is dead and is moved onto a recent encoder output
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))
        self.register_buffer("initialized", torch.tensor(False))

    # -- search -----------------------------------------------------------------------------------------
    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Squared distance of each row of flat (n, D) to every code, up to a per-row constant: (n, K)."""
        e = self.embedding.float()
        # ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code so it cannot change the ranking
        return torch.addmm((e * e).sum(1)[None, :], flat, e.t(), alpha=-2.0)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of flat (n, D), by one matrix product."""
        return self.distances(flat).argmin(1)

    def nearest_k(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Indices of the k nearest codes for each row of flat (n, D), nearest first: (n, k)."""
        return self.distances(flat).topk(k, dim=1, largest=False).indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for an index grid: (b, h, w) -> (b, D, h, w)."""
        return F.embedding(indices, self.embedding.float()).permute(0, 3, 1, 2)  # (b, h, w, D) -> (b, D, h, w)

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z_e.shape
        with torch.autocast(z_e.device.type, enabled=False):
            z = z_e.float()
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (b, D, h, w) -> (b*h*w, D)
            if self.training and not bool(self.initialized):
                self._init_from(flat.detach())
            idx = self.nearest(flat.detach())  # (b*h*w,)
            counts = torch.bincount(idx, minlength=self.num_codes).float()
            if self.training:
                if _distributed():
                    dist.all_reduce(counts)
                if self.kind == "ema":
                    self._ema_update(flat.detach(), idx, counts)
                self._restart_dead(flat.detach(), counts)
            e = self.embedding.float()
            z_q = F.embedding(idx, e)  # (b*h*w, D)
            commitment = F.mse_loss(flat, z_q.detach())
            loss = self.beta * commitment
            if self.kind == "vq":
                loss = loss + F.mse_loss(z_q, flat.detach())
            if self.gradient == "rotation":
                moved = rotate_onto(flat, z_q.detach())
                z_q = z_q.detach() + (moved - moved.detach())  # value: exactly the code; gradient: the rotation's
            else:
                z_q = flat + (z_q - flat).detach()  # straight-through: the decoder's gradient goes to z_e
            z_q = z_q.view(b, h, w, -1).permute(0, 3, 1, 2)  # (b*h*w, D) -> (b, D, h, w)
        return QuantizerOutput(z_q, idx.view(b, h, w), loss, commitment, counts)

    # -- codebook maintenance (all under no_grad; identical on every rank) -----------------------------
    @torch.no_grad()
    def _pick_rows(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        """n rows of flat chosen at random (with replacement when there are too few), same on every rank.

        Under DDP the rows come from the whole global batch (every rank's share, gathered in rank order), so
        codebook init and restarts draw from the same vectors, with the same random numbers, as one process
        training on that batch; rank 0's pick is then broadcast so the ranks cannot drift apart."""
        if _distributed():
            parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, flat.contiguous())
            flat = torch.cat(parts)
        if flat.shape[0] >= n:
            rows = flat[torch.randperm(flat.shape[0], device=flat.device)[:n]]
        else:
            rows = flat[torch.randint(flat.shape[0], (n,), device=flat.device)]
            rows = rows + 0.01 * rows.std() * torch.randn_like(rows)
        rows = rows.contiguous()
        if _distributed():
            dist.broadcast(rows, 0)
        return rows

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        rows = self._pick_rows(flat, self.num_codes)
        self.embedding.data.copy_(rows)
        if self.kind == "ema":
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(rows)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)  # (K, D)
        if _distributed():
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps a code that received nothing from dividing by ~0
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.embedding.data.copy_(self.embed_sum / size[:, None])

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        # a short memory (~10 steps): early on the encoder moves fast and leaves codes behind within a few
        # steps; waiting for the codebook EMA (~100 steps) to notice wastes most of the codebook for hundreds of steps
        self.usage.mul_(USAGE_DECAY).add_(counts / counts.sum().clamp_min(1), alpha=1 - USAGE_DECAY)
        dead = self.usage < self.restart_threshold / self.num_codes
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        rows = self._pick_rows(flat, n_dead)
        self.embedding.data[dead] = rows
        self.usage[dead] = 1.0 / self.num_codes
        if self.kind == "ema":
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = rows
