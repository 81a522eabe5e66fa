"""Bad input gets one clear line and exit 1 (2 for misuse of an option), no traceback, and leaves nothing
half-written; no file handed in is ever unpickled; unreadable or small images inside a set are not errors.
"""

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, tensors_and_meta

pytestmark = pytest.mark.usefixtures("one_thread")


class _Boobytrap:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.fixture(scope="module")
def f(trained_vqvae, codes, tmp_path_factory):
    """Good and bad files for the rows below (never modified by them)."""
    from safetensors.torch import save_file

    from vqgen.checkpoint import FORMAT_VERSION, KIND_CODES, KIND_PRIOR
    from vqgen.vqvae import VQVAE, VQVAEConfig, load_vqvae, save_vqvae

    r = tmp_path_factory.mktemp("bad")
    ns = SimpleNamespace(root=r, data=trained_vqvae["data"], vq=trained_vqvae["run"] / "vqvae.safetensors",
                         vq_run=trained_vqvae["run"], codes=codes, pwned=r / "pwned")
    ns.prior_run = r / "prior_run"
    ok(invoke("train-prior", "--codes", codes, *TINY_PRIOR, "--out", ns.prior_run, "--steps", "2",
                "--batch-size", "8"))
    ns.prior = ns.prior_run / "prior.safetensors"
    ns.state = ns.prior_run / "checkpoint.safetensors"

    raw = ns.vq.read_bytes()
    ns.random = r / "random.safetensors"
    ns.random.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(3),
                                              dtype=torch.uint8).tolist()))
    ns.empty = r / "empty.safetensors"
    ns.empty.write_bytes(b"")
    ns.truncated = r / "truncated.safetensors"
    ns.truncated.write_bytes(raw[: len(raw) * 2 // 3])
    ns.truncated_prior = r / "truncated_prior.safetensors"
    ns.truncated_prior.write_bytes(ns.prior.read_bytes()[:-10])
    ns.png = r / "picture.safetensors"
    Image.new("RGB", (8, 8), "red").save(r / "picture.png")
    shutil.copy(r / "picture.png", ns.png)
    ns.pickle = r / "weights.safetensors"
    ns.pickle.write_bytes(pickle.dumps(_Boobytrap(ns.pwned)))
    ns.pickle0 = r / "weights.pt"
    ns.pickle0.write_bytes(pickle.dumps(_Boobytrap(ns.pwned), protocol=0))
    ns.torch_save = r / "model.bin"
    torch.save({"w": torch.zeros(2)}, ns.torch_save)

    model, _ = load_vqvae(ns.vq)
    cfg = model.config.to_dict()
    ns.vq_k32 = r / "vq_k32.safetensors"
    save_vqvae(VQVAE(VQVAEConfig(**{**cfg, "num_codes": 32})), ns.vq_k32)
    ns.vq_g8 = r / "vq_g8.safetensors"
    save_vqvae(VQVAE(VQVAEConfig(**{**cfg, "image_size": 32})), ns.vq_g8)
    ns.vq_other = r / "vq_other.safetensors"  # same K and grid, other weights: another hash
    with torch.no_grad():
        model.decoder.net[0].bias.add_(0.01)
    save_vqvae(model, ns.vq_other)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "vqgen.vqvae", "format_version": FORMAT_VERSION, "vqgen_version": "0.1.0"}
    ns.vq_badcfg = r / "vq_badcfg.safetensors"
    save_file(sd, str(ns.vq_badcfg), metadata={**meta, "config": json.dumps({**cfg, "layers": 3})})
    ns.vq_nocfg = r / "vq_nocfg.safetensors"
    save_file(sd, str(ns.vq_nocfg), metadata=meta)
    ns.vq_shape = r / "vq_shape.safetensors"  # config says K=32, tensors hold K=16
    save_file(sd, str(ns.vq_shape), metadata={**meta, "config": json.dumps({**cfg, "num_codes": 32})})
    ns.vq_v2 = r / "vq_v2.safetensors"
    save_file(sd, str(ns.vq_v2), metadata={**meta, "format_version": "2", "config": json.dumps(cfg)})

    pt, pm = tensors_and_meta(ns.prior)
    ns.prior_unknown = r / "prior_unknown.safetensors"
    save_file(pt, str(ns.prior_unknown), metadata={**pm, "prior": "wavenet"})
    ns.prior_badcfg = r / "prior_badcfg.safetensors"
    save_file(pt, str(ns.prior_badcfg), metadata={**pm, "config": json.dumps({**json.loads(pm["config"]),
                                                                               "layers": 5})})
    assert pm["format"] == KIND_PRIOR

    ct, cm = tensors_and_meta(codes)
    ns.codes_oob = r / "codes_oob.safetensors"
    bad = ct["codes"].clone()
    bad[3, 1, 2] = 16
    save_file({**ct, "codes": bad}, str(ns.codes_oob), metadata=cm)
    ns.codes_k32 = r / "codes_k32.safetensors"
    save_file(ct, str(ns.codes_k32), metadata={**cm, "num_codes": "32"})
    ns.codes_g2 = r / "codes_g2.safetensors"
    save_file({**ct, "codes": ct["codes"][:, :2, :2].contiguous()}, str(ns.codes_g2),
              metadata={**cm, "height": "2", "width": "2"})
    assert cm["format"] == KIND_CODES

    ns.empty_dir = r / "empty_dir"
    ns.empty_dir.mkdir()
    ns.not_images = r / "not_images"
    ns.not_images.mkdir()
    for name in ("a.png", "b.jpg", "notes.txt"):
        (ns.not_images / name).write_text("this is not an image\n")
    ns.a_file = r / "file.txt"
    ns.a_file.write_text("a regular file\n")
    ns.run_foreign = r / "run_foreign"
    ns.run_foreign.mkdir()
    shutil.copy(ns.vq, ns.run_foreign / "checkpoint.safetensors")
    ns.run_pickle = r / "run_pickle"
    ns.run_pickle.mkdir()
    shutil.copy(ns.pickle, ns.run_pickle / "checkpoint.safetensors")
    return ns


def _reconstruct(vq):
    return lambda f, t: ["reconstruct", "--vqvae", vq(f), f.data / "cats", "--out", t / "out.png"]


def _sample(prior, vq, *more):
    return lambda f, t: ["sample", "--prior", prior(f), "--vqvae", vq(f), "--n", "2", "--out", t / "out.png", *more]


def _train_prior(codes, *more):
    return lambda f, t: ["train-prior", "--codes", codes(f), *TINY_PRIOR, "--out", t / "out", "--steps", "2", *more]


def _train_vqvae(data, *more):
    return lambda f, t: ["train-vqvae", "--data", data(f), "--out", t / "out", "--steps", "2", *TINY_VQVAE_ARGS,
                         *more]


def _resume(cmd, run):
    return lambda f, t: [cmd, "--out", run(f, t), "--resume"]


VQ, PRIOR, CODES = (lambda f: f.vq), (lambda f: f.prior), (lambda f: f.codes)
RESTRICT = "readonly"  # rows whose output folder is made unwritable (tests run as root: monkeypatched)

# id: (args from (files, tmp_path), exit code, phrase the output must contain)
ROWS = {
    # files that are not safetensors, or not the kind asked for, as --vqvae
    "vqvae: random bytes": (_reconstruct(lambda f: f.random), 1, "not a valid safetensors file"),
    "vqvae: empty file": (_reconstruct(lambda f: f.empty), 1, "is empty or truncated (0 bytes)"),
    "vqvae: truncated file": (_reconstruct(lambda f: f.truncated), 1, "is truncated"),
    "vqvae: PNG renamed .safetensors": (_reconstruct(lambda f: f.png), 1, "not a valid safetensors file"),
    "vqvae: pickle": (_reconstruct(lambda f: f.pickle), 1, "looks like a pickle"),
    "vqvae: protocol-0 pickle": (_reconstruct(lambda f: f.pickle0), 1, "not a valid safetensors file"),
    "vqvae: torch.save file": (_reconstruct(lambda f: f.torch_save), 1, "looks like a pickle / torch.save file"),
    "vqvae: a prior given as VQ-VAE": (_reconstruct(PRIOR), 1,
                                       "is a prior weights file, but a VQ-VAE weights file is needed here"),
    "vqvae: codes given as VQ-VAE": (_reconstruct(CODES), 1, "is an index-grid (codes) file, but a VQ-VAE"),
    "vqvae: training state given as VQ-VAE": (_reconstruct(lambda f: f.state), 1, "is a training-state file"),
    "vqvae: missing file": (_reconstruct(lambda f: f.root / "nope.safetensors"), 1, "no such file"),
    "vqvae: a folder": (_reconstruct(lambda f: f.root), 1, "is a folder"),
    "vqvae: unknown config field": (_reconstruct(lambda f: f.vq_badcfg), 1,
                                    "metadata field 'config' has 'layers', which this vqgen"),
    "vqvae: no config": (_reconstruct(lambda f: f.vq_nocfg), 1, "has no 'config' metadata field"),
    "vqvae: config does not fit tensors": (_reconstruct(lambda f: f.vq_shape), 1, "weights do not match their config"),
    "vqvae: format version": (_reconstruct(lambda f: f.vq_v2), 1, "has format_version '2'"),
    "encode: a prior given as VQ-VAE": (lambda f, t: ["encode", "--vqvae", f.prior, "--data", f.data, "--out",
                                                      t / "out.safetensors"], 1, "is a prior weights file"),
    # --prior
    "prior: random bytes": (_sample(lambda f: f.random, VQ), 1, "not a valid safetensors file"),
    "prior: pickle": (_sample(lambda f: f.pickle, VQ), 1, "looks like a pickle"),
    "prior: truncated": (_sample(lambda f: f.truncated_prior, VQ), 1, "is truncated"),
    "prior: a VQ-VAE given as prior": (_sample(VQ, VQ), 1,
                                       "is a VQ-VAE weights file, but a prior weights file is needed here"),
    "prior: codes given as prior": (_sample(CODES, VQ), 1, "is an index-grid (codes) file, but a prior"),
    "prior: unknown prior name in file": (_sample(lambda f: f.prior_unknown, VQ), 1,
                                          "unknown prior 'wavenet'; known priors: "),
    "prior: config does not fit tensors": (_sample(lambda f: f.prior_badcfg, VQ), 1, "weights do not match"),
    "evaluate: pickle as prior": (lambda f, t: ["evaluate", "--vqvae", f.vq, "--prior", f.pickle, "--data", f.data,
                                                "--json", t / "out.json"], 1, "looks like a pickle"),
    # --codes
    "codes: pickle": (_train_prior(lambda f: f.pickle), 1, "looks like a pickle"),
    "codes: a VQ-VAE given as codes": (_train_prior(VQ), 1, "is a VQ-VAE weights file, but an index-grid"),
    "codes: out of range": (_train_prior(lambda f: f.codes_oob), 1, "outside [0, 16) for K=16"),
    "codes: empty file": (_train_prior(lambda f: f.empty), 1, "is empty"),
    # K, grid shape, hash
    "K of prior and VQ-VAE differ": (_sample(PRIOR, lambda f: f.vq_k32), 1,
                                     "the prior models K=16 codes but the VQ-VAE has K=32"),
    "grid of prior and VQ-VAE differ": (_sample(PRIOR, lambda f: f.vq_g8), 1,
                                        "the prior models 4x4 grids but the VQ-VAE has 8x8"),
    "evaluate: K of prior and VQ-VAE differ": (lambda f, t: ["evaluate", "--vqvae", f.vq_k32, "--prior", f.prior,
                                                             "--data", f.data, "--json", t / "out.json"], 1,
                                               "the prior models K=16 codes but the VQ-VAE has K=32"),
    "prior made from another VQ-VAE": (_sample(PRIOR, lambda f: f.vq_other), 1,
                                       "the prior was trained on codes of another VQ-VAE"),
    "K of val codes differs": (_train_prior(CODES, "--val-codes", "x"), 1, "does not match"),
    "grid of val codes differs": (_train_prior(CODES, "--val-codes", "y"), 1, "does not match"),
    # data
    "data: empty folder": (_train_vqvae(lambda f: f.empty_dir), 1, "is empty: put images in it"),
    "data: missing path": (_train_vqvae(lambda f: f.root / "no_such_folder"), 1, "no such file or folder"),
    "data: folder of non-images": (_train_vqvae(lambda f: f.not_images), 1, "no readable images in"),
    "encode: missing data": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.root / "nothing", "--out",
                                           t / "out.safetensors"], 1, "no such file or folder"),
    "reconstruct: not an image": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.a_file, "--out", t / "out.png"], 1,
                                  "cannot read image"),
    # CLI misuse: exit 2
    "sample --n 0": (_sample(PRIOR, VQ, "--n", "0"), 2, "must be positive"),
    "sample --n -3": (_sample(PRIOR, VQ, "--n", "-3"), 2, "must be positive"),
    "sample --batch-size 0": (_sample(PRIOR, VQ, "--batch-size", "0"), 2, "must be positive"),
    "sample --temperature 0": (_sample(PRIOR, VQ, "--temperature", "0"), 2, "--temperature"),
    "sample --top-k 0": (_sample(PRIOR, VQ, "--top-k", "0"), 2, "--top-k must be positive, got 0"),
    "sample --top-p 1.5": (_sample(PRIOR, VQ, "--top-p", "1.5"), 2, "--top-p must be in (0, 1], got 1.5"),
    "train-vqvae --batch-size 0": (_train_vqvae(lambda f: f.data, "--batch-size", "0"), 2, "must be positive"),
    "train-vqvae --batch-size -8": (_train_vqvae(lambda f: f.data, "--batch-size", "-8"), 2, "must be positive"),
    "train-vqvae --steps 0": (_train_vqvae(lambda f: f.data, "--steps", "0"), 2, "must be positive"),
    "train-vqvae --steps -1": (_train_vqvae(lambda f: f.data, "--steps", "-1"), 2, "must be positive"),
    "train-prior --batch-size 0": (_train_prior(CODES, "--batch-size", "0"), 2, "must be positive"),
    "train-prior --steps 0": (_train_prior(CODES, "--steps", "0"), 2, "must be positive"),
    "reconstruct --batch-size -1": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out", t / "out.png",
                                                  "--batch-size", "-1"], 2, "must be positive"),
    "encode --batch-size 0": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                            t / "out.safetensors", "--batch-size", "0"], 2, "must be positive"),
    "evaluate --batch-size 0": (lambda f, t: ["evaluate", "--vqvae", f.vq, "--data", f.data, "--json",
                                              t / "out.json", "--batch-size", "0"], 2, "must be positive"),
    # names
    "unknown prior name": (_train_prior(CODES, "--prior", "wavenet"), 1,
                           "unknown prior 'wavenet'; known priors: "),
    "unknown class": (_sample(PRIOR, VQ, "--class", "zebra"), 1, "unknown class 'zebra'; known classes: cats, dogs"),
    "class index out of range": (_sample(PRIOR, VQ, "--class", "7"), 1, "known classes: cats, dogs"),
    "--device cuda without CUDA": (_sample(PRIOR, VQ, "--device", "cuda"), 1, "CUDA is not available"),
    "train --device cuda without CUDA": (_train_vqvae(lambda f: f.data, "--device", "cuda:0"), 1,
                                         "CUDA is not available"),
    # where output goes
    "sample: missing parent folder": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                                    "--out", t / "missing" / "out.png"], 1, "does not exist"),
    "sample: parent is a file": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                               "--out", f.a_file / "out.png"], 1, "cannot write"),
    "sample: output folder is a file": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                                      "--out", f.a_file], 1, "it is a file"),
    "sample: --save-codes under a file": (_sample(PRIOR, VQ, "--save-codes", "z"), 1, "cannot write"),
    "sample: read-only folder": (lambda f, t: ["sample", "--prior", f.prior, "--vqvae", f.vq, "--n", "2",
                                               "--out", t / RESTRICT / "out.png"], 1, "Permission denied"),
    "encode: missing parent folder": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                                    t / "missing" / "out.safetensors"], 1, "does not exist"),
    "encode: parent is a file": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                               f.a_file / "out.safetensors"], 1, "cannot write"),
    "encode: read-only folder": (lambda f, t: ["encode", "--vqvae", f.vq, "--data", f.data, "--out",
                                               t / RESTRICT / "out.safetensors"], 1, "Permission denied"),
    "reconstruct: missing parent folder": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                         t / "missing" / "out.png"], 1, "does not exist"),
    "reconstruct: folder under a file": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                       f.a_file / "recon"], 1, "cannot create folder"),
    "reconstruct: output folder is a file": (lambda f, t: ["reconstruct", "--vqvae", f.vq, f.data, "--out",
                                                           f.a_file], 1, "it is a file"),
    "evaluate: missing parent folder": (lambda f, t: ["evaluate", "--vqvae", f.vq, "--data", f.data, "--json",
                                                      t / "missing" / "out.json"], 1, "does not exist"),
    "train-vqvae: run folder under a file": (lambda f, t: ["train-vqvae", "--data", f.data, "--out",
                                                           f.a_file / "run", *TINY_VQVAE_ARGS], 1,
                                             "is a file, not a folder"),
    "train-vqvae: read-only folder": (lambda f, t: ["train-vqvae", "--data", f.data, "--out", t / RESTRICT / "run",
                                                    *TINY_VQVAE_ARGS], 1, "is not writable"),
    "train-prior: run folder under a file": (lambda f, t: ["train-prior", "--codes", f.codes, "--out",
                                                           f.a_file / "run"], 1, "is a file, not a folder"),
    # resume from folders that hold no run, or another kind of run
    "resume: missing folder": (_resume("train-vqvae", lambda f, t: t / "out"), 1, "does not exist"),
    "resume: empty folder": (_resume("train-vqvae", lambda f, t: f.empty_dir), 1,
                             "holds no checkpoint.safetensors; start a new run without --resume"),
    "resume: foreign checkpoint": (_resume("train-vqvae", lambda f, t: f.run_foreign), 1,
                                   "is not a vqgen training state"),
    "resume: pickle checkpoint": (_resume("train-vqvae", lambda f, t: f.run_pickle), 1, "looks like a pickle"),
    "resume: prior run with train-vqvae": (_resume("train-vqvae", lambda f, t: f.prior_run), 1,
                                           "resume it with vqgen train-prior"),
    "resume: VQ-VAE run with train-prior": (_resume("train-prior", lambda f, t: f.vq_run), 1,
                                            "resume it with vqgen train-vqvae"),
    "resume prior: empty folder": (_resume("train-prior", lambda f, t: f.empty_dir), 1, "holds no checkpoint"),
}
_VAL_CODES = {"x": "codes_k32", "y": "codes_g2"}


def _files(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and "_cache" not in p.parts}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_one_clear_line(f, tmp_path, monkeypatch, row):
    make_args, code, phrase = ROWS[row]
    args = [str(a) for a in make_args(f, tmp_path)]
    for i, a in enumerate(args[:-1]):  # rows that name a second crafted file by letter
        if a in ("--val-codes", "--save-codes") and args[i + 1] in ("x", "y", "z"):
            v = args[i + 1]
            args[i + 1] = str(f.a_file / "c.safetensors") if v == "z" else str(getattr(f, _VAL_CODES[v]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ro = tmp_path / RESTRICT
    ro.mkdir()
    if row.endswith("read-only folder"):  # root ignores chmod, so refuse writes under `ro` the way the OS would
        import tempfile

        real_mkstemp, real_access = tempfile.mkstemp, os.access

        def mkstemp(*a, dir=None, **kw):
            if dir is not None and Path(dir).is_relative_to(ro):
                raise PermissionError(13, "Permission denied")
            return real_mkstemp(*a, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p).is_relative_to(ro)
                            else real_access(p, m, **kw))
    shared_before = _files(f.root), _files(f.vq_run)
    res = invoke(*args)

    out = res.output
    assert res.exit_code == code, f"exit {res.exit_code}: {out}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # no other exception escaped the CLI
    assert "Traceback" not in out
    flat = " ".join(out.replace("│", " ").split())  # a usage error's box may wrap
    assert phrase in flat, out
    if code == 1:
        lines = [x for x in out.splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error: ")]
        assert len(errors) == 1 and all(x.startswith(("error: ", "warning: ")) for x in lines), out
        assert len(errors[0]) < 400
    else:
        assert "Usage: vqgen" in out
    # nothing written: no output, no run folder, no temporary, shared files untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "_cache") == [RESTRICT] and not any(ro.iterdir())
    assert not f.pwned.exists()  # the pickles were never unpickled
    assert (_files(f.root), _files(f.vq_run)) == shared_before
    assert not list(f.root.rglob("*.tmp")) and not list(f.a_file.parent.glob(".*"))


def test_pickle_under_any_name_is_never_unpickled(f, tmp_path):
    """Every place a file is loaded, a booby-trapped pickle (named anything) is refused before it is read."""
    from vqgen.checkpoint import load_tensors
    from vqgen.codes import read_codes
    from vqgen.errors import VqgenError
    from vqgen.prior_file import load_prior
    from vqgen.vqvae import load_vqvae

    for name in ("vqvae.safetensors", "prior.safetensors", "codes.safetensors", "model.pt", "checkpoint.safetensors",
                 "x"):
        for protocol in (0, 2, 5):
            p = tmp_path / name
            p.write_bytes(pickle.dumps(_Boobytrap(f.pwned), protocol=protocol))
            for load in (load_vqvae, load_prior, read_codes, lambda q: load_tensors(q, "vqgen.train-state")):
                with pytest.raises(VqgenError):
                    load(p)
    assert not f.pwned.exists()
    # and a real pickle would have fired: the trap works
    trap = tmp_path / "trap"
    pickle.loads(pickle.dumps(_Boobytrap(trap))).close()
    assert trap.exists()


def test_truncated_jpeg_is_skipped_with_a_warning(trained_vqvae, tmp_path):
    data = make_images(tmp_path / "images", classes=("a",), per_class=5)
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (data / "a" / "broken.jpg").write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "codes.safetensors"
    res = ok(invoke("encode", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", "--data", data, "--split",
                      "all", "--out", out, "--json"))
    assert "Traceback" not in res.output
    assert re.search(r"warning: skipped \S*broken\.jpg: ", res.output), res.output
    from vqgen.codes import read_codes

    assert len(read_codes(out)) == 5


def test_small_images_are_resized_with_a_note(trained_vqvae, tmp_path):
    data = make_images(tmp_path / "images", classes=("a",), per_class=3, size=8)
    res = ok(invoke("reconstruct", "--vqvae", trained_vqvae["run"] / "vqvae.safetensors", data, "--out",
                      tmp_path / "g.png", "--json"))
    assert "3 images smaller than 16x16 were upscaled" in res.output
    assert json.loads(res.stdout)["images"] == 3
