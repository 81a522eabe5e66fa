"""Autoguidance: sampling away from a weaker prior of the same codes (sample --weak-prior --autoguidance)."""

import json

import pytest
import torch

from priors import get_prior
from priors.base import AutoregressivePrior

RASTER = ["pixelcnn", "transformer"]


def tiny(name, seed, **overrides):
    cls = get_prior(name)
    torch.manual_seed(seed)
    prior = cls(cls.tiny_config(num_classes=3, label_dropout=0.1, **overrides)).eval()
    with torch.no_grad():  # a freshly initialised prior is nearly uniform; larger weights make its draws differ
        for p in prior.parameters():
            p.mul_(3)
    return prior


def draw(prior, fn="sample", **kw):
    g = torch.Generator().manual_seed(5)
    return getattr(prior, fn)(12, labels=torch.arange(12) % 3, generator=g, **kw)


@pytest.mark.parametrize("name", RASTER)
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_autoguided_fast_sampler_matches_the_naive_one(name, guidance):
    prior, weak = tiny(name, 0), tiny(name, 1)
    kw = dict(guidance=guidance, weak=weak, autoguidance=1.5, guidance_schedule="linear")
    assert torch.equal(draw(prior, **kw), draw(prior, "sample_naive", **kw))


@pytest.mark.parametrize("name", RASTER)
def test_autoguidance_zero_is_plain_sampling_and_a_weak_prior_moves_the_draws(name):
    prior, weak = tiny(name, 0), tiny(name, 1)
    plain = draw(prior, guidance=2.0)
    assert torch.equal(draw(prior, guidance=2.0, weak=weak, autoguidance=0), plain)
    assert torch.equal(draw(prior, guidance=2.0, weak=weak, autoguidance=None), plain)
    assert not torch.equal(draw(prior, guidance=2.0, weak=weak, autoguidance=3.0), plain)


@pytest.mark.parametrize("name", RASTER)
def test_autoguiding_away_from_itself_changes_nothing(name):
    prior = tiny(name, 0)  # cond - weak is exactly 0 when both decode the same batch the same way
    assert torch.equal(draw(prior, weak=prior, autoguidance=4.0), draw(prior))


def test_autoguidance_is_added_to_the_logits_drawn_from():
    """One position by hand: the code drawn is the argmax of guided + A (cond - weak) at a tiny temperature."""
    prior, weak = tiny("pixelcnn", 0), tiny("pixelcnn", 1)
    labels = torch.arange(6) % 3
    got = prior.sample(6, labels=labels, temperature=1e-6, guidance=1.0, weak=weak, autoguidance=2.0,
                       generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        zeros = torch.zeros_like(got)
        cond = prior.logits(zeros, labels)[:, :, 0, 0]
        uncond = prior.logits(zeros, torch.full_like(labels, prior.null_label))[:, :, 0, 0]
        low = weak.logits(zeros, labels)[:, :, 0, 0]
        # linear schedule off (constant): W and A at every position
        expect = (uncond + 2 * (cond - uncond) + 2.0 * (cond - low)).argmax(1)
    assert torch.equal(got[:, 0, 0], expect)


def test_a_plugin_without_decode_autoguides_through_its_naive_loop():
    """A raster prior that only overrides generate (the older interface) still works as a weak prior."""
    prior, weak = tiny("pixelcnn", 0), tiny("pixelcnn", 1)
    assert type(weak).decode is not AutoregressivePrior.decode
    reference = draw(prior, weak=weak, autoguidance=1.0)

    class OldStyle(type(weak)):
        decode = AutoregressivePrior.decode  # as if it had none of its own

    weak.__class__ = OldStyle
    assert torch.equal(draw(prior, weak=weak, autoguidance=1.0), reference)


@pytest.mark.parametrize("make_weak,phrase", [
    (lambda: tiny("pixelcnn", 1, num_codes=8), "same codes and classes"),
    (lambda: get_prior("maskgit")(get_prior("maskgit").tiny_config(num_classes=3, label_dropout=0.1)),
     "raster order"),
    (lambda: None, "weak prior"),
])
def test_unusable_weak_priors_are_refused(make_weak, phrase):
    from vqgen.errors import ConfigError

    with pytest.raises(ConfigError, match=phrase):
        draw(tiny("pixelcnn", 0), weak=make_weak(), autoguidance=1.0)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_autoguidance_weights_are_refused(value):
    from vqgen.errors import OptionError

    prior = tiny("pixelcnn", 0)
    with pytest.raises(OptionError, match="autoguidance"):
        draw(prior, weak=prior, autoguidance=value)


def test_a_non_raster_prior_cannot_be_autoguided():
    from vqgen.errors import ConfigError

    cls = get_prior("maskgit")
    prior = cls(cls.tiny_config(num_classes=3, label_dropout=0.1)).eval()
    with pytest.raises(ConfigError, match="raster-order prior"):
        draw(prior, weak=tiny("pixelcnn", 0), autoguidance=1.0)


# -- from the command line ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_priors(trained_vqvae, codes, tmp_path_factory):
    from typer.testing import CliRunner

    from tests.conftest import TINY_PRIOR
    from vqgen.cli import app

    root = tmp_path_factory.mktemp("autoguidance")
    for name, steps in (("strong", "12"), ("weak", "2")):
        res = CliRunner().invoke(app, ["train-prior", "--codes", str(codes), *TINY_PRIOR, "--out", str(root / name),
                                       "--steps", steps, "--batch-size", "8", "--val-fraction", "0.25", "--no-amp"])
        assert res.exit_code == 0, res.output
    return root / "strong" / "prior.safetensors", root / "weak" / "prior.safetensors"


def test_sample_autoguidance_from_the_cli(cli, trained_vqvae, two_priors, tmp_path):
    from vqgen.codes import read_codes

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    strong, weak = two_priors
    base = ["sample", "--prior", strong, "--vqvae", vq, "--n", "16", "--nrow", "4", "--json"]
    plain = json.loads(cli(*base, "--out", tmp_path / "p.png", "--save-codes", tmp_path / "p.safetensors").stdout)
    assert plain["autoguidance"] == 0 and plain["weak_prior"] is None
    s = json.loads(cli(*base, "--out", tmp_path / "a.png", "--save-codes", tmp_path / "a.safetensors",
                       "--weak-prior", weak, "--autoguidance", "6").stdout)
    assert s["autoguidance"] == 6 and s["weak_prior"] == str(weak)
    assert not torch.equal(read_codes(tmp_path / "p.safetensors").codes, read_codes(tmp_path / "a.safetensors").codes)
    again = json.loads(cli(*base, "--out", tmp_path / "b.png", "--weak-prior", weak, "--autoguidance", "6").stdout)
    assert again["autoguidance"] == 6
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # seeded: the same images


@pytest.mark.parametrize("args,code,phrase", [
    (["--autoguidance", "2"], 2, "--weak-prior"),
    (["--weak-prior", "WEAK", "--autoguidance", "-1"], 2, "--autoguidance"),
    (["--weak-prior", "WEAK", "--autoguidance", "nan"], 2, "--autoguidance"),
    (["--weak-prior", "WEAK", "--autoguidance", "2", "--unconditional"], 2, "--unconditional"),
    (["--weak-prior", "WEAK", "--unconditional"], 2, "--weak-prior"),
    (["--weak-prior", "MISSING", "--autoguidance", "2"], 1, "MISSING"),
])
def test_sample_autoguidance_refusals(cli, trained_vqvae, two_priors, tmp_path, args, code, phrase):
    vq = trained_vqvae["run"] / "vqvae.safetensors"
    strong, weak = two_priors
    args = [str(weak) if a == "WEAK" else str(tmp_path / "missing.safetensors") if a == "MISSING" else a
            for a in args]
    phrase = str(tmp_path / "missing.safetensors") if phrase == "MISSING" else phrase
    out = tmp_path / "x.png"
    res = cli("sample", "--prior", strong, "--vqvae", vq, "--n", "2", "--out", out, *args, ok=False)
    assert res.exit_code == code and phrase in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()


def test_a_weak_prior_alone_autoguides_at_the_defaults(cli, trained_vqvae, two_priors, tmp_path):
    from vqgen.sampling import AUTOGUIDED_GUIDANCE, DEFAULT_AUTOGUIDANCE

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    strong, weak = two_priors
    s = json.loads(cli("sample", "--prior", strong, "--vqvae", vq, "--n", "4", "--json", "--out", tmp_path / "a.png",
                       "--weak-prior", weak).stdout)
    assert s["autoguidance"] == DEFAULT_AUTOGUIDANCE and s["guidance"] == AUTOGUIDED_GUIDANCE
    s = json.loads(cli("sample", "--prior", strong, "--vqvae", vq, "--n", "4", "--json", "--out", tmp_path / "b.png",
                       "--weak-prior", weak, "--autoguidance", "0").stdout)
    assert s["autoguidance"] == 0 and s["weak_prior"] is None


def test_a_weak_prior_of_another_vqvae_is_refused(cli, two_priors, tmp_path):
    """The shipped prior with a weak prior trained on the codes of another (tiny) VQ-VAE."""
    weak = two_priors[1]
    out = tmp_path / "x.png"
    res = cli("sample", "--n", "2", "--out", out, "--weak-prior", weak, ok=False)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith(f"error: --weak-prior {weak}: the prior models K=") and "the VQ-VAE" in lines[0]
    assert not out.exists()


def test_the_api_autoguides_like_the_cli(trained_vqvae, two_priors):
    import vqgen

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    strong, weak = two_priors
    a = vqgen.generate(4, prior=strong, vqvae=vq, weak_prior=weak, autoguidance=6)
    b = vqgen.generate(4, prior=strong, vqvae=vq)
    assert a.shape == b.shape and not torch.equal(a, b)
