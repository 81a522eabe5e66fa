"""Every failure of the OS is one line and exit 1, and the files from before stay loadable: a full disk while a
checkpoint (safetensors' own error type), a PNG, metrics or JSON is written, a failing sync or rename, an output
path that is a folder or a device (refused before the work), a standard output that is full or closed. The disk
fills for real on a small tmpfs where mounting is permitted, besides the monkeypatched failures.
"""

import errno
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import TINY_VQVAE_ARGS, checkpoint_step, invoke, make_images, ok, one_error_line, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

FIXED_SPEED = ["--no-amp", "--channels-last", "--threads", "1"]
FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 2-step VQ-VAE run and its data."""
    root = tmp_path_factory.mktemp("osfail")
    data = make_images(root / "data", per_class=3)
    ok(invoke("train-vqvae", "--data", data, "--out", root / "run", "--steps", "2", "--batch-size", "4",
              "--checkpoint-every", "2", *FIXED_SPEED, *TINY_VQVAE_ARGS))
    return SimpleNamespace(root=root, data=data, run=root / "run")


@pytest.fixture
def f(base, trained_vqvae, trained_prior, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    (tmp_path / "folder").mkdir()
    return SimpleNamespace(tmp=tmp_path, data=base.data, run=run, vq=run / "vqvae.safetensors", prior=trained_prior,
                           prior_vq=trained_vqvae["run"] / "vqvae.safetensors", folder=tmp_path / "folder")


class _FullStdout(io.StringIO):
    """A standard output on a full disk: writes are taken, flushing them fails."""

    def flush(self):
        raise FULL

    def fileno(self):
        raise io.UnsupportedOperation("no descriptor")


def _full_safetensors(mp, f):
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(*a, **kw):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    mp.setattr(safetensors.torch, "save_file", save_file)


def _full_png(mp, f):
    from PIL import Image

    def save(self, fp, *a, **kw):
        Path(fp).write_bytes(b"\x89PNG half")
        raise FULL
    mp.setattr(Image.Image, "save", save)


def _full_metrics(mp, f):
    real = open

    def fake_open(path, mode="r", *a, **kw):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise FULL
        return real(path, mode, *a, **kw)
    mp.setattr("vqgen.train.open", fake_open, raising=False)


def _failing(name, error):
    def patch(mp, f):
        def fail(*a, **kw):
            raise error
        mp.setattr(f"vqgen.checkpoint.os.{name}", fail)
    return patch


def _full_stdout(mp, f):
    mp.setattr("vqgen.cli.sys", SimpleNamespace(stdout=_FullStdout()))


def _resume(f):
    return ["train-vqvae", "--out", f.run, "--resume", "--steps", "4", "--checkpoint-every", "2"]


def _encode(out):
    return lambda f: ["encode", "--vqvae", f.vq, "--data", f.data, "--out", out(f)]


def _sample(*more):
    return lambda f: ["sample", "--vqvae", f.prior_vq, "--prior", f.prior, "--n", "2", "--out", f.tmp / "s.png", *more]


def _inpaint(out, *more):
    return lambda f: ["inpaint", "--vqvae", f.prior_vq, "--prior", f.prior, f.data / "cats", "--region", "bottom",
                      "--n", "1", "--out", out(f), *more]


# id: (failure to set up, args, phrase of the error line)
ROWS = {
    "disk full writing a checkpoint": (_full_safetensors, _resume, "safetensors: No space left on device"),
    "disk full writing a PNG": (_full_png, lambda f: ["reconstruct", "--vqvae", f.vq, f.data, "--out", f.tmp / "r.png"],
                                "cannot write {tmp}/r.png: No space left on device"),
    "disk full appending metrics": (_full_metrics, _resume, "cannot write {run}/metrics.jsonl: No space left on device"),
    "disk full while syncing": (_failing("fsync", FULL), _encode(lambda f: f.tmp / "c.safetensors"),
                                "cannot write {tmp}/c.safetensors: No space left on device"),
    "I/O error renaming into place": (_failing("replace", OSError(errno.EIO, "Input/output error")),
                                      lambda f: ["evaluate", "--vqvae", f.vq, "--data", f.data, "--json",
                                                 f.tmp / "e.json"], "cannot write {tmp}/e.json: Input/output error"),
    "encode --out a folder": (None, _encode(lambda f: f.folder), "cannot write {folder}: it is a folder"),
    "evaluate --json a folder": (None, lambda f: ["evaluate", "--vqvae", f.vq, "--data", f.data, "--json", f.folder],
                                 "cannot write {folder}: it is a folder"),
    "sample --save-codes a folder": (None, _sample("--save-codes", "{folder}"), "cannot write {folder}: it is a folder"),
    "reconstruct --out a folder named .png": (None, lambda f: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                               f.folder / "x.png"], "x.png: it is a folder"),
    "disk full writing the inpaint PNG": (_full_png, _inpaint(lambda f: f.tmp / "i.png"),
                                          "cannot write {tmp}/i.png: No space left on device"),
    "inpaint --save-codes a folder": (None, _inpaint(lambda f: f.tmp / "i.png", "--save-codes", "{folder}"),
                                      "cannot write {folder}: it is a folder"),
    "encode --out /dev/null": (None, _encode(lambda f: "/dev/null"), "cannot write /dev/null: it is not a regular file"),
    "priors, stdout full": (_full_stdout, lambda f: ["priors"],
                            "cannot write the result to standard output: No space left on device"),
    "sample --json, stdout full": (_full_stdout, _sample("--json"), "cannot write the result to standard output"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_an_os_failure_is_one_line_and_keeps_the_previous_files(f, monkeypatch, row):
    from vqgen.vqvae import load_vqvae

    setup, make_args, phrase = ROWS[row]
    if row == "reconstruct --out a folder named .png":
        (f.folder / "x.png").mkdir()
    args = [str(a).format(folder=f.folder) for a in make_args(f)]
    step, weights = checkpoint_step(f.run), f.vq.read_bytes()
    before = snapshot(f.tmp)
    if setup is not None:
        setup(monkeypatch, f)
    line = one_error_line(invoke(*args))
    monkeypatch.undo()
    assert phrase.format(run=f.run, tmp=f.tmp, folder=f.folder) in line, line
    after = snapshot(f.tmp)
    assert not [p for p in after if p.endswith(".tmp")]
    assert {k: v for k, v in after.items() if not k.endswith("metrics.jsonl")} == \
        {k: v for k, v in before.items() if not k.endswith("metrics.jsonl")} or "stdout" in row
    assert checkpoint_step(f.run) == step and f.vq.read_bytes() == weights
    load_vqvae(f.vq)  # still loadable
    assert Path("/dev/null").is_char_device()


def test_a_full_or_closed_stdout_is_one_line_in_a_shell(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "VQGEN_NO_PLUGINS": "1"}
    for redirect in ("> /dev/full", ">&-"):
        p = subprocess.run(f"{sys.executable} -m vqgen priors {redirect}", shell=True, env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "standard output" in lines[0], p.stderr


@pytest.fixture
def tmpfs(tmp_path):
    """A real 2 MiB tmpfs, or a skip where this process may not mount one."""
    where = tmp_path / "small"
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here ({p.stderr.strip() or p.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder` until about `leave` bytes are free."""
    st = os.statvfs(folder)
    (folder / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_a_real_full_disk(base, trained_vqvae, trained_prior, tmpfs):
    from vqgen.vqvae import load_vqvae

    run = tmpfs / "run"
    shutil.copytree(base.run, run)
    _fill(tmpfs, (run / "vqvae.safetensors").stat().st_size // 2)  # room for no weights file, let alone a checkpoint
    before = snapshot(run)
    line = one_error_line(invoke("train-vqvae", "--out", run, "--resume", "--steps", "4", "--checkpoint-every", "2"))
    assert "No space left on device" in line and str(tmpfs) in line, line
    after = snapshot(run)
    assert not [p for p in after if p.endswith(".tmp")]
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}
    assert checkpoint_step(run) == 2
    load_vqvae(run / "vqvae.safetensors")
    (tmpfs / "filler").unlink()  # once there is space, the run goes on from its last checkpoint
    ok(invoke("train-vqvae", "--out", run, "--resume", "--steps", "4", "--checkpoint-every", "2"))
    assert checkpoint_step(run) == 4

    _fill(tmpfs, 0)
    line = one_error_line(invoke("sample", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", "--prior", trained_prior,
                                 "--n", "64", "--out", tmpfs / "grid.png"))
    assert "cannot write" in line and "No space left on device" in line, line
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "run"]
