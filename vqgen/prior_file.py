"""A prior's file: save, load (tensors only, or the rebuilt prior), start a new prior from one, and the pairing
check between a prior and the VQ-VAE (or the codes) it is used with.

The file is safetensors with the registry name, the config, the class names and the sha256 of the VQ-VAE whose
codes the prior learned; a prior is rebuilt as get_prior(name)(config_class(**config)).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict

import torch
import torch.nn as nn

from priors import get_prior
from vqgen.build import check_fits
from vqgen.checkpoint import (KIND_PRIOR, config_from_meta, file_sha256, first_problem, load_tensors, meta_json,
                              read_kind_header, save_tensors)
from vqgen.errors import CheckpointError, ConfigError
from vqgen.runtime import resolve_device
from vqgen.weights import shipped


def save_prior(prior: nn.Module, path, class_names: list[str], vqvae_sha256: str) -> None:
    c = prior.config
    meta = {"prior": prior.name, "config": asdict(c), "num_codes": c.num_codes, "height": c.height,
            "width": c.width, "class_names": class_names, "vqvae_sha256": vqvae_sha256}
    save_tensors(path, prior.state_dict(), KIND_PRIOR, meta)


def load_prior_tensors(path) -> tuple[dict, dict]:
    """A prior file's tensors and metadata (prior name, config, class names, VQ-VAE sha256), nothing built."""
    tensors, raw = load_tensors(path, KIND_PRIOR)
    name = raw.get("prior")
    if not name:
        raise CheckpointError(f"{path} names no prior in its metadata; it was not written by vqgen")
    meta = {"prior": name, "config": meta_json(raw, "config", path), "class_names": meta_json(raw, "class_names", path),
            "vqvae_sha256": raw.get("vqvae_sha256", "")}
    return tensors, meta


def parse_prior_options(config_class, options: list[str], reserved: tuple[str, ...] = ()) -> dict:
    """Turn `key=value` strings (the command line's -o) into typed fields of a prior's config dataclass; a key
    in `reserved` is refused like an unknown one."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields or key in reserved:
            allowed = ", ".join(sorted(set(fields) - set(reserved))) or "none"
            raise ConfigError(f"bad prior option {item!r}; use key=value with key one of: {allowed}")
        typ = hints.get(key, str)
        try:
            if typ is bool:
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif typ in (int, float, str):
                out[key] = typ(value)
            else:
                out[key] = json.loads(value)
        except ValueError:
            raise ConfigError(f"prior option {key} must be {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return out


def sampling_overrides(cls, options: dict | list[str] | None) -> dict:
    """A trained prior's sampling options (its class's sampling_fields) as config fields, checked; `options` is a
    dict or `key=value` strings."""
    if not options:
        return {}
    if not isinstance(options, dict):
        options = parse_prior_options(cls.config_class, list(options))
    bad = sorted(set(options) - set(cls.sampling_fields))
    if bad:
        has = ", ".join(cls.sampling_fields) if cls.sampling_fields else "none"
        raise ConfigError(f"{{prior_options.{bad[0]}}} is not a sampling option of the {cls.name} prior; a trained "
                          f"prior's weights fix its other fields (its sampling options: {has})")
    return dict(options)


def load_prior(path, device: torch.device | str = "cpu", sampling: dict | list[str] | None = None):
    """Rebuild a prior from its weights file, with `sampling` options (see sampling_overrides) changed; returns
    (prior in eval mode, metadata dict). Its config is checked against the file's tensor header before the prior
    is built, so a config claiming a huge prior costs nothing."""
    header, raw = read_kind_header(path, KIND_PRIOR)
    name = raw.get("prior")
    if not name:
        raise CheckpointError(f"{path} names no prior in its metadata; it was not written by vqgen")
    try:
        cls = get_prior(name)
    except ConfigError as e:
        raise CheckpointError(f"{path} was written by a prior this installation lacks: {e}") from None
    stored = config_from_meta(cls.config_class, raw, "config", path)

    def build(cfg):
        try:
            return cls(cfg)
        except (ConfigError, TypeError, ValueError) as e:
            if cfg is not stored:  # the file's own config built (check_fits): the sampling options given are at fault
                raise
            raise CheckpointError(f"{path}: its config is not a valid {name} config ({e})") from None

    check_fits(lambda: build(stored), header, path, f"{name} prior")
    overrides = sampling_overrides(cls, sampling)
    tensors, m = load_prior_tensors(path)
    prior = build(dataclasses.replace(stored, **overrides) if overrides else stored)
    try:
        prior.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the {name} config ({first_problem(e)})") from None
    meta = {**m, "sha256": file_sha256(path), "path": str(path)}
    return prior.to(device).eval(), meta


# fields a prior started from another may change: they shape training, not what the weights compute
INIT_FREE_FIELDS = ("dropout", "label_dropout")


@torch.no_grad()
def start_from(prior: nn.Module, path, meta: dict, tensors: dict) -> None:
    """Load a trained prior's weights into `prior` (train-prior --init-from): the same prior, of the same sizes or
    larger in its growable_fields (it then starts computing what the trained one computes); dropout, label
    dropout and sampling options (the prior's sampling_fields) may change. A class embedding that gains the
    null class keeps its rows and starts the null row at their mean (the average class: a start for p(grid)
    that a few thousand steps refine)."""
    cls = type(prior)
    cfg = asdict(prior.config)
    free = (*INIT_FREE_FIELDS, *cls.sampling_fields)
    grown = {}
    for k, v in meta["config"].items():
        if k in free or cfg.get(k) == v:
            continue
        if k in cls.growable_fields:
            if not cfg[k] > v:
                raise ConfigError(f"{{init_from}} {path} has {k}={v!r}; a run can only keep or grow it, not shrink "
                                  f"it to {cfg[k]!r}")
            grown[k] = v
            continue
        can = f"; it may grow {', '.join(cls.growable_fields)}" if cls.growable_fields else ""
        raise ConfigError(f"{{init_from}} {path} has {k}={v!r} but this run has {k}={cfg.get(k)!r}; a prior can "
                          f"only be started from one of the same shape (it may change only {', '.join(free)}{can})")
    own = prior.state_dict()
    if prior.has_null_class and not (meta["config"].get("num_classes") and meta["config"].get("label_dropout")):
        tensors = {k: torch.cat([t, t.mean(0, keepdim=True)]) if k in own and t.dim() == 2
                   and t.shape[0] + 1 == own[k].shape[0] else t for k, t in tensors.items()}
    if grown:
        try:
            prior.grow_from(tensors, dataclasses.replace(prior.config, **grown))
        except ConfigError as e:
            raise ConfigError(f"{{init_from}} {path}: {e}") from None
        return
    for k, new in own.items():
        old = tensors.get(k)
        if old is None:
            raise ConfigError(f"{{init_from}} {path} lacks the tensor {k}; it is not a {meta['prior']} of this shape")
        if old.shape != new.shape:
            raise ConfigError(f"{{init_from}} {path}: {k} is {tuple(old.shape)}, this run needs {tuple(new.shape)}")
        new.copy_(old)


def check_compatible(prior_cfg, vqvae_sha: str, prior_sha: str, num_codes: int, h: int, w: int, what: str) -> None:
    """Refuse a prior and codes/VQ-VAE that do not belong together, naming what differs."""
    if prior_cfg.num_codes != num_codes:
        raise ConfigError(f"the prior models K={prior_cfg.num_codes} codes but {what} has K={num_codes}")
    if (prior_cfg.height, prior_cfg.width) != (h, w):
        raise ConfigError(f"the prior models {prior_cfg.height}x{prior_cfg.width} grids but {what} has {h}x{w}")
    if prior_sha and vqvae_sha and prior_sha != vqvae_sha:
        raise ConfigError(
            f"the prior was trained on codes of another VQ-VAE (sha256 {prior_sha[:12]}…, {what} is {vqvae_sha[:12]}…); "
            "use the VQ-VAE it was trained with, or train a prior on codes from this one"
        )


def open_prior(path=None, device: str = "auto", sampling: dict | list[str] | None = None):
    """Load the given prior, or the shipped one when path is None, with `sampling` options changed; returns
    (prior in eval mode, metadata dict). `device` is a name: auto, cpu, cuda or cuda:N."""
    return load_prior(path or shipped("prior"), resolve_device(str(device)), sampling)
