"""What a prior declares about its likelihood decides what train-prior reports and keeps its best weights by, and
what evaluate reports: exact bits per code, a bound on them, or the training objective; and a trained prior's
sampling options (maskgit's steps) can be changed when sampling, its other fields cannot."""

import json
import math

import pytest
import torch

from priors import get_prior, register_prior, reset_plugins
from priors.maskgit import MaskGIT
from tests.conftest import TINY_PRIOR_OPTS


def train(cli, codes, run, prior, *extra):
    res = cli("train-prior", "--codes", codes, "--prior", prior, *TINY_PRIOR_OPTS.get(prior, TINY_PRIOR_OPTS["maskgit"]),
              "--out", run, "--steps", "6", "--eval-every", "2", "--batch-size", "8", "--val-fraction", "0.25",
              "--no-amp", "--json", *extra)
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads(res.stdout.strip().splitlines()[-1]), [e for e in evals if e.get("event") == "eval"], res.output


@pytest.fixture(scope="module")
def maskgit_run(trained_vqvae, codes, tmp_path_factory):
    from typer.testing import CliRunner

    from vqgen.cli import app

    run = tmp_path_factory.mktemp("maskgit") / "run"

    def cli(*args):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res

    return run, *train(cli, codes, run, "maskgit")


def test_a_bound_is_reported_and_kept_as_a_bound(maskgit_run):
    run, summary, evals, output = maskgit_run
    assert summary["likelihood"] == "bound" and summary["prior"] == "maskgit"
    assert len(evals) == 3 and all("val_bits_per_code" not in e for e in evals)
    bounds = [e["val_bits_per_code_bound"] for e in evals]
    assert all(math.isfinite(b) and b > 0 for b in bounds)
    assert summary["best_val_bits_per_code_bound"] == min(bounds) and math.isfinite(
        summary["val_bits_per_code_bound_unconditional"])
    assert "held-out figure: val_bits_per_code_bound, an upper bound on bits per code" in output
    assert (run / "best.safetensors").exists()


def test_evaluate_names_a_bound(cli, trained_vqvae, maskgit_run, tmp_path):
    figures = tmp_path / "f.json"
    cli("evaluate", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", "--prior", maskgit_run[0] / "prior.safetensors",
        "--data", trained_vqvae["data"], "--json", figures)
    f = json.loads(figures.read_text())
    assert "bits_per_code" not in f and "bits_per_dim" not in f
    assert f["bits_per_code_bound"] > 0 and f["bits_per_dim_bound"] > 0 and "bits_per_code_bound_unconditional" in f


class NoLikelihood(MaskGIT):
    """maskgit's network and sampler, declaring no likelihood."""

    likelihood = "none"

    def log_prob(self, codes, labels=None):  # what "none" means: there is none
        return super(MaskGIT, self).log_prob(codes, labels)


@pytest.fixture
def no_likelihood():
    register_prior("test_nolikelihood")(NoLikelihood)
    yield "test_nolikelihood"
    reset_plugins()


def test_without_a_likelihood_the_objective_is_reported_and_kept(cli, trained_vqvae, codes, tmp_path, no_likelihood):
    from vqgen.commands.stage2 import evaluate_prior

    summary, evals, output = train(cli, codes, tmp_path / "run", no_likelihood)
    assert summary["likelihood"] == "none" and "val_objective" in summary
    figures = [e["val_objective"] for e in evals]
    assert summary["best_val_objective"] == min(figures) and all(math.isfinite(v) for v in figures)
    assert "its training objective in bits per code (the prior declares no likelihood)" in output
    # the objective draws random masks: the same ones on every evaluation, and training's RNG is left as it was
    prior = get_prior(no_likelihood)(get_prior(no_likelihood).tiny_config(num_classes=2))
    grids, labels = torch.randint(0, 16, (6, 4, 4)), torch.arange(6) % 2
    torch.manual_seed(3)
    first = evaluate_prior(prior, grids, labels)
    state = torch.get_rng_state()
    assert evaluate_prior(prior, grids, labels) == first and torch.equal(torch.get_rng_state(), state)
    res = cli("evaluate", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", "--prior",
              tmp_path / "run" / "prior.safetensors", "--data", trained_vqvae["data"], "--json", tmp_path / "f.json")
    assert "declares no likelihood" in res.output
    assert not any(k.startswith("bits_per") for k in json.loads((tmp_path / "f.json").read_text()))


def test_sampling_options_change_a_trained_maskgit_and_nothing_else(cli, trained_vqvae, maskgit_run, tmp_path):
    from vqgen.codes import read_codes

    vq, w = trained_vqvae["run"] / "vqvae.safetensors", maskgit_run[0] / "prior.safetensors"
    base = ["sample", "--prior", w, "--vqvae", vq, "--n", "8", "--seed", "1"]
    grids = {}
    for steps in ("1", "4"):
        cli(*base, "-o", f"steps={steps}", "--out", tmp_path / f"s{steps}.png", "--save-codes", tmp_path / f"s{steps}.sft")
        grids[steps] = read_codes(tmp_path / f"s{steps}.sft").codes
    assert not torch.equal(grids["1"], grids["4"])
    cli(*base, "--out", tmp_path / "default.png")  # the trained prior's own steps=4 (TINY_PRIOR_OPTS)
    assert (tmp_path / "default.png").read_bytes() == (tmp_path / "s4.png").read_bytes()
    res = cli(*base, "-o", "n_layer=3", "--out", tmp_path / "x.png", ok=False)
    assert res.exit_code == 1 and "-o n_layer is not a sampling option of the maskgit prior" in res.output
    assert "steps, choice_temperature" in res.output and not (tmp_path / "x.png").exists()
