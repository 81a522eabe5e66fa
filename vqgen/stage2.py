"""Stage 2 as library calls: fit a registered prior on an index-grid file; save and load prior weights."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import typing
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from vqgen.checkpoint import (KIND_PRIOR, CheckpointError, file_sha256, first_problem, load_tensors, meta_json,
                              save_tensors)
from vqgen.codes import CodeSet, read_codes
from vqgen.errors import CodesError, ConfigError
from vqgen.runtime import autocast, init_distributed, resolve_device
from vqgen.train import (BEST_FILE, KeepBest, Trainer, TensorBatches, TrainConfig, check_run_dir, check_same_data,
                         check_unchanged, fingerprint, read_run_meta, resumed_config)

WEIGHTS_FILE = "prior.safetensors"
SPLIT_SEED = 0
LN2 = math.log(2)


# -- prior files -----------------------------------------------------------------------------------------------
def save_prior(prior: nn.Module, path, class_names: list[str], vqvae_sha256: str) -> None:
    c = prior.config
    meta = {"prior": prior.name, "config": asdict(c), "num_codes": c.num_codes, "height": c.height,
            "width": c.width, "class_names": class_names, "vqvae_sha256": vqvae_sha256}
    save_tensors(path, prior.state_dict(), KIND_PRIOR, meta)


def load_prior(path, device: torch.device | str = "cpu"):
    """Rebuild a prior from its weights file; returns (prior in eval mode, metadata dict)."""
    from priors import get_prior

    tensors, raw = load_tensors(path, KIND_PRIOR)
    name = raw.get("prior")
    if not name:
        raise CheckpointError(f"{path} names no prior in its metadata; it was not written by vqgen")
    try:
        cls = get_prior(name)
    except ConfigError as e:
        raise CheckpointError(f"{path} was written by a prior this installation lacks: {e}") from None
    cfg = meta_json(raw, "config", path)
    try:
        prior = cls(cls.config_class(**cfg))
        prior.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match the {name} config ({first_problem(e)})") from None
    meta = {"prior": name, "config": cfg, "class_names": meta_json(raw, "class_names", path),
            "vqvae_sha256": raw.get("vqvae_sha256", ""), "sha256": file_sha256(path), "path": str(path)}
    return prior.to(device).eval(), meta


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


# -- prior options ("key=value" strings -> typed config fields) --------------------------------------------------
def parse_prior_options(config_class, options: list[str]) -> dict:
    """Turn repeated `--opt key=value` strings into typed fields of the prior's config dataclass."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    reserved = {"num_codes", "height", "width", "num_classes"}
    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields or key in reserved:
            allowed = ", ".join(sorted(set(fields) - reserved))
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


class PriorObjective(nn.Module):
    """The stage-2 loss around a prior, in the form the trainer expects: batch -> (loss, metrics)."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None):
        loss = self.prior.loss(codes, labels)
        return loss, {"bits_per_code": loss.detach() / LN2}


@torch.no_grad()
def evaluate_prior(prior: nn.Module, codes: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 500,
                   amp: bool = False) -> dict:
    """Held-out negative log-likelihood in bits per code."""
    was = prior.training
    prior.eval()
    dev = next(prior.parameters()).device
    total, n = 0.0, 0
    for i in range(0, codes.shape[0], batch_size):
        c = codes[i : i + batch_size].to(dev)
        lab = labels[i : i + batch_size].to(dev) if labels is not None else None
        with autocast(dev, amp):
            lp = prior.log_prob(c, lab)
        total += float(-lp.float().sum())
        n += c.numel()
    prior.train(was)
    return {"val_bits_per_code": total / max(n, 1) / LN2, "val_grids": codes.shape[0]}


def train_prior(
    codes_path: str | Path | None,
    run_dir: str | Path,
    prior_name: str | None,
    prior_options: list[str],
    train: dict,
    *,
    epochs: float | None = None,
    class_conditional: bool | None = None,
    val_codes: str | None = None,
    val_fraction: float | None = None,
    device: str = "auto",
    resume: bool = False,
    compile: bool = False,
) -> dict:
    """Fit (or resume) a prior on an index-grid file; returns the held-out summary.

    None means "not given": the default for a new run, the run's own value on resume. On resume the code files
    may be given again (say, moved), but their contents must be the run's; a different prior, prior option,
    conditioning or held-out split is refused rather than ignored."""
    from priors import DEFAULT_PRIOR, get_prior

    run_dir = Path(run_dir)
    overrides = dict(train)
    stored_data = None
    if resume:
        meta = read_run_meta(run_dir, "prior")
        stored_data = json.loads(meta["data"])
        stored_name, cfg_dict = meta["prior"], json.loads(meta["prior_config"])
        check_unchanged({"--prior": prior_name, "--val-fraction": None if stored_data["val_codes"] else val_fraction,
                         "--class-conditional/--unconditional": class_conditional},
                        {"--prior": stored_name, "--val-fraction": stored_data["val_fraction"],
                         "--class-conditional/--unconditional": cfg_dict["num_classes"] > 0})
        if prior_options:
            given = parse_prior_options(get_prior(stored_name).config_class, prior_options)
            check_unchanged({f"-o {k}": v for k, v in given.items()}, {f"-o {k}": v for k, v in cfg_dict.items()})
        if val_codes is not None and stored_data["val_codes"] is None:
            raise ConfigError("--val-codes does not match the run being resumed, which holds out a split of --codes; "
                              "drop the option, or start a new run with another --out")
        prior_name, class_conditional = stored_name, cfg_dict["num_classes"] > 0
        codes_path = stored_data["codes"] if codes_path is None else codes_path
        val_codes = stored_data["val_codes"] if val_codes is None else val_codes
        val_fraction = stored_data["val_fraction"]
        train_cfg = resumed_config(meta, overrides)
    else:
        if codes_path is None:
            raise ConfigError("--codes is required (unless --resume)")
        if (run_dir / "checkpoint.safetensors").exists():
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        check_run_dir(run_dir)
        prior_name = prior_name or DEFAULT_PRIOR
        val_fraction = 0.05 if val_fraction is None else val_fraction
        train_cfg = TrainConfig(**overrides)
    train_cfg.validate()
    cls = get_prior(prior_name)
    cs = read_codes(codes_path)
    if class_conditional and cs.labels is None:
        raise ConfigError(f"{codes_path} has no labels, so a class-conditional prior cannot be trained; "
                          "pass --unconditional")
    conditional = cs.labels is not None and bool(cs.class_names) if class_conditional is None else class_conditional
    if val_codes:
        vs = read_codes(val_codes)
        if (vs.num_codes, vs.height, vs.width, vs.vqvae_sha256) != (cs.num_codes, cs.height, cs.width, cs.vqvae_sha256):
            raise CodesError(f"{val_codes} does not match {codes_path} (K, grid shape or VQ-VAE differ)")
        tr_codes, tr_labels, va_codes, va_labels = cs.codes, cs.labels, vs.codes, vs.labels
    else:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        if len(cs) < 2:
            raise CodesError(f"{codes_path} holds {len(cs)} grid; at least 2 are needed (one is held out)")
        from vqgen.data import split_indices

        tr, va = split_indices(len(cs), val_fraction, SPLIT_SEED)
        lab = cs.labels
        tr_codes, va_codes = cs.codes[tr], cs.codes[va]
        tr_labels, va_labels = (lab[tr], lab[va]) if lab is not None else (None, None)
    if not conditional:
        tr_labels = va_labels = None
    codes_sha = fingerprint(tr_codes, tr_labels, va_codes, va_labels)
    if stored_data is not None:
        check_same_data(stored_data, codes_sha, ", ".join(filter(None, [str(codes_path), val_codes])), run_dir)
    if not resume:
        cfg_dict = {**asdict(cls.config_class()), **parse_prior_options(cls.config_class, prior_options),
                    "num_codes": cs.num_codes, "height": cs.height, "width": cs.width,
                    "num_classes": len(cs.class_names) if conditional else 0}
    if epochs is not None:
        train_cfg.steps = max(1, math.ceil(epochs * tr_codes.shape[0] / train_cfg.batch_size))

    dist, dev = init_distributed(device)
    torch.manual_seed(train_cfg.seed)
    prior = cls(cls.config_class(**cfg_dict)).to(dev)
    batches = TensorBatches((tr_codes.to(dev), tr_labels.to(dev) if tr_labels is not None else None),
                            train_cfg.batch_size, train_cfg.seed, dist)
    class_names = list(cs.class_names) if conditional else []

    run_meta = {
        "kind": "prior", "prior": prior_name, "prior_config": cfg_dict,
        "data": {"codes": str(Path(codes_path).resolve()), "val_codes": str(Path(val_codes).resolve()) if val_codes else None,
                 "sha256": codes_sha, "val_fraction": val_fraction, "split_seed": SPLIT_SEED, "num_train": int(tr_codes.shape[0]),
                 "num_val": int(va_codes.shape[0])},
    }
    trainer = Trainer(
        PriorObjective(prior), batches, train_cfg, run_dir, dev, dist, run_meta=run_meta,
        export=lambda: save_prior(prior, run_dir / WEIGHTS_FILE, class_names, cs.vqvae_sha256),
        evaluate=lambda: evaluate_prior(prior, va_codes, va_labels, amp=train_cfg.amp),
        describe_metrics=lambda m: {k: v.item() for k, v in m.items()}, compile=compile,
        resume_command=f"vqgen train-prior --out {shlex.quote(str(run_dir))} --resume",
        keep_best=KeepBest("val_bits_per_code", False,
                           lambda: save_prior(prior, run_dir / BEST_FILE, class_names, cs.vqvae_sha256))
        if va_codes.shape[0] else None,
    )
    summary = trainer.fit(resume=resume)
    from vqgen.evaluate import code_usage

    summary.update({"steps": trainer.step, "prior": prior_name, "class_conditional": conditional,
                    "unigram_entropy_bits": code_usage(tr_codes, cs.num_codes)["unigram_entropy_bits"],
                    "weights": str(run_dir / WEIGHTS_FILE)})
    return summary
