"""Stage-2 priors: models of VQ-VAE code grids, and their registry (see docs/plugins.md).

    from priors import get_prior, list_priors
    cls = get_prior("pixelcnn")
    prior = cls(cls.config_class(num_codes=512, height=8, width=8))

The interface is priors.base (Prior, and AutoregressivePrior for raster order), the registry (built-ins,
entry-point plugins) priors.registry, the properties every prior must have priors.contract; this package only
re-exports the first two. A prior imports vqgen's library layer (errors, log) only, never the VQ-VAE or a command.
"""

from __future__ import annotations

from priors.base import LIKELIHOODS, AutoregressivePrior, Known, Prior, PriorConfig, Sampling, prior_class_problem
from priors.registry import (DEFAULT_PRIOR, ENTRY_POINT_GROUP, get_prior, list_priors, register_prior,
                             reset_plugins)

__all__ = ["Prior", "AutoregressivePrior", "PriorConfig", "Known", "Sampling", "LIKELIHOODS", "register_prior",
           "get_prior", "list_priors", "reset_plugins", "ENTRY_POINT_GROUP", "DEFAULT_PRIOR", "prior_class_problem"]
