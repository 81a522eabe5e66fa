"""The one owner of the prior registry: name -> class and name -> origin, register_prior, get_prior,
list_priors, the `vqgen.priors` entry points and reset_plugins.

The built-in priors are registered explicitly below. Third-party priors come from the `vqgen.priors`
entry-point group (the entry-point name is the registry name), loaded once per process, lazily, on the first
get_prior()/list_priors() call; a plugin that fails to load gets one warning line (naming its distribution) and
is skipped.
VQGEN_NO_PLUGINS=1 turns plugin loading off.
"""

from __future__ import annotations

import importlib.metadata
import os

from priors.base import Prior, prior_class_problem
from priors.maskgit import MaskGIT
from priors.pixelcnn import PixelCNN
from priors.transformer import Transformer
from vqgen.errors import ConfigError
from vqgen import log

ENTRY_POINT_GROUP = "vqgen.priors"
DEFAULT_PRIOR = "pixelcnn"  # the paper's prior
BUILTIN_ORIGIN = "built-in"

# one entry per registered prior: name -> class, and name -> where it came from ("built-in" or a distribution)
_REGISTRY: dict[str, type[Prior]] = {}
_ORIGINS: dict[str, str] = {}
_plugins_loaded = False


def _add(name: str, cls: type[Prior], origin: str) -> None:
    cls.name = name
    _REGISTRY[name] = cls
    _ORIGINS[name] = origin


def register_prior(name: str):
    """Class decorator: make a Prior subclass available as get_prior(name)."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"prior name must be a non-empty string without surrounding spaces, got {name!r}")

    def deco(cls):
        problem = prior_class_problem(cls)
        if problem:
            raise TypeError(f"cannot register {cls!r} as prior '{name}': {problem}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"prior name '{name}' is already registered ({_ORIGINS[name]})")
        top = cls.__module__.split(".")[0]
        _add(name, cls, BUILTIN_ORIGIN if top == "priors" else top)
        return cls

    return deco


register_prior("pixelcnn")(PixelCNN)
register_prior("transformer")(Transformer)
register_prior("maskgit")(MaskGIT)
_BUILTINS = frozenset(_REGISTRY)  # names registered by this package itself


def _entry_points():
    """The installed `vqgen.priors` entry points (a seam tests monkeypatch)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _plugins_disabled() -> bool:
    return os.environ.get("VQGEN_NO_PLUGINS", "").strip().lower() not in ("", "0", "false", "no", "off")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _load_plugins() -> None:
    """Load the entry points once per process: each broken one gets one warning line naming its distribution."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    if _plugins_disabled():
        return
    try:
        eps = list(_entry_points())
    except Exception as e:  # a broken environment must not break the built-in priors
        log.warn(_one_line(f"could not list '{ENTRY_POINT_GROUP}' plugins: {type(e).__name__}: {e}; "
                           "VQGEN_NO_PLUGINS=1 loads none"))
        return
    for ep in sorted(eps, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        origin = (getattr(dist, "name", None) if dist is not None else None) or ep.value.split(".")[0].split(":")[0]

        def skip(why: str) -> None:
            log.warn(_one_line(f"skipping prior plugin '{ep.name}' ({ep.value}) of {origin}: {why}; uninstall "
                               f"{origin}, or set VQGEN_NO_PLUGINS=1 to load no plugins"))

        try:
            obj = ep.load()
        except (Exception, SystemExit) as e:
            skip(f"it failed to import: {type(e).__name__}: {e}")
            continue
        problem = prior_class_problem(obj)
        if problem:
            skip(problem)
            continue
        if ep.name in _REGISTRY and _REGISTRY[ep.name] is not obj:
            skip(f"the name '{ep.name}' is already taken ({_ORIGINS[ep.name]})")
            continue
        _add(ep.name, obj, origin)


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
