"""Training sets larger than memory (vqgen.stream): the mapped cache, streamed batches in the seeded order,
--data-on-device. Streamed and on-device runs train bit-identical weights; a streamed run resumes bit-exact."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, tensors_and_meta
from vqgen.runtime import Dist
from vqgen.stream import ON_DEVICE_FRACTION, Rows, StreamBatches, map_tensors, place_data
from vqgen.train import TensorBatches

pytestmark = pytest.mark.usefixtures("one_thread")

VQ_ARGS = ["--batch-size", "8", "--warmup", "2", "--log-every", "1", "--eval-every", "0", "--flip", "--shift", "2",
           "--no-amp", "--channels-last", "--threads", "1", *TINY_VQVAE_ARGS]


# -- the pieces ------------------------------------------------------------------------------------------------
def test_mapped_tensors_equal_the_file_and_writes_never_reach_it(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "t.safetensors"
    g = torch.Generator().manual_seed(0)
    want = {"a": torch.randint(0, 256, (7, 3, 4, 4), generator=g, dtype=torch.uint8),
            "b": torch.randint(-5, 5, (7, 2, 2), generator=g, dtype=torch.int16),
            "c": torch.arange(7, dtype=torch.int64), "empty": torch.zeros(0, 3)}
    save_file(want, str(path))
    mapped = map_tensors(path)
    assert mapped.keys() == want.keys()
    for k in want:
        assert mapped[k].dtype == want[k].dtype and torch.equal(mapped[k], want[k]), k
    before = path.read_bytes()
    mapped["a"][0] = 0  # copy-on-write: this process's page changes, the file does not
    assert path.read_bytes() == before
    assert torch.equal(load_file(str(path))["a"], want["a"])


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path`."""
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            current = head[5] if len(head) > 5 else None
        elif head and head[0] == "Rss:" and current == str(path):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_pages_read_are_released_and_loads_keep_no_mapping_resident(tmp_path):
    from safetensors.torch import save_file

    from vqgen.stream import release

    path = tmp_path / "big.safetensors"
    want = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    save_file({"x": want}, str(path))
    x = map_tensors(path)["x"]
    assert _mapped_kb(path) == 0  # mapping reads nothing
    assert int(x.sum()) == int(want.sum()) and _mapped_kb(path) > 0
    release(x)
    assert _mapped_kb(path) == 0 and torch.equal(x, want)  # released pages read back from the page cache
    rows = torch.arange(511, -1, -3)
    loaded = Rows(x, rows).load(rows=16)
    assert torch.equal(loaded, want[rows]) and _mapped_kb(path) == 0
    release(want)  # not mapped: untouched
    assert int(want.sum()) == int(x.sum())


def test_rows_gather_through_the_row_map():
    base = torch.arange(40, dtype=torch.int16).reshape(10, 2, 2)
    rows = torch.tensor([9, 3, 4, 0])
    r = Rows(base, rows, torch.long)
    assert r.shape == (4, 2, 2) and r.dtype == torch.long and len(r) == 4
    idx = torch.tensor([2, 0, 2])
    assert torch.equal(r[idx], base[rows[idx]].long())
    assert torch.equal(torch.cat(list(r.chunks(3))), base[rows].long())


@pytest.mark.parametrize("world", [1, 2])
def test_streamed_batches_are_tensor_batches_own_and_resume_mid_prefetch(world):
    x = torch.arange(23 * 3).reshape(23, 3)
    y = torch.arange(23)
    for rank in range(world):
        d = Dist(rank, world)
        ref = TensorBatches((x, y), 8, seed=5, dist=d)
        s = StreamBatches((Rows(x), Rows(y)), 8, seed=5, device=torch.device("cpu"), dist=d, prefetch=3)
        want = [next(ref) for _ in range(12)]  # 2 batches an epoch: six epochs, each its own permutation
        got = []
        for i in range(12):
            if i == 5:  # a checkpoint with batches gathered ahead, read back into a fresh source
                state = s.state_dict()
                s = StreamBatches((Rows(x), Rows(y)), 8, seed=5, device=torch.device("cpu"), dist=d, prefetch=3)
                s.load_state_dict(state)
            got.append(next(s))
        for (a, b), (c, e) in zip(want, got):
            assert torch.equal(a, c) and torch.equal(b, e)


def test_fingerprint_is_the_same_read_in_chunks(monkeypatch):
    from vqgen import run

    t = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    lab = torch.arange(50)
    h = hashlib.sha256()
    for u in (t, lab):  # the whole-tensor hash runs recorded before fingerprints were read in chunks
        h.update(str((u.dtype, tuple(u.shape))).encode())
        h.update(u.contiguous().view(torch.uint8).numpy().tobytes())
    monkeypatch.setattr(run, "FINGERPRINT_CHUNK", 100)  # rows of 48 bytes: 2 at a time
    assert run.fingerprint(t, lab) == h.hexdigest()
    rows = torch.tensor([3, 1, 4])
    assert run.fingerprint(Rows(t, rows)) == run.fingerprint(t[rows])


def test_placement(monkeypatch):
    from vqgen import stream
    from vqgen.errors import OptionError

    cpu = torch.device("cpu")
    assert place_data("yes", 10**15, cpu).on_device and not place_data("no", 1, cpu).on_device
    monkeypatch.setattr(stream, "free_memory", lambda d: 1000)
    fits, not_fits = place_data("auto", int(1000 * ON_DEVICE_FRACTION), cpu), place_data("auto", 600, cpu)
    assert fits.on_device and not not_fits.on_device
    assert "600 B against 1.0 KB free on cpu: more than 50%" in not_fits.describe()
    assert not_fits.record() == {"data_on_device": False, "data_placement": not_fits.why}
    with pytest.raises(OptionError):
        place_data("maybe", 1, cpu)


def test_free_memory_is_measured_on_this_machine():
    from vqgen.stream import free_memory

    free = free_memory(torch.device("cpu"))
    assert free is None or free > 0


# -- training --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("stream") / "images", per_class=10)


def _train(folder, run, where, *extra, cache):
    return ok(invoke("train-vqvae", "--data", folder, "--out", run, "--data-on-device", where, "--cache-dir", cache,
                     *VQ_ARGS, *extra))


def _same_weights(a: Path, b: Path, name: str) -> None:
    wa, wb = tensors_and_meta(a / name)[0], tensors_and_meta(b / name)[0]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _config(run: Path) -> dict:
    return next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("event") == "config")


def test_streamed_and_on_device_vqvae_runs_are_bit_identical_and_resume_bit_exact(folder, tmp_path):
    cache = tmp_path / "cache"
    on = _train(folder, tmp_path / "on", "yes", "--steps", "6", cache=cache)  # builds the cache
    assert "training data on the device (as asked)" in on.stderr
    streamed = _train(folder, tmp_path / "streamed", "no", "--steps", "6", cache=cache)  # maps it
    assert "training data streamed from host memory (as asked)" in streamed.stderr
    _same_weights(tmp_path / "on", tmp_path / "streamed", "vqvae.safetensors")
    assert _config(tmp_path / "on")["data_on_device"] is True
    assert _config(tmp_path / "streamed")["data_on_device"] is False
    assert json.loads(tensors_and_meta(tmp_path / "streamed" / "checkpoint.safetensors")[1]["data_on_device"]) is False

    _train(folder, tmp_path / "resumed", "no", "--steps", "3", "--checkpoint-every", "3", cache=cache)
    ok(invoke("train-vqvae", "--out", tmp_path / "resumed", "--resume", "--steps", "6", "--data-on-device", "no",
              "--cache-dir", cache))
    _same_weights(tmp_path / "on", tmp_path / "resumed", "vqvae.safetensors")
    a, b = (tensors_and_meta(tmp_path / r / "checkpoint.safetensors") for r in ("streamed", "resumed"))
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1]["batches"] == b[1]["batches"]


def test_streamed_and_on_device_prior_runs_are_bit_identical(tmp_path):
    from vqgen.codes import CodeSet, write_codes

    g = torch.Generator().manual_seed(0)
    write_codes(tmp_path / "codes.sft", CodeSet(torch.randint(0, 16, (40, 4, 4), generator=g), 16,
                                                torch.randint(0, 2, (40,), generator=g), ["a", "b"], "0" * 64, "t"))
    outs = {}
    for where in ("yes", "no"):
        res = ok(invoke("train-prior", "--codes", tmp_path / "codes.sft", "--out", tmp_path / where, *TINY_PRIOR,
                        "--steps", "5", "--batch-size", "8", "--no-amp", "--threads", "1", "--eval-every", "0",
                        "--data-on-device", where, "--json"))
        outs[where] = json.loads(res.stdout)
        assert _config(tmp_path / where)["data_on_device"] is (where == "yes")
    _same_weights(tmp_path / "yes", tmp_path / "no", "prior.safetensors")
    assert outs["yes"]["unigram_entropy_bits"] == outs["no"]["unigram_entropy_bits"]
    assert outs["yes"]["loss"] == outs["no"]["loss"]


def test_bad_data_on_device_is_misuse(folder, tmp_path):
    res = invoke("train-vqvae", "--data", folder, "--out", tmp_path / "r", "--data-on-device", "sometimes")
    assert res.exit_code == 2 and "--data-on-device" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


# -- building the cache ----------------------------------------------------------------------------------------
@pytest.fixture
def chunked(monkeypatch):
    from vqgen import data

    monkeypatch.setattr(data, "CHUNK_IMAGES", 5)  # 25 files: five chunks, the last of them short
    return data


@pytest.fixture
def messy_folder(tmp_path):
    f = make_images(tmp_path / "messy", per_class=12)
    (f / "dogs" / "005.png").write_bytes(b"not an image")  # skipped in the middle of a chunk
    (f / "cats" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # the one file of the last chunk
    return f


def _cache_bytes(cache: Path) -> bytes:
    (entry,) = cache.glob("*.safetensors")
    assert not list(cache.glob("*.build"))  # the chunks are gone once the cache file is whole
    return entry.read_bytes()


def test_a_cache_built_by_two_workers_equals_one_built_by_one(chunked, messy_folder, tmp_path):
    from vqgen.run import fingerprint

    one = chunked.load_images(str(messy_folder), 16, cache_dir=tmp_path / "c1", workers=1)
    two = chunked.load_images(str(messy_folder), 16, cache_dir=tmp_path / "c2", workers=2)
    assert _cache_bytes(tmp_path / "c1") == _cache_bytes(tmp_path / "c2")
    plain = chunked.load_images(str(messy_folder), 16, use_cache=False, workers=2)  # decoded in memory
    for s in (one, two):
        assert len(s) == 23 and s.paths == plain.paths and "dogs/005.png" not in s.paths
        assert torch.equal(s.images, plain.images) and torch.equal(s.labels, plain.labels)
        assert s.sha256 == fingerprint(plain.images, plain.labels)
    again = chunked.load_images(str(messy_folder), 16, cache_dir=tmp_path / "c1", workers=2)  # read, not built
    assert torch.equal(again.images, one.images) and again.paths == one.paths
    tensors, meta = tensors_and_meta(next((tmp_path / "c1").glob("*.safetensors")))  # a plain safetensors file
    assert torch.equal(tensors["images"], plain.images) and json.loads(meta["skipped"])[0][0] == "cats/zz.png"


def _interrupt_a_build(chunked, folder, cache, monkeypatch, decoded: list) -> None:
    """Build folder's cache in cache, stopped by Ctrl+C in its third chunk (after 12 files); `decoded` gets them."""
    real = chunked._decode

    def stop_in_the_third_chunk(path, size):
        if len(decoded) == 12:
            raise KeyboardInterrupt
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(chunked, "_decode", stop_in_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        chunked.load_images(str(folder), 16, cache_dir=cache, workers=1)
    monkeypatch.setattr(chunked, "_decode", real)


def test_an_interrupted_build_resumes_where_it_stopped(chunked, messy_folder, tmp_path, monkeypatch):
    ref = chunked.load_images(str(messy_folder), 16, cache_dir=tmp_path / "ref", workers=1)
    real, decoded = chunked._decode, []
    _interrupt_a_build(chunked, messy_folder, tmp_path / "c", monkeypatch, decoded)
    (build,) = (tmp_path / "c").glob("*.build")
    assert len(list(build.glob("chunk-*.safetensors"))) == 2 and not list((tmp_path / "c").glob("*.safetensors"))

    decoded.clear()
    monkeypatch.setattr(chunked, "_decode", lambda path, size: (decoded.append(path), real(path, size))[1])
    s = chunked.load_images(str(messy_folder), 16, cache_dir=tmp_path / "c", workers=1)
    assert len(decoded) == 25 - 10  # the two whole chunks are kept
    assert _cache_bytes(tmp_path / "c") == _cache_bytes(tmp_path / "ref")
    assert torch.equal(s.images, ref.images)


def test_chunks_of_a_changed_folder_are_not_reused(chunked, messy_folder, tmp_path, monkeypatch):
    decoded = []
    _interrupt_a_build(chunked, messy_folder, tmp_path / "c", monkeypatch, decoded)
    make_images(messy_folder, classes=("cats",), per_class=12, seed=1)  # the cats of the done chunks redrawn
    s = chunked.load_images(str(messy_folder), 16, cache_dir=tmp_path / "c", workers=1)
    plain = chunked.load_images(str(messy_folder), 16, use_cache=False, workers=1)
    assert torch.equal(s.images, plain.images)


def test_bad_workers_is_refused(image_folder):
    from vqgen.data import load_images
    from vqgen.errors import OptionError

    with pytest.raises(OptionError, match="workers"):
        load_images(str(image_folder), 16, workers=0)


def test_train_vqvae_decodes_with_the_workers_given(chunked, messy_folder, tmp_path):
    res = _train(messy_folder, tmp_path / "run", "auto", "--steps", "2", "--workers", "2", cache=tmp_path / "c")
    assert "training data" in res.stderr
    assert _cache_bytes(tmp_path / "c") == _cache_bytes_of(chunked, messy_folder, tmp_path / "c1")
    bad = invoke("train-vqvae", "--data", messy_folder, "--out", tmp_path / "r2", "--workers", "0")
    assert bad.exit_code == 2 and "--workers" in bad.output and not (tmp_path / "r2").exists()


def _cache_bytes_of(data, folder, cache) -> bytes:
    data.load_images(str(folder), 16, cache_dir=cache, workers=1)
    return _cache_bytes(cache)
