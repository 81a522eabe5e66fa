"""Classifier-free guidance from the command line: label dropout trains a null class, sample --guidance uses it."""

import json
import math

import pytest
import torch

from tests.conftest import TINY_PRIOR


@pytest.fixture(scope="module")
def priors(trained_vqvae, codes, tmp_path_factory):
    """A tiny pixelcnn trained with the default label dropout, and one trained without."""
    from typer.testing import CliRunner

    from vqgen.cli import app

    root = tmp_path_factory.mktemp("guidance")
    out = {}
    for name, extra in (("null", []), ("plain", ["--label-dropout", "0"])):
        res = CliRunner().invoke(app, ["train-prior", "--codes", str(codes), *TINY_PRIOR, "--out",
                                       str(root / name), "--steps", "12", "--batch-size", "8", "--val-fraction",
                                       "0.25", "--no-amp", "--json", *extra])
        assert res.exit_code == 0, res.output
        out[name] = (root / name, json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def test_label_dropout_is_on_by_default_and_trains_a_null_class(priors):
    from vqgen.prior_file import load_prior

    run, summary = priors["null"]
    assert math.isfinite(summary["val_bits_per_code_unconditional"])
    prior, meta = load_prior(run / "prior.safetensors")
    assert meta["config"]["label_dropout"] == 0.1 and prior.has_null_class and prior.null_label == 2
    # the null class's row moved away from its seeded initial value: it received gradients
    torch.manual_seed(0)
    fresh = type(prior)(prior.config)
    moved = [not torch.equal(l.cond.weight[2], f.cond.weight[2]) for l, f in zip(prior.layers, fresh.layers)]
    assert all(moved)
    plain, s = load_prior(priors["plain"][0] / "prior.safetensors")
    assert not plain.has_null_class and plain.layers[0].cond.num_embeddings == 2
    assert "val_bits_per_code_unconditional" not in priors["plain"][1]


def test_label_dropout_replaces_labels_at_its_rate():
    from priors import get_prior
    from vqgen.commands.stage2 import PriorObjective

    cls = get_prior("pixelcnn")
    prior = cls(cls.tiny_config(num_classes=3, label_dropout=0.3))
    labels = torch.arange(20000) % 3
    torch.manual_seed(0)
    dropped = PriorObjective(prior)._drop_labels(labels)
    null = dropped == prior.null_label
    assert abs(null.double().mean().item() - 0.3) < 0.02
    assert torch.equal(dropped[~null], labels[~null])  # the others are untouched


def test_sample_guidance_default_and_explicit(cli, trained_vqvae, priors, tmp_path):
    from vqgen.sampling import DEFAULT_GUIDANCE

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    w = priors["null"][0] / "prior.safetensors"
    base = ["sample", "--prior", w, "--vqvae", vq, "--n", "4", "--nrow", "2", "--json"]
    s = json.loads(cli(*base, "--out", tmp_path / "a.png").stdout)
    assert s["guidance"] == DEFAULT_GUIDANCE
    cli(*base, "--out", tmp_path / "b.png", "--guidance", str(DEFAULT_GUIDANCE))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    from vqgen.codes import read_codes

    grids = {}
    for w in ("0", "8"):  # a tiny prior's two streams differ little: a strong weight shows the difference
        cli(*base[:5], "--n", "16", "--out", tmp_path / f"g{w}.png", "--guidance", w,
            "--save-codes", tmp_path / f"g{w}.safetensors")
        grids[w] = read_codes(tmp_path / f"g{w}.safetensors").codes
    assert not torch.equal(grids["0"], grids["8"])
    s = json.loads(cli(*base, "--out", tmp_path / "u.png", "--unconditional").stdout)
    assert s["guidance"] == 0 and s["classes"] == []
    # a prior without a null class samples without guidance by default
    plain = priors["plain"][0] / "prior.safetensors"
    s = json.loads(cli("sample", "--prior", plain, "--vqvae", vq, "--n", "2", "--out", tmp_path / "p.png",
                       "--json").stdout)
    assert s["guidance"] == 0


def test_sample_temperature_default_follows_guidance(cli, trained_vqvae, priors, tmp_path):
    """A guided draw defaults to GUIDED_TEMPERATURE, an unguided one to 1, and --temperature overrides both."""
    from vqgen.codes import read_codes
    from vqgen.sampling import GUIDED_TEMPERATURE

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    base = ["sample", "--vqvae", vq, "--n", "16", "--nrow", "4", "--json"]

    def draw(name, prior, *extra):
        s = json.loads(cli(*base, "--prior", prior, "--out", tmp_path / f"{name}.png",
                           "--save-codes", tmp_path / f"{name}.safetensors", *extra).stdout)
        return s["temperature"], read_codes(tmp_path / f"{name}.safetensors").codes

    null, plain = (priors[k][0] / "prior.safetensors" for k in ("null", "plain"))
    t, guided = draw("guided", null)
    assert t == GUIDED_TEMPERATURE != 1.0
    assert torch.equal(guided, draw("guided-explicit", null, "--temperature", str(GUIDED_TEMPERATURE))[1])
    assert not torch.equal(guided, draw("guided-t1", null, "--temperature", "1")[1])
    t, unguided = draw("unguided", null, "--guidance", "0")
    assert t == 1.0 and torch.equal(unguided, draw("unguided-t1", null, "--guidance", "0", "--temperature", "1")[1])
    assert draw("plain", plain)[0] == 1.0  # no null class: no guidance, so T = 1
    assert draw("plain-hot", plain, "--temperature", "1.3")[0] == 1.3


@pytest.mark.parametrize("args,code,phrase", [
    (["--guidance", "1"], 1, "null class"),  # on the prior trained without label dropout
    (["--unconditional"], 1, "no null class"),
    (["--guidance", "-1"], 2, "--guidance"),
    (["--guidance", "nan"], 2, "--guidance"),
    (["--guidance", "inf"], 2, "--guidance"),
    (["--temperature", "nan"], 2, "--temperature"),
    (["--guidance-schedule", "cosine"], 2, "--guidance-schedule"),
])
def test_guidance_refusals(cli, trained_vqvae, priors, tmp_path, args, code, phrase):
    vq = trained_vqvae["run"] / "vqvae.safetensors"
    plain = priors["plain"][0] / "prior.safetensors"
    out = tmp_path / "x.png"
    res = cli("sample", "--prior", plain, "--vqvae", vq, "--n", "2", "--out", out, *args, ok=False)
    assert res.exit_code == code and phrase in res.output and "Traceback" not in res.output
    if code == 1:
        assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_unconditional_with_class_is_refused(cli, trained_vqvae, priors, tmp_path):
    vq = trained_vqvae["run"] / "vqvae.safetensors"
    w = priors["null"][0] / "prior.safetensors"
    res = cli("sample", "--prior", w, "--vqvae", vq, "--n", "2", "--out", tmp_path / "x.png", "--unconditional",
              "--class", "0", ok=False)
    assert res.exit_code == 2 and "--unconditional" in res.output  # misuse: the two exclude each other


def test_evaluate_reports_the_unconditional_figure(cli, trained_vqvae, priors, tmp_path):
    vq = trained_vqvae["run"] / "vqvae.safetensors"
    figures = tmp_path / "f.json"
    cli("evaluate", "--vqvae", vq, "--prior", priors["null"][0] / "prior.safetensors", "--data",
        trained_vqvae["data"], "--json", figures)
    f = json.loads(figures.read_text())
    assert math.isfinite(f["bits_per_code"]) and math.isfinite(f["bits_per_code_unconditional"])


def test_init_from_adds_a_null_class_to_a_trained_prior(cli, priors, codes, tmp_path):
    """A prior trained without label dropout continues with it: every weight kept, the null row the mean class."""
    from vqgen.prior_file import load_prior

    plain_path = priors["plain"][0] / "prior.safetensors"
    run = tmp_path / "grown"
    cli("train-prior", "--codes", codes, "--init-from", plain_path, "--out", run, "--steps", "1", "--lr", "1e-12",
        "--warmup", "0", "--batch-size", "8", "--val-fraction", "0.25", "--no-amp")
    plain, _ = load_prior(plain_path)
    grown, meta = load_prior(run / "prior.safetensors")
    assert grown.has_null_class and meta["config"]["channels"] == plain.config.channels
    for a, b in zip(plain.layers, grown.layers):
        torch.testing.assert_close(b.cond.weight[:2], a.cond.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(b.cond.weight[2], a.cond.weight.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(grown.embed.weight, plain.embed.weight, atol=1e-6, rtol=0)
    res = cli("train-prior", "--codes", codes, "--init-from", plain_path, "--out", tmp_path / "bad", "--steps", "1",
              "-o", "channels=8", ok=False)
    assert res.exit_code == 1 and "channels" in res.output and not (tmp_path / "bad").exists()


def test_init_from_grows_a_pixelcnn_that_starts_where_the_trained_one_is(cli, priors, codes, tmp_path):
    """-o channels / layers larger than the trained prior's: the grown one computes the same logits at step 0
    (here with a null class added too), so a larger prior starts at the trained one's bits, not at noise."""
    from vqgen.codes import read_codes
    from vqgen.prior_file import load_prior

    plain_path = priors["plain"][0] / "prior.safetensors"
    plain, _ = load_prior(plain_path)
    c0, l0 = plain.config.channels, plain.config.layers
    run = tmp_path / "wide"
    cli("train-prior", "--codes", codes, "--init-from", plain_path, "--out", run, "--steps", "1", "--lr", "1e-12",
        "--warmup", "0", "--batch-size", "8", "--val-fraction", "0.25", "--no-amp", "-o", f"channels={c0 + 8}",
        "-o", f"layers={l0 + 2}")
    grown, meta = load_prior(run / "prior.safetensors")
    assert (meta["config"]["channels"], meta["config"]["layers"]) == (c0 + 8, l0 + 2) and grown.has_null_class
    cs = read_codes(codes)
    x, y = cs.codes[:6].long(), cs.labels[:6].long()
    torch.testing.assert_close(grown.logits(x, y), plain.logits(x, y), atol=1e-4, rtol=0)
    # not a saddle: the grown network's new weights get gradients, so training can use them
    grown.train()
    grown.loss(x, y).backward()
    last = grown.layers[-1]
    assert last.h_out.weight.grad.abs().sum() > 0 and grown.layers[0].v_conv.weight.grad[:, c0:].abs().sum() > 0
    res = cli("train-prior", "--codes", codes, "--init-from", plain_path, "--out", tmp_path / "shallow", "--steps",
              "1", "-o", f"channels={c0 - 4}", ok=False)
    assert res.exit_code == 1 and "only keep or grow" in res.output and not (tmp_path / "shallow").exists()


def test_a_prior_without_growable_sizes_is_refused_growth(cli, codes, tmp_path):
    src = tmp_path / "tf"
    cli("train-prior", "--codes", codes, "--prior", "transformer", "-o", "n_layer=1", "-o", "n_head=2", "-o",
        "n_embd=16", "--out", src, "--steps", "1", "--batch-size", "8", "--val-fraction", "0.25", "--no-amp")
    res = cli("train-prior", "--codes", codes, "--init-from", src / "prior.safetensors", "-o", "n_embd=32", "--out",
              tmp_path / "wide", "--steps", "1", ok=False)
    assert res.exit_code == 1 and "n_embd=16" in res.output and "same shape" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "wide").exists()


def test_help_states_the_default_guidance(cli):
    """--help names the default weight (written out there: the CLI module does not import the sampling code)."""
    from vqgen.inpainting import INPAINT_GUIDANCE
    from vqgen.sampling import AUTOGUIDED_GUIDANCE, DEFAULT_AUTOGUIDANCE, DEFAULT_GUIDANCE

    for cmd, w in (("sample", AUTOGUIDED_GUIDANCE), ("inpaint", INPAINT_GUIDANCE)):
        text = " ".join(cli(cmd, "--help").stdout.replace("│", " ").split())  # rich wraps help inside a box
        assert f"default: {w:g} " in text, cmd
    text = " ".join(cli("sample", "--help").stdout.replace("│", " ").split())
    assert f"else {DEFAULT_GUIDANCE:g} for priors with a null class" in text
    assert f"(default: {DEFAULT_AUTOGUIDANCE:g} when guided with a weak prior" in text


def test_help_states_the_default_guidance_schedule(cli):
    from vqgen.inpainting import INPAINT_GUIDANCE_SCHEDULE
    from vqgen.sampling import DEFAULT_GUIDANCE_SCHEDULE

    for cmd, schedule in (("sample", DEFAULT_GUIDANCE_SCHEDULE), ("inpaint", INPAINT_GUIDANCE_SCHEDULE)):
        text = " ".join(cli(cmd, "--help").stdout.replace("│", " ").split())
        assert f"(default: {schedule})" in text, cmd


def test_linear_schedule_rises_with_the_step_and_keeps_the_mean_weight():
    from priors.sampling_utils import guidance_weight

    for steps in (1, 2, 64):
        w = [guidance_weight(3.0, "linear", s, steps) for s in range(1, steps + 1)]
        assert sum(w) / steps == pytest.approx(3.0)  # W means the same average strength for both schedules
        assert all(a < b for a, b in zip(w, w[1:]))
        assert all(guidance_weight(3.0, "constant", s, steps) == 3.0 for s in range(1, steps + 1))
    assert guidance_weight(3.0, "linear", 1, 64) == pytest.approx(6 / 65)  # the first code: nearly unguided


def test_sample_guidance_schedule(cli, trained_vqvae, priors, tmp_path):
    """--guidance-schedule linear changes the draw at W > 0, is reported, and is plain sampling at W = 0."""
    from vqgen.codes import read_codes
    from vqgen.sampling import DEFAULT_GUIDANCE_SCHEDULE

    vq = trained_vqvae["run"] / "vqvae.safetensors"
    w = priors["null"][0] / "prior.safetensors"
    base = ["sample", "--prior", w, "--vqvae", vq, "--n", "16", "--nrow", "2", "--json"]
    grids, reported = {}, {}
    for name, extra in (("default", []), ("constant", ["--guidance-schedule", "constant"]),
                        ("linear", ["--guidance-schedule", "linear"])):
        res = cli(*base, "--guidance", "8", *extra, "--out", tmp_path / f"{name}.png",
                  "--save-codes", tmp_path / f"{name}.safetensors")
        reported[name] = json.loads(res.stdout)["guidance_schedule"]
        grids[name] = read_codes(tmp_path / f"{name}.safetensors").codes
    assert reported == {"default": DEFAULT_GUIDANCE_SCHEDULE, "constant": "constant", "linear": "linear"}
    assert torch.equal(grids["default"], grids[DEFAULT_GUIDANCE_SCHEDULE])
    assert not torch.equal(grids["constant"], grids["linear"])
    for name, extra in (("plain", []), ("plain-linear", ["--guidance-schedule", "linear"])):
        cli(*base, "--guidance", "0", *extra, "--out", tmp_path / f"{name}.png")
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "plain-linear.png").read_bytes()
