"""Where the shipped VQ-VAE loses PSNR: training images against held-out ones, and whether augmented fine-tuning helps.

    python bench/probes/probe_generalisation.py DATA --n-train 10000          # PSNR on random training images vs held-out
    python bench/probes/probe_generalisation.py DATA --tune decoder --minutes 15
    python bench/probes/probe_generalisation.py DATA --tune all --minutes 15
    python bench/probes/probe_generalisation.py DATA --grow 256,6,128 --tune decoder --minutes 25 --lr 5e-4
    python bench/probes/probe_generalisation.py DATA --up-blocks 2 --tune decoder --minutes 15

`--tune` fine-tunes a copy of the VQ-VAE for a fixed wall time with left-right flips and a random translation
(reflect-padded, one shift per batch, up to --shift pixels), AdamW at --lr with warm-up and cosine decay over
the time budget, bf16 autocast, and prints held-out PSNR every 500 steps. `decoder` trains only the decoder
(the encoder and codebook stay frozen, so every image keeps its codes); `all` trains the whole model.
`--grow` first widens / deepens the model with vqgen.grow and `--up-blocks` adds residual blocks at 16x16 to the
decoder (both keep the function at step 0). A probe: it writes no weights. Progress on stderr, one JSON summary
(with held-out PSNR by class) on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from vqgen.data import load_images, split_indices
from vqgen.metrics import mse, psnr_from_mse
from vqgen.data import SPLIT_SEED
from vqgen.vqvae import open_vqvae
from vqgen.grow import grow_into
from vqgen.vqvae import VQVAE, ResBlock, shift_images


@torch.no_grad()
def errors(model, images: torch.Tensor) -> torch.Tensor:
    """Per-image MSE (n,) of the reconstructions of uint8 images (n, 3, S, S)."""
    model.eval()
    batches = (images[i : i + 500].float() / 255 for i in range(0, len(images), 500))
    return torch.cat([mse(x, model(x)[0].clamp(0, 1)) for x in batches])


def psnr(model, images: torch.Tensor) -> float:
    """PSNR of the mean MSE over uint8 images (n, 3, S, S)."""
    return psnr_from_mse(errors(model, images).mean().item())


def augment(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Random left-right flips per image and one random translation per batch (reflect padding)."""
    x = torch.where((torch.rand(x.shape[0]) < 0.5)[:, None, None, None], x.flip(3), x)
    if shift:
        dx, dy = torch.randint(0, 2 * shift + 1, (2,)).tolist()
        x = shift_images(x, shift, torch.tensor([[dy, dx]]).expand(x.shape[0], 2))
    return x.contiguous(memory_format=torch.channels_last)


def add_upsampled_blocks(net: torch.nn.Sequential, n: int) -> torch.nn.Sequential:
    """The decoder with n residual blocks after its first upsampling, each starting as the identity."""
    layers = list(net)
    at = next(i for i, m in enumerate(layers) if isinstance(m, torch.nn.ConvTranspose2d)) + 2  # after its ReLU
    ch = layers[at - 2].out_channels
    blocks = [ResBlock(ch, ch) for _ in range(n)]
    for b in blocks:
        torch.nn.init.zeros_(b.conv2.weight)
        torch.nn.init.zeros_(b.conv2.bias)
    return torch.nn.Sequential(*layers[:at], *blocks, *layers[at:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--vqvae", default=None, help="weights (default: the shipped VQ-VAE)")
    ap.add_argument("--tune", choices=["decoder", "all"], default=None)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--shift", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grow", default=None, metavar="H,B,C",
                    help="first grow the model to hidden H, B residual blocks of C channels (vqgen.grow)")
    ap.add_argument("--up-blocks", type=int, default=0,
                    help="insert this many residual blocks at 16x16 in the decoder, each starting as the identity")
    ap.add_argument("--n-train", type=int, default=None, help="training images to measure (default: as many as held out)")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    images = load_images(a.data)
    tr, va = split_indices(len(images.images), 0.02, SPLIT_SEED)
    train, held = images.images[tr], images.images[va]
    model, _, _ = open_vqvae(a.vqvae, device="cpu")
    if a.grow:
        h, b, c = (int(v) for v in a.grow.split(","))
        big = VQVAE(replace(model.config, hidden=h, res_blocks=b, res_channels=c))
        grow_into(big, model)
        model = big
    if a.up_blocks:
        model.decoder.net = add_upsampled_blocks(model.decoder.net, a.up_blocks)
    model = model.to(memory_format=torch.channels_last)
    # Training images drawn at random: the split's indices are sorted and ImageFolder
    # orders by class, so the first 1,000 would all be airplanes (easier images: ~1.2 dB higher PSNR).
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(a.seed))[: a.n_train or len(held)]
    probe = train[pick]
    err = errors(model, held)
    out = {"heldout_psnr": psnr_from_mse(err.mean().item()), "train_psnr": psnr(model, probe)}
    if images.labels is not None:
        labels = images.labels[va]
        out["heldout_psnr_by_class"] = {name: round(psnr_from_mse(err[labels == k].mean().item()), 3)
                                        for k, name in enumerate(images.class_names) if (labels == k).any()}
    print(f"start: held-out {out['heldout_psnr']:.3f} dB, training images {out['train_psnr']:.3f} dB", file=sys.stderr)
    if a.tune:
        params = model.decoder.parameters() if a.tune == "decoder" else model.parameters()
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        budget, t0, step = a.minutes * 60, time.time(), 0
        while (elapsed := time.time() - t0) < budget:
            for g in opt.param_groups:  # warm-up, then cosine over the wall-time budget
                g["lr"] = a.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
            x = augment(train[torch.randint(len(train), (128,))].float() / 255, a.shift)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if a.tune == "decoder":
                    model.decoder.train()
                    with torch.no_grad():
                        z_q = model.quantizer(model.encoder(x * 2 - 1)).z_q
                    loss = F.mse_loss((model.decoder(z_q) + 1).float() / 2, x) * 4
                else:
                    model.train()
                    x_hat, q = model(x)
                    loss = F.mse_loss(x_hat.float(), x) * 4 + q.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 500 == 0:
                print(f"step {step} ({elapsed:.0f} s): held-out {psnr(model, held):.3f} dB", file=sys.stderr)
        out.update({"grow": a.grow, "up_blocks": a.up_blocks, "tune": a.tune, "steps": step, "minutes": a.minutes, "lr": a.lr, "shift": a.shift,
                    "tuned_heldout_psnr": psnr(model, held), "tuned_train_psnr": psnr(model, probe)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
