"""`pixelcnn`: the Gated PixelCNN of van den Oord et al. 2016 ("Conditional Image Generation with PixelCNN
Decoders") over a grid of VQ-VAE codes, with an exact cached sampler.

Architecture
- codes -> nn.Embedding(K, C) -> two stacks of `layers` gated layers:
  * vertical stack: (k//2+1) x k convolutions over the rows above (row i sees rows <= i of its input);
  * horizontal stack: 1 x (k//2+1) convolutions over the current row, left of and at the current column;
  * each layer's vertical pre-activation is fed into the horizontal one through a 1x1 conv (no blind spot).
- Type 'A' masking (first layer excludes the current position) is done by shifting the layer-0 inputs by one
  step (the vertical stack's input down one row, the horizontal stack's input right one column); every later
  layer is type 'B' (includes its own position). This is the mask-A kernel with no wasted (zeroed) weights.
- Gated units tanh(a) * sigmoid(b); class conditioning adds a learned per-class bias to a and b of both
  stacks in every layer; a residual connection on the horizontal stack; per-layer skip outputs are summed
  and fed to a ReLU-1x1-ReLU-1x1 head producing (b, K, H, W) logits.
Position (i, j) therefore sees exactly the codes before it in raster order, given enough layers:
receptive field reaches layers*(k//2) columns right of j in the rows above (needs >= W-1) and
layers*(k//2)+1 rows up (needs >= H-1); the constructor refuses sizes that leave a blind region.

Sampling (`generate`) is exact and does one network's worth of work in total instead of H*W full passes:
the vertical stack at row i depends only on rows < i, so each layer computes just row i once per row from
a cache of the rows below it; then for each column j only position (i, j) of the horizontal stack is
computed per layer (its window of k//2+1 cached positions) and the head is run on that one position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.base import AutoregressivePrior, PriorConfig, Steps
from vqgen.errors import ConfigError


@dataclass
class PixelCNNConfig(PriorConfig):
    # Defaults for 8x8 grids of K=512 CIFAR-10 codes, sized to train on a 2-core CPU. Kernel 3 costs 22*C^2
    # multiply-adds per position and layer against 42*C^2 for kernel 5, so depth is cheaper than wide
    # kernels; 10 layers of kernel 3 reach 10 columns right / 11 rows up, covering every earlier position of
    # an 8x8 grid with a margin. 96 channels gives ~2.2M parameters for CIFAR-10's ~3.1M training codes: without
    # dropout, held-out NLL stopped falling after ~5 epochs and rose after (docs/model-card.md), so train
    # longer than that with -o dropout=0.2 (how the shipped prior was trained). Measured on one busy CPU thread,
    # batch 64: Adam step 0.49 s (64ch/15 layers), 0.69 s (this), 0.91 s (96ch/8 layers/k5), 1.34 s
    # (128ch/12 layers); cached sampling of 64 grids 0.34 / 0.40 / 0.49 / 0.65 s. On a GPU, 128ch/12 layers
    # (-o channels=128 -o layers=12) is affordable.
    channels: int = 96  # C: embedding width and feature channels of both stacks
    layers: int = 10  # number of gated layers (the first is type 'A', the rest type 'B')
    kernel_size: int = 3  # k (odd): vertical kernels are (k//2+1) x k, horizontal ones 1 x (k//2+1)
    dropout: float = 0.0  # dropout on each layer's gated horizontal output (training only)


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _gate_last(x: torch.Tensor) -> torch.Tensor:
    """_gate over the last dimension (the cached sampler's channels-last layout)."""
    a, b = x.chunk(2, dim=-1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, c: int, k: int, num_classes: int, dropout: float):
        super().__init__()
        p = k // 2
        self.p = p
        self.v_conv = nn.Conv2d(c, 2 * c, (p + 1, k))  # applied to input padded p rows on top, p cols each side
        self.h_conv = nn.Conv2d(c, 2 * c, (1, p + 1))  # applied to input padded p cols on the left
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, 2 * c, 1)  # -> residual (c) and skip (c)
        self.cond = nn.Embedding(num_classes, 4 * c) if num_classes else None
        if self.cond is not None:
            nn.init.normal_(self.cond.weight, std=0.1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def class_bias(self, labels):
        """(b,) labels -> per-class biases (vertical, horizontal), each (b, 2C, 1, 1); zeros if unconditional."""
        if self.cond is None:
            return 0.0, 0.0
        cv, ch = self.cond(labels)[:, :, None, None].chunk(2, dim=1)
        return cv, ch

    def forward(self, v, h, cv, ch):
        p = self.p
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))
        h_pre = self.h_conv(F.pad(h, (p, 0, 0, 0))) + self.v_to_h(v_pre)
        v_out = _gate(v_pre + cv)
        res, skip = self.h_out(self.drop(_gate(h_pre + ch))).chunk(2, dim=1)
        return v_out, h + res, skip


class PixelCNN(AutoregressivePrior):
    config_class = PixelCNNConfig
    supports_null_class = True
    growable_fields = ("channels", "layers")

    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        c = self.config
        for f in ("channels", "layers", "kernel_size"):
            v = getattr(c, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"pixelcnn: {f} must be a positive integer, got {v!r}")
        if c.kernel_size < 3 or c.kernel_size % 2 == 0:
            raise ConfigError(f"pixelcnn: kernel_size must be odd and >= 3, got {c.kernel_size}")
        if not 0.0 <= float(c.dropout) < 1.0:
            raise ConfigError(f"pixelcnn: dropout must be in [0, 1), got {c.dropout}")
        reach = c.layers * (c.kernel_size // 2)
        if reach < c.width - 1 or reach + 1 < c.height - 1:
            need = max(-(-(c.width - 1) // (c.kernel_size // 2)), -(-(c.height - 2) // (c.kernel_size // 2)))
            raise ConfigError(
                f"pixelcnn: {c.layers} layers of kernel {c.kernel_size} cannot see the whole {c.height}x{c.width} "
                f"grid before a position; use at least {need} layers or a larger kernel_size"
            )
        C = c.channels
        self.embed = nn.Embedding(c.num_codes, C)
        self.layers = nn.ModuleList(GatedLayer(C, c.kernel_size, self.num_label_slots, float(c.dropout))
                                    for _ in range(c.layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, c.num_codes, 1))

    @torch.no_grad()
    def grow_from(self, tensors: dict[str, torch.Tensor], old: PixelCNNConfig) -> None:
        """Load a narrower or shallower PixelCNN's weights so that this one computes the same logits.

        Channels come in blocks (a gate's tanh and sigmoid halves, h_out's residual and skip halves, a class
        bias's four), so each trained block goes to the start of its wider block. The weights by which a trained
        unit reads a new channel are zeroed: the new channels (randomly initialised, free to learn) go unseen
        until training moves those weights. Added layers go after the trained ones, whose last vertical output
        was unused, with a zero h_out: at step 0 they add nothing to the residual stream or the skips."""
        c0, c = old.channels, self.config.channels

        def trained(size: int, old_size: int) -> torch.Tensor:  # where a dim's trained entries go
            if size == old_size:
                return torch.arange(size)
            blocks = size // c
            if size != blocks * c or old_size != blocks * c0:
                raise ConfigError(f"pixelcnn: cannot grow a dim of {old_size} into {size} channels")
            return torch.cat([torch.arange(b * c, b * c + c0) for b in range(blocks)])

        for name, new in self.state_dict().items():
            if name.startswith("layers.") and int(name.split(".")[1]) >= old.layers:
                if ".h_out." in name:
                    new.zero_()
                continue
            t = tensors.get(name)
            if t is None:
                raise ConfigError(f"the weights lack the tensor {name}; they are not a pixelcnn of channels={c0}, "
                                  f"layers={old.layers}")
            idx = [trained(n, o) for n, o in zip(new.shape, t.shape)]
            new[torch.meshgrid(*idx, indexing="ij")] = t.to(new.dtype)
            if new.dim() == 4 and new.shape[1] > t.shape[1]:  # a conv (out, in, kh, kw) gained inputs
                unseen = torch.ones(new.shape[1], dtype=torch.bool)
                unseen[idx[1]] = False
                new[idx[0][:, None], unseen.nonzero()[:, 0][None, :]] = 0

    @classmethod
    def tiny_config(cls, **overrides) -> PixelCNNConfig:
        return super().tiny_config(**{"channels": 16, "layers": 3, "kernel_size": 3, **overrides})

    def logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.check_labels(labels, codes.shape[0])
        x = self.embed(codes).permute(0, 3, 1, 2)  # (b, C, H, W)
        v = F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # shifted down a row: vertical stack sees rows < i
        h = F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]  # shifted right a column: type 'A' first layer
        skips = 0
        for layer in self.layers:
            cv, ch = layer.class_bias(labels)
            v, h, s = layer(v, h, cv, ch)
            skips = skips + s
        return self.head(skips)

    def decode(self, n: int, labels: torch.Tensor | None) -> Steps:
        """Exact cached decoding loop (see module docstring); the same logits as generate_naive's.

        Per row, each layer's vertical conv runs on just the k//2+1 cached rows it reads; per position, the
        horizontal stack and head run as matrix products on the cached (k//2+1)-wide window of that row
        (tiny conv2d calls cost ~100 us each on CPU, the equivalent F.linear a few us)."""
        c = self.config
        H, W, C, p, L, k = c.height, c.width, c.channels, c.kernel_size // 2, c.layers, c.kernel_size
        dev = self.device
        dtype = self.embed.weight.dtype
        codes = torch.zeros(n, H, W, dtype=torch.long, device=dev)
        # every cache is channels-last, so a row or a position is one contiguous block: the vertical stack's
        # row i becomes one matrix product over its (p+1) x k windows, and no write or read is strided over C
        # vertical kernel as a matrix: input window (p+1 rows x k columns x C channels, row-major) -> 2C
        wv = [l.v_conv.weight.permute(0, 2, 3, 1).reshape(2 * C, (p + 1) * k * C) for l in self.layers]
        wl = [l.v_to_h.weight[:, :, 0, 0] for l in self.layers]
        # per-layer weights as matrices: horizontal window (p+1 positions x C channels, position-major)
        wh = [l.h_conv.weight[:, :, 0, :].permute(0, 2, 1).reshape(2 * C, (p + 1) * C) for l in self.layers]
        wo = [l.h_out.weight[:, :, 0, 0] for l in self.layers]
        bh = []  # horizontal-gate bias: conv bias + link bias + class bias, (n, 2C) or (2C,)
        cv = []  # vertical-gate class bias, (n, 1, 2C) or 0
        for layer in self.layers:
            v_bias, ch = layer.class_bias(labels)
            b = layer.h_conv.bias + layer.v_to_h.bias
            bh.append(b + ch[:, :, 0, 0] if isinstance(ch, torch.Tensor) else b)
            cv.append(v_bias[:, None, :, 0, 0] if isinstance(v_bias, torch.Tensor) else 0.0)
        head1, head2 = self.head[1], self.head[3]
        w1, w2 = head1.weight[:, :, 0, 0], head2.weight[:, :, 0, 0]
        # vin[l]: (n, H + p, W + 2p, C) input of layer l's vertical conv, padded p rows on top and p columns each
        # side; vin[0] holds the embeddings shifted down one row: embedding row r lives at padded row r + 1 + p.
        vin = [torch.zeros(n, H + p, W + 2 * p, C, device=dev, dtype=dtype) for _ in range(L)]
        # hin[l]: (n, p + W, C) input of layer l's horizontal conv for the current row, p zero columns on the
        # left; hin[0] holds the row's embeddings shifted right one column (col j at index j + 1 + p).
        # No reset between rows is needed: position j reads indices j..j+p, all written earlier in this row
        # (or at this step by layer l-1), apart from the zero padding and hin[0][:, p], which is never written.
        hin = [torch.zeros(n, W + p, C, device=dev, dtype=dtype) for _ in range(L)]
        for i in range(H):
            links = []  # (n, W, 2C): vertical -> horizontal link of row i, with the horizontal gate's biases
            for li, layer in enumerate(self.layers):
                rows = vin[li][:, i : i + p + 1]  # (n, p+1, W+2p, C)
                sn, sr, sw, sc = rows.stride()
                windows = rows.as_strided((n, W, p + 1, k, C), (sn, sw, sr, sw, sc))  # column w: cols w..w+k-1
                v_pre = F.linear(windows.reshape(n, W, (p + 1) * k * C), wv[li], layer.v_conv.bias)  # (n, W, 2C)
                links.append(F.linear(v_pre, wl[li]) + (bh[li][:, None] if bh[li].dim() == 2 else bh[li]))
                if li + 1 < L:
                    vin[li + 1][:, i + p, p : p + W] = _gate_last(v_pre + cv[li])
            for j in range(W):
                skips = 0
                for li, layer in enumerate(self.layers):
                    h_in = hin[li]
                    window = h_in[:, j : j + p + 1].reshape(n, (p + 1) * C)
                    h_pre = torch.addmm(links[li][:, j], window, wh[li].t())
                    res, skip = F.linear(_gate_last(h_pre), wo[li], layer.h_out.bias).chunk(2, dim=1)
                    if li + 1 < L:
                        torch.add(h_in[:, j + p], res, out=hin[li + 1][:, j + p])
                    skips = skips + skip
                hidden = F.relu(F.linear(F.relu(skips), w1, head1.bias))
                code = yield F.linear(hidden, w2, head2.bias)
                codes[:, i, j] = code
                e = self.embed(code)  # (n, C)
                if j + 1 < W:
                    hin[0][:, j + 1 + p] = e
                if i + 1 < H:
                    vin[0][:, i + 1 + p, j + p] = e
        return codes
