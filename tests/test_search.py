"""Decoder-aware code search: never worse than the nearest codes, only candidate codes, and wired into the CLI."""

import json

import pytest
import torch

from vqgen.codes import read_codes
from vqgen.data import load_images
from vqgen.search import nearest_codes, search_codes
from vqgen.vqvae import VQVAE, VQVAEConfig, load_vqvae


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_size=16, hidden=16, res_blocks=1, res_channels=8, num_codes=16, code_dim=8))
    model.eval()
    return model, torch.rand(6, 3, 16, 16)


def per_image_mse(model, x, codes):
    return ((model.decode(codes) - x) ** 2).mean(dim=(1, 2, 3))


def test_one_candidate_is_the_nearest_code(model_and_images):
    model, x = model_and_images
    assert torch.equal(search_codes(model, x, 1), model.encode(x))
    assert torch.equal(nearest_codes(model, x, 3)[..., 0], model.encode(x))


@pytest.mark.parametrize("sweeps", [1, 2])
def test_search_never_reconstructs_worse_and_uses_only_candidates(model_and_images, sweeps):
    model, x = model_and_images
    calls = []
    codes = search_codes(model, x, 4, sweeps, step=lambda: calls.append(1))
    assert len(calls) == sweeps * 16  # one per position of the 4x4 grid per sweep
    nearest = model.encode(x)
    before, after = per_image_mse(model, x, nearest), per_image_mse(model, x, codes)
    assert (after <= before).all() and (after < before).any()
    assert not torch.equal(codes, nearest)
    assert (codes[..., None] == nearest_codes(model, x, 4)).any(-1).all()


def test_second_sweep_is_at_least_as_good(model_and_images):
    model, x = model_and_images
    one, two = search_codes(model, x, 4, 1), search_codes(model, x, 4, 2)
    assert per_image_mse(model, x, two).mean() <= per_image_mse(model, x, one).mean()

@pytest.mark.slow
def test_cli_reconstruct_and_encode_with_search(cli, trained_vqvae, tmp_path):
    w, data = trained_vqvae["run"] / "vqvae.safetensors", trained_vqvae["data"]
    plain = json.loads(cli("reconstruct", "--vqvae", w, data, "--out", tmp_path / "a.png", "--json").stdout)
    searched = json.loads(cli("reconstruct", "--vqvae", w, data, "--out", tmp_path / "b.png", "--search", "4",
                              "--json").stdout)
    assert plain["search"] == 0 and searched["search"] == 4
    assert searched["mse"] <= plain["mse"] and searched["psnr"] >= plain["psnr"]

    out = tmp_path / "codes.safetensors"
    s = json.loads(cli("encode", "--vqvae", w, "--data", data, "--out", out, "--split", "all", "--search", "4",
                       "--flip", "--json").stdout)
    cs = read_codes(out)
    assert s["grids"] == len(cs) == 48 and cs.source.endswith("#all+flip+search4x1")
    m, _ = load_vqvae(w)
    x = load_images(str(data), 16).images.float() / 255
    assert torch.equal(cs.codes[:24], search_codes(m, x, 4)) and torch.equal(cs.codes[24:], search_codes(m, x.flip(3), 4))
    assert (per_image_mse(m, x, cs.codes[:24]) <= per_image_mse(m, x, m.encode(x))).all()


def test_cli_refuses_a_search_wider_than_the_codebook(cli, trained_vqvae, tmp_path):
    w, data = trained_vqvae["run"] / "vqvae.safetensors", trained_vqvae["data"]
    out = tmp_path / "codes.safetensors"
    res = cli("encode", "--vqvae", w, "--data", data, "--out", out, "--search", "17", ok=False)
    assert res.exit_code == 1 and "--search 17" in res.output and "16 codes" in res.output
    assert "Traceback" not in res.output and not out.exists() and not list(tmp_path.glob("*.tmp"))
    res = cli("reconstruct", "--vqvae", w, data, "--out", tmp_path / "g.png", "--search", "-1", ok=False)
    assert res.exit_code == 2 and not (tmp_path / "g.png").exists()
    res = cli("reconstruct", "--vqvae", w, data, "--out", tmp_path / "g.png", "--search", "2", "--search-sweeps", "0",
              ok=False)
    assert res.exit_code == 2


def test_cli_evaluate_with_search(cli, trained_vqvae, tmp_path):
    w, data = trained_vqvae["run"] / "vqvae.safetensors", trained_vqvae["data"]
    cli("evaluate", "--vqvae", w, "--data", data, "--json", tmp_path / "a.json")
    cli("evaluate", "--vqvae", w, "--data", data, "--search", "4", "--json", tmp_path / "b.json")
    plain, searched = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert "search" not in plain and searched["search"] == 4 and searched["search_sweeps"] == 1
    assert searched["num_images"] == plain["num_images"] == 24
    assert searched["mse"] <= plain["mse"] and searched["psnr"] >= plain["psnr"]

