"""The shipped CIFAR-10 weights, used when no VQ-VAE / prior file is given."""

from __future__ import annotations

from pathlib import Path

from vqgen.errors import ConfigError

_HERE = Path(__file__).parent
# weak_prior: what the shipped prior is autoguided away from by default (vqgen.sampling.DEFAULT_AUTOGUIDANCE)
FILES = {"vqvae": "vqvae.safetensors", "prior": "prior.safetensors", "weak_prior": "prior-weak.safetensors"}


def shipped(kind: str) -> Path:
    """Path of the shipped weights of this kind, or a ConfigError saying how to proceed without them."""
    path = _HERE / FILES[kind]
    if not path.exists():
        raise ConfigError(
            f"no shipped {kind} weights in this installation; pass {{{kind}}} with a file you trained "
            f"(see `vqgen train-{'vqvae' if kind == 'vqvae' else 'prior'} --help`)"
        )
    return path
