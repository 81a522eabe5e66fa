"""vqgen.data: folders, single files, the decode cache, CIFAR-10 spec handling (never downloads), splits."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen import data, log
from vqgen.data import ImageSet, load_images, load_inputs, split_indices
from vqgen.errors import DataError


def _img(path, size=(32, 32), color=(200, 10, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def console_text(monkeypatch):
    """Capture everything vqgen.log prints (the console writes to stderr, which pytest may not capture)."""
    buf = io.StringIO()
    monkeypatch.setattr(log.console, "file", buf)
    monkeypatch.setattr(log.console, "width", 400)  # no wrapping inside file names
    return buf


def test_imagefolder_labels_and_class_names(tmp_path):
    root = tmp_path / "ds"
    _img(root / "dog" / "b.png", color=(0, 0, 255))
    _img(root / "cat" / "a.png", color=(255, 0, 0))
    _img(root / "cat" / "nested" / "c.jpg", color=(255, 0, 0))
    _img(root / ".hidden" / "x.png")
    _img(root / "cat" / ".skip.png")
    s = load_images(str(root), 32, cache_dir=tmp_path / "cache")
    assert isinstance(s, ImageSet)
    assert s.class_names == ["cat", "dog"]
    assert s.paths == ["cat/a.png", "cat/nested/c.jpg", "dog/b.png"]
    assert s.labels.tolist() == [0, 0, 1] and s.labels.dtype == torch.int64
    assert s.images.shape == (3, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.images[0, :, 0, 0].tolist() == [255, 0, 0]
    assert s.images[2, :, 0, 0].tolist() == [0, 0, 255]
    assert s.source == str(root)


def test_flat_folder_is_unlabelled(tmp_path):
    _img(tmp_path / "f" / "2.png")
    _img(tmp_path / "f" / "1.bmp", color=(1, 2, 3))
    s = load_images(str(tmp_path / "f"), 32, cache_dir=tmp_path / "cache")
    assert s.labels is None and s.class_names == []
    assert s.paths == ["1.bmp", "2.png"]
    assert s.images[0, :, 5, 5].tolist() == [1, 2, 3]


def test_mixed_sizes_resized_cropped_and_noted(tmp_path, console_text):
    f = tmp_path / "f"
    # wide image: left third red, middle green, right third blue -> the centre crop is all green
    wide = np.zeros((24, 72, 3), np.uint8)
    wide[:, :24] = (255, 0, 0)
    wide[:, 24:48] = (0, 255, 0)
    wide[:, 48:] = (0, 0, 255)
    f.mkdir()
    Image.fromarray(wide).save(f / "wide.png")
    _img(f / "big.jpg", size=(100, 60))
    _img(f / "tiny.png", size=(8, 8))
    _img(f / "thin.png", size=(12, 40))
    _img(f / "exact.png", size=(16, 16))
    s = load_images(str(f), 16, cache_dir=tmp_path / "cache")
    assert s.images.shape == (5, 3, 16, 16)
    i = s.paths.index("wide.png")
    assert s.images[i, :, 8, 8].tolist() == [0, 255, 0]
    assert s.images[i, :, :, 2:-2].float().std(dim=(1, 2)).max() < 1  # no red/blue leaked in
    out = console_text.getvalue()
    assert "2 images smaller than 16x16 were upscaled" in out  # tiny and thin; wide's short side is 24
    assert out.count("upscaled") == 1


def test_bad_files_skipped_with_one_warning_each(tmp_path, console_text):
    f = tmp_path / "f"
    _img(f / "good.png")
    (f / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (f / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    s = load_images(str(f), 32, cache_dir=tmp_path / "cache")
    assert s.paths == ["good.png"]
    out = console_text.getvalue()
    assert out.count("warning:") == 2
    assert "notes.txt" in out and "cut.jpg" in out and "truncated" in out
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_many_bad_files_capped(tmp_path, console_text):
    f = tmp_path / "f"
    _img(f / "good.png")
    for i in range(14):
        (f / f"junk{i:02d}.txt").write_text("x")
    load_images(str(f), 32, cache_dir=tmp_path / "cache")
    out = console_text.getvalue()
    assert out.count("skipped /") == data.MAX_SKIP_LINES
    assert "and 4 more" in out


def test_refusals(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("hello")
    with pytest.raises(DataError, match="no readable images in .*junk"):
        load_images(str(junk), 32, cache_dir=tmp_path / "cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_images(str(empty), 32, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="no such file or folder: .*nope"):
        load_images(str(tmp_path / "nope"), 32)
    _img(tmp_path / "ok" / "a.png")
    for bad in (30, 0, -4, 2.0 * 16):
        with pytest.raises(DataError, match="multiple of 4"):
            load_images(str(tmp_path / "ok"), bad, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="cifar10:train or cifar10:test"):
        load_images("cifar10:valid")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_images(str(tmp_path / "broken.png"))


def test_cache_hit_skips_decoding_and_add_invalidates(tmp_path, monkeypatch):
    f, cache = tmp_path / "f", tmp_path / "cache"
    _img(f / "a" / "1.png")
    _img(f / "b" / "2.png", color=(0, 255, 0))
    first = load_images(str(f), 32, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    decoded = []
    real = data._decode

    def counting(path, size):
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(data, "_decode", counting)
    second = load_images(str(f), 32, cache_dir=cache)
    assert decoded == []  # nothing decoded: straight from the cache
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.paths == first.paths and second.class_names == first.class_names
    assert second.source == str(f)

    _img(f / "b" / "3.png")  # a new file changes the key: decoding runs again
    third = load_images(str(f), 32, cache_dir=cache)
    assert len(decoded) == 3
    assert third.paths == ["a/1.png", "b/2.png", "b/3.png"]
    assert len(list(cache.glob("*.safetensors"))) == 1  # the stale entry was replaced, not kept beside it
    # another image size is its own entry
    load_images(str(f), 16, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_cache_invalidated_by_modified_file(tmp_path):
    f, cache = tmp_path / "f", tmp_path / "cache"
    p = _img(f / "a.png", color=(10, 10, 10))
    load_images(str(f), 32, cache_dir=cache)
    _img(p, color=(250, 250, 250))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_images(str(f), 32, cache_dir=cache).images[0, 0, 0, 0] == 250


def test_corrupt_cache_is_rebuilt(tmp_path):
    f, cache = tmp_path / "f", tmp_path / "cache"
    _img(f / "a.png")
    # the set is a mapping of the cache file, which vqgen replaces and never rewrites in place; this test does
    first = load_images(str(f), 32, cache_dir=cache).images.clone()
    (entry,) = cache.glob("*.safetensors")
    raw = entry.read_bytes()
    entry.write_bytes(raw[: len(raw) // 2])  # truncated
    again = load_images(str(f), 32, cache_dir=cache)
    assert torch.equal(first, again.images)
    assert entry.read_bytes() == raw or entry.stat().st_size == len(raw)  # rewritten whole
    entry.write_bytes(b"garbage")
    assert torch.equal(load_images(str(f), 32, cache_dir=cache).images, first)


def test_unwritable_cache_warns_once(tmp_path, monkeypatch, console_text):
    f = tmp_path / "f"
    _img(f / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache folder should be: mkdir fails
    monkeypatch.setattr(data, "_cache_warned", False)
    load_images(str(f), 32, cache_dir=blocker / "cache")
    load_images(str(f), 32, cache_dir=blocker / "cache")
    assert console_text.getvalue().count("without caching") == 1


def test_split_indices():
    tr, va = split_indices(100, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    assert not set(tr.tolist()) & set(va.tolist())
    torch.manual_seed(123)
    tr2, va2 = split_indices(100, 0.1, seed=3)
    torch.manual_seed(999)
    torch.rand(10)
    tr3, va3 = split_indices(100, 0.1, seed=3)
    assert torch.equal(va, va2) and torch.equal(va, va3) and torch.equal(tr, tr3)
    assert not torch.equal(split_indices(100, 0.1, seed=4)[1], va)
    assert [len(v) for v in (split_indices(5, 0.01)[1], split_indices(2, 0.9)[1], split_indices(1, 0.5)[1])] == [1, 1, 0]
    tr0, va0 = split_indices(7, 0.0)
    assert tr0.tolist() == list(range(7)) and len(va0) == 0 and va0.dtype == torch.int64
    with pytest.raises(DataError):
        split_indices(10, 1.0)


def test_load_inputs_file_folder_and_collisions(tmp_path):
    single = _img(tmp_path / "x" / "a.png", color=(1, 1, 1))
    _img(tmp_path / "d" / "a.png", color=(2, 2, 2))
    _img(tmp_path / "d" / "sub" / "b.jpg", color=(3, 3, 3))
    s = load_inputs([str(single), str(tmp_path / "d")], 32, cache_dir=tmp_path / "cache")
    # d has a subfolder, so it reads as class layout (sub/b.jpg); its top-level a.png is ignored with a warning
    assert s.paths == ["a.png", "sub/b.jpg"]
    assert s.images[:, 0, 0, 0].tolist() == [1, 3]
    assert s.labels is None  # one input unlabelled -> the union is unlabelled
    flat = tmp_path / "flat"
    _img(flat / "a.png", color=(5, 5, 5))
    _img(flat / "c.png", color=(6, 6, 6))
    t = load_inputs([str(single), str(flat), str(single)], 32, cache_dir=tmp_path / "cache")
    assert t.paths == ["a.png", "a-1.png", "c.png", "a-2.png"]
    assert t.images[:, 0, 0, 0].tolist() == [1, 5, 6, 1]
    with pytest.raises(DataError):
        load_inputs([], 32)


class _FakeCIFAR10:
    calls: list = []

    def __init__(self, root, train=True, download=False, **kw):
        _FakeCIFAR10.calls.append((root, train, download))
        n = 6 if train else 4
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["airplane", "automobile", "bird"]


def test_cifar10_spec_converted(tmp_path, monkeypatch):
    import torchvision.datasets

    _FakeCIFAR10.calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    s = load_images("cifar10", 32, data_root=str(tmp_path))
    assert _FakeCIFAR10.calls == [(str(tmp_path), True, True)]
    fake = _FakeCIFAR10(str(tmp_path), True)
    assert s.images.shape == (6, 3, 32, 32) and s.images.dtype == torch.uint8
    assert torch.equal(s.images, torch.from_numpy(fake.data).permute(0, 3, 1, 2))
    assert s.labels.tolist() == [0, 1, 2, 0, 1, 2] and s.labels.dtype == torch.int64
    assert s.class_names == ["airplane", "automobile", "bird"]
    assert s.paths[0] == "train/00000.png" and s.source == "cifar10:train"
    t = load_images("cifar10:test", 16, data_root=str(tmp_path))
    assert _FakeCIFAR10.calls[-1][1] is False
    assert t.images.shape == (4, 3, 16, 16) and t.paths[-1] == "test/00003.png" and t.source == "cifar10:test"


def test_cifar10_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="could not download CIFAR-10 to .*name resolution.*download it yourself"):
        load_images("cifar10:train", data_root=str(tmp_path))
