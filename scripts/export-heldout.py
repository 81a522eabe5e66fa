"""Write images of the held-out split (the one train-vqvae, encode --split val and evaluate --split val use) as PNGs.

    python scripts/export-heldout.py DATA OUT_DIR [--n 64] [--per-class] [--class-folders]

With --per-class, the first n/num_classes held-out images of each class, in class order (a tidy grid for
docs); otherwise the first n held-out images. The PNGs carry the exact decoded pixels vqgen evaluates. With
--class-folders they go into one subfolder per class (OUT_DIR/cat/003.png), the layout that gives vqgen each
image's class (vqgen inpaint OUT_DIR completes each image given its own class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from vqgen.data import load_images, split_indices
from vqgen.data import SPLIT_SEED


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--per-class", action="store_true")
    ap.add_argument("--class-folders", action="store_true")
    a = ap.parse_args()
    images = load_images(a.data)
    _, val = split_indices(len(images), a.val_fraction, SPLIT_SEED)
    if a.per_class and images.labels is not None:
        k = max(1, a.n // len(images.class_names))
        picked = [i for c in range(len(images.class_names)) for i in val[images.labels[val] == c][:k].tolist()]
    else:
        picked = val[: a.n].tolist()
    a.out.mkdir(parents=True, exist_ok=True)
    for rank, i in enumerate(picked):
        folder = a.out / images.class_names[int(images.labels[i])] if a.class_folders and images.labels is not None \
            else a.out
        folder.mkdir(exist_ok=True)
        Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(folder / f"{rank:03d}.png")
    print(f"wrote {len(picked)} held-out images to {a.out}")


if __name__ == "__main__":
    main()
