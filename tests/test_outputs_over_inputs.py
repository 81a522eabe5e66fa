"""No command writes over, or into, one of its inputs, and no two outputs of a command are one file: every command
refuses such an output before any work (vqgen.paths.check_outputs), however the path is spelled (`~`, `..`, a
symlink, a hard link); images whose PNG names would collide keep their extension.
"""

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, one_error_line, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def f(trained_vqvae, trained_prior, codes, tmp_path, monkeypatch):
    """Copies of a VQ-VAE, a prior, codes and a flat folder of images under tmp_path/in (its HOME too)."""
    inp = tmp_path / "in"
    images = make_images(tmp_path / "in", classes=("images",), per_class=3)
    ns = SimpleNamespace(root=inp, images=images / "images", vq=inp / "vq.safetensors",
                         prior=inp / "prior.safetensors", codes=inp / "codes.safetensors", out=tmp_path / "out")
    shutil.copy(trained_vqvae["run"] / "vqvae.safetensors", ns.vq)
    shutil.copy(trained_prior, ns.prior)
    shutil.copy(codes, ns.codes)
    ns.img = ns.images / "000.png"
    ns.mask = inp / "mask.png"
    Image.new("L", (16, 16), 255).save(ns.mask)
    ns.out.mkdir()
    os.symlink(ns.vq, ns.out / "link.safetensors")
    os.link(ns.vq, ns.out / "hard.safetensors")
    monkeypatch.setenv("HOME", str(inp))
    return ns


def _encode(out):
    return lambda f: ["encode", "--vqvae", f.vq, "--data", f.images, "--out", out(f)]


def _run_with(name: str, src):
    """A run folder out/run holding a copy of an input under a run file's name."""
    def make(f):
        (f.out / "run").mkdir(exist_ok=True)
        shutil.copy(src(f), f.out / "run" / name)
        return f.out / "run" / name
    return make


def _inpaint(out, *more, inputs=lambda f: f.img):
    region = () if "--region" in more else ("--region", "bottom")
    return lambda f: ["inpaint", "--prior", f.prior, "--vqvae", f.vq, inputs(f), *region, "--out", out(f),
                      *(str(m).format(**vars(f)) for m in more)]


# id: (args from the files, phrase of the one error line)
ROWS = {
    "reconstruct DIR --out DIR": (lambda f: ["reconstruct", "--vqvae", f.vq, f.images, "--out", f.images],
                                  "--out {images} is inside the INPUTS folder {images}"),
    "reconstruct DIR --out DIR/sub": (lambda f: ["reconstruct", "--vqvae", f.vq, f.images, "--out", f.images / "r"],
                                      "is inside the INPUTS folder"),
    "reconstruct image --out that image": (lambda f: ["reconstruct", "--vqvae", f.vq, f.img, "--out", f.img],
                                           "would overwrite the INPUTS file"),
    "reconstruct image --out its own folder": (lambda f: ["reconstruct", "--vqvae", f.vq, f.img, "--out", f.images],
                                               "would overwrite the INPUTS file {img}"),
    "encode --out the --vqvae": (_encode(lambda f: f.vq), "would overwrite the --vqvae file"),
    "encode --out a symlink to the --vqvae": (_encode(lambda f: f.out / "link.safetensors"),
                                              "would overwrite the --vqvae file"),
    "encode --out a hard link to the --vqvae": (_encode(lambda f: f.out / "hard.safetensors"),
                                                "would overwrite the --vqvae file"),
    "encode --out=~/ the --vqvae": (_encode(lambda f: "~/vq.safetensors"), "would overwrite the --vqvae file"),
    "encode --out through .. onto the --vqvae": (_encode(lambda f: f.images / ".." / "vq.safetensors"),
                                                 "would overwrite the --vqvae file"),
    "encode --out inside the --data folder": (_encode(lambda f: f.images / "codes.safetensors"),
                                              "is inside the --data folder"),
    "sample --save-codes the --prior": (lambda f: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2", "--out",
                                                   f.out / "s.png", "--save-codes", f.prior],
                                        "--save-codes {prior} would overwrite the --prior file"),
    "sample --out and --save-codes one file": (lambda f: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                                          "--out", f.out / "s.png", "--save-codes", f.out / "s.png"],
                                               "are the same file"),
    "evaluate --json the --vqvae": (lambda f: ["evaluate", "--vqvae", f.vq, "--data", f.images, "--json", f.vq],
                                    "--json {vq} would overwrite the --vqvae file"),
    "evaluate --json the --prior": (lambda f: ["evaluate", "--vqvae", f.vq, "--prior", f.prior, "--data", f.images,
                                               "--json", f.prior], "would overwrite the --prior file"),
    "train-vqvae --init-from a file of its --out": (
        lambda f: ["train-vqvae", "--data", f.images, "--init-from", _run_with("vqvae.safetensors", lambda f: f.vq)(f),
                   "--out", f.out / "run", "--overwrite", *TINY_VQVAE_ARGS], "would overwrite the --init-from file"),
    "train-prior --codes a file of its --out": (
        lambda f: ["train-prior", "--codes", _run_with("prior.safetensors", lambda f: f.codes)(f), "--out",
                   f.out / "run", *TINY_PRIOR], "would overwrite the --codes file"),
    "inpaint --out an input image": (_inpaint(lambda f: f.img), "--out {img} would overwrite the INPUTS file"),
    "inpaint --out inside an input folder": (_inpaint(lambda f: f.images / "done.png", inputs=lambda f: f.images),
                                             "is inside the INPUTS folder"),
    "inpaint --out the --region mask": (_inpaint(lambda f: f.mask, "--region", "{mask}"),
                                        "would overwrite the --region file"),
    "inpaint --save-codes the --prior": (_inpaint(lambda f: f.out / "i.png", "--save-codes", "{prior}"),
                                         "--save-codes {prior} would overwrite the --prior file"),
    "inpaint --out and --save-codes one file": (_inpaint(lambda f: f.out / "i.png", "--save-codes", "{out}/i.png"),
                                                "are the same file"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_an_output_over_an_input_is_refused_before_any_work(f, monkeypatch, row):
    make_args, phrase = ROWS[row]
    args = make_args(f)
    inputs, outputs = snapshot(f.root), snapshot(f.out)

    def no_work(*a, **kw):
        raise AssertionError("the work began")

    # the work: running a model (reading the input images may come first: their names are the outputs' names)
    for name in ("vqgen.commands.stage1.SearchEncoder", "vqgen.commands.evaluate.SearchEncoder",
                 "vqgen.commands.sample.draw_samples", "vqgen.commands.inpaint.inpaint_images",
                 "vqgen.commands.stage1.Trainer", "vqgen.commands.stage2.Trainer"):
        monkeypatch.setattr(name, no_work)
    line = one_error_line(invoke(*args))
    assert phrase.format(images=f.images, img=f.img, vq=f.vq, prior=f.prior) in line, line
    assert snapshot(f.root) == inputs and snapshot(f.out) == outputs  # nothing written, nothing replaced


def test_images_whose_png_names_collide_keep_their_extension(trained_vqvae, tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    Image.new("RGB", (16, 16), "red").save(data / "x.png")
    Image.new("RGB", (16, 16), "blue").save(data / "x.jpg", quality=95)
    Image.new("RGB", (16, 16), "green").save(data / "y.bmp")
    res = ok(invoke("reconstruct", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", data, "--out",
                    tmp_path / "recon", "--json"))
    assert '"images": 3' in res.stdout
    assert sorted(p.name for p in (tmp_path / "recon").iterdir()) == ["x.jpg.png", "x.png", "y.png"]
    red, blue = (torch.from_numpy(np.array(Image.open(tmp_path / "recon" / n))) for n in ("x.png", "x.jpg.png"))
    assert not torch.equal(red, blue)  # each is the reconstruction of its own image


def test_png_names():
    from vqgen.errors import ConfigError
    from vqgen.paths import png_names

    assert png_names(["cat/001.jpg", "cat/002.png", "dog/a"]) == ["cat/001.png", "cat/002.png", "dog/a.png"]
    assert png_names(["x.jpeg", "x.jpg"]) == ["x.jpeg.png", "x.jpg.png"]
    with pytest.raises(ConfigError, match="x.jpg and x.jpg.png would both be written as x.jpg.png"):
        png_names(["x.jpg", "x.png", "x.jpg.png"])
