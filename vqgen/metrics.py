"""Metric functions: reconstruction error (MSE, PSNR, SSIM), codebook usage, bits per code/dim, Frechet distance
and FID.

Tensors in (CPU or CUDA), Python floats / dicts out. Images are float in [0, 1] with shape (b, 3, H, W)
unless a function says uint8.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from vqgen import log
from vqgen.errors import ConfigError

LN2 = math.log(2.0)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # (K1 * L)^2 with data range L = 1
SSIM_C2 = 0.03**2

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
FID_FEATURE_DIM = 2048


# ---------------------------------------------------------------- reconstruction


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two image batches of equal shape (b, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over channels and pixels: (b, C, H, W) x 2 -> (b,) float64."""
    _check_pair(x, y)
    d = x.float() - y.float()
    return d.pow(2).flatten(1).mean(dim=1, dtype=torch.float64)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for pixels in [0, 1]: 10 log10(1 / mse); inf for mse == 0.

    vqgen reports the PSNR *of the mean MSE* over a set (not the mean of per-image PSNRs), so a few perfect
    images cannot push the figure to infinity and the number is consistent with the reported MSE.
    """
    mse = float(mse)
    if math.isnan(mse):
        return math.nan
    if mse < 0:
        raise ValueError(f"MSE cannot be negative, got {mse}")
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(1.0 / mse)


def _gaussian_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) for data range 1: (b, C, H, W) x 2 -> (b,) float64.

    Gaussian 11x11 window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, population (not sample) covariances, 'valid'
    windows only, mean over channels and positions; matches skimage's structural_similarity(..., data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0) per image.
    """
    _check_pair(x, y)
    b, c, h, w = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    # float64 on the CPU is cheap; on CUDA float32 is plenty for [0, 1] data (variance cancellation ~1e-7 << C2)
    dtype = torch.float64 if x.device.type == "cpu" or x.dtype == torch.float64 else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, dtype, x.device)
    gh = g.view(1, 1, 1, -1).repeat(5 * c, 1, 1, 1)
    gv = g.view(1, 1, -1, 1).repeat(5 * c, 1, 1, 1)
    # the five local moments of all channels in one separable depthwise 'valid' convolution
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    m = F.conv2d(F.conv2d(stack, gh, groups=5 * c), gv, groups=5 * c)
    mx, my, mxx, myy, mxy = m.split(c, dim=1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return s.flatten(1).mean(dim=1).to(torch.float64)


# ---------------------------------------------------------------- codes


def code_usage(codes: torch.Tensor, num_codes: int, counts: bool = False) -> dict:
    """Distinct codes used, perplexity (natural exp of the unigram entropy) and that entropy in bits.

    `codes` is an integer tensor of code indices of any shape, or with counts=True a histogram of length
    num_codes (what RunningStats keeps).
    """
    if num_codes < 1:
        raise ValueError(f"num_codes must be positive, got {num_codes}")
    if counts:
        hist = codes.flatten()
        if hist.numel() != num_codes:
            raise ValueError(f"histogram has {hist.numel()} bins, expected {num_codes}")
        if bool((hist < 0).any()):
            raise ValueError("histogram counts cannot be negative")
    else:
        flat = codes.flatten().long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_codes):
            raise ValueError(f"code indices must lie in [0, {num_codes}), got [{int(flat.min())}, {int(flat.max())}]")
        hist = torch.bincount(flat, minlength=num_codes)
    hist = hist.double()
    total = float(hist.sum())
    if total == 0:
        raise ValueError("no codes to count")
    p = hist[hist > 0] / total
    ent = float(-(p * p.log()).sum())
    return {"codes_used": int(p.numel()), "num_codes": int(num_codes), "perplexity": math.exp(ent),
            "unigram_entropy_bits": ent / LN2}


def bits_per_code(nll_nats_per_code: float) -> float:
    """Mean negative log-likelihood per code, nats -> bits."""
    return float(nll_nats_per_code) / LN2


def bits_per_dim(bits_per_code: float, codes_per_image: int, image_shape: tuple[int, ...]) -> float:
    """Bits of one image's code grid spread over its subpixels: bits_per_code * codes_per_image / (C*H*W).

    This counts only the prior's cost of the codes, not the decoder's reconstruction error, so it is a lower
    bound on what a lossless coder would need and not comparable to likelihood models' bits/dim.
    """
    dims = math.prod(int(s) for s in image_shape)
    if dims <= 0 or codes_per_image <= 0:
        raise ValueError(f"need a positive image shape and code count, got {tuple(image_shape)} and {codes_per_image}")
    return float(bits_per_code) * codes_per_image / dims


class RunningStats:
    """Mean MSE / SSIM over image pairs and a code histogram, accumulated batch by batch."""

    def __init__(self, num_codes: int | None = None, with_ssim: bool = True):
        self.num_codes = num_codes
        self.with_ssim = with_ssim
        self.images = 0
        self.mse_sum = 0.0  # sum of per-image MSEs; all images of a set share one size
        self.ssim_sum = 0.0
        self.hist = torch.zeros(num_codes, dtype=torch.long) if num_codes else None

    def update_images(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of originals and reconstructions, float in [0, 1], (b, 3, H, W)."""
        self.mse_sum += float(mse(x, y).sum())
        if self.with_ssim:
            self.ssim_sum += float(ssim(x, y).sum())
        self.images += x.shape[0]

    def update_codes(self, codes: torch.Tensor) -> None:
        """Add a batch of code indices of any shape."""
        if self.hist is None:
            raise ValueError("RunningStats was made without num_codes")
        flat = codes.flatten().long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_codes):
            raise ValueError(f"code indices must lie in [0, {self.num_codes})")
        self.hist += torch.bincount(flat, minlength=self.num_codes).cpu()

    @property
    def mean_mse(self) -> float:
        return self.mse_sum / self.images if self.images else math.nan

    @property
    def psnr(self) -> float:
        """PSNR of the mean MSE (see psnr_from_mse)."""
        return psnr_from_mse(self.mean_mse)

    @property
    def mean_ssim(self) -> float:
        return self.ssim_sum / self.images if self.images and self.with_ssim else math.nan

    def summary(self) -> dict:
        """What was accumulated, as plain numbers (image metrics only if images were added, likewise codes)."""
        out: dict = {}
        if self.images:
            out.update({"images": self.images, "mse": self.mean_mse, "psnr": self.psnr})
            if self.with_ssim:
                out["ssim"] = self.mean_ssim
        if self.hist is not None and int(self.hist.sum()):
            out.update(code_usage(self.hist, self.num_codes, counts=True))
        return out


# ---------------------------------------------------------------- Frechet distance / FID


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and sample covariance (d, d), divisor n - 1, of features (n, d), in float64."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (n >= 2, d), got {tuple(features.shape)}")
    f = features.to(torch.float64)
    mu = f.mean(dim=0)
    c = f - mu
    return mu, (c.T @ c) / (f.shape[0] - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(s1) + Tr(s2) - 2 Tr(sqrtm(s1 s2)) between two Gaussians, in float64.

    Tr sqrtm(s1 s2) is taken as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    sqrt(s1) s2 sqrt(s1) (same spectrum as s1 s2), which avoids the complex-valued sqrtm of a non-symmetric
    product; eigenvalues that rounding pushes below zero are clamped, and so is the result.
    """
    mu1, mu2, s1, s2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    mu2, s1, s2 = mu2.to(mu1.device), s1.to(mu1.device), s2.to(mu1.device)
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if d < 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected means (d,) and covariances (d, d), got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    if not all(bool(torch.isfinite(t).all()) for t in (mu1, mu2, s1, s2)):
        raise ValueError("feature statistics contain NaN or infinity")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return max(float(fd), 0.0)


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (n1, d) and (n2, d)."""
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with the same d, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    n = min(f1.shape[0], f2.shape[0])
    if n < f1.shape[1]:
        # fewer samples than dimensions: singular covariances, and the estimate is biased upward
        log.warn(f"FID from {n} images (< {f1.shape[1]} feature dims) is strongly biased; "
                 "compare only figures computed with the same number of images")
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def inception_weights_path() -> Path:
    """Where torch-fidelity (through torch.hub) keeps the Inception weights: <torch hub dir>/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _weights_help(where: Path) -> str:
    return (f"FID needs the optional package torch-fidelity and its Inception weights: pip install 'vqgen[fid]'; torch-fidelity downloads "
            f"{INCEPTION_WEIGHTS_FILE} on first use into {where.parent}; on an offline machine copy that file there")


def _inception(device: torch.device, weights_path: str | os.PathLike | None, allow_download: bool):
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ConfigError(_weights_help(inception_weights_path())) from None
    where = Path(weights_path) if weights_path is not None else inception_weights_path()
    if not where.is_file():
        if weights_path is not None or not allow_download:
            raise ConfigError(f"Inception weights not found at {where}. " + _weights_help(inception_weights_path()))
        log.note(f"downloading the Inception weights for FID into {where.parent}")
        where = None  # let torch-fidelity fetch them through torch.hub into that cache
    try:
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=None if where is None else str(where))
    # URLError is an OSError; a truncated or foreign file fails in unpickling or in load_state_dict
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"could not load the Inception weights ({first}). " + _weights_help(inception_weights_path())) from None
    return model.to(device).eval()


@torch.no_grad()
def inception_features(images: torch.Tensor, device: str | torch.device = "cpu", batch_size: int = 64,
                       weights_path: str | os.PathLike | None = None, allow_download: bool = True) -> torch.Tensor:
    """2048-d pool features of torch-fidelity's InceptionV3 (the TF-FID port) for uint8 images (n, 3, H, W).

    Returns (n, 2048) float64 on the CPU. Images are resized to 299x299 inside the extractor. Needs the optional
    package torch-fidelity; its weights come from `weights_path`, else the torch hub cache, else (only if
    allow_download) are downloaded once into that cache. Raises ConfigError saying how to get them otherwise.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (n, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    model = _inception(device, weights_path, allow_download)
    out = torch.empty(images.shape[0], FID_FEATURE_DIM, dtype=torch.float64)
    for i in range(0, images.shape[0], batch_size):
        feats = model(images[i : i + batch_size].to(device))[0]
        out[i : i + feats.shape[0]] = feats.to(torch.float64).cpu()
    return out
