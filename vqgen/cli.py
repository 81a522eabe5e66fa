"""The `vqgen` command line: options -> one call of a command module. Errors become one line and exit 1, misuse
a usage message and exit 2 (friendly, the one place that maps them).

Nothing heavy is imported at module level, so `vqgen --help` and shell completion answer instantly;
torch and the library load inside each command.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from vqgen import __version__

app = typer.Typer(
    name="vqgen",
    help="Learn a discrete latent code for images (VQ-VAE) and generate new images from it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"vqgen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """Learn a discrete latent code for images (VQ-VAE) and generate new images from it."""


# how the library's parameter names are spelled on this command line (the rest: --name-with-dashes); the one
# place that knows it, used for every error message (vqgen.errors: `{name}` / `{name=value}` in a message)
FLAGS = {"class_name": "--class", "run_dir": "--out", "codes_path": "--codes", "prior_name": "--prior",
         "prior_options": "-o", "num_codes": "--codebook-size", "json_out": "--json", "inputs": "INPUTS"}
FLAG_PAIRS = {"class_conditional": ("--class-conditional", "--unconditional"), "resume": ("--resume", "--resume")}


def spell(name: str, value: str | None = None) -> str:
    """An option (and the value given to it) as typed here: batch_size -> --batch-size, flip=False -> --no-flip,
    prior_options.layers=5 -> -o layers=5."""
    group, _, key = name.rpartition(".")
    if group:
        flag = f"{FLAGS.get(group, '--' + group.replace('_', '-'))} {key}"
        return flag if value is None else f"{flag}={value}"
    if value in ("True", "False"):
        dashed = name.replace("_", "-")
        on, off = FLAG_PAIRS.get(name, (f"--{dashed}", f"--no-{dashed}"))
        return on if value == "True" else off
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if value is None else f"{flag} {value}"


class Misuse(typer.BadParameter):
    """A usage error (exit 2, with the command's usage line) whose text is the library's message as it stands."""

    def format_message(self) -> str:
        from vqgen.log import printable

        return printable(self.message)


def friendly(fn):
    """Errors become what a shell user reads: misuse (an OptionError) a usage error, exit 2; any other library
    error one red line on stderr, exit 1; Ctrl+C exit 130 (SIGTERM: 143). Options are named as flags."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from vqgen import log
        from vqgen.errors import OptionError, VqgenError

        try:
            return fn(*args, **kwargs)
        except OptionError as e:
            raise Misuse(e.spelled(spell)) from None
        except VqgenError as e:
            rank = _rank()
            if rank:  # ranks > 0 are quiet under torchrun, but their own errors (a file missing there) must show
                log.console.quiet = False
            message = e.spelled(spell)
            log.error(f"rank {rank}: {message}" if rank else message)
            raise typer.Exit(1)
        except KeyboardInterrupt as e:
            # Interrupted (training) says where its checkpoint is and how to resume; a bare Ctrl+C has no words
            if str(e):
                log.note(str(e))
            else:
                log.error("interrupted")
            raise typer.Exit(getattr(e, "exit_code", 130))

    return wrapper


def _rank() -> int:
    """This process's rank under torchrun, 0 without it (read from its environment: no torch import)."""
    import os

    if int(os.environ.get("WORLD_SIZE") or 1) < 2:
        return 0
    return int(os.environ.get("RANK") or 0)


def result(text: str) -> None:
    """Write a command's result on stdout, the one place that does: a stdout that cannot take it (a full disk,
    /dev/full, a closed pipe) is one error line and exit 1, and nothing of it is retried when Python exits."""
    from vqgen.errors import OutputError

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        try:  # what could not be flushed would fail again, with a traceback, when the interpreter exits
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        raise OutputError(f"cannot write the result to standard output: {e.strerror or e}") from None


def emit(summary: dict, as_json: bool) -> None:
    """A command's result on stdout: JSON with --json (non-finite numbers as null), else aligned `key: value`
    lines. Under torchrun only rank 0 prints it: stdout stays one result, whatever the number of processes."""
    from vqgen.log import finite_json, printable

    if _rank():
        return
    if as_json:
        result(finite_json(summary) + "\n")
        return
    width = max(len(k) for k in summary) if summary else 0
    result("".join((f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {printable(v)}") + "\n"
                   for k, v in summary.items()))


# -- shared options -----------------------------------------------------------------------------------------
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")
JsonOpt = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout.")
DataRootOpt = typer.Option(None, "--data-root", help="Where CIFAR-10 is stored / downloaded (default ~/.cache/vqgen/data).")
CacheOpt = typer.Option(None, "--cache-dir", help="Decoded-image cache (default ~/.cache/vqgen/images).")
# training options: None means "the TrainConfig default, or the stored value when resuming"
StepsOpt = typer.Option(None, "--steps", help="Optimiser steps in total (default 13000).")
EpochsOpt = typer.Option(None, "--epochs", help="Train this many passes instead of --steps.")
BatchOpt = typer.Option(None, "--batch-size", help="Global batch size (default 128).")
LrOpt = typer.Option(None, "--lr", help="Peak learning rate (default 2e-3).")
LrScheduleOpt = typer.Option(None, "--lr-schedule", help="cosine | constant (default cosine).")
WarmupOpt = typer.Option(None, "--warmup", help="Linear warmup steps (default 100).")
CheckpointEveryOpt = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints.")
EvalEveryOpt = typer.Option(None, "--eval-every", help="Steps between held-out evaluations.")
LogEveryOpt = typer.Option(None, "--log-every", help="Steps between metrics.jsonl records.")
AmpOpt = typer.Option(None, "--amp/--no-amp", help="Force bf16 autocast on or off (default: auto, whichever of bf16 "
                      "and fp32 trains this network faster here: measured once per machine, printed and recorded).")
InferAmpOpt = typer.Option(None, "--amp/--no-amp", help="Force bf16 autocast on or off (default: auto, bf16 on CUDA "
                           "GPUs that support it, fp32 on CPUs).")
SearchOpt = typer.Option(0, "--search", help="Pick each position's code among its N nearest by how well the "
                         "grid decodes (0: the nearest code, as in the paper; 4 gains ~0.5 dB for 3 decodes a position).")
SearchSweepsOpt = typer.Option(1, "--search-sweeps", help="Passes of --search over the grid's positions (2: ~0.1 dB more).")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads (default: auto, the faster of torch's default "
                          "and the usable cores, measured with --amp's choice; OMP_NUM_THREADS is respected).")
WorkersOpt = typer.Option(None, "--workers", help="Processes decoding a folder of images into the cache "
                          "(default: the usable cores); an interrupted decoding resumes where it stopped.")
DataOnDeviceOpt = typer.Option("auto", "--data-on-device", help="auto | yes | no: hold the training split on the "
                               "device, or stream batches to it from the memory-mapped cache (auto: on the device "
                               "when it takes at most half of the device's measured free memory; printed and recorded).")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Start afresh in an --out that holds an earlier run, deleting "
                            "its weights, best weights, checkpoint, metrics and reconstructions (without it, such "
                            "an --out is refused).")
SamplingOptionsOpt = typer.Option([], "--opt", "-o", help="A sampling option of the prior, key=value (repeatable): "
                                  "maskgit's steps and choice_temperature, e.g. -o steps=12.")


def _train_overrides(**given) -> dict:
    return {k: v for k, v in given.items() if v is not None}


@app.command("train-vqvae", epilog="Example: vqgen train-vqvae --data cifar10 --out runs/vq --steps 20000")
@friendly
def train_vqvae(
    data: Optional[str] = typer.Option(None, "--data", help="cifar10[:train|:test] or a folder of images."),
    out: Path = typer.Option(..., "--out", help="Run folder: weights, checkpoint, metrics.jsonl, PNGs."),
    steps: Optional[int] = StepsOpt,
    epochs: Optional[float] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    lr_schedule: Optional[str] = LrScheduleOpt,
    warmup: Optional[int] = WarmupOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for weights, data order, augmentation (default 0)."),
    checkpoint_every: Optional[int] = CheckpointEveryOpt,
    eval_every: Optional[int] = EvalEveryOpt,
    log_every: Optional[int] = LogEveryOpt,
    amp: Optional[bool] = AmpOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from these VQ-VAE weights, grown to any larger --hidden / --res-blocks / --res-channels / --codebook-size given (it starts at their PSNR; new codes start on encoder outputs); model options not given are theirs."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Image side; a multiple of 4, grid = side/4 (default 32)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Trunk channels (default 128)."),
    res_blocks: Optional[int] = typer.Option(None, "--res-blocks", help="Residual blocks in encoder and decoder (default 2)."),
    res_channels: Optional[int] = typer.Option(None, "--res-channels", help="Channels inside each residual block (default 32)."),
    num_codes: Optional[int] = typer.Option(None, "--codebook-size", "--num-codes", help="K, the codebook size: number of codes (default 512)."),
    code_dim: Optional[int] = typer.Option(None, "--code-dim", help="D, code vector size (default 64)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Commitment loss weight (default 0.25)."),
    quantizer: Optional[str] = typer.Option(None, "--quantizer", help="ema (EMA codebook) | vq (codebook loss) (default ema)."),
    gradient: Optional[str] = typer.Option(None, "--gradient", help="ste (straight-through copy, the paper's) | rotation (the rotation trick) (default ste)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="EMA decay of the codebook statistics (default 0.99)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Seeded held-out fraction, never trained on (default 0.02)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips (default off)."),
    shift: Optional[int] = typer.Option(None, "--shift", help="Random translation of each image by up to N pixels, reflect-padded (default 0: off)."),
    device: str = DeviceOpt,
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (GPU runs)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="Force the channels_last memory format on or off (default: auto, measured with --amp's choice)."),
    threads: Optional[int] = ThreadsOpt,
    data_on_device: str = DataOnDeviceOpt,
    workers: Optional[int] = WorkersOpt,
    data_root: Optional[str] = DataRootOpt,
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Train the VQ-VAE (stage 1) and report held-out PSNR and codebook usage."""
    from vqgen.commands.stage1 import train_vqvae as run

    model = dict(image_size=image_size, hidden=hidden, res_blocks=res_blocks, res_channels=res_channels,
                 num_codes=num_codes, code_dim=code_dim, beta=beta, quantizer=quantizer, gradient=gradient,
                 ema_decay=ema_decay)
    overrides = _train_overrides(steps=steps, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, warmup=warmup,
                                 seed=seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
                                 log_every=log_every, amp=amp)
    summary = run(data, out, model, overrides, epochs=epochs, val_fraction=val_fraction, flip=flip, shift=shift,
                  device=device, data_root=data_root, cache_dir=cache_dir, resume=resume, compile=compile,
                  channels_last=channels_last, init_from=init_from, threads=threads, overwrite=overwrite,
                  data_on_device=data_on_device, workers=workers)
    emit(summary, as_json)


@app.command(epilog="Example: vqgen reconstruct --vqvae runs/vq/vqvae.safetensors photos/ --out recon.png")
@friendly
def reconstruct(
    inputs: List[str] = typer.Argument(..., help="Image files, folders or a data spec (cifar10:test)."),
    out: Path = typer.Option(..., "--out", help="A .png grid (originals above, reconstructions below) or a folder."),
    vqvae: Optional[str] = typer.Option(None, "--vqvae", help="VQ-VAE weights (default: the shipped CIFAR-10 model)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per forward pass."),
    nrow: int = typer.Option(8, "--nrow", help="Images per grid row."),
    search: int = SearchOpt,
    search_sweeps: int = SearchSweepsOpt,
    amp: Optional[bool] = InferAmpOpt,
    device: str = DeviceOpt,
    data_root: Optional[str] = DataRootOpt,
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Encode and decode images; print MSE and PSNR (pixels in [0, 1])."""
    from vqgen.commands.stage1 import reconstruct as run

    emit(run(vqvae, inputs, out, device=device, batch_size=batch_size, nrow=nrow, cache_dir=cache_dir,
             data_root=data_root, search=search, search_sweeps=search_sweeps, amp=amp), as_json)


@app.command(epilog="Example: vqgen encode --vqvae runs/vq/vqvae.safetensors --data cifar10 --out codes.safetensors")
@friendly
def encode(
    data: str = typer.Option(..., "--data", help="cifar10[:train|:test] or a folder of images."),
    out: Path = typer.Option(..., "--out", help="Index-grid file to write (.safetensors)."),
    vqvae: Optional[str] = typer.Option(None, "--vqvae", help="VQ-VAE weights (default: the shipped CIFAR-10 model)."),
    split: str = typer.Option("train", "--split", help="train | val | all (the seeded held-out split of --data)."),
    val_fraction: float = typer.Option(0.02, "--val-fraction", help="Held-out fraction defining the split."),
    batch_size: int = typer.Option(500, "--batch-size", help="Images per forward pass."),
    flip: bool = typer.Option(False, "--flip", help="Also encode every image mirrored left-right (twice the grids; more data for train-prior)."),
    shift: int = typer.Option(0, "--shift", help="Also encode every image (and mirror) translated by a random non-zero offset of up to N pixels, reflect-padded (twice the grids again; 0: off)."),
    shift_copies: int = typer.Option(1, "--shift-copies", help="Translated copies of every image (and mirror) with --shift, each a different offset."),
    seed: int = typer.Option(0, "--seed", help="Seed for the --shift offsets."),
    search: int = SearchOpt,
    search_sweeps: int = SearchSweepsOpt,
    amp: Optional[bool] = InferAmpOpt,
    device: str = DeviceOpt,
    workers: Optional[int] = WorkersOpt,
    data_root: Optional[str] = DataRootOpt,
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Encode images into an index-grid file (the input of train-prior)."""
    from vqgen.commands.stage1 import encode as run

    emit(run(vqvae, data, out, split=split, val_fraction=val_fraction, device=device, batch_size=batch_size,
             data_root=data_root, cache_dir=cache_dir, flip=flip, shift=shift, shift_copies=shift_copies, seed=seed,
             search=search, search_sweeps=search_sweeps, amp=amp, workers=workers), as_json)


@app.command("train-prior", epilog="Example: vqgen train-prior --codes codes.safetensors --out runs/prior --steps 20000")
@friendly
def train_prior(
    codes: Optional[str] = typer.Option(None, "--codes", help="Index-grid file from `vqgen encode`."),
    out: Path = typer.Option(..., "--out", help="Run folder: weights, checkpoint, metrics.jsonl."),
    prior: Optional[str] = typer.Option(None, "--prior", help="Registered prior (see `vqgen priors`; default pixelcnn)."),
    opt: List[str] = typer.Option([], "--opt", "-o", help="Prior option key=value (repeatable), e.g. -o layers=12."),
    steps: Optional[int] = StepsOpt,
    epochs: Optional[float] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    lr_schedule: Optional[str] = LrScheduleOpt,
    warmup: Optional[int] = WarmupOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default 0)."),
    checkpoint_every: Optional[int] = CheckpointEveryOpt,
    eval_every: Optional[int] = EvalEveryOpt,
    log_every: Optional[int] = LogEveryOpt,
    amp: Optional[bool] = AmpOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    class_conditional: Optional[bool] = typer.Option(
        None, "--class-conditional/--unconditional", help="Condition on labels (default: when the codes have labels)."),
    label_dropout: Optional[float] = typer.Option(None, "--label-dropout", help="Chance a training label is replaced by a null class, so the prior also learns p(grid) and `sample --guidance` works (default 0.1 for class-conditional priors, 0 otherwise)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from these prior weights: the same prior, of their sizes or grown (-o channels=/layers= larger, for pixelcnn: it starts computing what they compute); dropout and --label-dropout may change: a null class added starts at the mean class."),
    val_codes: Optional[str] = typer.Option(None, "--val-codes", help="Held-out index-grid file (else a seeded split)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Seeded held-out fraction when no --val-codes (default 0.05)."),
    device: str = DeviceOpt,
    compile: bool = typer.Option(False, "--compile", help="torch.compile the prior (GPU runs)."),
    threads: Optional[int] = ThreadsOpt,
    data_on_device: str = DataOnDeviceOpt,
    as_json: bool = JsonOpt,
):
    """Fit an autoregressive prior (stage 2) on index grids; report held-out bits per code."""
    from vqgen.commands.stage2 import train_prior as run

    overrides = _train_overrides(steps=steps, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, warmup=warmup,
                                 seed=seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
                                 log_every=log_every, amp=amp)
    emit(run(codes, out, prior, opt, overrides, epochs=epochs, class_conditional=class_conditional,
             val_codes=val_codes, val_fraction=val_fraction, device=device, resume=resume, compile=compile,
             threads=threads, label_dropout=label_dropout, init_from=init_from, overwrite=overwrite,
             data_on_device=data_on_device), as_json)


@app.command(epilog="Example: vqgen sample --n 64 --out grid.png --class cat --seed 1")
@friendly
def sample(
    out: Path = typer.Option(..., "--out", help="A .png grid, or a folder that receives one PNG per sample."),
    n: int = typer.Option(64, "--n", help="Number of samples."),
    prior: Optional[str] = typer.Option(None, "--prior", help="Prior weights (default: the shipped CIFAR-10 prior)."),
    vqvae: Optional[str] = typer.Option(None, "--vqvae", help="VQ-VAE weights (default: the shipped CIFAR-10 model)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance weight W >= 0: logits "
                                             "uncond + (1+W)(cond - uncond); 0 is plain conditional sampling (default: "
                                             "10 when autoguided, as the shipped prior is; else 7 for priors with a "
                                             "null class, else 0)."),
    guidance_schedule: Optional[str] = typer.Option(None, "--guidance-schedule", help="How W is spread over the "
                                                    "positions drawn: constant, or linear (rising from ~0 to ~2W, W "
                                                    "on average) (default: linear)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Softmax temperature (default: 1.05 "
                                                "when guided, else 1)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample only from the k most likely codes."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling mass."),
    weak_prior: Optional[str] = typer.Option(None, "--weak-prior", help="A smaller or less-trained raster prior of "
                                             "the same codes and classes to autoguide away from (default: the "
                                             "shipped weak prior, for the shipped prior only)."),
    autoguidance: Optional[float] = typer.Option(None, "--autoguidance", help="Autoguidance weight A >= 0: adds "
                                                 "A(cond - weak) to the logits, spread like W; 0 turns it off "
                                                 "(default: 3 when guided with a weak prior and a class, else "
                                                 "0)."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class name or index (class-conditional priors)."),
    unconditional: bool = typer.Option(False, "--unconditional", help="Draw from p(grid), with no class (a class-conditional prior trained with --label-dropout)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same images."),
    nrow: int = typer.Option(8, "--nrow", help="Images per grid row (a conditional prior draws one class per row)."),
    save_codes: Optional[str] = typer.Option(None, "--save-codes", help="Also write the sampled index grids here."),
    batch_size: int = typer.Option(256, "--batch-size", help="Samples drawn at once."),
    opt: List[str] = SamplingOptionsOpt,
    amp: Optional[bool] = InferAmpOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Generate images: draw code grids from the prior and decode them with the VQ-VAE."""
    from vqgen.commands.sample import sample as run

    emit(run(n, out, prior=prior, vqvae=vqvae, temperature=temperature, top_k=top_k, top_p=top_p, class_=class_,
             seed=seed, nrow=nrow, save_codes=save_codes, device=device, batch_size=batch_size, amp=amp,
             guidance=guidance, guidance_schedule=guidance_schedule, unconditional=unconditional,
             prior_options=opt, weak_prior=weak_prior, autoguidance=autoguidance), as_json)


@app.command(epilog="Example: vqgen inpaint photo.png --region bottom --n 4 --out completed.png")
@friendly
def inpaint(
    inputs: List[str] = typer.Argument(..., help="Image files or folders."),
    region: str = typer.Option(..., "--region", help="What to regenerate: top | bottom | left | right (that half of "
                               "the code grid) | center (its middle half each way) | MASK.png (white: regenerate; "
                               "resized to the grid). Raster priors (pixelcnn, transformer) complete bottom only."),
    out: Path = typer.Option(..., "--out", help="A .png: per image a row of the original, the masked input and the completions."),
    n: int = typer.Option(4, "--n", help="Completions per image."),
    prior: Optional[str] = typer.Option(None, "--prior", help="Prior weights (default: the shipped CIFAR-10 prior)."),
    vqvae: Optional[str] = typer.Option(None, "--vqvae", help="VQ-VAE weights (default: the shipped CIFAR-10 model)."),
    class_: Optional[str] = typer.Option(None, "--class", help="Complete as this class (default: each image's class "
                                         "folder when named like the prior's classes, else no class)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance weight W >= 0 "
                                             "towards the class (default: 6 with a class and a null class, else 0)."),
    guidance_schedule: Optional[str] = typer.Option(None, "--guidance-schedule", help="How W is spread over the "
                                                    "grid's positions: constant, or linear (rising from ~0 to ~2W "
                                                    "over the whole grid, kept positions included) (default: "
                                                    "linear)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Softmax temperature (default: 1)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample only from the k most likely codes."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same completions."),
    save_codes: Optional[str] = typer.Option(None, "--save-codes", help="Also write the completed index grids here."),
    opt: List[str] = SamplingOptionsOpt,
    batch_size: int = typer.Option(256, "--batch-size", help="Grids drawn at once."),
    amp: Optional[bool] = InferAmpOpt,
    device: str = DeviceOpt,
    data_root: Optional[str] = DataRootOpt,
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Complete images: keep their codes outside a region, draw the codes inside it from the prior, decode."""
    from vqgen.commands.inpaint import inpaint as run

    emit(run(inputs, out, region=region, n=n, save_codes=save_codes, class_=class_, prior=prior, vqvae=vqvae,
             guidance=guidance, guidance_schedule=guidance_schedule, temperature=temperature, top_k=top_k,
             top_p=top_p, seed=seed, prior_options=opt,
             batch_size=batch_size, amp=amp, device=device, data_root=data_root, cache_dir=cache_dir), as_json)


@app.command("priors", epilog="Example: vqgen priors --json")
@friendly
def list_priors_cmd(as_json: bool = JsonOpt):
    """List the registered priors and where each comes from."""
    from priors import list_priors
    from vqgen.log import finite_json, printable

    found = list_priors()
    if as_json:
        result(finite_json(found) + "\n")
    else:
        width = max(map(len, found)) if found else 0
        result("".join(f"{printable(name):<{width}}  {printable(origin)}\n" for name, origin in found.items()))


@app.command(epilog="Example: vqgen evaluate --data cifar10:test --json figures.json")
@friendly
def evaluate(
    data: str = typer.Option(..., "--data", help="cifar10[:train|:test] or a folder of images."),
    vqvae: Optional[str] = typer.Option(None, "--vqvae", help="VQ-VAE weights (default: the shipped CIFAR-10 model)."),
    prior: Optional[str] = typer.Option(None, "--prior", help="Prior weights: adds bits per code / per dim."),
    split: str = typer.Option("all", "--split", help="all | train | val (the seeded held-out split of --data)."),
    val_fraction: float = typer.Option(0.02, "--val-fraction", help="Held-out fraction defining the split."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as one flat JSON object here."),
    fid: int = typer.Option(0, "--fid", help="Frechet Inception distance of this many samples (needs vqgen[fid])."),
    seed: int = typer.Option(0, "--seed", help="Seed for the --fid samples."),
    batch_size: int = typer.Option(250, "--batch-size", help="Images per forward pass."),
    search: int = SearchOpt,
    search_sweeps: int = SearchSweepsOpt,
    amp: Optional[bool] = InferAmpOpt,
    device: str = DeviceOpt,
    data_root: Optional[str] = DataRootOpt,
    cache_dir: Optional[str] = CacheOpt,
):
    """Reconstruction quality, codebook usage and prior likelihood on one image set."""
    from vqgen.commands.evaluate import evaluate as run

    figures = run(data, vqvae=vqvae, prior=prior, split=split, val_fraction=val_fraction, batch_size=batch_size,
                  device=device, fid=fid, seed=seed, data_root=data_root, cache_dir=cache_dir, search=search,
                  search_sweeps=search_sweeps, amp=amp, json_out=json_out)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from vqgen.log import printable

    table = Table(title=escape(printable(f"vqgen evaluate: {data} ({split})")))
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:.5g}" if isinstance(v, float) else escape(printable(v)))
    console = Console(highlight=False)
    with console.capture() as shown:
        console.print(table)
    result(shown.get())


def main() -> None:
    # a closed stdout or stderr: whatever file is opened next would get its descriptor and receive what is
    # printed; /dev/null takes the place, and a closed stdout (where the result goes) is refused before any work
    closed = []
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            os.open(os.devnull, os.O_WRONLY)  # the lowest free descriptor: this one
    if 2 in closed:
        sys.stderr = open(2, "w", closefd=False)
    if 1 in closed:
        sys.stderr.write("error: standard output is closed, and vqgen prints its result there; redirect it "
                         "(> FILE, or > /dev/null)\n")
        sys.exit(1)
    app()
