"""Start a VQ-VAE from a trained one (`train-vqvae --init-from`), possibly wider or deeper, computing the
same function at step 0.

Growing keeps what the smaller model learned, so a larger model starts at the smaller one's PSNR instead of
at noise: each trained tensor goes into the leading corner of its larger counterpart; where a layer gains
input channels the weights that read them are zeroed, so the new channels (randomly initialised, free to
learn) are invisible until training moves those weights; a residual block the smaller model lacks gets a
zero last convolution, so it starts as the identity. The codebook and its EMA statistics are copied; a larger
codebook keeps the trained codes as its first K and fills the rest with copies of them marked unused, so no
image changes code at step 0 and the first training step's dead-code restart moves each new code onto an
encoder output (where the trained codes are crowded, new ones land)."""

from __future__ import annotations

import torch
import torch.nn as nn

from vqgen.errors import ConfigError
from vqgen.vqvae import VQVAE, ResBlock, VQVAEConfig

# fields that fix what a code is; growing may change the others (hidden, res_blocks, res_channels, ...)
SAME_FIELDS = ("image_size", "code_dim", "quantizer")
GROWABLE = ("hidden", "res_blocks", "res_channels", "num_codes")


def _roles(net: nn.Sequential) -> dict[str, nn.Module]:
    """Name each parametrised layer by its role ('layer0', 'layer1', ... and 'res0', 'res1', ...), so layers
    keep their names when the number of residual blocks (and with it the Sequential index) changes."""
    roles, n_layer, n_res = {}, 0, 0
    for m in net:
        if isinstance(m, ResBlock):
            roles[f"res{n_res}"] = m
            n_res += 1
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            roles[f"layer{n_layer}"] = m
            n_layer += 1
    return roles


@torch.no_grad()
def _copy_into(new: torch.Tensor, old: torch.Tensor, in_dim: int | None) -> None:
    new[tuple(slice(0, s) for s in old.shape)] = old.to(new.dtype)
    if in_dim is not None and new.shape[in_dim] > old.shape[in_dim]:
        rest = [slice(None)] * new.dim()
        rest[in_dim] = slice(old.shape[in_dim], None)
        new[tuple(rest)] = 0


def _in_dim(m: nn.Module) -> int:
    return 0 if isinstance(m, nn.ConvTranspose2d) else 1  # ConvTranspose2d stores (in, out, kh, kw)


@torch.no_grad()
def _grow_conv(new: nn.Module, old: nn.Module) -> None:
    _copy_into(new.weight, old.weight, _in_dim(new))
    _copy_into(new.bias, old.bias, None)


def check_growable(small: VQVAEConfig, big: VQVAEConfig) -> None:
    """Raise ConfigError unless `big` can start from a model with config `small`."""
    for f in SAME_FIELDS:
        if getattr(small, f) != getattr(big, f):
            raise ConfigError(f"{{init_from}} has {{{f}={getattr(small, f)}}} but this run asks for "
                              f"{{{f}={getattr(big, f)}}}; it must match (pass the same value or leave it out)")
    for f in GROWABLE:
        if getattr(big, f) < getattr(small, f):
            raise ConfigError(f"{{init_from}} has {{{f}={getattr(small, f)}}}; a run can only keep or grow it, not "
                              f"shrink it to {getattr(big, f)}")


@torch.no_grad()
def grow_into(big: VQVAE, small: VQVAE) -> None:
    """Load `small`'s weights into `big` (same or larger) so that `big` computes what `small` computes."""
    check_growable(small.config, big.config)
    for new_net, old_net in ((big.encoder.net, small.encoder.net), (big.decoder.net, small.decoder.net)):
        new_roles, old_roles = _roles(new_net), _roles(old_net)
        for role, new in new_roles.items():
            old = old_roles.get(role)
            if isinstance(new, ResBlock):
                if old is None:  # a new block starts as the identity
                    new.conv2.weight.zero_()
                    new.conv2.bias.zero_()
                else:
                    _grow_conv(new.conv1, old.conv1)
                    _grow_conv(new.conv2, old.conv2)
            else:
                _grow_conv(new, old)
    _grow_codebook(big.quantizer, small.quantizer)


@torch.no_grad()
def _grow_codebook(big: nn.Module, small: nn.Module) -> None:
    k = small.num_codes
    state = small.state_dict()
    if big.num_codes == k:
        big.load_state_dict(state)
        return
    # copies, not fresh vectors: a copy ties with its original, the original (lower index) wins, so the
    # codes and the decoded images at step 0 are the small model's
    rows = torch.arange(big.num_codes) % k
    for name, t in state.items():
        if t.dim() == 0:
            getattr(big, name).copy_(t)
        else:
            getattr(big, name).copy_(t[rows])
    # zero usage marks the copies dead: the first training step restarts them on encoder outputs
    big.usage[k:] = 0.0
