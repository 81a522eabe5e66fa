"""`train-vqvae --init-from`: a larger VQ-VAE starts computing exactly what the smaller one computed."""

import json

import pytest
import torch

from tests.conftest import TINY_VQVAE_ARGS
from vqgen.errors import ConfigError
from vqgen.grow import grow_into
from vqgen.vqvae import VQVAE, VQVAEConfig, load_vqvae

SMALL = VQVAEConfig(image_size=16, hidden=16, res_blocks=1, res_channels=8, num_codes=16, code_dim=8)


def _trained_like(cfg: VQVAEConfig) -> VQVAE:
    """A model whose every weight is non-zero, so a copy that drops or misplaces one shows."""
    torch.manual_seed(0)
    m = VQVAE(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.quantizer.embedding.copy_(torch.randn_like(m.quantizer.embedding))
        m.quantizer.initialized.fill_(True)
    return m.eval()


@pytest.mark.parametrize("grown", [
    dict(),  # same size: an exact copy
    dict(hidden=24),
    dict(res_blocks=3),
    dict(res_channels=12),
    dict(hidden=32, res_blocks=2, res_channels=16, beta=0.5),
    dict(num_codes=40),  # a larger codebook, not a multiple of the old one
    dict(num_codes=32, quantizer="vq"),
])
def test_grown_model_computes_the_same_function(grown):
    small = _trained_like(VQVAEConfig(**{**SMALL.to_dict(), "quantizer": grown.get("quantizer", "ema")}))
    big = VQVAE(VQVAEConfig(**{**small.config.to_dict(), **grown}))
    grow_into(big, small)
    big.eval()
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(big.encoder(x), small.encoder(x), rtol=0, atol=1e-5)
    codes = small.encode(x)
    assert torch.equal(big.encode(x), codes)
    torch.testing.assert_close(big.decode(codes), small.decode(codes), rtol=0, atol=1e-5)
    k = small.config.num_codes
    torch.testing.assert_close(big.quantizer.embedding[:k], small.quantizer.embedding, rtol=0, atol=0)
    assert bool(big.quantizer.initialized)


def test_grown_codebook_puts_its_new_codes_on_encoder_outputs_at_the_first_step():
    small = _trained_like(SMALL)
    big = VQVAE(VQVAEConfig(**{**SMALL.to_dict(), "num_codes": 48}))
    grow_into(big, small)
    big.train()
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        z_e = big.encoder(x)
        big.quantizer(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, SMALL.code_dim)
    new = big.quantizer.embedding[16:]  # (32, D): each new code now sits on one of this batch's vectors
    assert (new[:, None] - flat[None]).abs().amax(-1).min(1).values.max() == 0  # exact copies of outputs
    assert len({tuple(r.tolist()) for r in new}) == 32  # on different ones
    assert torch.all(big.quantizer.usage > 0)


def test_grown_model_can_learn_with_its_new_channels():
    """The zeroed weights that read new channels still get gradients: the new capacity is not dead."""
    small = _trained_like(SMALL)
    big = VQVAE(VQVAEConfig(**{**SMALL.to_dict(), "hidden": 24, "res_blocks": 2}))
    grow_into(big, small)
    x_hat, q = big(torch.rand(4, 3, 16, 16))
    ((x_hat - 0.5) ** 2).mean().add(q.loss).backward()
    final = big.encoder.net[-1].weight  # 1x1 projection to D: its inputs 16..23 are the new channels
    assert final.grad[:, 16:].abs().sum() > 0
    new_block = big.decoder.net[2]  # the decoder's second residual block did not exist in the small model
    assert new_block.conv2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, phrase", [
    (dict(num_codes=8), "num_codes"),  # the library names fields; the CLI spells them as flags
    (dict(code_dim=4), "code_dim"),
    (dict(hidden=8), "shrink"),
    (dict(quantizer="vq"), "quantizer"),
])
def test_growing_refuses_what_would_change_the_codes_or_shrink(bad, phrase):
    with pytest.raises(ConfigError, match=phrase):
        grow_into(VQVAE(VQVAEConfig(**{**SMALL.to_dict(), **bad})), _trained_like(SMALL))


def test_cli_init_from_grows_and_inherits_the_rest(cli, trained_vqvae, tmp_path):
    src = trained_vqvae["run"] / "vqvae.safetensors"
    run = tmp_path / "grown"
    res = cli("train-vqvae", "--data", trained_vqvae["data"], "--out", run, "--init-from", src, "--hidden", "24",
              "--codebook-size", "32", "--steps", "1", "--lr", "1e-9", "--batch-size", "8", "--json")
    summary = json.loads(res.stdout)
    small, _ = load_vqvae(src)
    big, _ = load_vqvae(run / "vqvae.safetensors")
    # the rest came from the file
    assert big.config == VQVAEConfig(**{**small.config.to_dict(), "hidden": 24, "num_codes": 32})
    # one step at a negligible LR: held-out PSNR is the source model's, not a fresh model's
    assert summary["val_psnr"] == pytest.approx(trained_vqvae["summary"]["val_psnr"], abs=0.05)
    # the run records where it started
    from vqgen.run import read_run_meta

    assert json.loads(read_run_meta(run, "vqvae")["init_from"])["path"] == str(src)


@pytest.mark.parametrize("extra, phrase", [
    (["--codebook-size", "8"], "codebook-size"),
    (["--res-blocks", "0"], "positive"),
])
def test_cli_init_from_bad_sizes_are_one_line_errors(cli, trained_vqvae, tmp_path, extra, phrase):
    run = tmp_path / "bad"
    res = cli("train-vqvae", "--data", trained_vqvae["data"], "--out", run, "--steps", "1",
              "--init-from", trained_vqvae["run"] / "vqvae.safetensors", *extra, ok=False)
    assert res.exit_code in (1, 2) and phrase in res.output and "Traceback" not in res.output
    assert not run.exists()


def test_cli_init_from_with_resume_or_a_bad_file_is_refused(cli, trained_vqvae, tmp_path):
    run = tmp_path / "r"
    args = ["train-vqvae", "--data", trained_vqvae["data"], "--out", run, "--batch-size", "8", *TINY_VQVAE_ARGS]
    cli(*args, "--steps", "2")
    res = cli("train-vqvae", "--out", run, "--resume", "--steps", "4",
              "--init-from", trained_vqvae["run"] / "vqvae.safetensors", ok=False)
    assert res.exit_code == 2 and "--init-from" in res.output  # misuse: the two exclude each other
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weights file")
    res = cli(*args[:4], tmp_path / "r2", "--steps", "1", "--init-from", junk, ok=False)
    assert res.exit_code == 1 and "junk.safetensors" in res.output and "Traceback" not in res.output
