"""A resumed run keeps the run it resumes: options that would change its model, prior, conditioning, data or
held-out split are refused (not silently ignored), its own options and moved copies of its data are accepted.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, tensors_and_meta
from vqgen.checkpoint import read_header

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, codes):
    """A 4-step VQ-VAE run and a 4-step class-conditional prior run, to resume with conflicting options."""
    root = tmp_path_factory.mktemp("short")
    data = make_images(root / "images")
    ok(invoke("train-vqvae", "--data", data, "--out", root / "vq", "--steps", "4", "--batch-size", "8",
                "--eval-every", "0", "--cache-dir", root / "cache", *TINY_VQVAE_ARGS))
    ok(invoke("train-prior", "--codes", codes, "--out", root / "prior", *TINY_PRIOR, "--steps", "4",
                "--batch-size", "8", "--val-fraction", "0.25", "--class-conditional"))
    other = make_images(root / "other", seed=1)
    tensors, meta = tensors_and_meta(codes)  # the same kind of codes, other grids
    tensors["codes"] = torch.flip(tensors["codes"], dims=[0])
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
    ("train-prior", ["-o", "layers=5"], "-o layers=5 does not match the run being resumed, which has -o layers=3"),
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
    res = invoke(command, "--out", run, "--resume", "--steps", "6", *[other if a == "OTHER" else a for a in args])
    assert res.exit_code == 1, res.output
    assert phrase in res.output and "Traceback" not in res.output
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_vqvae_resume_accepts_its_own_options_and_moved_data(short_runs, tmp_path):
    """Re-running the first command with --resume works; so does data copied elsewhere, which the run records."""
    run = _copy_run(short_runs.root / "vq", tmp_path / "vq")
    moved = shutil.copytree(short_runs.data, tmp_path / "moved")
    s = json.loads(ok(invoke("train-vqvae", "--data", moved, "--out", run, "--resume", "--steps", "6",
                               "--batch-size", "8", "--no-flip", "--val-fraction", "0.02", *TINY_VQVAE_ARGS,
                               "--json")).stdout)
    assert s["steps"] == 6
    data = json.loads(read_header(run / "checkpoint.safetensors")[1]["data"])
    assert data["spec"] == str(moved.resolve()) and len(data["sha256"]) == 64


def test_prior_resume_accepts_its_own_options(short_runs, tmp_path):
    run = _copy_run(short_runs.root / "prior", tmp_path / "prior")
    s = json.loads(ok(invoke("train-prior", "--codes", short_runs.codes, "--out", run, "--resume", "--steps", "6",
                               *TINY_PRIOR, "--prior", "pixelcnn", "--class-conditional", "--val-fraction", "0.25",
                               "--json")).stdout)
    assert s["steps"] == 6 and s["class_conditional"] is True
