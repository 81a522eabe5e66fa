"""scripts/device-train.sh, the prepared fixed-time GPU job, runs on the CPU: it sizes the run from a probe,
returns its files under $OUT, and a hard stop still returns the weights of the checkpoint SIGTERM writes."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import make_images
from vqgen.vqvae import read_vqvae_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs the whole job twice


def _run(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    archive = tmp_path / "images.tar.gz"
    if not archive.exists():
        make_images(tmp_path / "src" / "train", per_class=12, size=32)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "src" / "train", arcname="train")
    env = {**os.environ, "DEVICE": "cpu", "ARCHIVE": str(archive), "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out"), "BATCH": "16", "EVALS": "2", "OMP_NUM_THREADS": "2",
           "SIZE": "--hidden 32 --res-blocks 1 --res-channels 8 --codebook-size 16 --code-dim 8",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **settings}
    return subprocess.run(["bash", str(REPO / "scripts" / "device-train.sh")], env=env, capture_output=True,
                          text=True, timeout=300)


def test_device_script_sizes_the_run_from_a_probe_and_returns_its_files(tmp_path):
    res = _run(tmp_path, TRAIN_SECONDS="4", PROBE_STEPS="3")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "metrics.jsonl", "summary.json",
                                                    "vqvae.safetensors"]
    planned = int(res.stderr.split(" steps of 16")[0].rsplit("-> ", 1)[1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == planned >= 1  # the schedule it sized is the one it ran
    assert read_vqvae_config(out / "vqvae.safetensors").hidden == 32


def test_device_script_hard_stop_keeps_the_checkpointed_weights(tmp_path):
    res = _run(tmp_path, STEPS="1000000", HARD_STOP="20")
    assert res.returncode == 124, res.stderr[-3000:]  # timeout's status: the job overran on purpose
    assert "stopped by SIGTERM" in res.stderr
    assert (tmp_path / "out" / "vqvae.safetensors").is_file()
    assert (tmp_path / "out" / "metrics.jsonl").is_file()
