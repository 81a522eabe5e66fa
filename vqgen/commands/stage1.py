"""train-vqvae, reconstruct and encode: train a VQ-VAE (stage 1), reconstruct images with it, encode images
into index grids."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from vqgen import log
from vqgen.build import check_size
from vqgen.checkpoint import config_from_meta
from vqgen.codes import CodeSet, write_codes
from vqgen.data import SPLIT_SEED, SPLITS, load_images, load_inputs, select_split, spec_path, split_indices
from vqgen.errors import (ConfigError, DataError, OptionError, check_at_least, check_choice, check_fraction,
                          check_positive, seed_value)
from vqgen.grow import check_growable, grow_into
from vqgen.images import make_grid, save_png
from vqgen.metrics import RunningStats, code_usage, psnr_from_mse
from vqgen.paths import check_outputs, out_file, out_folder, png_names, user_path
from vqgen.runtime import PROBE_BATCH, autocast, choose_speed, inference_amp, init_distributed, local_main_first
from vqgen.search import SearchEncoder, check_search, check_search_options
from vqgen.stream import DATA_ON_DEVICE, Rows, StreamBatches, place_data
from vqgen.run import GRID_FILE, RunFolder, check_unchanged, fingerprint
from vqgen.train import KeepBest, Trainer, TensorBatches, TrainConfig, check_training_options
from vqgen.vqvae import (VQVAE, VQVAEConfig, VQVAEObjective, load_vqvae, open_vqvae, read_vqvae_config, save_vqvae,
                         shift_images)
from vqgen.weights import shipped

SIZES = ("hidden", "res_blocks", "res_channels", "num_codes", "code_dim")  # the VQ-VAE options its size grows with


@torch.no_grad()
def evaluate_reconstruction(model: VQVAE, images: torch.Tensor, batch_size: int = 500, amp: bool = False) -> dict:
    """Held-out MSE / PSNR (pixels in [0, 1]) and codebook usage over uint8 images (n, 3, S, S)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stats = RunningStats(model.config.num_codes, with_ssim=False)
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device).float() / 255
        with autocast(device, amp):
            x_hat, q = model(x)
        stats.update_images(x, x_hat.float().clamp(0, 1))
        stats.update_codes(q.indices)
    model.train(was_training)
    s = stats.summary()
    return {"val_mse": s["mse"], "val_psnr": s["psnr"], "codes_used": s["codes_used"],
            "perplexity": s["perplexity"], "num_codes": model.config.num_codes, "val_images": s["images"]}


@torch.no_grad()
def reconstruction_grid(model: VQVAE, images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Originals above, reconstructions below, as one uint8 grid."""
    device = next(model.parameters()).device
    x = images.to(device).float() / 255
    x_hat = model.decode(model.encode(x))
    rows = -(-x.shape[0] // nrow) * nrow
    pad = lambda t: torch.cat([t, torch.ones(rows - t.shape[0], *t.shape[1:], device=t.device)]) if rows > t.shape[0] else t
    return make_grid(torch.cat([pad(x), pad(x_hat)]), nrow=nrow)


def _batch_metrics(m: dict) -> dict:
    counts = m["counts"]
    p = counts / counts.sum().clamp_min(1)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"recon_mse": m["recon_mse"].item(), "perplexity": ent.exp().item(), "codes_used": int((counts > 0).sum())}


def train_vqvae(
    data: str | None,
    run_dir: str | Path,
    model: VQVAEConfig | dict,
    train: dict | TrainConfig,
    *,
    epochs: float | None = None,
    val_fraction: float | None = None,
    flip: bool | None = None,
    shift: int | None = None,
    device: str = "auto",
    data_root: str | None = None,
    cache_dir: str | None = None,
    resume: bool = False,
    compile: bool = False,
    channels_last: bool | None = None,
    init_from: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    data_on_device: str = "auto",
    workers: int | None = None,
) -> dict:
    """Train (or resume) a VQ-VAE in run_dir, from scratch or grown from the weights `init_from`; returns the
    held-out summary. A new run refuses a folder holding an earlier run's files unless `overwrite`.

    `model` is a whole VQVAEConfig or a dict of the model options given (None = not given); the others come
    from `init_from`, from the run when resuming, else from VQVAEConfig(). On resume, `data` (None = where the
    run read it) may point to a new place, but its contents must be the run's; options that would change the
    model or the held-out split are refused rather than ignored. The training split is held on the device or
    streamed from the (memory-mapped) image cache as `data_on_device` says (vqgen.stream.place_data)."""
    run = RunFolder(run_dir, "vqvae")
    overrides = asdict(train) if isinstance(train, TrainConfig) else dict(train)
    given = asdict(model) if isinstance(model, VQVAEConfig) else {k: v for k, v in model.items() if v is not None}
    replace(VQVAEConfig(), **given).validate()  # the values given, each judged alone, before any file is read
    check_training_options(overrides, epochs)
    check_positive("threads", threads)
    check_fraction("val_fraction", val_fraction)
    check_at_least("shift", shift, 0)
    check_choice("data_on_device", data_on_device, DATA_ON_DEVICE)
    check_positive("workers", workers)
    if data is None and not resume:
        raise OptionError("{data} is required (unless {resume=True})", "data")
    with run.begin(resume, init_from, overwrite=overwrite, inputs={"data": spec_path(data)}):
        if run.resuming:
            model_cfg = config_from_meta(VQVAEConfig, run.stored, "vqvae_config", run.state,
                                         upgrade=VQVAEConfig.upgrade)  # runs from before num_codes too
            stored = run.record("data", "spec", "val_fraction", "flip")
            stored_shift = stored.get("shift", 0)  # runs from before --shift existed did not shift
            check_unchanged({**given, "val_fraction": val_fraction, "flip": flip, "shift": shift},
                            {**model_cfg.to_dict(), "val_fraction": stored["val_fraction"], "flip": stored["flip"],
                             "shift": stored_shift})
            data = stored["spec"] if data is None else data
            val_fraction, flip, shift = stored["val_fraction"], stored["flip"], stored_shift
        else:
            model_cfg = replace(read_vqvae_config(init_from) if init_from is not None else VQVAEConfig(), **given)
            val_fraction = 0.02 if val_fraction is None else val_fraction
            flip, shift = bool(flip), shift or 0
        train_cfg = run.train_config(overrides)
        channels_last, threads = run.speed_settings(channels_last, threads)
        _check_shift(shift, model_cfg.image_size)
        sizes = " ".join(f"{{{k}={getattr(model_cfg, k)}}}" for k in SIZES)
        check_size(lambda: VQVAE(model_cfg), f"the VQ-VAE of {sizes}", next((k for k in SIZES if k in given), "hidden"))
        start = None
        if init_from is not None:
            start, start_sha = load_vqvae(init_from)
            check_growable(start.config, model_cfg)
        dist, dev = init_distributed(device)
        torch.manual_seed(train_cfg.seed)

        with local_main_first(dist):  # under torchrun one process per machine downloads / caches, then the rest read
            images = load_images(data, model_cfg.image_size, data_root=data_root, cache_dir=cache_dir,
                                 workers=workers)
        if len(images.images) < 2:
            raise DataError(f"{data} holds {len(images.images)} image; at least 2 are needed (one is held out)")
        data_sha = images.sha256 or fingerprint(images.images, images.labels)
        run.check_same_data(data_sha, data)
        tr, va = split_indices(len(images.images), val_fraction, SPLIT_SEED)
        if epochs is not None:
            train_cfg.train_for_epochs(epochs, len(tr))
        placement = place_data(data_on_device, len(tr) * images.images[0].numel(), dev)
        val_images = Rows(images.images, va).load()
        fixed = val_images[:32]

        model = VQVAE(model_cfg)
        if start is not None:
            grow_into(model, start)
        model = model.to(dev)
        probe_batch = min(PROBE_BATCH, train_cfg.batch_size)

        def probe_step(amp: bool, cl: bool):
            m = copy.deepcopy(model)
            m = m.to(memory_format=torch.channels_last) if cl else m
            obj = VQVAEObjective(m, flip=flip, shift=shift)
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (probe_batch, 3, model_cfg.image_size, model_cfg.image_size), generator=g,
                              dtype=torch.uint8).to(dev)

            def step():
                with autocast(dev, amp):
                    loss, _ = obj(x)
                loss.backward()
            return step

        workload = f"vqvae:{json.dumps(model_cfg.to_dict(), sort_keys=True)}:flip={flip}:shift={shift}:b{probe_batch}"
        speed = choose_speed(dev, workload, probe_step, amp=train_cfg.amp, channels_last=channels_last,
                             threads=threads, dist=dist)
        train_cfg.amp = speed.amp
        log.note(f"computing in {speed.describe()}; {placement.describe()}")
        if speed.channels_last:
            model = model.to(memory_format=torch.channels_last)
        objective = VQVAEObjective(model, flip=flip, shift=shift)
        if placement.on_device:
            batches = TensorBatches((Rows(images.images, tr).load().to(dev),), train_cfg.batch_size,
                                    train_cfg.seed, dist)
        else:
            batches = StreamBatches((Rows(images.images, tr),), train_cfg.batch_size, train_cfg.seed, dev, dist)

        def export() -> None:
            save_vqvae(model, run.weights)
            save_png(reconstruction_grid(model, fixed), run.dir / GRID_FILE)

        run_meta = {
            "kind": "vqvae",
            "vqvae_config": model_cfg.to_dict(),
            "data": {"spec": _absolute(images.source), "sha256": data_sha, "val_fraction": val_fraction,
                     "split_seed": SPLIT_SEED, "flip": flip, "shift": shift, "num_train": len(tr),
                     "num_val": len(va)},
            **placement.record(),
        }
        if start is not None:
            run_meta["init_from"] = {"path": str(user_path(init_from)), "sha256": start_sha}
        keep_best = KeepBest("val_psnr", True, lambda: save_vqvae(model, run.best)) if len(va) else None
        trainer = Trainer(objective, batches, train_cfg, run, dev, dist, run_meta=run_meta, export=export,
                          evaluate=lambda: evaluate_reconstruction(model, val_images, amp=train_cfg.amp),
                          describe_metrics=_batch_metrics, compile=compile, keep_best=keep_best, speed=speed)
        summary = trainer.fit(resume=run.resuming)
        summary.update({"steps": trainer.step, "weights": str(run.weights)})
        return summary


def _absolute(spec: str) -> str:
    """A folder or file spec as an absolute path (a resumed run may start in another folder); cifar10 as is."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


# -- using a trained VQ-VAE --------------------------------------------------------------------------------
@torch.no_grad()
def _encode_all(encoder: SearchEncoder, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(encoder.model.parameters()).device
    out = [encoder(images[i : i + batch_size].to(device).float() / 255).cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def _check_shift(shift: int, image_size: int) -> None:
    """A shift (>= 0, checked with the other options) must fit the model's images."""
    if shift >= image_size // 2:  # reflect padding must be narrower than the image
        raise ConfigError(f"{{shift}} must be between 0 and {image_size // 2 - 1} pixels, got {shift}")


def _shift_tag(shift: int, copies: int, seed: int) -> str:
    if not shift:
        return ""
    return f"+shift{shift}s{seed}" if copies == 1 else f"+shift{shift}x{copies}s{seed}"


def _new_offsets(used: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """Per row of `used` (n, j), flat offsets in [0, side^2), a uniformly random flat offset not among them."""
    k = torch.randint(0, side * side - used.shape[1], (used.shape[0],), generator=g)
    for u in used.sort(1).values.T:  # step over the taken offsets in ascending order: k-th free one
        k = k + (k >= u).long()
    return k


def _shifted(images: torch.Tensor, shift: int, offsets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """uint8 images (n, 3, S, S), each translated by its own (dy, dx) in `offsets` (n, 2), values in [0, 2 shift]."""
    out = [shift_images(images[i : i + chunk].float(), shift, offsets[i : i + chunk]).to(torch.uint8)
           for i in range(0, images.shape[0], chunk)]
    return torch.cat(out)


def reconstruct(vqvae: str | None, inputs: list[str], out: str | Path, *, device: str = "auto",
                batch_size: int = 256, nrow: int = 8, cache_dir: str | None = None,
                data_root: str | None = None, search: int = 0, search_sweeps: int = 1, amp: bool | None = None) -> dict:
    """Reconstruct images; `out` ending in .png gets a side-by-side grid, otherwise a folder of PNGs that mirrors
    the inputs' layout (paths.png_names: cat/001.jpg -> cat/001.png, x.jpg -> x.jpg.png beside x.png).

    With search > 1 each image's codes come from a decoder-aware search among that many nearest codes."""
    check_positive("batch_size", batch_size)
    check_positive("nrow", nrow)
    check_search_options(search, search_sweeps)
    vqvae = vqvae or shipped("vqvae")
    out = user_path(out)
    as_grid = out.suffix.lower() == ".png"
    given = {"vqvae": vqvae, "inputs": [spec_path(i) for i in inputs]}
    check_outputs(given, [out_file("out", out) if as_grid else out_folder("out", out)])
    model, _, path = open_vqvae(vqvae, device)
    check_search(model, search)
    images = load_inputs(inputs, model.config.image_size, data_root=data_root, cache_dir=cache_dir)
    if not as_grid:  # the names are known now: none may be an input, nor two the same
        names = png_names(images.paths)
        check_outputs(given, [out_folder("out", out, names)])
    dev = next(model.parameters()).device
    recons, sq = [], 0.0
    with SearchEncoder(model, -(-len(images.images) // batch_size), search, search_sweeps) as encoder, \
            autocast(dev, inference_amp(dev, amp)):
        for i in range(0, len(images.images), batch_size):
            x = images.images[i : i + batch_size].to(dev).float() / 255
            x_hat = model.decode(encoder(x)).float()
            sq += float(((x_hat - x) ** 2).mean(dim=(1, 2, 3)).sum())
            recons.append(x_hat.cpu())
    recon = torch.cat(recons)
    n = len(images.images)
    if as_grid:
        shown = min(n, 64)
        if n > shown:
            log.note(f"the grid shows the first {shown} of {n} images; the figures cover all {n}")
        cols = min(nrow, shown)  # a wider --nrow than there are images gives one row, not blank columns
        rows = -(-shown // cols) * cols
        blank = torch.ones(rows - shown, 3, *recon.shape[2:])
        top = torch.cat([images.images[:shown].float() / 255, blank])
        save_png(make_grid(torch.cat([top, torch.cat([recon[:shown], blank])]), nrow=cols), out)
    else:
        for name, img in zip(names, recon):
            target = out / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create folder {target.parent}: {e.strerror or e}") from None
            save_png(img, target)
    mse = sq / n
    return {"images": n, "mse": mse, "psnr": psnr_from_mse(mse), "search": search, "search_sweeps": search_sweeps,
            "out": str(out), "vqvae": path}


def encode(vqvae: str | None, data: str, out: str | Path, *, split: str = "train", val_fraction: float = 0.02,
           device: str = "auto", batch_size: int = 500, data_root: str | None = None,
           cache_dir: str | None = None, flip: bool = False, shift: int = 0, shift_copies: int = 1, seed: int = 0,
           search: int = 0, search_sweeps: int = 1, amp: bool | None = None, workers: int | None = None) -> dict:
    """Encode a data set (or its seeded train/val split) into an index-grid file.

    With `flip`, the grids of the images mirrored left-right follow those of the images (twice the grids, labels
    repeated): more data for a prior, which overfits the grids of one pass over a small set within a few epochs.
    With `shift`, each of those images is encoded once more translated by a random non-zero offset of up to
    `shift` pixels (reflect-padded, drawn from `seed`): twice the grids again; `shift_copies` such copies, each
    image's translations all different, give (1 + shift_copies) times the grids.
    With search > 1 the grids come from a decoder-aware search among that many nearest codes (vqgen.search).
    """
    check_choice("split", split, SPLITS)
    check_fraction("val_fraction", val_fraction)
    check_positive("batch_size", batch_size)
    check_search_options(search, search_sweeps)
    check_at_least("shift", shift, 0)
    check_positive("workers", workers)
    side = 2 * shift + 1
    if shift_copies != 1 and not shift:
        raise OptionError("{shift_copies} counts translated copies; give {shift} N (N > 0) with it", "shift_copies")
    if shift and not (isinstance(shift_copies, int) and 1 <= shift_copies < side * side):
        raise OptionError(f"{{shift_copies}} must be between 1 and {side * side - 1} (the non-zero translations of "
                          f"up to {{shift={shift}}} pixels), got {shift_copies}", "shift_copies", shift_copies,
                          f"1 to {side * side - 1}")
    seed = seed_value("seed", seed)
    vqvae = vqvae or shipped("vqvae")
    out = user_path(out)
    check_outputs({"vqvae": vqvae, "data": spec_path(data)}, [out_file("out", out)])
    model, sha, path = open_vqvae(vqvae, device)
    check_search(model, search)
    _check_shift(shift, model.config.image_size)
    images = load_images(data, model.config.image_size, data_root=data_root, cache_dir=cache_dir, workers=workers)
    idx = select_split(len(images), split, val_fraction, data)
    picked = images.images[idx]
    labels = images.labels[idx] if images.labels is not None else None
    # codes of a mirrored or shifted image are not the mirrored or shifted codes (the encoder is neither
    # equivariant nor working at pixel resolution), so every variant is encoded afresh
    variants = [picked, picked.flip(3)] if flip else [picked]
    copies = len(variants) * (1 + (shift_copies if shift else 0))
    dev = next(model.parameters()).device
    with SearchEncoder(model, -(-len(picked) // batch_size) * copies, search, search_sweeps) as encoder, \
            autocast(dev, inference_amp(dev, amp)):
        codes = [_encode_all(encoder, v, batch_size) for v in variants]  # each (n, h, w)
        if shift:
            g = torch.Generator().manual_seed(seed)
            # flat offsets dy * side + dx already taken per image; the centre is the untranslated image
            used = [torch.full((len(picked), 1), shift * side + shift) for _ in variants]
            for _ in range(shift_copies):
                for i, v in enumerate(variants):
                    k = _new_offsets(used[i], side, g)  # (n,)
                    used[i] = torch.cat([used[i], k[:, None]], 1)
                    codes.append(_encode_all(encoder, _shifted(v, shift, torch.stack([k // side, k % side], 1)),
                                             batch_size))
    codes = torch.cat(codes)
    labels = labels.repeat(copies) if labels is not None else None
    searched = f"+search{search}x{search_sweeps}" if search > 1 else ""
    cs = CodeSet(codes, model.config.num_codes, labels, list(images.class_names), sha,
                 f"{images.source}#{split}" + ("+flip" if flip else "") + _shift_tag(shift, shift_copies, seed)
                 + searched)
    write_codes(out, cs)
    usage = code_usage(codes, cs.num_codes)
    return {"out": str(out), "grids": len(cs), "height": cs.height, "width": cs.width, "num_codes": cs.num_codes,
            "codes_used": usage["codes_used"], "unigram_entropy_bits": usage["unigram_entropy_bits"],
            "split": split, "flip": flip, "shift": shift,
            "shift_copies": shift_copies if shift else 0, "search": search, "search_sweeps": search_sweeps, "vqvae": path}
