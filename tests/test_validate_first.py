"""Everything a run or an evaluation needs is checked before the first training step or the first batch: held-out
codes and their labels against the training codes, labels without class names, a data set's classes against the
prior's (matched by name: remapped with a note, or refused naming the class), an SSIM on images too small for it,
and an empty split.
"""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from safetensors.torch import save_file

from tests.conftest import TINY_PRIOR, invoke, make_images, ok, one_error_line, tensors_and_meta

pytestmark = pytest.mark.usefixtures("one_thread")


def _codes_like(codes, path, labels="keep", class_names=None):
    """A copy of the codes file `codes` with its labels dropped (None), replaced, or its class names changed."""
    t, m = tensors_and_meta(codes)
    if labels is None:
        t.pop("labels")
        m["class_names"] = "[]"
    elif labels != "keep":
        t["labels"] = labels
    if class_names is not None:
        m["class_names"] = json.dumps(class_names)
    save_file(t, str(path), metadata=m)
    return path


@pytest.fixture(scope="module")
def f(trained_vqvae, trained_prior, codes, tmp_path_factory):
    from vqgen.vqvae import VQVAE, VQVAEConfig, save_vqvae

    r = tmp_path_factory.mktemp("validate")
    n = len(tensors_and_meta(codes)[0]["codes"])
    ns = SimpleNamespace(root=r, codes=codes, prior=trained_prior, vq=trained_vqvae["run"] / "vqvae.safetensors")
    ns.unlabelled = _codes_like(codes, r / "unlabelled.safetensors", labels=None)
    ns.birds = _codes_like(codes, r / "birds.safetensors", class_names=["cats", "birds"])
    ns.nameless = _codes_like(codes, r / "nameless.safetensors", class_names=[])
    ns.swapped = _codes_like(codes, r / "swapped.safetensors", labels=1 - tensors_and_meta(codes)[0]["labels"],
                             class_names=["dogs", "cats"])
    assert n > 2
    ns.horses = make_images(r / "horses", classes=("cats", "horses"), per_class=2)
    ns.dogs = make_images(r / "dogs", classes=("dogs",), per_class=2)
    ns.one = make_images(r / "one", classes=("cats",), per_class=1)
    ns.small_vq = r / "small.safetensors"  # 8x8 images: smaller than SSIM's 11x11 window
    save_vqvae(VQVAE(VQVAEConfig(image_size=8, hidden=8, res_blocks=1, res_channels=4, num_codes=8, code_dim=4)),
               ns.small_vq)
    return ns


def _prior(*more, codes=lambda f: f.codes):
    return lambda f: ["train-prior", "--codes", codes(f), "--out", f.root / "run", "--steps", "3", "--batch-size", "8",
                      "--no-amp", "--threads", "1", *TINY_PRIOR, *more]


def _evaluate(data, vq=lambda f: f.vq, *more):
    return lambda f: ["evaluate", "--vqvae", vq(f), "--data", data(f), "--split", "all", "--json",
                      f.root / "figures.json", *more]


# id: (args, exit code, phrase of the error line (or, exit 0, of the output))
ROWS = {
    "held-out codes without labels": (_prior("--val-codes", "{unlabelled}"), 1,
                                      "has no labels, but the prior is class-conditional"),
    "held-out codes with a class the training codes lack": (_prior("--val-codes", "{birds}"), 1,
                                                            "has class birds, which {codes} does not know"),
    "labels without class names, class-conditional": (_prior("--class-conditional", codes=lambda f: f.nameless), 1,
                                                        "has labels but no class names"),
    "held-out classes in another order are remapped": (_prior("--val-codes", "{swapped}"), 0,
                                                       "lists its classes in another order"),
    "evaluate: a class the prior lacks": (_evaluate(lambda f: f.horses, lambda f: f.vq, "--prior", "{prior}"), 1,
                                          "has class horses, which the prior does not know"),
    "evaluate: classes matched by name": (_evaluate(lambda f: f.dogs, lambda f: f.vq, "--prior", "{prior}"), 0,
                                          "matched them by name"),
    "inpaint: class folders matched by name": (
        lambda f: ["inpaint", "--prior", f.prior, "--vqvae", f.vq, f.dogs, "--region", "bottom", "--n", "1", "--out",
                   f.root / "figures.png"], 0, "matched them by name"),
    "evaluate: images too small for SSIM": (_evaluate(lambda f: f.dogs, lambda f: f.small_vq), 0,
                                            "SSIM needs images of at least 11x11"),
    "evaluate: an empty split": (lambda f: ["evaluate", "--vqvae", f.vq, "--data", f.one, "--split", "val"], 1,
                                 "is empty"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_refused_before_the_first_step(f, monkeypatch, row):
    from vqgen import train

    make_args, code, phrase = ROWS[row]
    if code:  # a refusal comes before any training
        monkeypatch.setattr(train.Trainer, "fit", lambda *a, **kw: pytest.fail("training began"))
    args = [str(a).format(**vars(f)) for a in make_args(f)]
    res = invoke(*args)
    phrase = phrase.format(**vars(f))
    if code:
        assert phrase in one_error_line(res, code)
        assert not (f.root / "run").exists()
    else:
        assert phrase in ok(res).output, res.output
        if row.startswith("evaluate"):
            figures = json.loads((f.root / "figures.json").read_text())
            assert all(v == v for v in figures.values() if isinstance(v, float))  # no NaN
            assert ("ssim" in figures) == ("SSIM" not in phrase)
        elif row.startswith("inpaint"):
            assert (f.root / "figures.png").exists()
            (f.root / "figures.png").unlink()
        else:
            assert (f.root / "run" / "prior.safetensors").exists()
    shutil.rmtree(f.root / "run", ignore_errors=True)  # the next row starts clean
    (f.root / "figures.json").unlink(missing_ok=True)


def test_evaluate_scores_remapped_classes_as_the_prior_knows_them(f, tmp_path):
    """dogs-only data (label 0 there) scored by name is scored as the prior's dogs, not as its class 0 (cats)."""
    from vqgen.commands.evaluate import evaluate
    from vqgen.data import load_images
    from vqgen.metrics import bits_per_code
    from vqgen.prior_file import load_prior
    from vqgen.vqvae import load_vqvae

    figures = evaluate(str(f.dogs), vqvae=str(f.vq), prior=str(f.prior), split="all", device="cpu")
    prior, meta = load_prior(f.prior)
    assert meta["class_names"].index("dogs") == 1

    vq, _ = load_vqvae(f.vq)
    imgs = load_images(str(f.dogs), vq.config.image_size).images
    with torch.no_grad():
        codes = vq.encode(imgs.float() / 255)
        as_dogs = -prior.log_prob(codes, torch.ones(len(codes), dtype=torch.long)).double().sum() / codes.numel()
    assert figures["bits_per_code"] == pytest.approx(bits_per_code(float(as_dogs)), rel=1e-4)
