"""Files handed in are untrusted: only an allow-list of raster formats is decoded (a PostScript file named .png
never reaches Ghostscript), a weights file's config is checked against its tensor header before any module is
built (a 47 KB file claiming a huge network costs nothing), NaN or infinite weights are refused at load, FIFOs
and devices are refused without being opened, a codes file claiming an absurd K is refused, and names with
terminal control characters are printed escaped.
"""

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import invoke, make_images, ok, one_error_line, tensors_and_meta

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def f(trained_vqvae, trained_prior, codes, tmp_path_factory):
    r = tmp_path_factory.mktemp("untrusted")
    ns = SimpleNamespace(root=r, vq=trained_vqvae["run"] / "vqvae.safetensors", prior=trained_prior, codes=codes,
                         data=make_images(r / "data", classes=("a",), per_class=3))
    vt, vm = tensors_and_meta(ns.vq)
    cfg = json.loads(vm["config"])
    for name, change in {"huge": {"hidden": 100_000}, "deep": {"res_blocks": 10**9}, "wide": {"hidden": 64}}.items():
        save_file(vt, str(r / f"{name}.safetensors"), metadata={**vm, "config": json.dumps({**cfg, **change})})
    for name, value in {"nan": float("nan"), "inf": float("inf")}.items():
        bad = {k: v.clone() for k, v in vt.items()}
        bad["decoder.net.0.bias"].view(-1)[0] = value
        save_file(bad, str(r / f"{name}.safetensors"), metadata=vm)
    pt, pm = tensors_and_meta(ns.prior)
    pcfg = json.loads(pm["config"])
    save_file(pt, str(r / "prior_huge.safetensors"), metadata={**pm, "config": json.dumps({**pcfg, "channels": 10**6})})
    bad = {k: v.clone() for k, v in pt.items()}
    next(v for v in bad.values() if v.is_floating_point()).view(-1)[0] = float("-inf")
    save_file(bad, str(r / "prior_inf.safetensors"), metadata=pm)
    ct, cm = tensors_and_meta(codes)
    save_file({**ct, "codes": ct["codes"].int()}, str(r / "codes_bigk.safetensors"),
              metadata={**cm, "num_codes": str(2**31 - 1)})
    os.mkfifo(r / "fifo.safetensors")
    (r / "postscript").mkdir()
    make_images(r / "postscript", classes=("",), per_class=2)
    (r / "postscript" / "evil.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (r / "names").mkdir()
    make_images(r / "names", classes=("",), per_class=2)
    (r / "names" / "\x1b[2Jgone.png").write_text("not an image")
    with open(os.fsencode(r / "names") + b"/\xff\xfe.png", "w") as bad:  # a name that is not UTF-8
        bad.write("not an image either")
    return ns


def _recon(vq, data=lambda f: f.data):
    return lambda f: ["reconstruct", "--vqvae", vq(f), data(f), "--out", f.root / "out.png", "--json"]


def _sample(prior):
    return lambda f: ["sample", "--prior", prior(f), "--vqvae", f.vq, "--n", "2", "--out", f.root / "out.png"]


def _inpaint(mask):
    return lambda f: ["inpaint", "--prior", f.prior, "--vqvae", f.vq, f.data, "--region", mask(f), "--out",
                      f.root / "out.png"]


# id: (args, exit code, phrase of the error line, or (exit 0) of a warning)
ROWS = {
    "config claims a huge VQ-VAE": (_recon(lambda f: f.root / "huge.safetensors"), 1,
                                    "its VQ-VAE config describes a model far larger than the 27 tensors the file holds"),
    "config claims 10^9 residual blocks": (_recon(lambda f: f.root / "deep.safetensors"), 1,
                                           "describes a model far larger than"),
    "config does not fit the shapes": (_recon(lambda f: f.root / "wide.safetensors"), 1,
                                       "weights do not match their config (the VQ-VAE it describes needs "
                                       "encoder.net.0.weight of shape [32, 3, 4, 4], the file holds [8, 3, 4, 4])"),
    "prior config claims a huge prior": (_sample(lambda f: f.root / "prior_huge.safetensors"), 1,
                                         "its pixelcnn prior config describes a model far larger than the"),
    "NaN in VQ-VAE weights": (_recon(lambda f: f.root / "nan.safetensors"), 1,
                              "tensor decoder.net.0.bias holds NaN or infinite values"),
    "Inf in VQ-VAE weights": (_recon(lambda f: f.root / "inf.safetensors"), 1, "holds NaN or infinite values"),
    "-Inf in prior weights": (_sample(lambda f: f.root / "prior_inf.safetensors"), 1, "holds NaN or infinite values"),
    "FIFO as --vqvae": (_recon(lambda f: f.root / "fifo.safetensors"), 1,
                        "is not a regular file (a FIFO, device or socket)"),
    "FIFO as --codes": (lambda f: ["train-prior", "--codes", f.root / "fifo.safetensors", "--out", f.root / "run"], 1,
                        "is not a regular file"),
    "device as --prior": (_sample(lambda f: "/dev/zero"), 1, "/dev/zero is not a regular file"),
    "codes claim K = 2^31 - 1": (lambda f: ["train-prior", "--codes", f.root / "codes_bigk.safetensors", "--out",
                                            f.root / "run"], 1, "metadata num_codes is 2147483647, outside the 2 to"),
    "PostScript as the inpaint mask": (_inpaint(lambda f: f.root / "postscript" / "evil.png"), 1,
                                       "cannot read the mask image"),
    "FIFO as the inpaint mask": (_inpaint(lambda f: f.root / "fifo.safetensors"), 2, "or a mask image file"),
    "PostScript named .png": (_recon(lambda f: f.vq, lambda f: f.root / "postscript"), 0,
                              "skipped {root}/postscript/evil.png: not an image in a format vqgen reads (PNG, JPEG"),
    "escape sequence in a name": (_recon(lambda f: f.vq, lambda f: f.root / "names"), 0,
                                  "skipped {root}/names/\\x1b[2Jgone.png: not an image"),
    "name that is not UTF-8": (_recon(lambda f: f.vq, lambda f: f.root / "names"), 0,
                               "skipped {root}/names/\\xff\\xfe.png: not an image"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_untrusted_files(f, monkeypatch, row):
    from PIL import EpsImagePlugin

    from vqgen import vqvae

    make_args, code, phrase = ROWS[row]
    built = []  # the devices VQ-VAEs are built on: only "meta" (no memory) before a file is found to fit
    real_init = vqvae.VQVAE.__init__
    monkeypatch.setattr(vqvae.VQVAE, "__init__", lambda self, c: (built.append(str(torch.empty(0).device)),
                                                                     real_init(self, c))[1])
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **kw: pytest.fail("Ghostscript was run"))
    signal.alarm(60)  # a FIFO that is opened blocks: fail, do not hang
    try:
        res = invoke(*make_args(f))
    finally:
        signal.alarm(0)
    phrase = phrase.format(root=f.root)
    if code:
        line = one_error_line(res, code)
        assert phrase in line, line
        if "VQ-VAE config" in phrase:
            assert built and set(built) == {"meta"}
    else:
        ok(res)
        assert "\x1b" not in res.output and phrase in res.output, res.output
        assert json.loads(res.stdout)["images"] == 2
