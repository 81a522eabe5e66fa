"""What a run folder, a cache or a path option holds is taken as it is: a checkpoint whose JSON is corrupt, or
written by a newer vqgen, is one line naming the file and the field; a complete last metrics record without its
newline is kept on resume; a finished run's summary names only files that exist; the decoded-image cache sees an
edit that keeps a file's size and mtime; `~` is expanded in every path option.
"""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, invoke, make_images, ok, one_error_line, tensors_and_meta

pytestmark = pytest.mark.usefixtures("one_thread")

FIXED = ["--batch-size", "4", "--no-amp", "--channels-last", "--threads", "1", "--eval-every", "2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step VQ-VAE run (with best weights) and its data."""
    r = tmp_path_factory.mktemp("finished")
    data = make_images(r / "data", per_class=3)
    ok(invoke("train-vqvae", "--data", data, "--out", r / "run", "--steps", "2", *FIXED, *TINY_VQVAE_ARGS))
    assert (r / "run" / "best.safetensors").exists()
    return SimpleNamespace(data=data, run=r / "run")


@pytest.fixture
def f(finished, tmp_path):
    shutil.copytree(finished.run, tmp_path / "run")
    return SimpleNamespace(data=finished.data, run=tmp_path / "run", state=tmp_path / "run" / "checkpoint.safetensors")


def _edit_state(change):
    """Rewrite the run's checkpoint with change(metadata) applied."""
    def edit(f):
        t, m = tensors_and_meta(f.state)
        change(m)
        save_file(t, str(f.state), metadata=m)
    return edit


def _set_json(field, key, value):
    def change(m):
        d = json.loads(m[field])
        if value is None:
            d.pop(key)
        else:
            d[key] = value
        m[field] = json.dumps(d)
    return _edit_state(change)


def _resume(f):
    return ["train-vqvae", "--out", f.run, "--resume", "--threads", "1"]


# id: (edit of the run, phrase of the error line: the file and the field)
CORRUPT = {
    "train_config not JSON": (_edit_state(lambda m: m.update(train_config="{steps: 2")),
                              "{state} has a malformed 'train_config' metadata field"),
    "train_config from a newer vqgen": (_set_json("train_config", "ema_decay", 0.99),
                                        "{state}: metadata field 'train_config' has 'ema_decay', which this vqgen"),
    "vqvae_config from a newer vqgen": (_set_json("vqvae_config", "attention", True),
                                        "{state}: metadata field 'vqvae_config' has 'attention', which this vqgen"),
    "train_config value out of range": (_set_json("train_config", "batch_size", -3),
                                        "{state}: metadata field 'train_config' has batch_size=-3"),
    "data record without its spec": (_set_json("data", "spec", None), "{state}: metadata field 'data' lacks 'spec'"),
    "optimizer record unusable": (_edit_state(lambda m: m.update(optimizer='{"state": 7}')),
                                  "{state}: its 'optimizer' record cannot be used"),
    "speed record not an object": (_edit_state(lambda m: m.update(speed="[1, 2]")),
                                   "{state}: metadata field 'speed' is not a JSON object"),
    "step not a number": (_edit_state(lambda m: m.update(step="two")), "{state}: its 'step' record cannot be used"),
}


@pytest.mark.parametrize("row", list(CORRUPT))
def test_a_corrupt_checkpoint_is_one_line_naming_the_file_and_the_field(f, row):
    edit, phrase = CORRUPT[row]
    edit(f)
    before = {p.name: p.read_bytes() for p in f.run.iterdir()}
    line = one_error_line(invoke(*_resume(f)))
    assert phrase.format(state=f.state) in line, line
    assert {p.name: p.read_bytes() for p in f.run.iterdir()} == before  # nothing written, nothing cut


def test_a_complete_last_metrics_record_without_newline_is_kept(f):
    metrics = f.run / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text.rstrip("\n"))  # the last record complete, its newline lost
    ok(invoke(*_resume(f)))
    after = metrics.read_text()
    assert after.startswith(text) and after.endswith("\n")
    assert all(json.loads(x) for x in after.splitlines())


def test_a_half_written_last_metrics_record_is_cut(f):
    metrics = f.run / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text + '{"step": 3, "partia')
    ok(invoke(*_resume(f)))
    assert metrics.read_text().startswith(text) and '"partia' not in metrics.read_text()


@pytest.mark.parametrize("gone", ["vqvae.safetensors", "best.safetensors", "both"])
def test_a_finished_runs_summary_names_only_files_that_exist(f, gone):
    for name in ("vqvae.safetensors", "best.safetensors") if gone == "both" else (gone,):
        (f.run / name).unlink()
    res = ok(invoke(*_resume(f), "--json"))
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    named = [v for k, v in summary.items() if k in ("weights", "best_weights")]
    assert named and all(os.path.exists(p) for p in named), summary
    assert (f.run / "vqvae.safetensors").exists()  # rewritten from the checkpoint
    if gone != "vqvae.safetensors":
        assert "best_weights" not in summary and "is missing" in res.output


def test_the_image_cache_sees_an_edit_that_keeps_size_and_mtime(tmp_path):
    from vqgen.data import load_images

    data = make_images(tmp_path / "data", classes=("",), per_class=2)
    img = data / "000.png"
    arr = np.asarray(Image.open(img)).copy()
    Image.fromarray(arr).save(img, compress_level=0)  # stored uncompressed: its size depends on its pixels' count
    first = load_images(str(data), 16).images.clone()  # decoded, and cached
    st = os.stat(img)
    arr[:4, :4] = 255 - arr[:4, :4]
    Image.fromarray(arr).save(img, compress_level=0)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(img).st_size, os.stat(img).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = load_images(str(data), 16).images
    assert not (second[0] == first[0]).all() and (second[1] == first[1]).all()


def test_tilde_is_expanded_in_every_path_option(trained_vqvae, trained_prior, codes, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    make_images(home / "data", per_class=3)
    shutil.copy(trained_vqvae["run"] / "vqvae.safetensors", home / "vq.safetensors")
    shutil.copy(trained_prior, home / "prior.safetensors")
    shutil.copy(codes, home / "codes.safetensors")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[8:] = 255  # the bottom half: what a raster prior can complete
    Image.fromarray(mask).save(home / "mask.png")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    fixed = ["--batch-size", "4", "--no-amp", "--threads", "1"]
    for args in (
        ["train-vqvae", "--data=~/data", "--out=~/vqrun", "--steps", "1", "--cache-dir=~/cache", *fixed,
         *TINY_VQVAE_ARGS],
        ["train-vqvae", "--out=~/vqrun", "--resume", "--threads", "1", "--cache-dir=~/cache"],
        ["train-vqvae", "--data=~/data", "--out=~/grown", "--init-from=~/vq.safetensors", "--steps", "1", *fixed],
        ["reconstruct", "--vqvae=~/vq.safetensors", "~/data/cats", "--out=~/recon"],
        ["encode", "--vqvae=~/vq.safetensors", "--data=~/data", "--out=~/codes2.safetensors"],
        ["train-prior", "--codes=~/codes.safetensors", "--val-codes=~/codes2.safetensors", "--out=~/prun", "--steps",
         "1", *fixed, *TINY_PRIOR],
        ["train-prior", "--codes=~/codes.safetensors", "--out=~/prun2", "--init-from=~/prior.safetensors", "--steps",
         "1", *fixed],
        ["sample", "--prior=~/prior.safetensors", "--vqvae=~/vq.safetensors", "--n", "2", "--out=~/s.png",
         "--save-codes=~/s.safetensors"],
        ["inpaint", "--prior=~/prior.safetensors", "--vqvae=~/vq.safetensors", "~/data/cats", "--region=~/mask.png",
         "--n", "1", "--out=~/i.png", "--save-codes=~/i.safetensors"],
        ["evaluate", "--vqvae=~/vq.safetensors", "--prior=~/prior.safetensors", "--data=~/data", "--json=~/f.json"],
    ):
        ok(invoke(*args))
    assert list(cwd.iterdir()) == []  # no ./~ anywhere
    for made in ("vqrun/vqvae.safetensors", "grown/vqvae.safetensors", "recon/000.png", "codes2.safetensors",
                 "prun/prior.safetensors", "prun2/prior.safetensors", "s.png", "s.safetensors", "i.png", "i.safetensors", "f.json", "cache"):
        assert (home / made).exists(), made
    meta = tensors_and_meta(home / "prun" / "checkpoint.safetensors")[1]
    assert "~" not in meta["data"] and str(home / "codes.safetensors") in meta["data"]
