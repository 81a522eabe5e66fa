import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

TINY_VQVAE_ARGS = ["--image-size", "16", "--hidden", "16", "--res-blocks", "1", "--res-channels", "8",
                   "--codebook-size", "16", "--code-dim", "8"]
TINY_PRIOR_OPTS = {
    "pixelcnn": ["-o", "channels=16", "-o", "layers=3", "-o", "kernel_size=3"],
    "transformer": ["-o", "n_layer=1", "-o", "n_head=2", "-o", "n_embd=16"],
    "maskgit": ["-o", "n_layer=1", "-o", "n_head=2", "-o", "n_embd=16", "-o", "steps=4"],
}
TINY_PRIOR = TINY_PRIOR_OPTS["pixelcnn"]


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
    from vqgen.cli import app

    root = tmp_path_factory.mktemp("vq")
    data = make_images(root / "images")
    run = root / "run"
    res = CliRunner().invoke(app, ["train-vqvae", "--data", str(data), "--out", str(run), "--steps", "30",
                                   "--batch-size", "8", "--json", "--cache-dir", str(root / "cache"),
                                   *TINY_VQVAE_ARGS])
    assert res.exit_code == 0, res.output
    return {"data": data, "run": run, "summary": json.loads(res.stdout.strip().splitlines()[-1]), "root": root}


@pytest.fixture(scope="session")
def codes(trained_vqvae):
    """The index grids of every image of trained_vqvae's data (labelled: two classes), shared like it."""
    from vqgen.cli import app

    out = trained_vqvae["root"] / "codes.safetensors"
    res = CliRunner().invoke(app, ["encode", "--vqvae", str(trained_vqvae["run"] / "vqvae.safetensors"),
                                   "--data", str(trained_vqvae["data"]), "--split", "all", "--out", str(out),
                                   "--cache-dir", str(trained_vqvae["root"] / "cache")])
    assert res.exit_code == 0, res.output
    return out


# -- for the tests of runs: one CPU thread, so that runs compare bit for bit -----------------------------------
@pytest.fixture
def one_thread():
    torch.set_num_threads(1)  # bit-exact comparisons need the same thread count in every run; subprocesses too


def invoke(*args):
    """The CLI in this process, on one thread; returns the result whatever the exit code."""
    from vqgen.cli import app

    torch.set_num_threads(1)
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(res):
    assert res.exit_code == 0, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
    return res


def tensors_and_meta(path: Path) -> tuple[dict, dict]:
    """Every tensor and the metadata of a safetensors file, read without vqgen."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def checkpoint_step(run: Path) -> int | None:
    """The step of a run folder's checkpoint, None without one."""
    from vqgen.checkpoint import read_header

    try:
        return int(read_header(run / "checkpoint.safetensors")[1]["step"])
    except Exception:
        return None


@pytest.fixture(scope="session")
def trained_prior(codes, tmp_path_factory):
    """A 2-step class-conditional prior on `codes` (classes cats, dogs), shared like trained_vqvae."""
    from vqgen.cli import app

    run = tmp_path_factory.mktemp("prior") / "run"
    res = CliRunner().invoke(app, ["train-prior", "--codes", str(codes), "--out", str(run), "--steps", "2",
                                   "--batch-size", "8", "--no-amp", "--threads", "1", *TINY_PRIOR])
    assert res.exit_code == 0, res.output
    return run / "prior.safetensors"


def one_error_line(res, code: int = 1) -> str:
    """The one error line of a command refused with `code` (no traceback, nothing else but warnings and notes
    before it); returns it. Exit 2 (misuse) gets a usage message instead: its text, flattened."""
    out = res.output
    assert res.exit_code == code, f"exit {res.exit_code}: {out}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out
    if code == 2:
        assert "Usage: vqgen" in out
        return " ".join(out.replace("│", " ").split())
    errors = [x for x in out.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and len(errors[0]) < 400, out
    return errors[0]


def snapshot(folder: Path) -> dict:
    """Every file below `folder` with its bytes (to show that a refused command changed nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and "_cache" not in p.parts}
