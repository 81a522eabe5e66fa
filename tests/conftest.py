import json

import pytest
import torch
from PIL import Image

TINY_VQVAE_ARGS = ["--image-size", "16", "--hidden", "16", "--res-blocks", "1", "--res-channels", "8",
                   "--codebook-size", "16", "--code-dim", "8"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """Session- and module-scoped fixtures run before the per-test isolation below: keep them off the user's
    caches too (the decoded-image cache, measured speed choices, downloads)."""
    root = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQGEN_CACHE", str(root / "_cache"))
        mp.setenv("VQGEN_DATA", str(root / "_data"))
        mp.setenv("VQGEN_QUIET", "1")
        yield


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test touches the user's caches, and progress bars stay off."""
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path / "_cache"))
    monkeypatch.setenv("VQGEN_DATA", str(tmp_path / "_data"))
    monkeypatch.setenv("VQGEN_QUIET", "1")
    torch.set_num_threads(2)
    yield
    from vqgen import log

    log.console.file = None  # back to following sys.stderr, whatever a test pinned it to


def make_images(folder, classes=("cats", "dogs"), per_class=12, size=16, seed=0):
    """An ImageFolder of flat-coloured 4x4-block PNGs (structure a tiny VQ-VAE can learn)."""
    g = torch.Generator().manual_seed(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = torch.randint(0, 256, (size // 4, size // 4, 3), generator=g, dtype=torch.uint8)
            big = small.repeat_interleave(4, 0).repeat_interleave(4, 1).numpy()
            Image.fromarray(big).save(folder / c / f"{i:03d}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path):
    return make_images(tmp_path / "images")


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from vqgen.cli import app

    runner = CliRunner()

    def invoke(*args, ok=True):
        res = runner.invoke(app, [str(a) for a in args])
        if ok:
            assert res.exit_code == 0, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
        return res

    return invoke


@pytest.fixture(scope="session")
def trained_vqvae(tmp_path_factory):
    """One tiny trained VQ-VAE run shared by the tests that only use its outputs."""
    from typer.testing import CliRunner

    from vqgen.cli import app

    root = tmp_path_factory.mktemp("vq")
    data = make_images(root / "images")
    run = root / "run"
    res = CliRunner().invoke(app, ["train-vqvae", "--data", str(data), "--out", str(run), "--steps", "30",
                                   "--batch-size", "8", "--json", "--cache-dir", str(root / "cache"),
                                   *TINY_VQVAE_ARGS])
    assert res.exit_code == 0, res.output
    return {"data": data, "run": run, "summary": json.loads(res.stdout.strip().splitlines()[-1]), "root": root}
