import json

import torch
from PIL import Image

from tests.conftest import TINY_VQVAE_ARGS
from vqgen.codes import read_codes
from vqgen.checkpoint import file_sha256


def test_version_and_help(cli):
    from vqgen import __version__

    assert __version__ in cli("--version").stdout
    for cmd in ("train-vqvae", "reconstruct", "encode", "train-prior", "sample"):
        out = cli(cmd, "--help").stdout
        assert "Example: vqgen " + cmd in out.replace("\n", " ") or "Example:" in out


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from vqgen.cli import app; app(['--help'], standalone_mode=False); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_train_vqvae_writes_run_folder(trained_vqvae):
    run, summary = trained_vqvae["run"], trained_vqvae["summary"]
    for name in ("vqvae.safetensors", "checkpoint.safetensors", "metrics.jsonl", "reconstructions.png"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "config" and records[0]["world_size"] == 1
    assert records[0]["vqvae_config"]["num_codes"] == 16
    assert any(r.get("event") == "eval" for r in records)
    for key in ("val_mse", "val_psnr", "codes_used", "perplexity", "images_per_s"):
        assert key in summary
    assert summary["steps"] == 30 and 0 < summary["codes_used"] <= 16
    assert not list(run.glob("*.tmp"))  # atomic writes leave no temporaries behind


def test_reconstruct_grid_and_folder(cli, trained_vqvae, tmp_path):
    w = trained_vqvae["run"] / "vqvae.safetensors"
    data = trained_vqvae["data"]
    res = cli("reconstruct", "--vqvae", w, data / "cats", data / "dogs" / "000.png", "--out", tmp_path / "g.png",
              "--json")
    s = json.loads(res.stdout)
    assert s["images"] == 13 and s["psnr"] > 0
    grid = Image.open(tmp_path / "g.png")
    assert grid.size[0] > 16 * 8 and grid.size[1] > 16 * 2
    cli("reconstruct", "--vqvae", w, data, "--out", tmp_path / "recon")
    assert (tmp_path / "recon" / "cats" / "000.png").exists()
    assert Image.open(tmp_path / "recon" / "dogs" / "011.png").size == (16, 16)


def test_encode_writes_valid_index_grids(cli, trained_vqvae, tmp_path):
    w = trained_vqvae["run"] / "vqvae.safetensors"
    out = tmp_path / "codes.safetensors"
    s = json.loads(cli("encode", "--vqvae", w, "--data", trained_vqvae["data"], "--out", out, "--split", "all",
                       "--json").stdout)
    cs = read_codes(out)
    assert len(cs) == 24 == s["grids"] and (cs.height, cs.width) == (4, 4) and cs.num_codes == 16
    assert cs.class_names == ["cats", "dogs"] and cs.labels.tolist() == [0] * 12 + [1] * 12
    assert cs.vqvae_sha256 == file_sha256(w)
    # the grids are the model's own encoding of the images
    from vqgen.data import load_images
    from vqgen.vqvae import load_vqvae

    m, _ = load_vqvae(w)
    imgs = load_images(str(trained_vqvae["data"]), 16).images
    assert torch.equal(cs.codes, m.encode(imgs.float() / 255))
    tr = tmp_path / "tr.safetensors"
    va = tmp_path / "va.safetensors"
    cli("encode", "--vqvae", w, "--data", trained_vqvae["data"], "--out", tr)
    cli("encode", "--vqvae", w, "--data", trained_vqvae["data"], "--out", va, "--split", "val")
    assert len(read_codes(tr)) + len(read_codes(va)) == 24


def test_encode_flip_appends_the_codes_of_mirrored_images(cli, trained_vqvae, tmp_path):
    from vqgen.data import load_images
    from vqgen.vqvae import load_vqvae

    w = trained_vqvae["run"] / "vqvae.safetensors"
    out = tmp_path / "codes.safetensors"
    s = json.loads(cli("encode", "--vqvae", w, "--data", trained_vqvae["data"], "--out", out, "--split", "all",
                       "--flip", "--json").stdout)
    cs = read_codes(out)
    assert len(cs) == 48 == s["grids"] and s["flip"] is True and cs.source.endswith("#all+flip")
    assert cs.labels.tolist() == ([0] * 12 + [1] * 12) * 2
    m, _ = load_vqvae(w)
    x = load_images(str(trained_vqvae["data"]), 16).images.float() / 255
    assert torch.equal(cs.codes[:24], m.encode(x)) and torch.equal(cs.codes[24:], m.encode(x.flip(3)))
    # they really are the mirrored images' codes, not the grids mirrored: this tiny encoder is not equivariant
    assert not torch.equal(cs.codes[24:], cs.codes[:24].flip(2))


def test_encode_shift_appends_the_codes_of_translated_images(cli, trained_vqvae, tmp_path):
    from vqgen.data import load_images
    from vqgen.vqvae import load_vqvae

    w, data = trained_vqvae["run"] / "vqvae.safetensors", trained_vqvae["data"]
    base = ["encode", "--vqvae", w, "--data", data, "--split", "all", "--flip", "--json"]
    s = json.loads(cli(*base, "--out", tmp_path / "a.safetensors", "--shift", "2", "--seed", "3").stdout)
    cs = read_codes(tmp_path / "a.safetensors")
    assert len(cs) == 96 == s["grids"] and s["shift"] == 2 and cs.source.endswith("#all+flip+shift2s3")
    assert cs.labels.tolist() == ([0] * 12 + [1] * 12) * 4
    m, _ = load_vqvae(w)
    x = load_images(str(data), 16).images.float() / 255
    assert torch.equal(cs.codes[:24], m.encode(x)) and torch.equal(cs.codes[24:48], m.encode(x.flip(3)))
    # each shifted copy is one of the image's non-zero translations (by at most 2 pixels), encoded afresh
    from vqgen.vqvae import shift_images

    for i in (0, 5, 17):
        for copy, src in ((2, x), (3, x.flip(3))):
            trials = {(dy, dx): m.encode(shift_images(src[i : i + 1], 2, torch.tensor([[dy, dx]])))
                      for dy in range(5) for dx in range(5) if (dy, dx) != (2, 2)}
            assert any(torch.equal(cs.codes[24 * copy + i], t[0]) for t in trials.values())
    again = tmp_path / "b.safetensors"
    cli(*base, "--out", again, "--shift", "2", "--seed", "3")
    assert torch.equal(read_codes(again).codes, cs.codes)  # the same seed gives the same offsets
    res = cli(*base, "--out", tmp_path / "c.safetensors", "--shift", "8", ok=False)
    assert res.exit_code == 1 and "--shift must be between 0 and 7" in res.output
    assert not (tmp_path / "c.safetensors").exists()


def test_encode_shift_copies_are_different_translations(cli, trained_vqvae, tmp_path):
    from vqgen.data import load_images
    from vqgen.vqvae import load_vqvae, shift_images

    w, data = trained_vqvae["run"] / "vqvae.safetensors", trained_vqvae["data"]
    base = ["encode", "--vqvae", w, "--data", data, "--split", "all", "--shift", "1", "--seed", "4", "--json"]
    s = json.loads(cli(*base, "--shift-copies", "8", "--out", tmp_path / "all.safetensors").stdout)
    cs = read_codes(tmp_path / "all.safetensors")
    assert len(cs) == 24 * 9 == s["grids"] and s["shift_copies"] == 8 and cs.source.endswith("#all+shift1x8s4")
    # 8 copies of a 1-pixel shift are all 8 non-zero translations, each once, in a seeded order
    m, _ = load_vqvae(w)
    x = load_images(str(data), 16).images.float() / 255
    for i in (0, 7, 23):
        every = [m.encode(shift_images(x[i : i + 1], 1, torch.tensor([[dy, dx]])))[0].flatten().tolist()
                 for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
        got = [cs.codes[24 * (1 + c) + i].flatten().tolist() for c in range(8)]
        assert sorted(got) == sorted(every)
    # one copy is what --shift alone draws, and the first copy of many
    cli(*base, "--out", tmp_path / "one.safetensors")
    one = read_codes(tmp_path / "one.safetensors")
    assert one.source.endswith("#all+shift1s4") and torch.equal(one.codes, cs.codes[:48])
    for bad, msg in ((["--shift-copies", "9"], "--shift-copies must be between 1 and 8"),
                     (["--shift", "0", "--shift-copies", "2"], "give --shift N (N > 0) with it")):
        res = cli(*base, *bad, "--out", tmp_path / "bad.safetensors", ok=False)
        assert res.exit_code == 2 and msg in res.output and not (tmp_path / "bad.safetensors").exists()  # misuse

def test_train_vqvae_resume_continues_to_more_steps(cli, image_folder, tmp_path):
    run = tmp_path / "run"
    args = ["train-vqvae", "--data", image_folder, "--out", run, "--batch-size", "8", *TINY_VQVAE_ARGS]
    cli(*args, "--steps", "6")
    res = cli("train-vqvae", "--out", run, "--resume", "--steps", "10", "--json")
    assert json.loads(res.stdout)["steps"] == 10
    res = cli(*args, "--steps", "6", ok=False)  # a second fresh run into the same folder is refused
    assert res.exit_code == 1 and "--resume" in res.output


def test_train_vqvae_shift_out_of_range_is_refused_before_any_output(cli, image_folder, tmp_path):
    run = tmp_path / "run"
    args = ["train-vqvae", "--data", image_folder, "--out", run, "--steps", "2", *TINY_VQVAE_ARGS]
    res = cli(*args, "--shift", "-1", ok=False)  # misuse: exit 2
    assert res.exit_code == 2 and "--shift" in res.output
    res = cli(*args, "--shift", "8", ok=False)  # 16-pixel images: reflect padding allows at most 7
    assert res.exit_code == 1 and "--shift must be between 0 and 7 pixels, got 8" in res.output
    assert "Traceback" not in res.output and not (run / "vqvae.safetensors").exists()


def test_train_vqvae_rotation_gradient_is_stored_and_bad_names_are_misuse(cli, image_folder, tmp_path):
    from vqgen.vqvae import load_vqvae

    run = tmp_path / "rot"
    args = ["train-vqvae", "--data", image_folder, "--batch-size", "8", "--steps", "3", *TINY_VQVAE_ARGS]
    cli(*args, "--out", run, "--gradient", "rotation")
    m, _ = load_vqvae(run / "vqvae.safetensors")
    assert m.config.gradient == "rotation" and m.quantizer.gradient == "rotation"
    res = cli(*args, "--out", tmp_path / "bad", "--gradient", "copy", ok=False)
    assert res.exit_code == 2 and "must be ste or rotation" in res.output
    assert not (tmp_path / "bad").exists()
