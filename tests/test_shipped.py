"""The CIFAR-10 weights shipped in the package: present, small, made for each other, and used by default."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.checkpoint import file_sha256
from vqgen.prior_file import load_prior
from vqgen.vqvae import load_vqvae
from vqgen.weights import shipped


def test_shipped_weights_fit_and_belong_together():
    vq_path, prior_path, weak_path = shipped("vqvae"), shipped("prior"), shipped("weak_prior")
    sizes = sum(p.stat().st_size for p in (vq_path, prior_path, weak_path))
    assert sizes <= 20 * 2**20  # the package budget
    vqvae, _ = load_vqvae(vq_path)
    prior, meta = load_prior(prior_path)
    assert meta["prior"] == "pixelcnn"  # the default prior is what ships
    assert meta["vqvae_sha256"] == file_sha256(vq_path)
    assert prior.config.num_codes == vqvae.config.num_codes
    assert (prior.config.height, prior.config.width) == (vqvae.config.grid,) * 2
    assert len(meta["class_names"]) == prior.config.num_classes == 10
    assert "airplane" in meta["class_names"] and "truck" in meta["class_names"]
    weak, wmeta = load_prior(weak_path)  # what the shipped prior is autoguided away from: the same codes, smaller
    assert wmeta["vqvae_sha256"] == meta["vqvae_sha256"] and wmeta["class_names"] == meta["class_names"]
    prior.check_weak(weak)
    assert sum(p.numel() for p in weak.parameters()) < sum(p.numel() for p in prior.parameters()) / 2


@pytest.mark.slow
def test_the_shipped_prior_is_autoguided_by_default(cli, tmp_path):
    from vqgen.sampling import AUTOGUIDED_GUIDANCE, DEFAULT_AUTOGUIDANCE, DEFAULT_GUIDANCE

    base = ["sample", "--n", 8, "--nrow", 4, "--json", "--save-codes"]
    s = json.loads(cli(*base, tmp_path / "a.safetensors", "--out", tmp_path / "a.png").stdout)
    assert s["autoguidance"] == DEFAULT_AUTOGUIDANCE and s["guidance"] == AUTOGUIDED_GUIDANCE
    assert s["weak_prior"] == str(shipped("weak_prior"))
    explicit = ["--weak-prior", shipped("weak_prior"), "--autoguidance", DEFAULT_AUTOGUIDANCE, "--guidance",
                AUTOGUIDED_GUIDANCE]
    cli(*base, tmp_path / "b.safetensors", "--out", tmp_path / "b.png", *explicit)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    off = json.loads(cli(*base, tmp_path / "c.safetensors", "--out", tmp_path / "c.png", "--autoguidance", 0).stdout)
    assert off["autoguidance"] == 0 and off["weak_prior"] is None and off["guidance"] == DEFAULT_GUIDANCE
    from vqgen.codes import read_codes

    assert not torch.equal(read_codes(tmp_path / "a.safetensors").codes, read_codes(tmp_path / "c.safetensors").codes)
    free = json.loads(cli("sample", "--n", 4, "--json", "--unconditional", "--out", tmp_path / "u.png").stdout)
    assert free["autoguidance"] == 0 and free["guidance"] == 0  # measured given a class only
    plain = json.loads(cli("sample", "--n", 4, "--json", "--guidance", 0, "--out", tmp_path / "p.png").stdout)
    assert plain["autoguidance"] == 0 and plain["weak_prior"] is None  # --guidance 0: the prior's own samples
    both = json.loads(cli("sample", "--n", 4, "--json", "--guidance", 0, "--autoguidance", 4,
                          "--out", tmp_path / "q.png").stdout)
    assert both["autoguidance"] == 4 and both["guidance"] == 0  # autoguidance alone, when asked for

@pytest.mark.slow
def test_sample_with_no_weights_named(cli, tmp_path):
    """`vqgen sample --n N --out grid.png` works straight after install and is reproducible."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cli("sample", "--n", 8, "--nrow", 4, "--out", a)
    cli("sample", "--n", 8, "--nrow", 4, "--out", b)
    img = Image.open(a)
    assert img.size[0] > 4 * 32 and img.size[1] > 2 * 32  # 4 x 2 tiles of 32x32 plus padding
    assert a.read_bytes() == b.read_bytes()
    pixels = torch.tensor(np.array(img.convert("L")), dtype=torch.float32)
    assert pixels.std() > 10  # decoded images, not a flat field

@pytest.mark.slow
def test_sample_says_which_classes_a_short_grid_shows(cli, tmp_path):
    """The conditional prior draws one class per row; a grid with fewer rows than classes says so."""
    res = cli("sample", "--n", 8, "--nrow", 4, "--out", tmp_path / "a.png", "--json")
    assert json.loads(res.stdout)["classes"] == ["airplane", "automobile"]
    assert "the grid shows 2 of 10 classes (airplane, automobile); --n 40 shows all of them" in res.stderr
    res = cli("sample", "--n", 20, "--nrow", 2, "--out", tmp_path / "b.png", "--json")
    assert len(json.loads(res.stdout)["classes"]) == 10 and "one class per row" not in res.stderr
    res = cli("sample", "--n", 3, "--class", "cat", "--out", tmp_path / "c.png", "--json")
    assert json.loads(res.stdout)["classes"] == ["cat"] and "one class per row" not in res.stderr


def test_shipped_vqvae_reconstructs_smooth_images(cli, tmp_path):
    """Smooth colour ramps are easy for any working CIFAR-10 autoencoder; a broken one scores far lower."""
    folder = tmp_path / "ramps"
    folder.mkdir()
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    for i in range(6):
        a = i / 6
        img = torch.stack([xs * (1 - a) + a * ys, ys, 1 - xs * 0.5 - a * 0.3]).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i}.png")
    res = cli("reconstruct", folder, "--out", tmp_path / "recon.png", "--json")
    summary = json.loads(res.stdout)
    assert summary["psnr"] > 24
    assert Image.open(tmp_path / "recon.png").size[1] > 2 * 32  # originals above reconstructions


def test_evaluate_defaults_to_shipped_pair(cli, tmp_path):
    from tests.conftest import make_images

    out = tmp_path / "figures.json"
    res = cli("evaluate", "--data", make_images(tmp_path / "images", classes=("cat", "dog")), "--json", out)
    assert "matched them by name" in res.output  # two of the prior's ten classes: cat is its 3, dog its 5
    figures = json.loads(out.read_text())
    assert figures["num_codes"] == load_vqvae(shipped("vqvae"))[0].config.num_codes
    assert figures["bits_per_code"] > 0 and figures["bits_per_dim"] > 0
