"""Bit-exact resume: a run stopped by kill -9, SIGTERM, Ctrl+C or a clean stop and resumed ends with exactly the
state and weights of the run that was never stopped, for the VQ-VAE and for every built-in prior.

Everything runs on the CPU with one thread (the machine is shared; more threads only contend) on 16x16
synthetic images. Runs killed with signals are subprocesses slowed by a sleep in the batch source, so a
signal can land mid-run; the sleep changes no number.
"""

import json
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, checkpoint_step, invoke, make_images, ok, tensors_and_meta

pytestmark = pytest.mark.usefixtures("one_thread")

# one recipe for the reference run and for the runs that get killed: cosine schedule over 40 steps with a
# short warmup (so the schedule really depends on the step), EMA codebook, random flips and shifts (torch RNG),
# bf16 amp; precision, memory format and threads given, so that no measurement can pick differently between runs
RUN_ARGS = ["--batch-size", "8", "--steps", "40", "--warmup", "5", "--checkpoint-every", "10", "--log-every", "1",
            "--eval-every", "0", "--flip", "--shift", "2", "--amp", "--channels-last", "--threads", "1",
            *TINY_VQVAE_ARGS]

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


def _assert_same_run(a: Path, b: Path, weights: str) -> None:
    """Two run folders hold bit-identical training state and weights."""
    ta, ma = tensors_and_meta(a / "checkpoint.safetensors")
    tb, mb = tensors_and_meta(b / "checkpoint.safetensors")
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim.") for k in ta) and "rng.torch" in ta
    differ = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    assert not differ, f"tensors differ: {differ}"
    for key in ("step", "batches", "python_rng", "optimizer", "train_config"):
        assert ma[key] == mb[key], key
    wa, wb = tensors_and_meta(a / weights)[0], tensors_and_meta(b / weights)[0]
    assert sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


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
        ck = checkpoint_step(run)
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
    s = json.loads(ok(invoke("train-vqvae", "--data", data, "--out", root / "run", *RUN_ARGS,
                               "--cache-dir", root / "cache", "--json")).stdout)
    assert s["steps"] == 40
    return SimpleNamespace(data=data, run=root / "run", summary=s)


# -- resume, bit for bit ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_kill_9_is_bit_exact(ref, tmp_path):
    run = tmp_path / "run"
    proc = _spawn(["train-vqvae", "--data", ref.data, "--out", run, *RUN_ARGS], tmp_path)
    _wait_until(proc, run, min_ckpt=10, ahead=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ck, reached = checkpoint_step(run), _metric_step(run)
    assert 10 <= ck < 40 and reached > ck  # killed between checkpoints: the resumed run re-does some steps
    with open(run / "metrics.jsonl", "a") as f:  # as if the kill had landed in the middle of a record
        f.write('{"step": 99, "loss": 0.12')

    s = json.loads(ok(invoke("train-vqvae", "--out", run, "--resume", "--json")).stdout)
    assert s["steps"] == 40
    _assert_same_run(ref.run, run, "vqvae.safetensors")
    assert s["val_psnr"] == ref.summary["val_psnr"] and s["codes_used"] == ref.summary["codes_used"]
    assert (run / "reconstructions.png").read_bytes() == (ref.run / "reconstructions.png").read_bytes()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # every line parses
    assert [r.get("event") for r in records].count("resume") == 1
    assert all(r.get("step") != 99 for r in records)

@pytest.mark.slow
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
    assert 13 <= step < 40 and checkpoint_step(run) == step and _metric_step(run) == step
    ok(invoke(*shlex.split(m.group(3))[1:]))
    _assert_same_run(ref.run, run, "vqvae.safetensors")

@pytest.mark.slow
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
    assert m.group(2) == str(run) and checkpoint_step(run) == step and 13 <= step < 40
    assert _metric_step(run) == step  # stopped right there, nothing after the checkpoint
    assert text.rstrip().splitlines()[-1].startswith("interrupted at step")  # the bar did not draw over it
    cmd = shlex.split(m.group(3))
    assert cmd == ["vqgen", "train-vqvae", "--out", str(run), "--resume"]

    ok(invoke(*cmd[1:]))
    _assert_same_run(ref.run, run, "vqvae.safetensors")


@pytest.mark.parametrize("precision", ["--amp", "--no-amp"])
def test_resume_after_clean_stop_with_more_steps_is_bit_exact(tmp_path, precision):
    """--steps 15, then --resume --steps 40, equals --steps 40 (a constant schedule does not depend on --steps)."""
    data = make_images(tmp_path / "images")
    args = ["--data", data, "--batch-size", "8", "--lr-schedule", "constant", "--warmup", "3", precision,
            "--checkpoint-every", "100", "--eval-every", "7", *TINY_VQVAE_ARGS]
    ok(invoke("train-vqvae", *args, "--out", tmp_path / "full", "--steps", "40"))
    ok(invoke("train-vqvae", *args, "--out", tmp_path / "part", "--steps", "15"))
    assert checkpoint_step(tmp_path / "part") == 15
    s = json.loads(ok(invoke("train-vqvae", "--out", tmp_path / "part", "--resume", "--steps", "40", "--json")).stdout)
    assert s["steps"] == 40
    _assert_same_run(tmp_path / "full", tmp_path / "part", "vqvae.safetensors")


@pytest.mark.parametrize("precision", ["--amp", "--no-amp"])
@pytest.mark.parametrize("prior,opts", [("pixelcnn", TINY_PRIOR),
                                        ("transformer", ["-o", "n_layer=1", "-o", "n_head=2", "-o", "n_embd=16",
                                                         "-o", "dropout=0.2"])])
def test_prior_resume_after_clean_stop_is_bit_exact(codes, tmp_path, prior, opts, precision):
    args = ["--codes", codes, "--prior", prior, *opts, precision, "--batch-size", "8", "--lr-schedule", "constant",
            "--warmup", "2", "--val-fraction", "0.25"]
    ok(invoke("train-prior", *args, "--out", tmp_path / "full", "--steps", "16"))
    ok(invoke("train-prior", *args, "--out", tmp_path / "part", "--steps", "6"))
    ok(invoke("train-prior", "--out", tmp_path / "part", "--resume", "--steps", "16"))
    _assert_same_run(tmp_path / "full", tmp_path / "part", "prior.safetensors")


def test_resuming_a_finished_run_at_its_step_count_trains_nothing(codes, tmp_path):
    """How scripts/train-default.sh re-runs a leg the run has passed: the same files, no optimiser step."""
    run = tmp_path / "run"
    ok(invoke("train-prior", "--codes", codes, *TINY_PRIOR, "--batch-size", "8", "--steps", "6",
              "--val-fraction", "0.25", "--out", run))
    before = {name: (run / name).read_bytes() for name in ("prior.safetensors", "best.safetensors",
                                                          "checkpoint.safetensors")}
    steps_before = _metric_step(run)
    res = invoke("train-prior", "--out", run, "--resume", "--steps", "6")
    ok(res)
    assert f"resuming {run} at step 6" in res.output
    assert {name: (run / name).read_bytes() for name in before} == before
    assert _metric_step(run) == steps_before == 6


def test_prior_ctrl_c_then_resume_is_bit_exact(codes, tmp_path, monkeypatch):
    """A real SIGINT to this process in the middle of train-prior (the trainer's handler takes it)."""
    import vqgen.train as train

    args = ["--codes", codes, *TINY_PRIOR, "--batch-size", "8", "--steps", "20", "--warmup", "3",
            "--val-fraction", "0.25", "--checkpoint-every", "4"]
    ok(invoke("train-prior", *args, "--out", tmp_path / "full"))

    real_next, calls = train.TensorBatches.__next__, []

    def next_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(train.TensorBatches, "__next__", next_then_ctrl_c)
    run = tmp_path / "part"
    res = invoke("train-prior", *args, "--out", run)
    assert res.exit_code == 130 and "Traceback" not in res.output
    line = f"interrupted at step 7; checkpoint saved in {run}; resume with: vqgen train-prior --out {run} --resume"
    first, *rest = res.output.strip().splitlines()
    assert first.startswith("computing in ") and rest == [line]  # the speed choice, printed once, then the stop
    assert checkpoint_step(run) == 7
    monkeypatch.setattr(train.TensorBatches, "__next__", real_next)
    ok(invoke("train-prior", "--out", run, "--resume"))
    _assert_same_run(tmp_path / "full", run, "prior.safetensors")
