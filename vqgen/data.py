"""Image sets: CIFAR-10 via torchvision, folders of images (ImageFolder layout or flat), single files.

Every image comes out as a (3, S, S) uint8 tensor: decoded with Pillow, converted to RGB, the short side
resized to S (bicubic, antialiased) and centre-cropped. Unreadable files are skipped with a warning each.
A decoded folder is cached on disk (safetensors) under a key made from the folder's file listing (relative
path, size and mtime of every file), so a second load of an unchanged folder only stats the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vqgen import log
from vqgen.checkpoint import read_header, read_meta, save_tensors
from vqgen.errors import DataError, check_choice
from vqgen.run import fingerprint
from vqgen.stream import map_tensors

KIND_IMAGE_CACHE = "vqgen.image-cache"
CACHE_VERSION = "1"  # bump when decoding/resizing changes, so old caches are not reused
CIFAR10_SPECS = {"cifar10": True, "cifar10:train": True, "cifar10:test": False}  # spec -> train split?
MAX_SKIP_LINES = 10  # bad-file warnings printed before "and N more"
SPLIT_SEED = 0  # the held-out split is fixed, whatever seed a run trains with, so figures stay comparable
SPLITS = ("train", "val", "all")  # the parts of a set a command can take: its seeded split, or all of it


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor | None  # (N,) int64, or None when unlabelled
    class_names: list[str] = field(default_factory=list)  # label index -> name; [] when unlabelled
    paths: list[str] = field(default_factory=list)  # one relative path per image ("cat/001.png")
    source: str = ""  # the spec the set came from
    sha256: str = ""  # vqgen.run.fingerprint(images, labels) when known (a cached folder stores it); "" otherwise

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ----------------------------------------------------------------------------------------------- locations


def _cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def default_data_root() -> Path:
    """Where downloadable datasets (CIFAR-10) live: $VQGEN_DATA, else ~/.cache/vqgen/data."""
    env = os.environ.get("VQGEN_DATA")
    return Path(env).expanduser() if env else _cache_home() / "vqgen" / "data"


def default_cache_dir() -> Path:
    """Where decoded image folders are cached: $VQGEN_CACHE, else ~/.cache/vqgen/images."""
    env = os.environ.get("VQGEN_CACHE")
    return Path(env).expanduser() if env else _cache_home() / "vqgen" / "images"


# ----------------------------------------------------------------------------------------------- decoding


def _check_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % 4:
        raise DataError(f"image size must be a positive multiple of 4 (got {image_size!r})")


@contextlib.contextmanager
def _strict_truncation():
    """Make Pillow raise on truncated files, whatever another library set globally."""
    from PIL import ImageFile

    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _to_rgb(img):
    """Any Pillow mode -> RGB; transparency is composited onto white, 16-bit greys scaled to 8 bits."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def _decode(path: str, size: int) -> tuple[np.ndarray, bool]:
    """Decode one image file to (size, size, 3) uint8; also say whether it had to be upscaled.

    Raises on anything Pillow cannot open or fully decode (truncated files included)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        w, h = img.size
        if w < 1 or h < 1:
            raise OSError("image has no pixels")
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # decode at a reduced DCT scale, never below `size`
        img.load()  # decode now: a truncated file raises here, not later
        if "exif" in img.info:
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        w2, h2 = img.size
        if (w2, h2) != (size, size):
            s = min(w2, h2)  # centre square of the short side, resized to size x size
            left, top = (w2 - s) / 2, (h2 - s) / 2
            img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + s, top + s))
        arr = np.asarray(img, dtype=np.uint8)
    return arr, min(w, h) < size


def _describe(e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can read"
    msg = str(e).strip() or type(e).__name__
    return msg.split("\n")[0]


def _decode_many(root: Path, rels: list[str], size: int) -> tuple[np.ndarray, list[int], list[list[str]], int]:
    """Decode files (relative to root) into one array. Returns (images, kept indices, skipped, n_upscaled)."""
    out = np.empty((len(rels), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[list[str]] = []
    upscaled = 0
    step = max(1, len(rels) // 200)
    with _strict_truncation(), log.progress(len(rels)) as bar:
        task = bar.add_task(f"decoding {root}", total=len(rels))
        for i, rel in enumerate(rels):
            try:
                arr, small = _decode(str(root / rel), size)
            except Exception as e:  # any file Pillow chokes on is skipped, never fatal
                skipped.append([rel, _describe(e)])
            else:
                out[len(kept)] = arr
                kept.append(i)
                upscaled += small
            if i % step == 0 or i == len(rels) - 1:
                bar.update(task, completed=i + 1)
    return out[: len(kept)], kept, skipped, upscaled


def _report(where: str, skipped: list[list[str]], upscaled: int, size: int) -> None:
    for rel, why in skipped[:MAX_SKIP_LINES]:
        log.warn(f"skipped {os.path.join(where, rel)}: {why}")
    if len(skipped) > MAX_SKIP_LINES:
        log.warn(f"... and {len(skipped) - MAX_SKIP_LINES} more unreadable files skipped in {where}")
    if upscaled:
        log.note(f"{upscaled} image{'s' if upscaled != 1 else ''} smaller than {size}x{size} "
                 f"{'were' if upscaled != 1 else 'was'} upscaled")


def _nhwc_to_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def _resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N,3,s,s) uint8 square images -> (N,3,size,size) with the same bicubic resize as files get."""
    from PIL import Image

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    nhwc = images.permute(0, 2, 3, 1).numpy()
    out = np.empty((nhwc.shape[0], size, size, 3), dtype=np.uint8)
    for i in range(nhwc.shape[0]):
        img = Image.fromarray(nhwc[i], "RGB")
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) / 2, (h - s) / 2
        out[i] = np.asarray(img.resize((size, size), Image.BICUBIC, box=(left, top, left + s, top + s)))
    return _nhwc_to_tensor(out)


# ----------------------------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(spec: str, train: bool, image_size: int, data_root: str | os.PathLike | None) -> ImageSet:
    from torchvision.datasets import CIFAR10

    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    try:
        # torchvision prints download chatter on stdout; stdout is reserved for command results
        with contextlib.redirect_stdout(sys.stderr):
            ds = CIFAR10(root=str(root), train=train, download=True)
    except Exception as e:
        raise DataError(
            f"could not download CIFAR-10 to {root}: {_describe(e)}; download it yourself or pass a folder of images"
        ) from None
    data = np.asarray(ds.data, dtype=np.uint8)
    if data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        raise DataError(f"CIFAR-10 data in {root} has shape {data.shape}, expected (N, 32, 32, 3); delete it and retry")
    images = _nhwc_to_tensor(data)
    if image_size != 32:
        images = _resize_batch(images, image_size)
        if image_size > 32:
            _report(spec, [], len(images), image_size)
    labels = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    split = "train" if train else "test"
    return ImageSet(
        images=images,
        labels=labels,
        class_names=[str(c) for c in ds.classes],
        paths=[f"{split}/{i:05d}.png" for i in range(len(images))],
        source=f"cifar10:{split}",
    )


# ----------------------------------------------------------------------------------------------- folders


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _walk(top: Path) -> list[tuple[str, int, int]]:
    """Every visible file below `top` (following links, skipping loops): (relative posix path, size, mtime_ns)."""
    found: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()

    def rec(d: Path, prefix: str) -> None:
        try:
            st = d.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
        except OSError as e:
            log.warn(f"cannot list {d}: {e.strerror}")
            return
        for e in entries:
            try:
                if e.is_dir():
                    rec(Path(e.path), prefix + e.name + "/")
                elif e.is_file():
                    s = e.stat()
                    found.append((prefix + e.name, s.st_size, s.st_mtime_ns))
            except OSError:
                continue

    rec(top, "")
    return found


def _layout(folder: Path) -> tuple[list[tuple[str, int, int]], list[str], list[int] | None, list[str]]:
    """List a folder: (files, class names, label per file or None, ignored top-level files).

    Class layout when the folder has visible subfolders holding files; otherwise flat (top-level files only)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read folder {folder}: {e.strerror}") from None
    top_files: list[tuple[str, int, int]] = []
    classes: list[tuple[str, list[tuple[str, int, int]]]] = []
    for e in entries:
        try:
            if e.is_dir():
                inner = _walk(Path(e.path))
                if inner:
                    classes.append((e.name, [(f"{e.name}/{r}", s, m) for r, s, m in inner]))
            elif e.is_file():
                s = e.stat()
                top_files.append((e.name, s.st_size, s.st_mtime_ns))
        except OSError:
            continue
    if not classes:
        return top_files, [], None, []
    files, labels = [], []
    for k, (_, members) in enumerate(classes):
        files += members
        labels += [k] * len(members)
    return files, [c for c, _ in classes], labels, [r for r, _, _ in top_files]


def _cache_key(folder: Path, image_size: int, files: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([str(folder), image_size, CACHE_VERSION]).encode())
    for rel, size, mtime in files:
        h.update(f"\n{rel}\0{size}\0{mtime}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cache_file(cache_dir: Path, folder: Path, image_size: int) -> Path:
    # one cache file per (folder, size): a changed folder overwrites its stale entry instead of piling up
    name = hashlib.sha256(json.dumps([str(folder), image_size, CACHE_VERSION]).encode()).hexdigest()[:32]
    return cache_dir / f"{name}.safetensors"


def _read_cache(path: Path, key: str, image_size: int) -> tuple[ImageSet, list, int] | None:
    """The cached set if `path` holds a valid entry for `key`; None when absent, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        _, meta = read_header(path)
        if meta.get("format") != KIND_IMAGE_CACHE or meta.get("key") != key:
            return None  # stale (folder changed) or foreign: rebuild quietly
        meta = read_meta(path, KIND_IMAGE_CACHE)
        tensors = map_tensors(path)  # read as training reads it: a set larger than memory is never loaded whole
        images = tensors["images"]
        n = images.shape[0]
        class_names = json.loads(meta["class_names"])
        paths = json.loads(meta["paths"])
        skipped = json.loads(meta.get("skipped", "[]"))
        upscaled = int(json.loads(meta.get("upscaled", "0")))
        labels = tensors.get("labels")
        ok = (
            images.dtype == torch.uint8
            and tuple(images.shape[1:]) == (3, image_size, image_size)
            and int(json.loads(meta["image_size"])) == image_size
            and isinstance(paths, list) and len(paths) == n and all(isinstance(p, str) for p in paths)
            and isinstance(class_names, list)
            and (labels is None or (labels.dtype == torch.int64 and tuple(labels.shape) == (n,)))
            and (labels is None) == (len(class_names) == 0)
        )
        if labels is not None and n:
            ok = ok and int(labels.min()) >= 0 and int(labels.max()) < len(class_names)
        if not ok:
            raise ValueError("inconsistent contents")
    except Exception:
        log.note(f"image cache {path} is unreadable; rebuilding it")
        return None
    s = ImageSet(images=images, labels=labels, class_names=class_names, paths=paths, source=meta.get("source", ""),
                 sha256=meta.get("sha256", ""))
    return s, skipped, upscaled


_cache_warned = False


def _write_cache(path: Path, key: str, s: ImageSet, image_size: int, skipped: list, upscaled: int) -> None:
    global _cache_warned
    tensors = {"images": s.images}
    if s.labels is not None:
        tensors["labels"] = s.labels
    meta = {
        "key": key,
        "source": s.source,
        "image_size": image_size,
        "class_names": s.class_names,
        "paths": s.paths,
        "skipped": skipped,
        "upscaled": upscaled,
        "sha256": s.sha256 or fingerprint(s.images, s.labels),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, tensors, KIND_IMAGE_CACHE, meta)
    except Exception as e:  # a cache is an optimisation: never fail a load over it
        if not _cache_warned:
            _cache_warned = True
            why = getattr(e, "strerror", None) or str(e)
            log.warn(f"cannot write the image cache in {path.parent} ({why}); continuing without caching "
                     "(set VQGEN_CACHE to a writable folder)")


def _load_folder(folder: Path, spec: str, image_size: int, cache_dir: Path | None) -> ImageSet:
    folder = folder.resolve()
    files, class_names, labels, ignored = _layout(folder)
    if ignored:
        shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        log.warn(f"{len(ignored)} file{'s' if len(ignored) != 1 else ''} directly in {spec} ignored ({shown}): "
                 "the folder has class subfolders, so only files inside them are used")
    if not files:
        raise DataError(f"{spec} is empty: put images in it (flat, or one subfolder per class)")

    key = cache_file = None
    if cache_dir is not None:
        key = _cache_key(folder, image_size, files)
        cache_file = _cache_file(Path(cache_dir).expanduser(), folder, image_size)
        hit = _read_cache(cache_file, key, image_size)
        if hit is not None:
            s, skipped, upscaled = hit
            s.source = spec
            _report(spec, skipped, upscaled, image_size)
            return s

    rels = [r for r, _, _ in files]
    arr, kept, skipped, upscaled = _decode_many(folder, rels, image_size)
    _report(spec, skipped, upscaled, image_size)
    if not kept:
        raise DataError(f"no readable images in {spec} ({len(files)} files, none of them an image Pillow can open)")
    s = ImageSet(
        images=_nhwc_to_tensor(arr),
        labels=torch.tensor([labels[i] for i in kept], dtype=torch.int64) if labels is not None else None,
        class_names=list(class_names),
        paths=[rels[i] for i in kept],
        source=spec,
    )
    if labels is not None:
        present = set(s.labels.tolist())
        empty = [c for k, c in enumerate(class_names) if k not in present]
        if empty:
            log.warn(f"class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} in {spec} "
                     "hold no readable images (their labels are kept)")
    if cache_dir is not None:
        _write_cache(cache_file, key, s, image_size, skipped, upscaled)
    return s


def _load_file(path: Path, spec: str, image_size: int) -> ImageSet:
    with _strict_truncation():
        try:
            arr, small = _decode(str(path), image_size)
        except Exception as e:
            raise DataError(f"cannot read image {spec}: {_describe(e)}") from None
    _report(spec, [], int(small), image_size)
    return ImageSet(images=_nhwc_to_tensor(arr[None]), labels=None, class_names=[], paths=[path.name], source=spec)


# ----------------------------------------------------------------------------------------------- public API


def load_images(
    spec: str,
    image_size: int = 32,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> ImageSet:
    """Load `cifar10[:train|:test]`, a folder of images (class subfolders or flat) or one image file.

    Folders are cached decoded in `cache_dir` (default: default_cache_dir()) unless use_cache is False."""
    _check_size(image_size)
    spec = str(spec)
    if spec in CIFAR10_SPECS:
        return _load_cifar10(spec, CIFAR10_SPECS[spec], image_size, data_root)
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.lower().startswith("cifar10:"):
            raise DataError(f"unknown CIFAR-10 split in {spec!r}; use cifar10:train or cifar10:test")
        raise DataError(f"no such file or folder: {spec}")
    if path.is_dir():
        cdir = None if not use_cache else (Path(cache_dir) if cache_dir is not None else default_cache_dir())
        return _load_folder(path, spec, image_size, cdir)
    if path.is_file():
        return _load_file(path, spec, image_size)
    raise DataError(f"{spec} is neither a file nor a folder")


def load_inputs(
    inputs: list[str],
    image_size: int = 32,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> ImageSet:
    """Load several image files / folders / specs as one set, in the order given.

    Paths stay relative to each given folder (a single file keeps its file name); names that collide across
    inputs get a numeric suffix ("a.png" -> "a-1.png") so they can be written side by side. Labels are kept
    only when every input is labelled with the same class names."""
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise DataError("no input images given")
    _check_size(image_size)
    sets = [load_images(i, image_size, data_root, cache_dir, use_cache) for i in inputs]
    if len(sets) == 1:
        return sets[0]
    same_classes = all(s.labels is not None and s.class_names == sets[0].class_names for s in sets)
    seen: set[str] = set()
    paths: list[str] = []
    renamed = 0
    for s in sets:
        for p in s.paths:
            q = p
            if q in seen:
                stem, dot, ext = p.rpartition(".") if "." in p.rsplit("/", 1)[-1] else (p, "", "")
                k = 1
                while (q := f"{stem}-{k}{dot}{ext}") in seen:
                    k += 1
                renamed += 1
            seen.add(q)
            paths.append(q)
    if renamed:
        log.note(f"{renamed} input name{'s' if renamed != 1 else ''} occurred more than once; "
                 "later ones got a numeric suffix (e.g. a.png -> a-1.png)")
    return ImageSet(
        images=torch.cat([s.images for s in sets]),
        labels=torch.cat([s.labels for s in sets]) if same_classes else None,
        class_names=list(sets[0].class_names) if same_classes else [],
        paths=paths,
        source=", ".join(inputs),
    )


def split_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): a seeded split of range(n), both sorted, disjoint and covering range(n).

    The validation part has max(1, round(n * val_fraction)) items when val_fraction > 0 and n >= 2 (always
    leaving at least one training item). Uses its own generator, so global RNG state has no effect."""
    if n < 0:
        raise DataError(f"cannot split {n} items")
    if not (0.0 <= float(val_fraction) < 1.0):
        raise DataError(f"validation fraction must be in [0, 1) (got {val_fraction})")
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, round(n * val_fraction)))
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    val = perm[:n_val].sort().values
    train = perm[n_val:].sort().values
    return train, val


def select_split(n: int, split: str, val_fraction: float) -> torch.Tensor:
    """Indices of the `split` ("train", "val" or "all") of n items, under the fixed held-out split (SPLIT_SEED)."""
    check_choice("split", split, SPLITS)
    if split == "all":
        return torch.arange(n)
    train, val = split_indices(n, val_fraction, SPLIT_SEED)
    return train if split == "train" else val
