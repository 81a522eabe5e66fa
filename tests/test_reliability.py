"""The "Reliability" issue: bit-exact resume (after kill -9, Ctrl+C or a clean stop), atomic checkpoints, safe
loading, and one clear line (exit 1, or 2 for CLI misuse) for every kind of bad input.

Everything runs on the CPU with one thread (the machine is shared; more threads only contend) on 16x16
synthetic images. Runs killed with signals are subprocesses slowed by a sleep in the batch source, so a signal
can land mid-run; the sleep changes no number.
"""

import json
import os
import pickle
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from tests.conftest import TINY_VQVAE_ARGS, make_images
from vqgen.checkpoint import read_header

TINY_PRIOR = ["-o", "channels=16", "-o", "layers=3", "-o", "kernel_size=3"]
# one recipe for the reference run and for the runs that get killed: cosine schedule over 40 steps with a
# short warmup (so the schedule really depends on the step), EMA codebook, random flips and shifts (torch RNG),
# bf16 amp; precision, memory format and threads given, so that no measurement can pick differently between runs
RUN_ARGS = ["--batch-size", "8", "--steps", "40", "--warmup", "5", "--checkpoint-every", "10", "--log-every", "1",
            "--eval-every", "0", "--flip", "--shift", "2", "--amp", "--channels-last", "--threads", "1",
            *TINY_VQVAE_ARGS]

# no measurement runs (it would call the objectives these tests count calls of)
FIXED_SPEED = ["--no-amp", "--channels-last", "--threads", "1"]

SLOW_CLI = r"""
import sys, time
import vqgen.train as train
_next = train.TensorBatches.__next__
def _slow_next(self):
    time.sleep(float(sys.argv[1]))
    return _next(self)
train.TensorBatches.__next__ = _slow_next
from vqgen.cli import app
app(sys.argv[2:], prog_name="vqgen")
"""


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # bit-exact comparisons need the same thread count in every run; subprocesses too


def _invoke(*args):
    from vqgen.cli import app

    torch.set_num_threads(1)
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(res):
    assert res.exit_code == 0, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
    return res


def _tensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _assert_same_run(a: Path, b: Path, weights: str) -> None:
    """Two run folders hold bit-identical training state and weights."""
    ta, ma = _tensors(a / "checkpoint.safetensors")
    tb, mb = _tensors(b / "checkpoint.safetensors")
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim.") for k in ta) and "rng.torch" in ta
    differ = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    assert not differ, f"tensors differ: {differ}"
    for key in ("step", "batches", "python_rng", "optimizer", "train_config"):
        assert ma[key] == mb[key], key
    wa, wb = _tensors(a / weights)[0], _tensors(b / weights)[0]
    assert sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def _ckpt_step(run: Path) -> int | None:
    try:
        return int(read_header(run / "checkpoint.safetensors")[1]["step"])
    except Exception:
        return None


def _metric_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [0]
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if "loss" in rec:
            steps.append(rec["step"])
    return max(steps)


def _spawn(args, tmp_path, stderr=subprocess.PIPE, delay=0.1, quiet=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQGEN_CACHE": str(tmp_path / "_cache"), "COLUMNS": "120"}
    env.pop("VQGEN_QUIET", None)
    if quiet:
        env["VQGEN_QUIET"] = "1"
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(delay), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)


def _wait_until(proc, run: Path, min_ckpt: int, ahead: int, timeout: float = 120) -> None:
    """Wait until a checkpoint at step >= min_ckpt exists and training is `ahead` steps past it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early (exit {proc.returncode})")
        ck = _ckpt_step(run)
        if ck is not None and ck >= min_ckpt and _metric_step(run) >= ck + ahead:
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run made no progress")


# -- shared runs -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """An uninterrupted 40-step VQ-VAE run (the bit-exact reference)."""
    root = tmp_path_factory.mktemp("ref")
    data = make_images(root / "images")
    s = json.loads(_ok(_invoke("train-vqvae", "--data", data, "--out", root / "run", *RUN_ARGS,
                               "--cache-dir", root / "cache", "--json")).stdout)
    assert s["steps"] == 40
    return SimpleNamespace(data=data, run=root / "run", summary=s)


# -- resume, bit for bit ----------------------------------------------------------------------------------------
def test_resume_after_kill_9_is_bit_exact(ref, tmp_path):
    run = tmp_path / "run"
    proc = _spawn(["train-vqvae", "--data", ref.data, "--out", run, *RUN_ARGS], tmp_path)
    _wait_until(proc, run, min_ckpt=10, ahead=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ck, reached = _ckpt_step(run), _metric_step(run)
    assert 10 <= ck < 40 and reached > ck  # killed between checkpoints: the resumed run re-does some steps
    with open(run / "metrics.jsonl", "a") as f:  # as if the kill had landed in the middle of a record
        f.write('{"step": 99, "loss": 0.12')

    s = json.loads(_ok(_invoke("train-vqvae", "--out", run, "--resume", "--json")).stdout)
    assert s["steps"] == 40
    _assert_same_run(ref.run, run, "vqvae.safetensors")
    assert s["val_psnr"] == ref.summary["val_psnr"] and s["codes_used"] == ref.summary["codes_used"]
    assert (run / "reconstructions.png").read_bytes() == (ref.run / "reconstructions.png").read_bytes()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # every line parses
    assert [r.get("event") for r in records].count("resume") == 1
    assert all(r.get("step") != 99 for r in records)


def test_sigterm_saves_says_how_to_resume_and_resume_is_bit_exact(ref, tmp_path):
    """kill / a scheduler's preemption / `timeout`: SIGTERM checkpoints like Ctrl+C and exits 143 (128 + 15)."""
    run = tmp_path / "run"
    proc = _spawn(["train-vqvae", "--data", ref.data, "--out", run, *RUN_ARGS], tmp_path)
    _wait_until(proc, run, min_ckpt=10, ahead=3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and out == b""
    m = re.search(r"stopped by SIGTERM at step (\d+); checkpoint saved in (\S+); resume with: (.+)", err)
    assert m, err
    step = int(m.group(1))
    assert 13 <= step < 40 and _ckpt_step(run) == step and _metric_step(run) == step
    _ok(_invoke(*shlex.split(m.group(3))[1:]))
    _assert_same_run(ref.run, run, "vqvae.safetensors")


def test_ctrl_c_saves_says_how_to_resume_and_resume_is_bit_exact(ref, tmp_path):
    """SIGINT through a terminal (the progress bar is live): the bar stops, the checkpoint is written at the
    current step, one line says how to resume; running that command finishes the run bit-exactly."""
    run = tmp_path / "run"
    master, slave = pty.openpty()
    proc = _spawn(["train-vqvae", "--data", ref.data, "--out", run, *RUN_ARGS], tmp_path, stderr=slave, quiet=False)
    os.close(slave)
    buf = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            buf.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        _wait_until(proc, run, min_ckpt=10, ahead=3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        reader.join(5)
    finally:
        os.close(master)
    assert proc.returncode == 130
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", bytes(buf).decode("utf-8", "replace"))
    assert "Traceback" not in text
    assert "━" in text  # the progress bar was on
    m = re.search(r"(?:^|\n)interrupted at step (\d+); checkpoint saved in (\S+); resume with: (.+?)\r?\n", text)
    assert m, text[-2000:]
    step = int(m.group(1))
    assert m.group(2) == str(run) and _ckpt_step(run) == step and 13 <= step < 40
    assert _metric_step(run) == step  # stopped right there, nothing after the checkpoint
    assert text.rstrip().splitlines()[-1].startswith("interrupted at step")  # the bar did not draw over it
    cmd = shlex.split(m.group(3))
    assert cmd == ["vqgen", "train-vqvae", "--out", str(run), "--resume"]

    _ok(_invoke(*cmd[1:]))
    _assert_same_run(ref.run, run, "vqvae.safetensors")


@pytest.mark.parametrize("precision", ["--amp", "--no-amp"])
def test_resume_after_clean_stop_with_more_steps_is_bit_exact(tmp_path, precision):
    """--steps 15, then --resume --steps 40, equals --steps 40 (a constant schedule does not depend on --steps)."""
    data = make_images(tmp_path / "images")
    args = ["--data", data, "--batch-size", "8", "--lr-schedule", "constant", "--warmup", "3", precision,
            "--checkpoint-every", "100", "--eval-every", "7", *TINY_VQVAE_ARGS]
    _ok(_invoke("train-vqvae", *args, "--out", tmp_path / "full", "--steps", "40"))
    _ok(_invoke("train-vqvae", *args, "--out", tmp_path / "part", "--steps", "15"))
    assert _ckpt_step(tmp_path / "part") == 15
    s = json.loads(_ok(_invoke("train-vqvae", "--out", tmp_path / "part", "--resume", "--steps", "40", "--json")).stdout)
    assert s["steps"] == 40
    _assert_same_run(tmp_path / "full", tmp_path / "part", "vqvae.safetensors")


@pytest.fixture(scope="module")
def codes(trained_vqvae):
    out = trained_vqvae["root"] / "reliability_codes.safetensors"
    if not out.exists():
        _ok(_invoke("encode", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", "--data", trained_vqvae["data"],
                    "--split", "all", "--out", out, "--cache-dir", trained_vqvae["root"] / "cache"))
    return out


@pytest.mark.parametrize("precision", ["--amp", "--no-amp"])
@pytest.mark.parametrize("prior,opts", [("pixelcnn", TINY_PRIOR),
                                        ("transformer", ["-o", "n_layer=1", "-o", "n_head=2", "-o", "n_embd=16",
                                                         "-o", "dropout=0.2"])])
def test_prior_resume_after_clean_stop_is_bit_exact(codes, tmp_path, prior, opts, precision):
    args = ["--codes", codes, "--prior", prior, *opts, precision, "--batch-size", "8", "--lr-schedule", "constant",
            "--warmup", "2", "--val-fraction", "0.25"]
    _ok(_invoke("train-prior", *args, "--out", tmp_path / "full", "--steps", "16"))
    _ok(_invoke("train-prior", *args, "--out", tmp_path / "part", "--steps", "6"))
    _ok(_invoke("train-prior", "--out", tmp_path / "part", "--resume", "--steps", "16"))
    _assert_same_run(tmp_path / "full", tmp_path / "part", "prior.safetensors")


def test_prior_ctrl_c_then_resume_is_bit_exact(codes, tmp_path, monkeypatch):
    """A real SIGINT to this process in the middle of train-prior (the trainer's handler takes it)."""
    import vqgen.train as train

    args = ["--codes", codes, *TINY_PRIOR, "--batch-size", "8", "--steps", "20", "--warmup", "3",
            "--val-fraction", "0.25", "--checkpoint-every", "4"]
    _ok(_invoke("train-prior", *args, "--out", tmp_path / "full"))

    real_next, calls = train.TensorBatches.__next__, []

    def next_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(train.TensorBatches, "__next__", next_then_ctrl_c)
    run = tmp_path / "part"
    res = _invoke("train-prior", *args, "--out", run)
    assert res.exit_code == 130 and "Traceback" not in res.output
    line = f"interrupted at step 7; checkpoint saved in {run}; resume with: vqgen train-prior --out {run} --resume"
    first, *rest = res.output.strip().splitlines()
    assert first.startswith("computing in ") and rest == [line]  # the speed choice, printed once, then the stop
    assert _ckpt_step(run) == 7
    monkeypatch.setattr(train.TensorBatches, "__next__", real_next)
    _ok(_invoke("train-prior", "--out", run, "--resume"))
    _assert_same_run(tmp_path / "full", run, "prior.safetensors")


# -- checkpoint writes ----------------------------------------------------------------------------------------------
# -- resume keeps the run it resumes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, codes):
    """A 4-step VQ-VAE run and a 4-step class-conditional prior run, to resume with conflicting options."""
    root = tmp_path_factory.mktemp("short")
    data = make_images(root / "images")
    _ok(_invoke("train-vqvae", "--data", data, "--out", root / "vq", "--steps", "4", "--batch-size", "8",
                "--eval-every", "0", "--cache-dir", root / "cache", *TINY_VQVAE_ARGS))
    _ok(_invoke("train-prior", "--codes", codes, "--out", root / "prior", *TINY_PRIOR, "--steps", "4",
                "--batch-size", "8", "--val-fraction", "0.25", "--class-conditional"))
    other = make_images(root / "other", seed=1)
    tensors, meta = _tensors(codes)  # the same kind of codes, other grids
    tensors["codes"] = torch.flip(tensors["codes"], dims=[0])
    from safetensors.torch import save_file

    save_file(tensors, str(root / "other_codes.safetensors"), metadata=meta)
    return SimpleNamespace(root=root, data=data, other=other, codes=codes, other_codes=root / "other_codes.safetensors")


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("command,args,phrase", [
    ("train-vqvae", ["--hidden", "24"], "--hidden 24 does not match the run being resumed, which has --hidden 16"),
    ("train-vqvae", ["--codebook-size", "32"],
     "--codebook-size 32 does not match the run being resumed, which has --codebook-size 16"),
    ("train-vqvae", ["--flip"], "--flip does not match the run being resumed, which has --no-flip"),
    ("train-vqvae", ["--shift", "2"], "--shift 2 does not match the run being resumed, which has --shift 0"),
    ("train-vqvae", ["--val-fraction", "0.5"],
     "--val-fraction 0.5 does not match the run being resumed, which has --val-fraction 0.02"),
    ("train-vqvae", ["--data", "OTHER"], "is not the data the run in"),
    ("train-prior", ["--prior", "transformer"],
     "--prior transformer does not match the run being resumed, which has --prior pixelcnn"),
    ("train-prior", ["-o", "layers=5"], "-o layers 5 does not match the run being resumed, which has -o layers 3"),
    ("train-prior", ["--unconditional"],
     "--unconditional does not match the run being resumed, which has --class-conditional"),
    ("train-prior", ["--val-fraction", "0.5"], "--val-fraction 0.5 does not match"),
    ("train-prior", ["--codes", "OTHER"], "is not the data the run in"),
    ("train-prior", ["-o", "bogus=1"], "bad prior option 'bogus=1'"),
])
def test_resume_refuses_options_it_would_ignore(short_runs, tmp_path, command, args, phrase):
    name = "vq" if command == "train-vqvae" else "prior"
    run = _copy_run(short_runs.root / name, tmp_path / name)
    before = (run / "checkpoint.safetensors").read_bytes()
    other = short_runs.other if command == "train-vqvae" else short_runs.other_codes
    res = _invoke(command, "--out", run, "--resume", "--steps", "6", *[other if a == "OTHER" else a for a in args])
    assert res.exit_code == 1, res.output
    assert phrase in res.output and "Traceback" not in res.output
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_vqvae_resume_accepts_its_own_options_and_moved_data(short_runs, tmp_path):
    """Re-running the first command with --resume works; so does data copied elsewhere, which the run records."""
    run = _copy_run(short_runs.root / "vq", tmp_path / "vq")
    moved = shutil.copytree(short_runs.data, tmp_path / "moved")
    s = json.loads(_ok(_invoke("train-vqvae", "--data", moved, "--out", run, "--resume", "--steps", "6",
                               "--batch-size", "8", "--no-flip", "--val-fraction", "0.02", *TINY_VQVAE_ARGS,
                               "--json")).stdout)
    assert s["steps"] == 6
    data = json.loads(read_header(run / "checkpoint.safetensors")[1]["data"])
    assert data["spec"] == str(moved.resolve()) and len(data["sha256"]) == 64


def test_prior_resume_accepts_its_own_options(short_runs, tmp_path):
    run = _copy_run(short_runs.root / "prior", tmp_path / "prior")
    s = json.loads(_ok(_invoke("train-prior", "--codes", short_runs.codes, "--out", run, "--resume", "--steps", "6",
                               *TINY_PRIOR, "--prior", "pixelcnn", "--class-conditional", "--val-fraction", "0.25",
                               "--json")).stdout)
    assert s["steps"] == 6 and s["class_conditional"] is True


@pytest.mark.parametrize("failure,code,phrase", [(OSError(28, "No space left on device"), 1, "No space left on device"),
                                                 (KeyboardInterrupt(), 130, "interrupted")])
def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failure, code, phrase):
    import safetensors.torch

    data = make_images(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    _ok(_invoke("train-vqvae", "--data", data, "--out", run, "--steps", "5", "--checkpoint-every", "5",
                "--batch-size", "4", "--no-amp", *TINY_VQVAE_ARGS))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "metrics.jsonl"}
    (run / ".checkpoint.safetensors.k9left.tmp").write_bytes(b"half a file from an earlier kill -9")

    real_save, written = safetensors.torch.save_file, []

    def half_then_fail(tensors, filename, metadata=None):
        raw = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(raw[: len(raw) // 2])
        written.append(filename)
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    res = _invoke("train-vqvae", "--out", run, "--resume", "--steps", "10")
    assert res.exit_code == code and phrase in res.output and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()  # resuming, the final evaluation's figures, the one error line
    assert lines[0].startswith("computing in ") and lines[1].startswith("resuming") and phrase in lines[-1]
    assert all(x.startswith("step ") for x in lines[2:-1])
    assert written and Path(written[0]).parent == run and not Path(written[0]).exists()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "metrics.jsonl"}
    assert after == before  # the previous checkpoint and weights untouched, no temporary left (the stale one too)
    assert _ckpt_step(run) == 5

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    s = json.loads(_ok(_invoke("train-vqvae", "--out", run, "--resume", "--steps", "10", "--json")).stdout)
    assert s["steps"] == 10 and _ckpt_step(run) == 10


# -- non-finite losses --------------------------------------------------------------------------------------------------
def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    data = make_images(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    _ok(_invoke("train-vqvae", "--data", data, "--out", run, "--steps", "6", "--checkpoint-every", "3",
                "--batch-size", "4", "--no-amp", *TINY_VQVAE_ARGS))
    good = (run / "checkpoint.safetensors").read_bytes()
    res = _invoke("train-vqvae", "--out", run, "--resume", "--steps", "30", "--lr", "1e30", "--warmup", "0")
    assert res.exit_code == 1 and "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    m = re.search(r"^error: loss became (nan|inf|-inf) at step (\d+); stopped without saving; the last good "
                  r"checkpoint \(step 6\) is in (\S+);", res.output, re.M)
    assert m and 6 < int(m.group(2)) < 9 and m.group(3) == str(run), res.output
    assert len([x for x in res.output.splitlines() if x.startswith("error:")]) == 1
    assert (run / "checkpoint.safetensors").read_bytes() == good
    from vqgen.checkpoint import load_tensors
    from vqgen.vqvae import load_vqvae

    tensors, meta = load_tensors(run / "checkpoint.safetensors", "vqgen.train-state")
    assert meta["step"] == "6" and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    load_vqvae(run / "vqvae.safetensors")


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    data = make_images(tmp_path / "images", per_class=4)
    res = _invoke("train-vqvae", "--data", data, "--out", tmp_path / "run", "--steps", "30", "--lr", "1e30",
                  "--warmup", "0", "--batch-size", "4", "--no-amp", *TINY_VQVAE_ARGS)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert re.search(r"error: loss became \S+ at step 2; stopped without saving; no checkpoint was written yet",
                     res.output)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


class _InfGrad(torch.autograd.Function):
    """Adds 0 to the loss but sends an infinite gradient: a finite loss, then NaN weights after the update."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("inf"))


def test_finite_loss_but_nan_weights_never_overwrites_good_checkpoint(tmp_path, monkeypatch):
    from vqgen.vqvae import VQVAEObjective

    real_forward, calls = VQVAEObjective.forward, []

    def forward(self, images, *rest):
        loss, metrics = real_forward(self, images, *rest)
        calls.append(1)
        if len(calls) == 4:  # the update of step 4, a checkpoint step, turns the weights into NaN
            loss = loss + _InfGrad.apply(self.model.decoder.net[0].weight)
        return loss, metrics

    monkeypatch.setattr(VQVAEObjective, "forward", forward)
    data = make_images(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    res = _invoke("train-vqvae", "--data", data, "--out", run, "--steps", "10", "--checkpoint-every", "2",
                  "--batch-size", "4", *FIXED_SPEED, *TINY_VQVAE_ARGS)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "error: the weights became NaN or infinite by step 4; stopped without saving. the last good checkpoint " \
           f"(step 2) is in {run}" in res.output
    assert _ckpt_step(run) == 2
    tensors, _ = _tensors(run / "checkpoint.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


# -- bad input: one clear line, exit 1 (2 for CLI misuse), no traceback, nothing half-written -------------------
class _Boobytrap:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.fixture(scope="module")
def f(trained_vqvae, codes, tmp_path_factory):
    """Good and bad files for the rows below (never modified by them)."""
    from safetensors.torch import save_file

    from vqgen.checkpoint import FORMAT_VERSION, KIND_CODES, KIND_PRIOR
    from vqgen.vqvae import VQVAE, VQVAEConfig, load_vqvae, save_vqvae

    r = tmp_path_factory.mktemp("bad")
    ns = SimpleNamespace(root=r, data=trained_vqvae["data"], vq=trained_vqvae["run"] / "vqvae.safetensors",
                         vq_run=trained_vqvae["run"], codes=codes, pwned=r / "pwned")
    ns.prior_run = r / "prior_run"
    _ok(_invoke("train-prior", "--codes", codes, *TINY_PRIOR, "--out", ns.prior_run, "--steps", "2",
                "--batch-size", "8"))
    ns.prior = ns.prior_run / "prior.safetensors"
    ns.state = ns.prior_run / "checkpoint.safetensors"

    raw = ns.vq.read_bytes()
    ns.random = r / "random.safetensors"
    ns.random.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(3),
                                              dtype=torch.uint8).tolist()))
    ns.empty = r / "empty.safetensors"
    ns.empty.write_bytes(b"")
    ns.truncated = r / "truncated.safetensors"
    ns.truncated.write_bytes(raw[: len(raw) * 2 // 3])
    ns.truncated_prior = r / "truncated_prior.safetensors"
    ns.truncated_prior.write_bytes(ns.prior.read_bytes()[:-10])
    ns.png = r / "picture.safetensors"
    Image.new("RGB", (8, 8), "red").save(r / "picture.png")
    shutil.copy(r / "picture.png", ns.png)
    ns.pickle = r / "weights.safetensors"
    ns.pickle.write_bytes(pickle.dumps(_Boobytrap(ns.pwned)))
    ns.pickle0 = r / "weights.pt"
    ns.pickle0.write_bytes(pickle.dumps(_Boobytrap(ns.pwned), protocol=0))
    ns.torch_save = r / "model.bin"
    torch.save({"w": torch.zeros(2)}, ns.torch_save)

    model, _ = load_vqvae(ns.vq)
    cfg = model.config.to_dict()
    ns.vq_k32 = r / "vq_k32.safetensors"
    save_vqvae(VQVAE(VQVAEConfig(**{**cfg, "num_codes": 32})), ns.vq_k32)
    ns.vq_g8 = r / "vq_g8.safetensors"
    save_vqvae(VQVAE(VQVAEConfig(**{**cfg, "image_size": 32})), ns.vq_g8)
    ns.vq_other = r / "vq_other.safetensors"  # same K and grid, other weights: another hash
    with torch.no_grad():
        model.decoder.net[0].bias.add_(0.01)
    save_vqvae(model, ns.vq_other)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "vqgen.vqvae", "format_version": FORMAT_VERSION, "vqgen_version": "0.1.0"}
    ns.vq_badcfg = r / "vq_badcfg.safetensors"
    save_file(sd, str(ns.vq_badcfg), metadata={**meta, "config": json.dumps({**cfg, "layers": 3})})
    ns.vq_nocfg = r / "vq_nocfg.safetensors"
    save_file(sd, str(ns.vq_nocfg), metadata=meta)
    ns.vq_shape = r / "vq_shape.safetensors"  # config says K=32, tensors hold K=16
    save_file(sd, str(ns.vq_shape), metadata={**meta, "config": json.dumps({**cfg, "num_codes": 32})})
    ns.vq_v2 = r / "vq_v2.safetensors"
    save_file(sd, str(ns.vq_v2), metadata={**meta, "format_version": "2", "config": json.dumps(cfg)})

    pt, pm = _tensors(ns.prior)
    ns.prior_unknown = r / "prior_unknown.safetensors"
    save_file(pt, str(ns.prior_unknown), metadata={**pm, "prior": "wavenet"})
    ns.prior_badcfg = r / "prior_badcfg.safetensors"
    save_file(pt, str(ns.prior_badcfg), metadata={**pm, "config": json.dumps({**json.loads(pm["config"]),
                                                                               "layers": 5})})
    assert pm["format"] == KIND_PRIOR

    ct, cm = _tensors(codes)
    ns.codes_oob = r / "codes_oob.safetensors"
    bad = ct["codes"].clone()
    bad[3, 1, 2] = 16
    save_file({**ct, "codes": bad}, str(ns.codes_oob), metadata=cm)
    ns.codes_k32 = r / "codes_k32.safetensors"
    save_file(ct, str(ns.codes_k32), metadata={**cm, "num_codes": "32"})
    ns.codes_g2 = r / "codes_g2.safetensors"
    save_file({**ct, "codes": ct["codes"][:, :2, :2].contiguous()}, str(ns.codes_g2),
              metadata={**cm, "height": "2", "width": "2"})
    assert cm["format"] == KIND_CODES

    ns.empty_dir = r / "empty_dir"
    ns.empty_dir.mkdir()
    ns.not_images = r / "not_images"
    ns.not_images.mkdir()
    for name in ("a.png", "b.jpg", "notes.txt"):
        (ns.not_images / name).write_text("this is not an image\n")
    ns.a_file = r / "file.txt"
    ns.a_file.write_text("a regular file\n")
    ns.run_foreign = r / "run_foreign"
    ns.run_foreign.mkdir()
    shutil.copy(ns.vq, ns.run_foreign / "checkpoint.safetensors")
    ns.run_pickle = r / "run_pickle"
    ns.run_pickle.mkdir()
    shutil.copy(ns.pickle, ns.run_pickle / "checkpoint.safetensors")
    return ns


def _reconstruct(vq):
    return lambda f, t: ["reconstruct", "--vqvae", vq(f), f.data / "cats", "--out", t / "out.png"]


def _sample(prior, vq, *more):
    return lambda f, t: ["sample", "--prior", prior(f), "--vqvae", vq(f), "--n", "2", "--out", t / "out.png", *more]


def _train_prior(codes, *more):
    return lambda f, t: ["train-prior", "--codes", codes(f), *TINY_PRIOR, "--out", t / "out", "--steps", "2", *more]


def _train_vqvae(data, *more):
    return lambda f, t: ["train-vqvae", "--data", data(f), "--out", t / "out", "--steps", "2", *TINY_VQVAE_ARGS,
                         *more]


def _resume(cmd, run):
    return lambda f, t: [cmd, "--out", run(f, t), "--resume"]


VQ, PRIOR, CODES = (lambda f: f.vq), (lambda f: f.prior), (lambda f: f.codes)
RESTRICT = "readonly"  # rows whose output folder is made unwritable (tests run as root: monkeypatched)

# id: (args from (files, tmp_path), exit code, phrase the output must contain)
ROWS = {
    # files that are not safetensors, or not the kind asked for, as --vqvae
    "vqvae: random bytes": (_reconstruct(lambda f: f.random), 1, "not a valid safetensors file"),
    "vqvae: empty file": (_reconstruct(lambda f: f.empty), 1, "is empty or truncated (0 bytes)"),
    "vqvae: truncated file": (_reconstruct(lambda f: f.truncated), 1, "is truncated"),
    "vqvae: PNG renamed .safetensors": (_reconstruct(lambda f: f.png), 1, "not a valid safetensors file"),
    "vqvae: pickle": (_reconstruct(lambda f: f.pickle), 1, "looks like a pickle"),
    "vqvae: protocol-0 pickle": (_reconstruct(lambda f: f.pickle0), 1, "not a valid safetensors file"),
    "vqvae: torch.save file": (_reconstruct(lambda f: f.torch_save), 1, "looks like a pickle / torch.save file"),
    "vqvae: a prior given as VQ-VAE": (_reconstruct(PRIOR), 1,
                                       "is a prior weights file, but a VQ-VAE weights file is needed here"),
    "vqvae: codes given as VQ-VAE": (_reconstruct(CODES), 1, "is an index-grid (codes) file, but a VQ-VAE"),
    "vqvae: training state given as VQ-VAE": (_reconstruct(lambda f: f.state), 1, "is a training-state file"),
    "vqvae: missing file": (_reconstruct(lambda f: f.root / "nope.safetensors"), 1, "no such file"),
    "vqvae: a folder": (_reconstruct(lambda f: f.root), 1, "is a folder"),
    "vqvae: unknown config field": (_reconstruct(lambda f: f.vq_badcfg), 1, "unknown VQ-VAE config fields: ['layers']"),
    "vqvae: no config": (_reconstruct(lambda f: f.vq_nocfg), 1, "has no 'config' metadata field"),
    "vqvae: config does not fit tensors": (_reconstruct(lambda f: f.vq_shape), 1, "weights do not match their config"),
    "vqvae: format version": (_reconstruct(lambda f: f.vq_v2), 1, "has format_version '2'"),
    "encode: a prior given as VQ-VAE": (lambda f, t: ["encode", "--vqvae", f.prior, "--data", f.data, "--out",
                                                      t / "out.safetensors"], 1, "is a prior weights file"),
    # --prior
    "prior: random bytes": (_sample(lambda f: f.random, VQ), 1, "not a valid safetensors file"),
    "prior: pickle": (_sample(lambda f: f.pickle, VQ), 1, "looks like a pickle"),
    "prior: truncated": (_sample(lambda f: f.truncated_prior, VQ), 1, "is truncated"),
    "prior: a VQ-VAE given as prior": (_sample(VQ, VQ), 1,
                                       "is a VQ-VAE weights file, but a prior weights file is needed here"),
    "prior: codes given as prior": (_sample(CODES, VQ), 1, "is an index-grid (codes) file, but a prior"),
    "prior: unknown prior name in file": (_sample(lambda f: f.prior_unknown, VQ), 1,
                                          "unknown prior 'wavenet'; known priors: "),
    "prior: config does not fit tensors": (_sample(lambda f: f.prior_badcfg, VQ), 1, "weights do not match"),
    "evaluate: pickle as prior": (lambda f, t: ["evaluate", "--vqvae", f.vq, "--prior", f.pickle, "--data", f.data,
                                                "--json", t / "out.json"], 1, "looks like a pickle"),
    # --codes
    "codes: pickle": (_train_prior(lambda f: f.pickle), 1, "looks like a pickle"),
    "codes: a VQ-VAE given as codes": (_train_prior(VQ), 1, "is a VQ-VAE weights file, but an index-grid"),
    "codes: out of range": (_train_prior(lambda f: f.codes_oob), 1, "outside [0, 16) for K=16"),
    "codes: empty file": (_train_prior(lambda f: f.empty), 1, "is empty"),
    # K, grid shape, hash
    "K of prior and VQ-VAE differ": (_sample(PRIOR, lambda f: f.vq_k32), 1,
                                     "the prior models K=16 codes but the VQ-VAE has K=32"),
    "grid of prior and VQ-VAE differ": (_sample(PRIOR, lambda f: f.vq_g8), 1,
                                        "the prior models 4x4 grids but the VQ-VAE has 8x8"),
    "evaluate: K of prior and VQ-VAE differ": (lambda f, t: ["evaluate", "--vqvae", f.vq_k32, "--prior", f.prior,
                                                             "--data", f.data, "--json", t / "out.json"], 1,
                                               "the prior models K=16 codes but the VQ-VAE has K=32"),
    "prior made from another VQ-VAE": (_sample(PRIOR, lambda f: f.vq_other), 1,
                                       "the prior was trained on codes of another VQ-VAE"),
    "K of val codes differs": (_train_prior(CODES, "--val-codes", "x"), 1, "does not match"),
    "grid of val codes differs": (_train_prior(CODES, "--val-codes", "y"), 1, "does not match"),
    # data
    "data: empty folder": (_train_vqvae(lambda f: f.empty_dir), 1, "is empty: put images in it"),
    "data: missing path": (_train_vqvae(lambda f: f.root / "no_such_folder"), 1, "no such file or folder"),
    "data: folder of non-images": (_train_vqvae(lambda f: f.not_images), 1, "no readable images in"),
    "encode: missing data": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.root / "nothing", "--out",
                                           t / "out.safetensors"], 1, "no such file or folder"),
    "reconstruct: not an image": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.a_file, "--out", t / "out.png"], 1,
                                  "cannot read image"),
    # CLI misuse: exit 2
    "sample --n 0": (_sample(PRIOR, VQ, "--n", "0"), 2, "must be positive"),
    "sample --n -3": (_sample(PRIOR, VQ, "--n", "-3"), 2, "must be positive"),
    "sample --batch-size 0": (_sample(PRIOR, VQ, "--batch-size", "0"), 2, "must be positive"),
    "sample --temperature 0": (_sample(PRIOR, VQ, "--temperature", "0"), 2, "--temperature"),
    "sample --top-k 0": (_sample(PRIOR, VQ, "--top-k", "0"), 2, "--top-k must be positive, got 0"),
    "sample --top-p 1.5": (_sample(PRIOR, VQ, "--top-p", "1.5"), 2, "--top-p must be in (0, 1], got 1.5"),
    "train-vqvae --batch-size 0": (_train_vqvae(lambda f: f.data, "--batch-size", "0"), 2, "must be positive"),
    "train-vqvae --batch-size -8": (_train_vqvae(lambda f: f.data, "--batch-size", "-8"), 2, "must be positive"),
    "train-vqvae --steps 0": (_train_vqvae(lambda f: f.data, "--steps", "0"), 2, "must be positive"),
    "train-vqvae --steps -1": (_train_vqvae(lambda f: f.data, "--steps", "-1"), 2, "must be positive"),
    "train-prior --batch-size 0": (_train_prior(CODES, "--batch-size", "0"), 2, "must be positive"),
    "train-prior --steps 0": (_train_prior(CODES, "--steps", "0"), 2, "must be positive"),
    "reconstruct --batch-size -1": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out", t / "out.png",
                                                  "--batch-size", "-1"], 2, "must be positive"),
    "encode --batch-size 0": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                            t / "out.safetensors", "--batch-size", "0"], 2, "must be positive"),
    "evaluate --batch-size 0": (lambda f, t: ["evaluate", "--vqvae", f.vq, "--data", f.data, "--json",
                                              t / "out.json", "--batch-size", "0"], 2, "must be positive"),
    # names
    "unknown prior name": (_train_prior(CODES, "--prior", "wavenet"), 1,
                           "unknown prior 'wavenet'; known priors: "),
    "unknown class": (_sample(PRIOR, VQ, "--class", "zebra"), 1, "unknown class 'zebra'; known classes: cats, dogs"),
    "class index out of range": (_sample(PRIOR, VQ, "--class", "7"), 1, "known classes: cats, dogs"),
    "--device cuda without CUDA": (_sample(PRIOR, VQ, "--device", "cuda"), 1, "CUDA is not available"),
    "train --device cuda without CUDA": (_train_vqvae(lambda f: f.data, "--device", "cuda:0"), 1,
                                         "CUDA is not available"),
    # where output goes
    "sample: missing parent folder": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                                    "--out", t / "missing" / "out.png"], 1, "does not exist"),
    "sample: parent is a file": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                               "--out", f.a_file / "out.png"], 1, "cannot write"),
    "sample: output folder is a file": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                                      "--out", f.a_file], 1, "it is a file"),
    "sample: --save-codes under a file": (_sample(PRIOR, VQ, "--save-codes", "z"), 1, "cannot write"),
    "sample: read-only folder": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                               "--out", t / RESTRICT / "out.png"], 1, "Permission denied"),
    "encode: missing parent folder": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                                    t / "missing" / "out.safetensors"], 1, "does not exist"),
    "encode: parent is a file": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                               f.a_file / "out.safetensors"], 1, "cannot write"),
    "encode: read-only folder": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                               t / RESTRICT / "out.safetensors"], 1, "Permission denied"),
    "reconstruct: missing parent folder": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                         t / "missing" / "out.png"], 1, "does not exist"),
    "reconstruct: folder under a file": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                       f.a_file / "recon"], 1, "cannot create folder"),
    "reconstruct: output folder is a file": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                           f.a_file], 1, "it is a file"),
    "evaluate: missing parent folder": (lambda f, t: ["evaluate", "--vqvae", f.vq, "--data", f.data, "--json",
                                                      t / "missing" / "out.json"], 1, "does not exist"),
    "train-vqvae: run folder under a file": (lambda f, t: ["train-vqvae", "--data", f.data, "--out",
                                                           f.a_file / "run", *TINY_VQVAE_ARGS], 1,
                                             "is a file, not a folder"),
    "train-vqvae: read-only folder": (lambda f, t: ["train-vqvae", "--data", f.data, "--out", t / RESTRICT / "run",
                                                    *TINY_VQVAE_ARGS], 1, "is not writable"),
    "train-prior: run folder under a file": (lambda f, t: ["train-prior", "--codes", f.codes, "--out",
                                                           f.a_file / "run"], 1, "is a file, not a folder"),
    # resume from folders that hold no run, or another kind of run
    "resume: missing folder": (_resume("train-vqvae", lambda f, t: t / "out"), 1, "does not exist"),
    "resume: empty folder": (_resume("train-vqvae", lambda f, t: f.empty_dir), 1,
                             "holds no checkpoint.safetensors; start a new run without --resume"),
    "resume: foreign checkpoint": (_resume("train-vqvae", lambda f, t: f.run_foreign), 1,
                                   "is not a vqgen training state"),
    "resume: pickle checkpoint": (_resume("train-vqvae", lambda f, t: f.run_pickle), 1, "looks like a pickle"),
    "resume: prior run with train-vqvae": (_resume("train-vqvae", lambda f, t: f.prior_run), 1,
                                           "resume it with vqgen train-prior"),
    "resume: VQ-VAE run with train-prior": (_resume("train-prior", lambda f, t: f.vq_run), 1,
                                            "resume it with vqgen train-vqvae"),
    "resume prior: empty folder": (_resume("train-prior", lambda f, t: f.empty_dir), 1, "holds no checkpoint"),
}
_VAL_CODES = {"x": "codes_k32", "y": "codes_g2"}


def _files(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and "_cache" not in p.parts}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_one_clear_line(f, tmp_path, monkeypatch, row):
    make_args, code, phrase = ROWS[row]
    args = [str(a) for a in make_args(f, tmp_path)]
    for i, a in enumerate(args[:-1]):  # rows that name a second crafted file by letter
        if a in ("--val-codes", "--save-codes") and args[i + 1] in ("x", "y", "z"):
            v = args[i + 1]
            args[i + 1] = str(f.a_file / "c.safetensors") if v == "z" else str(getattr(f, _VAL_CODES[v]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ro = tmp_path / RESTRICT
    ro.mkdir()
    if row.endswith("read-only folder"):  # root ignores chmod, so refuse writes under `ro` the way the OS would
        import tempfile

        real_mkstemp, real_access = tempfile.mkstemp, os.access

        def mkstemp(*a, dir=None, **kw):
            if dir is not None and Path(dir).is_relative_to(ro):
                raise PermissionError(13, "Permission denied")
            return real_mkstemp(*a, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p).is_relative_to(ro)
                            else real_access(p, m, **kw))
    shared_before = _files(f.root), _files(f.vq_run)
    res = _invoke(*args)

    out = res.output
    assert res.exit_code == code, f"exit {res.exit_code}: {out}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # no other exception escaped the CLI
    assert "Traceback" not in out
    flat = " ".join(out.replace("│", " ").split())  # a usage error's box may wrap
    assert phrase in flat, out
    if code == 1:
        lines = [x for x in out.splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error: ")]
        assert len(errors) == 1 and all(x.startswith(("error: ", "warning: ")) for x in lines), out
        assert len(errors[0]) < 400
    else:
        assert "Usage: vqgen" in out
    # nothing written: no output, no run folder, no temporary, shared files untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "_cache") == [RESTRICT] and not any(ro.iterdir())
    assert not f.pwned.exists()  # the pickles were never unpickled
    assert (_files(f.root), _files(f.vq_run)) == shared_before
    assert not list(f.root.rglob("*.tmp")) and not list(f.a_file.parent.glob(".*"))


def test_pickle_under_any_name_is_never_unpickled(f, tmp_path):
    """Every place a file is loaded, a booby-trapped pickle (named anything) is refused before it is read."""
    from vqgen.checkpoint import load_tensors
    from vqgen.codes import read_codes
    from vqgen.errors import VqgenError
    from vqgen.prior_file import load_prior
    from vqgen.vqvae import load_vqvae

    for name in ("vqvae.safetensors", "prior.safetensors", "codes.safetensors", "model.pt", "checkpoint.safetensors",
                 "x"):
        for protocol in (0, 2, 5):
            p = tmp_path / name
            p.write_bytes(pickle.dumps(_Boobytrap(f.pwned), protocol=protocol))
            for load in (load_vqvae, load_prior, read_codes, lambda q: load_tensors(q, "vqgen.train-state")):
                with pytest.raises(VqgenError):
                    load(p)
    assert not f.pwned.exists()
    # and a real pickle would have fired: the trap works
    trap = tmp_path / "trap"
    pickle.loads(pickle.dumps(_Boobytrap(trap))).close()
    assert trap.exists()


# -- bad images that are not errors --------------------------------------------------------------------------------
def test_truncated_jpeg_is_skipped_with_a_warning(trained_vqvae, tmp_path):
    data = make_images(tmp_path / "images", classes=("a",), per_class=5)
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (data / "a" / "broken.jpg").write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "codes.safetensors"
    res = _ok(_invoke("encode", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", "--data", data, "--split",
                      "all", "--out", out, "--json"))
    assert "Traceback" not in res.output
    assert re.search(r"warning: skipped \S*broken\.jpg: ", res.output), res.output
    from vqgen.codes import read_codes

    assert len(read_codes(out)) == 5


def test_small_images_are_resized_with_a_note(trained_vqvae, tmp_path):
    data = make_images(tmp_path / "images", classes=("a",), per_class=3, size=8)
    res = _ok(_invoke("reconstruct", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", data, "--out",
                      tmp_path / "g.png", "--json"))
    assert "3 images smaller than 16x16 were upscaled" in res.output
    assert json.loads(res.stdout)["images"] == 3


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Temporary files are private (0600); what is renamed into place must not stay so."""
    from vqgen.checkpoint import atomic_path

    from vqgen.checkpoint import save_tensors

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
        # safetensors recreates the temporary file itself: a chmod before it writes would be lost
        save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)}, "test")
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
