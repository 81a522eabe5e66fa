"""Sample quality in a CIFAR-10 classifier's feature space: Frechet distance, class accuracy, precision, recall.

    python bench/sample_quality.py train-classifier DATA          # once; cached (see --classifier)
    python bench/sample_quality.py calibrate DATA [--vqvae V]      # real / reconstructed / blurred / noise rows
    python bench/sample_quality.py measure DATA [--vqvae V --prior P --guidance W --temperature T ...]
    python bench/sample_quality.py sweep DATA --vqvae V --prior P [--guidances 0 1 2 --temperatures 0.9 1]
    python bench/sample_quality.py inpaint DATA --vqvae V --prior P --region bottom [--guidance W --no-class]

measure, sweep and inpaint take -o KEY=VALUE, a prior's sampling option (maskgit: -o steps=12).

DATA is the folder of CIFAR-10 training images (ImageFolder layout). Its fixed held-out split (2%, seed 0: the
same 1,000 images every vqgen run holds out) is the only real data any figure is computed against; the
classifier trains on the other 49,000 and never sees them.

Protocol (why): only 1,000 images are unseen by both the classifier and the generators, so the held-out split is
cut into two fixed halves A and B of 500. Each figure is computed twice, once against A and once against B,
with a set of N = 500 images (samples, or images derived from the *other* half, never from the reference itself)
and the two are averaged. Every row therefore has the same N, the same reference images and the same
classifier, and the "real" row (half B against half A, and A against B) is the floor a perfect generator would
reach at this N. Frechet distance is in the classifier's 256-d penultimate features; precision and recall are
Kynkaanniemi et al. (2019) with k = 3 nearest neighbours; class accuracy is prediction == requested class
(for real and derived images: their own label).

inpaint completes each image of one half once (its codes outside --region kept, the rest drawn given its own
class, or with --no-class without one) and compares the completions with the other half, as calibrate compares
reconstructions; it also reports the completions' PSNR on the kept region and the reconstructions' on the same
pixels (the ceiling: the decoder sees the drawn codes next to the kept ones).

Sampling options (guidance, temperature) are chosen with `--reference train`: the same protocol against 1,000
fixed training images instead of the held-out ones, so that the held-out figures are measured, not tuned on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.sampling_utils import GUIDANCE_SCHEDULES
from vqgen.data import load_images, split_indices
from vqgen.metrics import frechet_distance, feature_stats

SPLIT_SEED = 0  # vqgen's held-out split
VAL_FRACTION = 0.02
HALF_SEED = 1234  # cuts the held-out split into the two reference halves
MEAN = torch.tensor([0.4913, 0.4821, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
DEFAULT_CLASSIFIER = Path(__file__).parent / "weights" / "cifar10-classifier.safetensors"


# -- the classifier -----------------------------------------------------------------------------------------
def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c))

    def forward(self, x):
        return x + self.body(x)


class Classifier(nn.Module):
    """A half-width ResNet-9 (Page's DAWNBench network): 32x32 RGB in, 10 logits out, 256-d features."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w),  # (b, w, 32, 32)
            _conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w),  # (b, 2w, 16, 16)
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),  # (b, 4w, 8, 8)
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w),  # (b, 8w, 4, 4)
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (b, 8w): the feature space
        )
        self.head = nn.Linear(8 * w, num_classes, bias=False)
        self.scale = 0.125  # logits scaled down, as in Page's network: calmer training with label smoothing

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (b, 3, 32, 32) -> (b, 256) penultimate features."""
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return self.body((x - MEAN.to(x.device)) / STD.to(x.device))

    def forward(self, x):
        return self.head(self.features(x)) * self.scale


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel reflect padding) and left-right flip of a uint8 batch."""
    b = x.shape[0]
    xp = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()  # one offset per batch: cheap, and enough here
    x = xp[:, :, dy : dy + 32, dx : dx + 32]
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x) / 255


def heldout_halves(data: str, reference: str = "heldout") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor, list[str]]:
    """(images A, labels A, images B, labels B, class names): the two fixed halves of the held-out split, or with
    reference="train" of 1,000 fixed training images: the set sampling options are *chosen* on, so that the
    held-out figures are not tuned on the images they report."""
    s = load_images(data, 32)
    tr, va = split_indices(len(s), VAL_FRACTION, SPLIT_SEED)
    if reference == "train":
        va = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(HALF_SEED))[: len(va)]]
    perm = torch.randperm(len(va), generator=torch.Generator().manual_seed(HALF_SEED))
    a, b = va[perm[: len(va) // 2]].sort().values, va[perm[len(va) // 2 :]].sort().values
    return s.images[a], s.labels[a], s.images[b], s.labels[b], list(s.class_names)


def train_classifier(data: str, out: Path, epochs: int, batch: int, seed: int, amp: bool) -> None:
    from safetensors.torch import save_file

    s = load_images(data, 32)
    tr, va = split_indices(len(s), VAL_FRACTION, SPLIT_SEED)
    x_tr, y_tr, x_va, y_va = s.images[tr], s.labels[tr], s.images[va], s.labels[va]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Classifier().to(memory_format=torch.channels_last)
    steps_per_epoch = len(tr) // batch
    total = epochs * steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=total, pct_start=0.25)
    t0 = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            x = _augment(x_tr[idx], g).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).float(), y_tr[idx], label_smoothing=0.2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        acc = accuracy(model, x_va, y_va)
        print(json.dumps({"epoch": epoch + 1, "step": step, "loss": round(loss.item(), 4), "heldout_accuracy": acc,
                          "elapsed_s": round(time.perf_counter() - t0, 1)}), file=sys.stderr, flush=True)
    model.eval()
    meta = {"epochs": str(epochs), "batch": str(batch), "seed": str(seed), "heldout_accuracy": str(acc),
            "data_train_images": str(len(tr)), "split": f"val_fraction {VAL_FRACTION}, seed {SPLIT_SEED}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, out)
    print(json.dumps({"classifier": str(out), "heldout_accuracy": acc, "seconds": round(time.perf_counter() - t0)}))


def load_classifier(path: Path) -> Classifier:
    from safetensors.torch import load_file

    if not path.is_file():
        sys.exit(f"no classifier at {path}; train one: python bench/sample_quality.py train-classifier DATA")
    model = Classifier()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return model.eval()


@torch.no_grad()
def embed(model: Classifier, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 or [0, 1] images -> (features (n, 256) float64, predicted classes (n,))."""
    feats, preds = [], []
    for i in range(0, images.shape[0], batch):
        f = model.features(images[i : i + batch])
        feats.append(f.double())
        preds.append(model.head(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    was = model.training
    model.eval()
    _, pred = embed(model, images)
    model.train(was)
    return float((pred == labels).double().mean())


# -- the figures ----------------------------------------------------------------------------------------------
def _kth_radius(f: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # k + 1: the point itself is its own nearest neighbour


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: share of fake inside the real k-NN manifold, and of real inside the fake one."""
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake, real)  # (n_fake, n_real)
    precision = (d <= r_real[None, :]).any(1).double().mean()
    recall = (d.T <= r_fake[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def figures(ref_feats: list[torch.Tensor], sets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict:
    """Average over the two folds; sets[i] = (features, predictions, requested labels) compared with ref i."""
    fd, prec, rec, hits, n = [], [], [], 0, 0
    for ref, (f, pred, want) in zip(ref_feats, sets):
        fd.append(frechet_distance(*feature_stats(f), *feature_stats(ref)))
        p, r = precision_recall(ref, f)
        prec.append(p)
        rec.append(r)
        if want is not None:
            hits += int((pred == want).sum())
            n += len(want)
    out = {"frechet": sum(fd) / 2, "precision": sum(prec) / 2, "recall": sum(rec) / 2,
           "n_per_fold": int(sets[0][0].shape[0])}
    out["class_accuracy"] = hits / n if n else math.nan
    return out


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 images -> float [0, 1]."""
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    x = images.float() / 255
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="reflect"), k.view(1, 1, 1, 7).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="reflect"), k.view(1, 1, 7, 1).repeat(3, 1, 1, 1), groups=3)


def calibrate(args) -> list[dict]:
    import vqgen

    clf = load_classifier(args.classifier)
    xa, ya, xb, yb, _ = heldout_halves(args.data, args.reference)
    refs = [embed(clf, xa)[0], embed(clf, xb)[0]]
    others = [(xb, yb), (xa, ya)]  # fold i is compared with images derived from the other half
    rows = []

    def row(name, make):
        sets = []
        for x, y in others:
            f, p = embed(clf, make(x))
            sets.append((f, p, y))
        rows.append({"row": name, **figures(refs, sets)})
        print(json.dumps(rows[-1]), flush=True)

    row(f"real images ({args.reference}, the other half)", lambda x: x)
    vq = vqgen.load_vqvae(args.vqvae)
    row(f"reconstructions ({args.vqvae or 'shipped VQ-VAE'})", lambda x: vq.decode(vq.encode(x)))
    row("Gaussian blur, sigma 1", lambda x: blur(x, 1.0))
    g = torch.Generator().manual_seed(0)
    row("uniform noise", lambda x: torch.rand(x.shape, generator=g))
    return rows


def measure(args, guidance=None, temperature=None, clf=None, refs=None) -> dict:
    from vqgen.sampling import draw_samples

    guidance = args.guidance if guidance is None else guidance
    temperature = args.temperature if temperature is None else temperature
    if clf is None:
        clf = load_classifier(args.classifier)
        xa, _, xb, _, _ = heldout_halves(args.data, args.reference)
        refs = [embed(clf, xa)[0], embed(clf, xb)[0]]
    n = refs[0].shape[0]
    t0 = time.perf_counter()
    s = draw_samples(2 * n, vqvae=args.vqvae, prior=args.prior, seed=args.seed, temperature=temperature,
                     top_k=args.top_k, top_p=args.top_p, guidance=guidance, guidance_schedule=args.guidance_schedule,
                     batch_size=args.batch_size, device="cpu", prior_options=args.prior_option,
                     weak_prior=args.weak_prior, autoguidance=args.autoguidance)
    images, labels = s.images, s.labels
    seconds = time.perf_counter() - t0
    f, p = embed(clf, images)
    if labels is None:
        sets = [(f[:n], p[:n], None), (f[n:], p[n:], None)]
    else:
        labels = labels.cpu()
        sets = [(f[:n], p[:n], labels[:n]), (f[n:], p[n:], labels[n:])]
    out = {"prior": args.prior or "shipped", "vqvae": args.vqvae or "shipped", "guidance": s.guidance,
           "guidance_schedule": s.guidance_schedule, "temperature": s.temperature,
           "autoguidance": s.autoguidance, "weak_prior": s.weak_prior_path or None,
           "reference": args.reference, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
           "prior_options": args.prior_option, **figures(refs, sets), "sampling_s": round(seconds, 2)}
    print(json.dumps(out), flush=True)
    return out


def inpaint(args) -> dict:
    """Completions of each held-out half against the other half, and their PSNR on the kept region."""
    from vqgen.inpainting import inpaint_images

    clf = load_classifier(args.classifier)
    xa, ya, xb, yb, _ = heldout_halves(args.data, args.reference)
    refs = [embed(clf, xa)[0], embed(clf, xb)[0]]
    sets, kept, ceiling, seconds = [], [], [], 0.0
    for x, y in ((xb, yb), (xa, ya)):  # fold i is compared with the completions of the other half
        r = inpaint_images(x, args.region, 1, prior=args.prior, vqvae=args.vqvae, seed=args.seed,
                           labels=None if args.no_class else y, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, guidance=args.guidance, guidance_schedule=args.guidance_schedule,
                           batch_size=args.batch_size, device="cpu", prior_options=args.prior_option)
        f, p = embed(clf, r.images[:, 0])
        sets.append((f, p, y))  # class accuracy: the completion is still of the image's own class
        kept.append(r.kept_psnr)
        ceiling.append(r.kept_psnr_reconstruction)
        seconds += r.seconds
        guidance = r.guidance
    out = {"prior": args.prior or "shipped", "vqvae": args.vqvae or "shipped", "region": args.region,
           "given_class": not args.no_class, "guidance": guidance, "guidance_schedule": r.guidance_schedule,
           "temperature": r.temperature, "seed": args.seed,
           "prior_options": args.prior_option, **figures(refs, sets), "kept_psnr": sum(kept) / 2,
           "kept_psnr_reconstruction": sum(ceiling) / 2, "inpainting_s": round(seconds, 2)}
    print(json.dumps(out), flush=True)
    return out


def sweep(args) -> list[dict]:
    """measure() over a grid of guidance weights x temperatures, one classifier and reference for all."""
    clf = load_classifier(args.classifier)
    xa, _, xb, _, _ = heldout_halves(args.data, args.reference)
    refs = [embed(clf, xa)[0], embed(clf, xb)[0]]
    return [measure(args, guidance=w, temperature=t, clf=clf, refs=refs)
            for t in args.temperatures for w in args.guidances]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-classifier")
    t.add_argument("data")
    t.add_argument("--epochs", type=int, default=18)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: what vqgen's runtime picks for this machine)")
    for name in ("calibrate", "measure", "sweep", "inpaint"):
        s = sub.add_parser(name)
        s.add_argument("data")
        s.add_argument("--vqvae", default=None)
        if name == "sweep":
            s.add_argument("--guidances", type=float, nargs="+", default=[0, 0.5, 1, 2, 3, 5])
            s.add_argument("--temperatures", type=float, nargs="+", default=[0.9, 1.0])
        if name == "inpaint":
            s.add_argument("--region", default="bottom")
            s.add_argument("--no-class", action="store_true", help="complete without a class (a null class)")
        if name in ("measure", "sweep", "inpaint"):
            s.add_argument("-o", "--prior-option", action="append", default=[], metavar="KEY=VALUE")
            s.add_argument("--prior", default=None)
            s.add_argument("--guidance", type=float, default=None)
            s.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default=None,
                           help="default: the library's default (vqgen sample's; for inpaint, vqgen inpaint's)")
            s.add_argument("--temperature", type=float, default=None)
            s.add_argument("--top-k", type=int, default=None)
            s.add_argument("--top-p", type=float, default=None)
            s.add_argument("--seed", type=int, default=0)
            s.add_argument("--batch-size", type=int, default=250)
        if name in ("measure", "sweep"):
            s.add_argument("--weak-prior", default=None, help="autoguide away from this weaker prior")
            s.add_argument("--autoguidance", type=float, default=None, help="autoguidance weight A (with --weak-prior)")
    for s in sub.choices.values():
        s.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
        s.add_argument("--json", type=Path, default=None, help="append the result(s) as JSON lines here")
        if s.prog.split()[-1] != "train-classifier":
            s.add_argument("--reference", choices=("heldout", "train"), default="heldout",
                           help="real images compared against: the held-out split (report), or 1,000 training "
                                "images (choose options there, so the held-out figures are not tuned on)")
    args = ap.parse_args()
    torch.set_grad_enabled(args.cmd == "train-classifier")
    if args.cmd == "train-classifier":
        amp = args.amp
        if amp is None:
            from vqgen.runtime import native_bf16_cpu

            amp = native_bf16_cpu()
        train_classifier(args.data, args.classifier, args.epochs, args.batch_size, args.seed, amp)
        return
    result = {"calibrate": calibrate, "measure": measure, "sweep": sweep, "inpaint": inpaint}[args.cmd](args)
    if args.json:
        with open(args.json, "a") as fh:
            for r in result if isinstance(result, list) else [result]:
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
