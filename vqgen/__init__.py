"""vqgen: VQ-VAE discrete codes for images and autoregressive priors over them."""

__version__ = "0.1.0"
