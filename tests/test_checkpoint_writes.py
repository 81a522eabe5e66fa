"""Checkpoints are never half-written nor overwritten with bad weights: a failed write (disk full, Ctrl+C in the
middle) keeps the previous checkpoint; a non-finite loss or non-finite weights stop training without saving and
name the last good checkpoint; files renamed into place get the usual mode.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_VQVAE_ARGS, checkpoint_step, invoke, make_images, ok, tensors_and_meta

pytestmark = pytest.mark.usefixtures("one_thread")

# no measurement runs (it would call the objectives these tests count calls of)
FIXED_SPEED = ["--no-amp", "--channels-last", "--threads", "1"]


@pytest.mark.parametrize("failure,code,phrase", [(OSError(28, "No space left on device"), 1, "No space left on device"),
                                                 (KeyboardInterrupt(), 130, "interrupted")])
def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failure, code, phrase):
    import safetensors.torch

    data = make_images(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    ok(invoke("train-vqvae", "--data", data, "--out", run, "--steps", "5", "--checkpoint-every", "5",
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
    res = invoke("train-vqvae", "--out", run, "--resume", "--steps", "10")
    assert res.exit_code == code and phrase in res.output and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()  # resuming, the final evaluation's figures, the one error line
    assert lines[0].startswith("computing in ") and lines[1].startswith("resuming") and phrase in lines[-1]
    assert all(x.startswith("step ") for x in lines[2:-1])
    assert written and Path(written[0]).parent == run and not Path(written[0]).exists()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "metrics.jsonl"}
    assert after == before  # the previous checkpoint and weights untouched, no temporary left (the stale one too)
    assert checkpoint_step(run) == 5

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    s = json.loads(ok(invoke("train-vqvae", "--out", run, "--resume", "--steps", "10", "--json")).stdout)
    assert s["steps"] == 10 and checkpoint_step(run) == 10


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    data = make_images(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    ok(invoke("train-vqvae", "--data", data, "--out", run, "--steps", "6", "--checkpoint-every", "3",
                "--batch-size", "4", "--no-amp", *TINY_VQVAE_ARGS))
    good = (run / "checkpoint.safetensors").read_bytes()
    res = invoke("train-vqvae", "--out", run, "--resume", "--steps", "30", "--lr", "1e30", "--warmup", "0")
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
    res = invoke("train-vqvae", "--data", data, "--out", tmp_path / "run", "--steps", "30", "--lr", "1e30",
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
    res = invoke("train-vqvae", "--data", data, "--out", run, "--steps", "10", "--checkpoint-every", "2",
                  "--batch-size", "4", *FIXED_SPEED, *TINY_VQVAE_ARGS)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "error: the weights became NaN or infinite by step 4; stopped without saving. the last good checkpoint " \
           f"(step 2) is in {run}" in res.output
    assert checkpoint_step(run) == 2
    tensors, _ = tensors_and_meta(run / "checkpoint.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Temporary files are private (0600); what is renamed into place must not stay so."""
    from vqgen.checkpoint import atomic_path, save_tensors

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
