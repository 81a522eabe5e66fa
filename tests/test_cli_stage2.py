"""encode -> train-prior -> sample -> evaluate, end to end through the CLI, for every built-in prior."""

import json
import math

import pytest
import torch
from PIL import Image

from tests.conftest import TINY_PRIOR_OPTS as TINY_OPTS
from vqgen.codes import read_codes

@pytest.mark.parametrize("prior", sorted(TINY_OPTS))
def test_train_prior_then_sample(cli, trained_vqvae, codes, tmp_path, prior):
    vq = trained_vqvae["run"] / "vqvae.safetensors"
    run = tmp_path / "prior"
    s = json.loads(cli("train-prior", "--codes", codes, "--prior", prior, *TINY_OPTS[prior], "--out", run,
                       "--steps", "12", "--batch-size", "8", "--val-fraction", "0.25", "--json").stdout)
    assert s["class_conditional"] is True and s["steps"] == 12
    figure = {"exact": "val_bits_per_code", "bound": "val_bits_per_code_bound"}[s["likelihood"]]
    assert math.isfinite(s[figure]) and 0 < s[figure] < 10
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "config" and records[0]["prior"] == prior and records[0]["world_size"] == 1
    w = run / "prior.safetensors"
    assert w.exists() and (run / "checkpoint.safetensors").exists()

    out = tmp_path / "grid.png"
    saved = tmp_path / "sampled.safetensors"
    res = json.loads(cli("sample", "--prior", w, "--vqvae", vq, "--n", "6", "--nrow", "3", "--out", out,
                         "--seed", "5", "--save-codes", saved, "--json").stdout)
    assert res["samples"] == 6 and Image.open(out).size[0] > 3 * 16
    cs = read_codes(saved)
    assert cs.codes.shape == (6, 4, 4) and cs.labels.tolist() == [0, 0, 0, 1, 1, 1]  # one class per row

    # same seed, same images; another seed, other images
    out2, out3 = tmp_path / "again.png", tmp_path / "other.png"
    cli("sample", "--prior", w, "--vqvae", vq, "--n", "6", "--nrow", "3", "--out", out2, "--seed", "5")
    cli("sample", "--prior", w, "--vqvae", vq, "--n", "6", "--nrow", "3", "--out", out3, "--seed", "6")
    assert out.read_bytes() == out2.read_bytes()
    assert out.read_bytes() != out3.read_bytes()

    # one PNG per sample into a folder, one class by name
    folder = tmp_path / "samples"
    cli("sample", "--prior", w, "--vqvae", vq, "--n", "3", "--out", folder, "--class", "dogs")
    assert sorted(p.name for p in folder.iterdir()) == ["sample_0.png", "sample_1.png", "sample_2.png"]


def test_priors_command_lists_builtins(cli):
    found = json.loads(cli("priors", "--json").stdout)
    assert found["pixelcnn"] == found["transformer"] == found["maskgit"] == "built-in"
    assert "pixelcnn" in cli("priors").stdout


def test_train_prior_resume(cli, codes, tmp_path):
    run = tmp_path / "p"
    cli("train-prior", "--codes", codes, *TINY_OPTS["pixelcnn"], "--out", run, "--steps", "4", "--batch-size", "8")
    s = json.loads(cli("train-prior", "--out", run, "--resume", "--steps", "8", "--json").stdout)
    assert s["steps"] == 8


def test_evaluate_figures_match_independent_computation(cli, trained_vqvae, codes, tmp_path):
    from vqgen.data import load_images
    from vqgen.metrics import ssim
    from vqgen.prior_file import load_prior
    from vqgen.vqvae import load_vqvae

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    run = tmp_path / "prior"
    cli("train-prior", "--codes", codes, *TINY_OPTS["pixelcnn"], "--out", run, "--steps", "5", "--batch-size", "8")
    out = tmp_path / "figures.json"
    cli("evaluate", "--vqvae", vq, "--prior", run / "prior.safetensors", "--data", trained_vqvae["data"],
        "--json", out, "--batch-size", "7")
    f = json.loads(out.read_text())

    model, _ = load_vqvae(vq)
    prior, _ = load_prior(run / "prior.safetensors")
    imgs = load_images(str(trained_vqvae["data"]), 16)
    x = imgs.images.float() / 255
    idx = model.encode(x)
    x_hat = model.decode(idx)
    mse = ((x_hat.double() - x.double()) ** 2).mean(dim=(1, 2, 3)).mean().item()
    counts = torch.bincount(idx.flatten(), minlength=16).double()
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * p.log()).sum().item()
    nll = -prior.log_prob(idx, imgs.labels).double().sum().item() / idx.numel()
    assert f["num_images"] == 24 and f["num_codes"] == 16
    assert f["mse"] == pytest.approx(mse, rel=1e-5)
    assert f["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert f["ssim"] == pytest.approx(ssim(x, x_hat).mean().item(), rel=1e-5)
    assert f["codes_used"] == int((counts > 0).sum())
    assert f["perplexity"] == pytest.approx(math.exp(entropy), rel=1e-5)
    assert f["unigram_entropy_bits"] == pytest.approx(entropy / math.log(2), rel=1e-5)
    assert f["bits_per_code"] == pytest.approx(nll / math.log(2), rel=1e-4)
    assert f["bits_per_dim"] == pytest.approx(f["bits_per_code"] * 16 / (3 * 16 * 16), rel=1e-6)
