"""The VQ-VAE of van den Oord et al. 2017: conv encoder -> vector quantiser -> conv decoder; and its file."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.build import check_fits
from vqgen.checkpoint import (KIND_VQVAE, config_from_meta, file_sha256, first_problem, load_tensors, read_kind_header,
                              save_tensors)
from vqgen.codes import MAX_NUM_CODES
from vqgen.errors import CheckpointError, OptionError, check_at_least, check_choice, check_positive
from vqgen.quantizer import GRADIENTS, QUANTIZERS, QuantizerOutput, VectorQuantizer
from vqgen.runtime import resolve_device
from vqgen.weights import shipped


MAX_IMAGE_SIZE = 1024  # image side in pixels (a 256x256 code grid)


@dataclass
class VQVAEConfig:
    image_size: int = 32  # input side in pixels; any multiple of 4, the code grid is image_size/4 square
    hidden: int = 128  # channels of the full-resolution-of-codes trunk (encoder after downsampling, decoder before)
    res_blocks: int = 2  # residual blocks in the encoder and in the decoder
    res_channels: int = 32  # bottleneck channels inside each residual block
    num_codes: int = 512  # K, the codebook size: how many code vectors
    code_dim: int = 64  # D, dimension of each code vector
    beta: float = 0.25  # weight of the commitment loss ||z_e - sg[e]||^2
    quantizer: str = "ema"  # "ema": codebook moved by EMA of assigned vectors; "vq": codebook loss + Adam
    gradient: str = "ste"  # how the decoder's gradient reaches z_e: "ste" copies it, "rotation" rotates it
    ema_decay: float = 0.99  # decay of the EMA codebook statistics and of the code-usage tracker
    restart_threshold: float = 0.03  # a code used less than this fraction of its fair share is restarted

    @property
    def grid(self) -> int:
        return self.image_size // 4

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Refuse a value no VQ-VAE can have (OptionError naming the field)."""
        for name in ("res_blocks", "res_channels", "code_dim"):
            check_positive(name, getattr(self, name))
        check_at_least("hidden", self.hidden, 2)  # the first convolution has hidden // 2 channels
        if not (isinstance(self.image_size, int) and 4 <= self.image_size <= MAX_IMAGE_SIZE and self.image_size % 4 == 0):
            raise OptionError(f"{{image_size}} must be a multiple of 4 from 4 to {MAX_IMAGE_SIZE}, got {self.image_size!r}",
                              "image_size", self.image_size, f"a multiple of 4 from 4 to {MAX_IMAGE_SIZE}")
        if not (isinstance(self.num_codes, int) and 2 <= self.num_codes <= MAX_NUM_CODES):
            raise OptionError(f"{{num_codes}} must be from 2 to {MAX_NUM_CODES:,}, got {self.num_codes!r}", "num_codes",
                              self.num_codes, f"2 to {MAX_NUM_CODES}")
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        check_choice("gradient", self.gradient, GRADIENTS)

    @staticmethod
    def upgrade(d: dict) -> dict:
        """A stored config as this version names its fields: files written before the field was renamed call
        num_codes codebook_size."""
        d = dict(d)
        if "codebook_size" in d and "num_codes" not in d:
            d["num_codes"] = d.pop("codebook_size")
        return d


class ResBlock(nn.Module):
    def __init__(self, ch: int, res_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, res_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(res_ch, ch, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        h = c.hidden
        self.net = nn.Sequential(
            nn.Conv2d(3, h // 2, 4, stride=2, padding=1),  # (b, 3, 32, 32) -> (b, h/2, 16, 16)
            nn.ReLU(),
            nn.Conv2d(h // 2, h, 4, stride=2, padding=1),  # -> (b, h, 8, 8)
            nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1),
            *[ResBlock(h, c.res_channels) for _ in range(c.res_blocks)],
            nn.ReLU(),
            nn.Conv2d(h, c.code_dim, 1),  # -> (b, D, 8, 8) = z_e
        )

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        h = c.hidden
        self.net = nn.Sequential(
            nn.Conv2d(c.code_dim, h, 3, padding=1),  # (b, D, 8, 8) -> (b, h, 8, 8)
            *[ResBlock(h, c.res_channels) for _ in range(c.res_blocks)],
            nn.ReLU(),
            nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1),  # -> (b, h/2, 16, 16)
            nn.ReLU(),
            nn.ConvTranspose2d(h // 2, 3, 4, stride=2, padding=1),  # -> (b, 3, 32, 32)
        )

    def forward(self, z):
        return self.net(z)


class VQVAE(nn.Module):
    """Images in [0, 1] in, reconstructions on the same scale out; the model works internally in [-1, 1]."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            config.num_codes,
            config.code_dim,
            beta=config.beta,
            kind=config.quantizer,
            gradient=config.gradient,
            decay=config.ema_decay,
            restart_threshold=config.restart_threshold,
        )
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """x (b, 3, S, S) in [0, 1] -> (x_hat (b, 3, S, S) on the [0, 1] scale, quantiser output)."""
        q = self.quantizer(self.encoder(x * 2 - 1))
        return (self.decoder(q.z_q) + 1) / 2, q

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, 3, S, S) in [0, 1] (or uint8) -> index grid (b, S/4, S/4) int64."""
        if x.dtype == torch.uint8:
            x = x.to(next(self.parameters()).device).float() / 255
        z = self.encoder(x * 2 - 1).float()
        b, d, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Index grid (b, h, w) -> images (b, 3, 4h, 4w) clamped to [0, 1]."""
        z_q = self.quantizer.lookup(indices)
        dtype = next(self.decoder.parameters()).dtype
        return ((self.decoder(z_q.to(dtype)) + 1) / 2).clamp(0, 1)


def shift_images(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Translate each image on its own: reflect-pad by `pad`, crop at offsets (b, 2) = (dy, dx) in [0, 2 pad]."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="reflect")  # (b, c, h + 2 pad, w + 2 pad)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (b, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (b, w)
    n, ch = torch.arange(b, device=x.device), torch.arange(c, device=x.device)
    return xp[n[:, None, None, None], ch[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


class VQVAEObjective(nn.Module):
    """The stage-1 training loss around a VQVAE, in the form the trainer expects: batch -> (loss, metrics)."""

    def __init__(self, model: VQVAE, flip: bool = False, shift: int = 0):
        super().__init__()
        self.model, self.flip, self.shift = model, flip, shift

    def forward(self, images: torch.Tensor, *_):
        x = images.float() / 255  # uint8 (b, 3, S, S) -> float in [0, 1]
        # under DDP every rank draws the global batch's random numbers and keeps its own share: ranks augment
        # independently, the random stream stays the same on every rank, and it matches one process
        b, rank, world = x.shape[0], 0, 1
        if (self.flip or self.shift) and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        mine = slice(rank * b, (rank + 1) * b)
        if self.flip:
            mask = (torch.rand(b * world, device=x.device) < 0.5)[mine]
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.shift:
            offsets = torch.randint(0, 2 * self.shift + 1, (b * world, 2), device=x.device)[mine]
            x = shift_images(x, self.shift, offsets)
        x_hat, q = self.model(x)
        recon = F.mse_loss(x_hat.float(), x) * 4  # *4: MSE on the model's [-1, 1] scale
        loss = recon + q.loss
        return loss, {
            "recon_mse": recon.detach() / 4,  # reported on the [0, 1] pixel scale
            "commitment": q.commitment.detach(),
            "counts": q.counts,
        }


# -- weights files ------------------------------------------------------------------------------------------
def save_vqvae(model: VQVAE, path) -> None:
    """Write weights with the config as JSON metadata, atomically."""
    save_tensors(path, model.state_dict(), KIND_VQVAE, {"config": model.config.to_dict()})


def read_vqvae_config(path, check_tensors: bool = False) -> VQVAEConfig:
    """The config stored in a VQ-VAE weights file (from its header: no weights are read); with check_tensors,
    also refuse a file whose tensors are not the ones that config needs (before anything is built)."""
    header, meta = read_kind_header(path, KIND_VQVAE)
    cfg = config_from_meta(VQVAEConfig, meta, "config", path, upgrade=VQVAEConfig.upgrade)
    if check_tensors:
        check_fits(lambda: VQVAE(cfg), header, path, "VQ-VAE")
    return cfg


def load_vqvae(path, device: torch.device | str = "cpu") -> tuple[VQVAE, str]:
    """Rebuild a VQVAE from its weights file; returns (model in eval mode, sha256 of the file)."""
    cfg = read_vqvae_config(path, check_tensors=True)
    tensors, _ = load_tensors(path, KIND_VQVAE)
    model = VQVAE(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match their config ({first_problem(e)})") from None
    return model.to(device).eval(), file_sha256(path)


def open_vqvae(path=None, device: str = "auto") -> tuple[VQVAE, str, str]:
    """Load the given VQ-VAE, or the shipped one when path is None; returns (model, sha256, path).
    `device` is a name: auto, cpu, cuda or cuda:N."""
    path = path or shipped("vqvae")
    model, sha = load_vqvae(path, resolve_device(str(device)))
    return model, sha, str(path)
