"""Stage-2 priors: a registry of autoregressive models over VQ-VAE code grids (see docs/plugins.md).

    from priors import get_prior, list_priors
    cls = get_prior("pixelcnn")
    prior = cls(cls.config_class(num_codes=512, height=8, width=8))

Built-in priors are registered when this package is imported. Third-party priors are found through the
`vqgen.priors` entry-point group (the entry-point name is the registry name), loaded once, lazily, on the
first get_prior()/list_priors() call. A plugin that fails to load gets one warning and is skipped.
VQGEN_NO_PLUGINS=1 turns plugin loading off.
"""

from __future__ import annotations

import importlib.metadata
import os

from priors.base import _ORIGINS, _REGISTRY, Prior, PriorConfig, prior_class_problem, register_prior
from priors import pixelcnn as _pixelcnn  # noqa: F401  (registers "pixelcnn")
from priors import transformer as _transformer  # noqa: F401  (registers "transformer")
from vqgen.errors import ConfigError

__all__ = ["Prior", "PriorConfig", "register_prior", "get_prior", "list_priors", "reset_plugins", "ENTRY_POINT_GROUP",
           "DEFAULT_PRIOR"]

ENTRY_POINT_GROUP = "vqgen.priors"
DEFAULT_PRIOR = "pixelcnn"  # the paper's prior

_BUILTINS = frozenset(_REGISTRY)  # names registered by this package itself
_plugins_loaded = False


def _entry_points():
    """The installed `vqgen.priors` entry points (a seam tests monkeypatch)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _plugins_disabled() -> bool:
    return os.environ.get("VQGEN_NO_PLUGINS", "").strip().lower() not in ("", "0", "false", "no", "off")


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    if _plugins_disabled():
        return
    from vqgen.log import warn

    try:
        eps = list(_entry_points())
    except Exception as e:  # a broken environment must not break the built-in priors
        warn(f"could not list '{ENTRY_POINT_GROUP}' plugins: {type(e).__name__}: {e}")
        return
    for ep in sorted(eps, key=lambda e: e.name):
        where = f"prior plugin '{ep.name}' ({ep.value})"
        try:
            obj = ep.load()
        except (Exception, SystemExit) as e:
            warn(f"skipping {where}: it failed to import: {type(e).__name__}: {e}")
            continue
        problem = prior_class_problem(obj)
        if problem:
            warn(f"skipping {where}: {problem}")
            continue
        if ep.name in _REGISTRY and _REGISTRY[ep.name] is not obj:
            warn(f"skipping {where}: the name '{ep.name}' is already taken ({_ORIGINS[ep.name]})")
            continue
        dist = getattr(ep, "dist", None)
        obj.name = ep.name
        _REGISTRY[ep.name] = obj
        _ORIGINS[ep.name] = (getattr(dist, "name", None) if dist is not None else None) or ep.value.split(".")[0].split(":")[0]


def get_prior(name: str) -> type[Prior]:
    """The prior class registered under name, or ConfigError listing the known names."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown prior {name!r}; known priors: {', '.join(sorted(_REGISTRY))}") from None


def list_priors() -> dict[str, str]:
    """name -> origin ("built-in", or the distribution that provided the plugin), sorted by name."""
    _load_plugins()
    return {name: _ORIGINS[name] for name in sorted(_REGISTRY)}


def reset_plugins() -> None:
    """Forget every non-built-in prior and allow plugins to be loaded again (for tests)."""
    global _plugins_loaded
    for name in list(_REGISTRY):
        if name not in _BUILTINS:
            del _REGISTRY[name]
            del _ORIGINS[name]
    _plugins_loaded = False
