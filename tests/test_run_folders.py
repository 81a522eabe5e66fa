"""A run folder holds one run: a new run refuses a folder with any file of an earlier run (--overwrite replaces it),
one process trains in it at a time (an flock(2) lock held for the run's life; a lock left by a dead process is
taken over with a note), and a run folder never lies inside the data it trains on.
"""

import fcntl
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, one_error_line, snapshot
from vqgen.run import LOCK_FILE, RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")

FIXED_SPEED = ["--no-amp", "--channels-last", "--threads", "1"]  # nothing measured


@pytest.fixture
def f(tmp_path, codes):
    data = make_images(tmp_path / "data", per_class=3)
    flat = make_images(tmp_path / "flatdata", classes=("",), per_class=3)
    return SimpleNamespace(tmp=tmp_path, data=data, flat=flat, run=tmp_path / "run", codes=codes)


def _vq(data, run, *more):
    return ["train-vqvae", "--data", data, "--out", run, "--steps", "2", "--batch-size", "4", *FIXED_SPEED,
            *TINY_VQVAE_ARGS, *more]


def _leftover(*names):
    """A run folder holding only these files of an earlier run (its checkpoint deleted, say)."""
    def make(f):
        f.run.mkdir()
        for n in names:
            (f.run / n).write_bytes(b"trained weights, a week of work")
    return make


@pytest.fixture(scope="module")
def holder():
    """Holds the lock of a run folder from another process for as long as the test needs."""
    procs = []

    def hold(folder):
        folder.mkdir(exist_ok=True)
        code = (f"import fcntl, json, os, sys, time\nfd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'elsewhere', 'since': 'noon'}).encode())\n"
                "print('held', flush=True)\ntime.sleep(600)\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "held\n"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


# id: (make the folder, args, exit code, phrase)
ROWS = {
    "weights left, checkpoint deleted": (_leftover("vqvae.safetensors", "metrics.jsonl"), lambda f: _vq(f.data, f.run),
                                         1, "already holds a run (vqvae.safetensors, metrics.jsonl); pass --resume to "
                                            "continue it, --overwrite to replace it, or choose another --out"),
    "best weights left": (_leftover("best.safetensors"), lambda f: _vq(f.data, f.run), 1,
                          "already holds a run (best.safetensors)"),
    "metrics left": (_leftover("metrics.jsonl"), lambda f: _vq(f.data, f.run), 1, "already holds a run (metrics.jsonl)"),
    "reconstructions left": (_leftover("reconstructions.png"), lambda f: _vq(f.data, f.run), 1,
                             "already holds a run (reconstructions.png)"),
    "a prior's weights left": (_leftover("prior.safetensors"),
                               lambda f: ["train-prior", "--codes", f.codes, "--out", f.run, *TINY_PRIOR], 1,
                               "already holds a run (prior.safetensors)"),
    "a VQ-VAE run's files under train-prior": (_leftover("checkpoint.safetensors", "vqvae.safetensors"),
                                               lambda f: ["train-prior", "--codes", f.codes, "--out", f.run, *TINY_PRIOR],
                                               1, "already holds a run"),
    "run folder inside its flat data": (None, lambda f: _vq(f.flat, f.flat / "run"), 1,
                                        "is inside the --data folder"),
    "run folder inside a class folder": (None, lambda f: _vq(f.data, f.data / "cats" / "run"), 1,
                                         "is inside the --data folder"),
    "run folder is the data folder": (None, lambda f: _vq(f.flat, f.flat), 1, "is inside the --data folder"),
    "--resume with --overwrite": (_leftover("vqvae.safetensors"), lambda f: _vq(f.data, f.run, "--resume", "--overwrite"),
                                  2, "--overwrite replaces the run in --out, --resume continues it: give one"),
    "another process trains there": ("locked", lambda f: _vq(f.data, f.run), 1,
                                     "is in use by another training process (process "),
    "another process trains there, --overwrite": ("locked", lambda f: _vq(f.data, f.run, "--overwrite"), 1,
                                                  "is in use by another training process"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_a_run_folder_that_is_not_free_is_refused(f, holder, row):
    make, args, code, phrase = ROWS[row]
    if make == "locked":
        holder(f.run)
    elif make is not None:
        make(f)
    before = snapshot(f.tmp)
    line = one_error_line(invoke(*args(f)), code)
    assert phrase in line, line
    assert snapshot(f.tmp) == before  # nothing cleared, created or written
    assert not (f.flat / "run").exists() and not (f.data / "cats" / "run").exists()


def test_overwrite_replaces_an_earlier_run(f):
    _leftover("vqvae.safetensors", "best.safetensors", "metrics.jsonl")(f)
    (f.run / "notes.txt").write_text("mine")
    res = ok(invoke(*_vq(f.data, f.run, "--overwrite", "--json")))
    assert "replaced the earlier run in" in res.output
    assert (f.run / "notes.txt").read_text() == "mine"  # only the run's own files go
    records = [json.loads(x) for x in (f.run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "config" and (f.run / "vqvae.safetensors").read_bytes()[:8] != b"trained "
    assert not (f.run / LOCK_FILE).exists()


def test_the_lock_is_held_while_training_and_a_stale_one_is_taken_over(f, monkeypatch):
    from vqgen.train import Trainer

    f.run.mkdir()
    (f.run / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "oldhost", "since": "yesterday"}))  # a kill -9's
    real_fit, seen = Trainer.fit, []

    def fit(self, *a, **kw):
        fd = os.open(f.run / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(Trainer, "fit", fit)
    res = ok(invoke(*_vq(f.data, f.run)))
    assert "took over the lock of" in res.output and "process 4242 on oldhost" in res.output
    assert seen == ["held"] and not (f.run / LOCK_FILE).exists()


def test_under_torchrun_rank_0_holds_the_lock(f, monkeypatch):
    f.run.mkdir()
    fd = os.open(f.run / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # this holder stands for rank 0
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with RunFolder(f.run, "vqvae").begin(False):  # rank 1 neither takes nor refuses it
            pass
        monkeypatch.setenv("RANK", "0")
        from vqgen.errors import ConfigError

        with pytest.raises(ConfigError, match="in use by another training process"):
            with RunFolder(f.run, "vqvae").begin(False):
                pass
    finally:
        os.close(fd)
