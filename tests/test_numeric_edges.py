"""Numeric options at their edges: a value no run can use is refused as misuse (exit 2, one message with the valid
range) before any memory is spent on it; a seed beyond 64 bits is used modulo 2^64, saying so, and draws as that
seed does; a temperature below float32's range samples as the coldest one float32 can hold.
"""

import json
from types import SimpleNamespace

import pytest

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def f(trained_vqvae, trained_prior, codes, tmp_path_factory):
    r = tmp_path_factory.mktemp("edges")
    return SimpleNamespace(root=r, vq=trained_vqvae["run"] / "vqvae.safetensors", prior=trained_prior, codes=codes,
                           data=make_images(r / "data", per_class=2))


def _vq(*more, run=lambda f: f.root / "run"):
    return lambda f: ["train-vqvae", "--data", f.data, "--out", run(f), "--steps", "1", "--batch-size", "4",
                      "--no-amp", "--threads", "1", *TINY_VQVAE_ARGS, *more]


def _prior(*more):
    return lambda f: ["train-prior", "--codes", f.codes, "--out", f.root / "run", "--steps", "1", "--batch-size", "4",
                      "--no-amp", "--threads", "1", *TINY_PRIOR, *more]


def _sample(*more, out="s.png"):
    return lambda f: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2", "--out", f.root / out, *more]


def _inpaint(*more, out="s.png"):
    return lambda f: ["inpaint", "--prior", f.prior, "--vqvae", f.vq, f.data / "cats", "--region", "bottom", "--n", "2",
                      "--out", f.root / out, *more]


# id: (args, phrase of the usage message)
REFUSED = {
    "--epochs inf": (_vq("--epochs", "inf"), "--epochs must be a finite positive number, got inf"),
    "--epochs nan": (_vq("--epochs", "nan"), "--epochs must be a finite positive number, got nan"),
    "--hidden 1": (_vq("--hidden", "1"), "--hidden must be"),
    "--codebook-size 2^31 - 1": (_vq("--codebook-size", str(2**31 - 1)), "--codebook-size must be from 2 to 1,048,576"),
    "--image-size 10^6": (_vq("--image-size", str(10**6)), "--image-size must be a multiple of 4 from 4 to 1024"),
    "--hidden 10^5": (_vq("--hidden", str(10**5)), "parameters"),
    "-o channels=1000000": (_prior("-o", "channels=1000000"), "-o channels=1000000"),
    "--n 10^12": (_sample("--n", str(10**12)), "--n 1000000000000 would hold"),
    "--guidance 1e300": (_sample("--guidance", "1e300"), "--guidance must be between 0 and 1000"),
    "--temperature -1": (_sample("--temperature", "-1"), "--temperature must be positive"),
    "inpaint --n 10^12": (lambda f: ["inpaint", "--prior", f.prior, "--vqvae", f.vq, f.data / "cats", "--region",
                                     "bottom", "--n", str(10**12), "--out", f.root / "i.png"], "--n 1000000000000 would hold"),
    "inpaint --temperature nan": (lambda f: ["inpaint", "--prior", f.prior, "--vqvae", f.vq, f.data / "cats", "--region",
                                             "bottom", "--temperature", "nan", "--out", f.root / "i.png"],
                                  "--temperature must be a finite positive number"),
    "--fid 10^12": (lambda f: ["evaluate", "--vqvae", f.vq, "--prior", f.prior, "--data", f.data, "--fid", str(10**12)],
                    "--fid 1000000000000 would hold"),
}


@pytest.mark.parametrize("row", list(REFUSED))
def test_an_option_out_of_range_is_misuse(f, monkeypatch, row):
    from vqgen import train

    monkeypatch.setattr(train.Trainer, "fit", lambda *a, **kw: pytest.fail("training began"))
    make_args, phrase = REFUSED[row]
    line = one_error_line(invoke(*make_args(f)), 2)
    assert phrase in line, line
    assert not (f.root / "run").exists()


# id: (args, the same draw spelled plainly, phrase of the output)
ACCEPTED = {
    "--seed 2^64 + 5": (_sample("--seed", str(2**64 + 5)), _sample("--seed", "5", out="t.png"),
                        "using it modulo 2^64, 5"),
    "--seed -1": (_sample("--seed", "-1"), _sample("--seed", str(2**64 - 1), out="t.png"), "modulo 2^64"),
    "--seed of nanoseconds": (_sample("--seed", str(1_764_640_000_123_456_789_000)),
                              _sample("--seed", str(1_764_640_000_123_456_789_000 % 2**64), out="t.png"),
                              "modulo 2^64"),
    "inpaint --seed 2^64 + 3": (_inpaint("--seed", str(2**64 + 3)), _inpaint("--seed", "3", out="t.png"),
                                "using it modulo 2^64, 3"),
    "--temperature 1e-40": (_sample("--temperature", "1e-40"), _sample("--temperature", "1.1754943508222875e-38",
                                                                       out="t.png"), ""),
    "--nrow 10^12": (_sample("--nrow", str(10**12)), _sample("--nrow", "2", out="t.png"), ""),
}


@pytest.mark.parametrize("row", list(ACCEPTED))
def test_an_edge_value_that_has_a_meaning_is_used(f, row):
    edge, plain, phrase = ACCEPTED[row]
    res = ok(invoke(*edge(f)))
    assert phrase in res.output
    ok(invoke(*plain(f)))
    assert (f.root / "s.png").read_bytes() == (f.root / "t.png").read_bytes()


def test_a_training_seed_beyond_64_bits_is_stored_reduced(f, tmp_path):
    from vqgen.run import read_run_meta

    res = ok(invoke(*_vq("--seed", str(2**64 + 7), run=lambda f: tmp_path / "run")(f)))
    assert "using it modulo 2^64, 7" in res.output
    assert json.loads(read_run_meta(tmp_path / "run")["train_config"])["seed"] == 7
