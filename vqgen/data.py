"""Image sets: CIFAR-10 via torchvision, folders of images (ImageFolder layout or flat), single files.

Every image comes out as a (3, S, S) uint8 tensor: decoded with Pillow, converted to RGB, the short side
resized to S (bicubic, antialiased) and centre-cropped. Only the raster formats in FORMATS are decoded, whatever
a file's name (Pillow would hand a PostScript file to Ghostscript); other and unreadable files are skipped with
a warning each. A decoded folder is cached on disk (safetensors) under a key made from the folder's contents
(relative path and bytes of every file, one BLAKE2 pass), so an edit that keeps a file's size and mtime is seen
too; a second load of an unchanged folder reads the files but decodes none. The cache is read memory-mapped
(vqgen.stream): a set larger than memory is never loaded whole. It is built by worker processes, a chunk of
files each, every chunk its own file until the last is done, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import struct
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vqgen import log
from vqgen.checkpoint import atomic_path, file_metadata, read_header, read_meta
from vqgen.errors import DataError, OutputError, check_choice, check_positive
from vqgen.paths import user_path
from vqgen.run import Fingerprint
from vqgen.runtime import usable_cores
from vqgen.stream import map_tensors

KIND_IMAGE_CACHE = "vqgen.image-cache"
CACHE_VERSION = "1"  # bump when decoding/resizing changes, so old caches are not reused
CIFAR10_SPECS = {"cifar10": True, "cifar10:train": True, "cifar10:test": False}  # spec -> train split?
MAX_SKIP_LINES = 10  # bad-file warnings printed before "and N more"
SPLIT_SEED = 0  # the held-out split is fixed, whatever seed a run trains with, so figures stay comparable
SPLITS = ("train", "val", "all")  # the parts of a set a command can take: its seeded split, or all of it
# the raster formats decoded (Pillow's names; PPM covers PBM/PGM/PPM): common, and decoded by Pillow itself
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
CHUNK_IMAGES = 1024  # files per chunk of a folder being decoded: the most an interrupted build decodes again


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

    with open_image(path) as img:
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


def open_image(path: str | os.PathLike):
    """Pillow's Image.open limited to FORMATS: every image vqgen reads (data, masks) is opened through it."""
    from PIL import Image

    return Image.open(path, formats=_formats())


def _formats() -> tuple[str, ...]:
    """FORMATS this Pillow can decode (WEBP needs libwebp)."""
    from PIL import Image

    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _describe(e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return f"not an image in a format vqgen reads ({', '.join(_formats())})"
    msg = str(e).strip() or type(e).__name__
    return msg.split("\n")[0]


def _decode_chunk(root: str, rels: list[str], size: int, out: str | None):
    """Decode files (relative to root): numpy and Pillow only, so that a forked worker touches no torch state.

    Returns (images (n, 3, S, S) uint8 or None, kept: indices into rels, skipped: [rel, why], n_upscaled); with
    `out` the images go to that chunk file instead (with the rest as its metadata) and None comes back."""
    from safetensors.numpy import save_file

    arr = np.empty((len(rels), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[list[str]] = []
    upscaled = 0
    with _strict_truncation():
        for i, rel in enumerate(rels):
            try:
                a, small = _decode(os.path.join(root, rel), size)
            except Exception as e:  # any file Pillow chokes on is skipped, never fatal
                skipped.append([rel, _describe(e)])
            else:
                arr[len(kept)] = a
                kept.append(i)
                upscaled += small
    images = np.ascontiguousarray(arr[: len(kept)].transpose(0, 3, 1, 2))  # (n, 3, S, S)
    if out is None:
        return images, kept, skipped, upscaled
    meta = {"files": str(len(rels)), "kept": json.dumps(kept), "skipped": json.dumps(skipped),
            "upscaled": str(upscaled)}
    with atomic_path(out) as tmp:
        save_file({"images": images}, str(tmp), metadata=meta)
    return None, kept, skipped, upscaled


def _read_chunk(path: Path, files: int, size: int):
    """What _decode_chunk returned for a chunk file an earlier build left, when it is whole and decoded `files`
    files at `size`; None otherwise (it is decoded again)."""
    if not path.is_file():
        return None
    try:
        header, meta = read_header(path)
        kept, skipped, upscaled = json.loads(meta["kept"]), json.loads(meta["skipped"]), int(meta["upscaled"])
        ok = (int(meta["files"]) == files and header["images"]["dtype"] == "U8"
              and header["images"]["shape"] == [len(kept), 3, size, size]
              and all(isinstance(i, int) for i in kept) and kept == sorted(set(kept))
              and len(kept) + len(skipped) == files and (not kept or 0 <= kept[0] <= kept[-1] < files))
    except Exception:
        return None
    return (None, kept, skipped, upscaled) if ok else None


def _worker_start() -> None:
    # Ctrl+C reaches the whole process group: the parent stops the build, the workers finish their chunk quietly
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # and a parent killed outright (kill -9) takes its workers with it
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _decode_folder(root: Path, rels: list[str], size: int, workers: int, build: Path | None):
    """Decode files in chunks of CHUNK_IMAGES, `workers` chunks at a time in worker processes.

    With `build` (a folder) each chunk goes to a file there, and the chunks an interrupted build left are kept;
    without, the chunks come back in memory. Returns (chunks in order: arrays or files, kept: indices into
    rels, skipped, n_upscaled)."""
    parts = [rels[i : i + CHUNK_IMAGES] for i in range(0, len(rels), CHUNK_IMAGES)]
    files = [str(build / f"chunk-{k:06d}.safetensors") if build is not None else None for k in range(len(parts))]
    done = {}
    for k, f in enumerate(files):
        if f is not None and (old := _read_chunk(Path(f), len(parts[k]), size)) is not None:
            done[k] = old
    todo = [k for k in range(len(parts)) if k not in done]
    if done and todo:
        log.note(f"resuming the decoding of {log.printable(str(root))}: {len(done)} of {len(parts)} chunks were done")
    with log.progress(len(rels)) as bar:
        task = bar.add_task(f"decoding {log.printable(str(root))}", total=len(rels), completed=sum(len(parts[k]) for k in done))
        if workers > 1 and len(todo) > 1:
            # fork where there is one: a worker starts in milliseconds and needs no import
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_worker_start) as pool:
                futures = {pool.submit(_decode_chunk, str(root), parts[k], size, files[k]): k for k in todo}
                try:
                    for fut in as_completed(futures):
                        k = futures[fut]
                        done[k] = fut.result()
                        bar.advance(task, len(parts[k]))
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # the chunks being decoded are still written
                    raise
        else:
            for k in todo:
                done[k] = _decode_chunk(str(root), parts[k], size, files[k])
                bar.advance(task, len(parts[k]))
    chunks, kept, skipped, upscaled = [], [], [], 0
    for k in range(len(parts)):
        images, ck, cs, cu = done[k]
        chunks.append(images if build is None else Path(files[k]))
        kept += [k * CHUNK_IMAGES + i for i in ck]
        skipped += cs
        upscaled += cu
    return chunks, kept, skipped, upscaled


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
    """A digest of everything the decoded set depends on: the decoding, and each file's name and bytes (a size and
    mtime check would miss an edit that keeps both). The 50,000 PNGs of CIFAR-10's training set (46 MB) took
    7.3 s to read and hash cold and 1.6 s to read from the page cache, against 0.08 s for a key of sizes and
    mtimes; decoding them takes far longer."""
    h = hashlib.blake2b(digest_size=32)
    h.update(json.dumps([str(folder), image_size, CACHE_VERSION, _formats()]).encode())
    with log.progress(len(files)) as bar:
        task = bar.add_task(f"checking {log.printable(str(folder))}", total=len(files))
        for i, (rel, _, _) in enumerate(files):
            h.update(f"\n{rel}\0".encode("utf-8", "surrogateescape"))
            try:
                # non-blocking: a FIFO put there since the listing is not waited on
                with open(os.open(folder / rel, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as e:  # unreadable now: decoding will skip it; its error is part of the key
                h.update(f"\0error {e.errno}".encode())
            if i % 256 == 0:
                bar.update(task, completed=i + 1)
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


def _warn_uncached(e: BaseException, where: Path) -> None:
    global _cache_warned
    if not _cache_warned:  # a cache is an optimisation: never fail a load over it
        _cache_warned = True
        why = getattr(e, "strerror", None) or str(e)
        log.warn(f"cannot write the image cache in {where} ({why}); continuing without caching "
                 "(set VQGEN_CACHE to a writable folder)")


def _build_dir(cache_file: Path, key: str) -> Path | None:
    """The folder the chunks of `cache_file` are decoded into, cleared of another listing's chunks; None (after
    one warning) when it cannot be written."""
    build = cache_file.with_name(cache_file.stem + ".build")
    try:
        build.mkdir(parents=True, exist_ok=True)
        keyfile = build / "key"
        if not keyfile.is_file() or keyfile.read_text() != key:  # chunks of the folder as it was: useless now
            for p in build.iterdir():
                p.unlink()
            keyfile.write_text(key)
        for stale in build.glob(".*.tmp"):  # atomic_path temporaries a kill left
            stale.unlink(missing_ok=True)
    except OSError as e:
        _warn_uncached(e, cache_file.parent)
        return None
    return build


def _assemble(path: Path, chunks: list[Path], n: int, size: int, labels: list[int] | None, meta: dict) -> None:
    """Write the cache file of `n` images from its chunk files, one chunk in memory at a time, with the fingerprint
    of its contents (vqgen.run.fingerprint(images, labels)) in its metadata; a safetensors file like save_tensors'."""
    nbytes = n * 3 * size * size
    header: dict = {"images": {"dtype": "U8", "shape": [n, 3, size, size], "data_offsets": [0, nbytes]}}
    lab = None
    if labels is not None:
        lab = np.asarray(labels, dtype="<i8")
        header["labels"] = {"dtype": "I64", "shape": [n], "data_offsets": [nbytes, nbytes + lab.nbytes]}

    def head(sha: str) -> bytes:
        md = file_metadata(KIND_IMAGE_CACHE, {**meta, "sha256": sha})
        raw = json.dumps({**header, "__metadata__": md}, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the tensors start 8-byte aligned, as safetensors writes them
        return struct.pack("<Q", len(raw)) + raw

    fp = Fingerprint()
    fp.tensor(torch.uint8, (n, 3, size, size))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(head("0" * 64))
        for c in chunks:
            images = map_tensors(c)["images"].numpy()  # (m, 3, S, S)
            fp.update(images)
            f.write(images)
        if lab is not None:
            fp.tensor(torch.int64, (n,))
            fp.update(lab)
            f.write(lab)
        f.seek(0)
        f.write(head(fp.hexdigest()))  # the same length: only the digest changed


def _memory_set(chunks: list, kept: list[int], rels: list[str], labels, class_names: list[str], spec: str) -> ImageSet:
    """The set in memory, from chunks decoded in memory or chunk files."""
    images = [c if isinstance(c, np.ndarray) else map_tensors(c)["images"].numpy() for c in chunks]
    return ImageSet(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.tensor([labels[i] for i in kept], dtype=torch.int64) if labels is not None else None,
        class_names=list(class_names),
        paths=[rels[i] for i in kept],
        source=spec,
    )


def _load_folder(folder: Path, spec: str, image_size: int, cache_dir: Path | None, workers: int) -> ImageSet:
    folder = folder.resolve()
    files, class_names, labels, ignored = _layout(folder)
    if ignored:
        shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        log.warn(f"{len(ignored)} file{'s' if len(ignored) != 1 else ''} directly in {spec} ignored ({shown}): "
                 "the folder has class subfolders, so only files inside them are used")
    if not files:
        raise DataError(f"{spec} is empty: put images in it (flat, or one subfolder per class)")

    rels = [r for r, _, _ in files]
    build = None
    if cache_dir is not None:
        key = _cache_key(folder, image_size, files)
        cache_file = _cache_file(Path(cache_dir).expanduser(), folder, image_size)
        hit = _read_cache(cache_file, key, image_size)
        if hit is not None:
            s, skipped, upscaled = hit
            s.source = spec
            _report(spec, skipped, upscaled, image_size)
            return s
        build = _build_dir(cache_file, key)
    try:
        chunks, kept, skipped, upscaled = _decode_folder(folder, rels, image_size, workers, build)
    except (OSError, OutputError) as e:  # a chunk could not be written (disk full): decode in memory
        if build is None:
            raise
        _warn_uncached(e, cache_file.parent)
        build = None
        chunks, kept, skipped, upscaled = _decode_folder(folder, rels, image_size, workers, None)
    _report(spec, skipped, upscaled, image_size)
    if not kept:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)
        raise DataError(f"no readable images in {spec} ({len(files)} files, none of them an image Pillow can open)")
    if labels is not None:
        present = {labels[i] for i in kept}
        empty = [c for k, c in enumerate(class_names) if k not in present]
        if empty:
            log.warn(f"class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} in {spec} "
                     "hold no readable images (their labels are kept)")
    if build is not None:
        meta = {"key": key, "source": spec, "image_size": image_size, "class_names": list(class_names),
                "paths": [rels[i] for i in kept], "skipped": skipped, "upscaled": upscaled}
        try:
            kept_labels = [labels[i] for i in kept] if labels is not None else None
            _assemble(cache_file, chunks, len(kept), image_size, kept_labels, meta)
        except (OSError, OutputError) as e:
            _warn_uncached(e, cache_file.parent)
        else:
            shutil.rmtree(build, ignore_errors=True)
            hit = _read_cache(cache_file, key, image_size)
            if hit is not None:
                hit[0].source = spec
                return hit[0]
    return _memory_set(chunks, kept, rels, labels, class_names, spec)


def _load_file(path: Path, spec: str, image_size: int) -> ImageSet:
    with _strict_truncation():
        try:
            arr, small = _decode(str(path), image_size)
        except Exception as e:
            raise DataError(f"cannot read image {spec}: {_describe(e)}") from None
    _report(spec, [], int(small), image_size)
    return ImageSet(images=_nhwc_to_tensor(arr[None]), labels=None, class_names=[], paths=[path.name], source=spec)


# ----------------------------------------------------------------------------------------------- public API


def spec_path(spec: str | os.PathLike | None) -> Path | None:
    """The file or folder a data spec names (`~` expanded); None for CIFAR-10 specs (and for None)."""
    if spec is None or str(spec) in CIFAR10_SPECS:
        return None
    return user_path(spec)


def load_images(
    spec: str,
    image_size: int = 32,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """Load `cifar10[:train|:test]`, a folder of images (class subfolders or flat) or one image file.

    Folders are cached decoded in `cache_dir` (default: default_cache_dir()) unless use_cache is False, decoded by
    `workers` processes (default: the usable cores); a cached folder's images are memory-mapped."""
    _check_size(image_size)
    check_positive("workers", workers)
    spec = str(spec)
    path = spec_path(spec)
    if path is None:
        return _load_cifar10(spec, CIFAR10_SPECS[spec], image_size, data_root)
    if not path.exists():
        if spec.lower().startswith("cifar10:"):
            raise DataError(f"unknown CIFAR-10 split in {spec!r}; use cifar10:train or cifar10:test")
        raise DataError(f"no such file or folder: {spec}")
    if path.is_dir():
        cdir = None if not use_cache else (Path(cache_dir) if cache_dir is not None else default_cache_dir())
        return _load_folder(path, spec, image_size, cdir, workers or usable_cores())
    if path.is_file():
        return _load_file(path, spec, image_size)
    raise DataError(f"{spec} is neither a file nor a folder")


def load_inputs(
    inputs: list[str],
    image_size: int = 32,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """Load several image files / folders / specs as one set, in the order given.

    Paths stay relative to each given folder (a single file keeps its file name); names that collide across
    inputs get a numeric suffix ("a.png" -> "a-1.png") so they can be written side by side. Labels are kept
    only when every input is labelled with the same class names."""
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise DataError("no input images given")
    _check_size(image_size)
    sets = [load_images(i, image_size, data_root, cache_dir, use_cache, workers) for i in inputs]
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


def select_split(n: int, split: str, val_fraction: float, what: str = "the set") -> torch.Tensor:
    """Indices of the `split` ("train", "val" or "all") of n items, under the fixed held-out split (SPLIT_SEED);
    an empty split is refused, naming `what` it is a split of."""
    check_choice("split", split, SPLITS)
    if split == "all":
        return torch.arange(n)
    train, val = split_indices(n, val_fraction, SPLIT_SEED)
    idx = train if split == "train" else val
    if not len(idx):
        raise DataError(f"{{split={split}}} of {what} is empty: its {n} image{'s' if n != 1 else ''} give no held-out "
                        f"image at {{val_fraction={val_fraction}}}; use {{split=all}}, a larger {{val_fraction}} "
                        "or more images")
    return idx
