"""train-prior: fit a registered prior on an index-grid file (stage 2)."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from priors import DEFAULT_PRIOR, get_prior
from vqgen import log
from vqgen.checkpoint import config_from_meta, file_sha256
from vqgen.build import check_size
from vqgen.codes import read_codes, relabel
from vqgen.data import SPLIT_SEED, split_indices
from vqgen.errors import CodesError, ConfigError, OptionError, check_choice, check_fraction, check_positive
from vqgen.metrics import LN2, code_usage
from vqgen.paths import user_path
from vqgen.prior_file import INIT_FREE_FIELDS, load_prior_tensors, parse_prior_options, save_prior, start_from
from vqgen.runtime import PROBE_BATCH, autocast, choose_speed, init_distributed
from vqgen.run import RunFolder, check_unchanged, fingerprint
from vqgen.stream import DATA_ON_DEVICE, Rows, StreamBatches, place_data
from vqgen.train import KeepBest, Trainer, TensorBatches, check_training_options

DEFAULT_LABEL_DROPOUT = 0.1  # Ho & Salimans' range (0.1-0.2); guidance then needs no second network
# prior config fields train-prior sets itself, from the codes and --label-dropout: never a -o option
SET_BY_THE_RUN = ("num_codes", "height", "width", "num_classes", "label_dropout")


class PriorObjective(nn.Module):
    """The stage-2 loss around a prior, in the form the trainer expects: batch -> (loss, metrics)."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior

    def _drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Each label becomes the null class with probability label_dropout (classifier-free guidance's training).

        Under DDP every rank draws the global batch's numbers and keeps its share, as VQVAEObjective's
        augmentation does: the random stream, and so the run, is the same for any number of processes."""
        b, rank, world = labels.shape[0], 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        drop = (torch.rand(b * world, device=labels.device) < self.prior.config.label_dropout)[rank * b : (rank + 1) * b]
        return torch.where(drop, torch.full_like(labels, self.prior.null_label), labels)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is not None and self.prior.has_null_class:
            labels = self._drop_labels(labels)
        loss = self.prior.loss(codes, labels)
        return loss, {TRAINING_FIGURE[self.prior.likelihood]: loss.detach() / LN2}


# the held-out figure by the likelihood a prior declares (lower is better), and the training loss's name: an
# exact likelihood gives bits per code; a bound gives an upper bound on them; without one, the objective itself
HELD_OUT_FIGURE = {"exact": "val_bits_per_code", "bound": "val_bits_per_code_bound", "none": "val_objective"}
TRAINING_FIGURE = {"exact": "bits_per_code", "bound": "objective", "none": "objective"}
FIGURE_MEANING = {"bound": "an upper bound on bits per code (the prior declares a likelihood bound)",
                  "none": "its training objective in bits per code (the prior declares no likelihood)"}


@torch.no_grad()
def evaluate_prior(prior: nn.Module, codes: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 500,
                   amp: bool = False) -> dict:
    """The held-out figure the prior's likelihood gives (HELD_OUT_FIGURE), given the labels and, where the prior
    has a null class, given no class. An objective that draws random numbers draws the same ones every time."""
    was = prior.training
    prior.eval()
    dev = next(prior.parameters()).device
    key = HELD_OUT_FIGURE[prior.likelihood]
    streams = {key: labels}
    if labels is not None and getattr(prior, "has_null_class", False):
        streams[f"{key}_unconditional"] = torch.full_like(labels, prior.null_label)
    out = {}
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for name, lab_all in streams.items():
            torch.manual_seed(0)
            total, n = 0.0, 0
            for i in range(0, codes.shape[0], batch_size):
                c = codes[i : i + batch_size].to(dev)
                lab = lab_all[i : i + batch_size].to(dev) if lab_all is not None else None
                with autocast(dev, amp):
                    if prior.likelihood == "none":
                        total += float(prior.loss(c, lab).float()) * c.numel()
                    else:
                        total += float(-prior.log_prob(c, lab).float().sum())
                n += c.numel()
            out[name] = total / max(n, 1) / LN2
    prior.train(was)
    return {**out, "val_grids": codes.shape[0]}


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
    threads: int | None = None,
    label_dropout: float | None = None,
    init_from: str | None = None,
    overwrite: bool = False,
    data_on_device: str = "auto",
) -> dict:
    """Fit (or resume) a prior on an index-grid file; returns the held-out summary.

    None means "not given": the default for a new run, the run's own value on resume. On resume the code files
    may be given again (say, moved), but their contents must be the run's; a different prior, prior option,
    conditioning or held-out split is refused rather than ignored. The training grids are held on the device or
    streamed from the memory-mapped file as `data_on_device` says (vqgen.stream.place_data)."""
    run = RunFolder(run_dir, "prior")
    overrides = dict(train)
    check_training_options(overrides, epochs)
    check_positive("threads", threads)
    check_fraction("val_fraction", val_fraction)
    check_fraction("label_dropout", label_dropout, low_open=False)
    check_choice("data_on_device", data_on_device, DATA_ON_DEVICE)
    if codes_path is None and not resume:
        raise OptionError("{codes_path} is required (unless {resume=True})", "codes_path")
    with run.begin(resume, init_from, overwrite=overwrite, inputs={"codes_path": codes_path, "val_codes": val_codes}):
        start = None
        if init_from is not None:
            start_tensors, start_meta = load_prior_tensors(init_from)
            if prior_name is not None and prior_name != start_meta["prior"]:
                raise ConfigError(f"{{init_from}} {init_from} is a {start_meta['prior']} prior, not a {prior_name} one")
            prior_name = start_meta["prior"]
            # its sizes are the run's, unless -o says otherwise (then start_from says what does not fit)
            prior_options = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in start_meta["config"].items()
                             if k not in (*SET_BY_THE_RUN, *INIT_FREE_FIELDS)] \
                + list(prior_options)
            start = (start_tensors, start_meta)
        if run.resuming:
            stored_data = run.record("data", "codes", "val_codes", "val_fraction")
            stored_name, cfg_dict = run.stored.get("prior", ""), run.record("prior_config", "num_classes")
            check_unchanged({"prior_name": prior_name, "val_fraction": None if stored_data["val_codes"] else val_fraction,
                             "class_conditional": class_conditional, "label_dropout": label_dropout},
                            {"prior_name": stored_name, "val_fraction": stored_data["val_fraction"],
                             "class_conditional": cfg_dict["num_classes"] > 0,
                             "label_dropout": cfg_dict.get("label_dropout", 0.0)})
            if prior_options:
                given = parse_prior_options(get_prior(stored_name).config_class, prior_options, SET_BY_THE_RUN)
                check_unchanged({f"prior_options.{k}": v for k, v in given.items()},
                                {f"prior_options.{k}": v for k, v in cfg_dict.items()})
            if val_codes is not None and stored_data["val_codes"] is None:
                raise ConfigError("{val_codes} does not match the run being resumed, which holds out a split of "
                                  "{codes_path}; drop the option, or start a new run with another {run_dir}")
            prior_name, class_conditional = stored_name, cfg_dict["num_classes"] > 0
            codes_path = stored_data["codes"] if codes_path is None else codes_path
            val_codes = stored_data["val_codes"] if val_codes is None else val_codes
            val_fraction = stored_data["val_fraction"]
        else:
            prior_name = prior_name or DEFAULT_PRIOR
            val_fraction = 0.05 if val_fraction is None else val_fraction
        train_cfg = run.train_config(overrides)
        _, threads = run.speed_settings(None, threads)
        cls = get_prior(prior_name)
        cs = read_codes(codes_path, mapped=True)  # the training grids are read as they are used, never all at once
        if class_conditional and cs.labels is None:
            raise ConfigError(f"{codes_path} has no labels, so a class-conditional prior cannot be trained; "
                              "pass {class_conditional=False}")
        if class_conditional and not cs.class_names:
            raise ConfigError(f"{codes_path} has labels but no class names, so a class-conditional prior could not "
                              "name its classes; write its class_names, or pass {class_conditional=False}")
        if class_conditional is None and cs.labels is not None and not cs.class_names:
            log.note(f"{codes_path} has labels but no class names; training an unconditional prior")
        conditional = cs.labels is not None and bool(cs.class_names) if class_conditional is None else class_conditional
        if val_codes:
            vs = read_codes(val_codes)
            if (vs.num_codes, vs.height, vs.width, vs.vqvae_sha256) != (cs.num_codes, cs.height, cs.width, cs.vqvae_sha256):
                raise CodesError(f"{val_codes} does not match {codes_path} (K, grid shape or VQ-VAE differ)")
            va_labels = vs.labels
            if conditional:  # the held-out labels must mean what the training labels mean, before the first step
                if vs.labels is None:
                    raise CodesError(f"{val_codes} has no labels, but the prior is class-conditional (on the classes "
                                     f"of {codes_path}); encode the held-out images with their classes, or pass "
                                     "{class_conditional=False}")
                va_labels = relabel(vs.labels, vs.class_names, cs.class_names, str(val_codes), str(codes_path))
            tr_codes = Rows(cs.codes, dtype=torch.long)
            tr_labels = Rows(cs.labels) if cs.labels is not None else None
            va_codes = vs.codes
        else:
            if len(cs) < 2:
                raise CodesError(f"{codes_path} holds {len(cs)} grid; at least 2 are needed (one is held out)")
            tr, va = split_indices(len(cs), val_fraction, SPLIT_SEED)
            lab = cs.labels
            tr_codes, va_codes = Rows(cs.codes, tr, torch.long), cs.codes[va].long()
            tr_labels, va_labels = (Rows(lab, tr), lab[va]) if lab is not None else (None, None)
        if not conditional:
            tr_labels = va_labels = None
        codes_sha = fingerprint(tr_codes, tr_labels, va_codes, va_labels)
        run.check_same_data(codes_sha, ", ".join(filter(None, [str(codes_path), val_codes])))
        if not run.resuming:
            if label_dropout is None:  # guidance needs a null class: on by default wherever the prior can have one
                label_dropout = DEFAULT_LABEL_DROPOUT if conditional and cls.supports_null_class else 0.0
            elif label_dropout > 0 and not conditional:
                raise ConfigError("{label_dropout} needs a class-conditional prior; these codes are trained unconditionally")
            cfg_dict = {**asdict(cls.config_class()), **parse_prior_options(cls.config_class, prior_options, SET_BY_THE_RUN),
                        "num_codes": cs.num_codes, "height": cs.height, "width": cs.width,
                        "num_classes": len(cs.class_names) if conditional else 0, "label_dropout": float(label_dropout)}
        if epochs is not None:
            train_cfg.train_for_epochs(epochs, tr_codes.shape[0])

        prior_cfg = config_from_meta(cls.config_class, run.stored, "prior_config", run.state) if run.resuming \
            else cls.config_class(**cfg_dict)
        sizes = " ".join(f"{{prior_options.{k}={v}}}" for k, v in cfg_dict.items() if k not in SET_BY_THE_RUN
                         and isinstance(v, int) and not isinstance(v, bool))
        check_size(lambda: cls(prior_cfg), f"the {prior_name} prior of {sizes} over K={cs.num_codes} codes",
                   "prior_options")
        dist, dev = init_distributed(device)
        torch.manual_seed(train_cfg.seed)
        prior = cls(prior_cfg)
        if start is not None:
            if start[1]["vqvae_sha256"] and cs.vqvae_sha256 and start[1]["vqvae_sha256"] != cs.vqvae_sha256:
                raise ConfigError(f"{{init_from}} {init_from} learned the codes of another VQ-VAE than {codes_path}")
            start_from(prior, init_from, start[1], start[0])
        prior = prior.to(dev)
        probe_batch = min(PROBE_BATCH, train_cfg.batch_size)

        def probe_step(amp: bool, _channels_last: bool):
            p = copy.deepcopy(prior)
            g = torch.Generator().manual_seed(0)
            c = torch.randint(0, cs.num_codes, (probe_batch, cs.height, cs.width), generator=g).to(dev)
            lab = torch.randint(0, p.config.num_classes, (probe_batch,), generator=g).to(dev) if p.config.num_classes else None

            def step():
                with autocast(dev, amp):
                    loss = p.loss(c, lab)
                loss.backward()
            return step

        workload = f"prior:{prior_name}:{json.dumps(cfg_dict, sort_keys=True)}:b{probe_batch}"
        speed = choose_speed(dev, workload, probe_step, amp=train_cfg.amp, threads=threads, memory_format_matters=False,
                             dist=dist)
        train_cfg.amp = speed.amp
        on_device_bytes = len(tr_codes) * (cs.height * cs.width + (tr_labels is not None)) * 8  # int64 codes, labels
        placement = place_data(data_on_device, on_device_bytes, dev)
        log.note(f"computing in {speed.describe()}; {placement.describe()}")
        if cls.likelihood != "exact":  # say what the figure is whenever it is not the bits per code the others report
            log.note(f"held-out figure: {HELD_OUT_FIGURE[cls.likelihood]}, {FIGURE_MEANING[cls.likelihood]}; the best "
                     "weights are kept by it")
        if placement.on_device:
            batches = TensorBatches(tuple(t.load().to(dev) for t in (tr_codes, tr_labels) if t is not None),
                                    train_cfg.batch_size, train_cfg.seed, dist)
        else:
            batches = StreamBatches((tr_codes, tr_labels), train_cfg.batch_size, train_cfg.seed, dev, dist)
        class_names = list(cs.class_names) if conditional else []

        run_meta = {
            "kind": "prior", "prior": prior_name, "prior_config": cfg_dict,
            "data": {"codes": str(user_path(codes_path).resolve()),
                     "val_codes": str(user_path(val_codes).resolve()) if val_codes else None,
                     "sha256": codes_sha, "val_fraction": val_fraction, "split_seed": SPLIT_SEED, "num_train": int(tr_codes.shape[0]),
                     "num_val": int(va_codes.shape[0])},
            **placement.record(),
        }
        if init_from is not None:
            run_meta["init_from"] = {"path": str(user_path(init_from)), "sha256": file_sha256(init_from)}
        trainer = Trainer(
            PriorObjective(prior), batches, train_cfg, run, dev, dist, run_meta=run_meta,
            export=lambda: save_prior(prior, run.weights, class_names, cs.vqvae_sha256),
            evaluate=lambda: evaluate_prior(prior, va_codes, va_labels, amp=train_cfg.amp),
            describe_metrics=lambda m: {k: v.item() for k, v in m.items()}, compile=compile,
            keep_best=KeepBest(HELD_OUT_FIGURE[cls.likelihood], False,
                               lambda: save_prior(prior, run.best, class_names, cs.vqvae_sha256))
            if va_codes.shape[0] else None,
            speed=speed,
        )
        summary = trainer.fit(resume=run.resuming)
        summary.update({"steps": trainer.step, "prior": prior_name, "likelihood": cls.likelihood,
                        "class_conditional": conditional,
                        "unigram_entropy_bits": _unigram_entropy_bits(tr_codes, cs.num_codes),
                        "weights": str(run.weights)})
        return summary


def _unigram_entropy_bits(codes: Rows, num_codes: int) -> float:
    """The entropy of the codes' histogram, counted a chunk of grids at a time."""
    hist = torch.zeros(num_codes, dtype=torch.long)
    for chunk in codes.chunks(1 << 16):
        hist += torch.bincount(chunk.flatten(), minlength=num_codes)
    return code_usage(hist, num_codes, counts=True)["unigram_entropy_bits"]
