"""vqgen inpaint and vqgen.inpaint: the kept codes are the images' own, bit for bit; the region is drawn anew from
the prior (differently for another seed); raster priors complete only what follows the codes they keep."""

import json

import pytest
import torch
from PIL import Image

from tests.conftest import TINY_PRIOR_OPTS
from vqgen.codes import read_codes


@pytest.fixture(scope="module")
def pair(trained_vqvae, codes, tmp_path_factory):
    """The tiny VQ-VAE and a tiny pixelcnn and maskgit trained on its codes (class-conditional, with a null class)."""
    from typer.testing import CliRunner

    from vqgen.cli import app

    root = tmp_path_factory.mktemp("inpaint")
    out = {"vqvae": trained_vqvae["run"] / "vqvae.safetensors", "data": trained_vqvae["data"]}
    for name in ("pixelcnn", "maskgit"):
        res = CliRunner().invoke(app, ["train-prior", "--codes", str(codes), "--prior", name, *TINY_PRIOR_OPTS[name],
                                       "--out", str(root / name), "--steps", "10", "--batch-size", "8",
                                       "--val-fraction", "0.25", "--no-amp"])
        assert res.exit_code == 0, res.output
        out[name] = root / name / "prior.safetensors"
    return out


def own_codes(pair, files):
    from vqgen.data import load_inputs
    from vqgen.vqvae import load_vqvae

    vq, _ = load_vqvae(pair["vqvae"])
    return vq.encode(load_inputs([str(f) for f in files], 16).images)


def images(pair, k=3):
    return sorted((pair["data"] / "cats").iterdir())[:k]


@pytest.mark.parametrize("prior,region,regenerated", [
    ("pixelcnn", "bottom", [(2, 0), (3, 3)]),
    ("maskgit", "center", [(1, 1), (2, 2)]),
    ("maskgit", "top", [(0, 0), (1, 3)]),
])
def test_kept_codes_are_the_images_own(cli, pair, tmp_path, prior, region, regenerated):
    count = 4 if region == "center" else 8
    files = images(pair)
    out, saved = tmp_path / "out.png", tmp_path / "codes.safetensors"
    s = json.loads(cli("inpaint", *files, "--region", region, "--n", "2", "--prior", pair[prior], "--vqvae",
                       pair["vqvae"], "--out", out, "--save-codes", saved, "--seed", "3", "--json").stdout)
    assert s["images"] == 3 and s["completions"] == 2 and s["regenerated"] == count and s["positions"] == 16
    assert s["kept_psnr"] > 0 and s["kept_psnr_reconstruction"] > 0
    from vqgen.inpainting import region_mask

    keep = ~region_mask(region, 4, 4)
    assert all(not keep[p] for p in regenerated)
    got = read_codes(saved).codes.view(3, 2, 4, 4)
    mine = own_codes(pair, files)
    assert torch.equal(got[:, :, keep], mine[:, None, keep].expand(3, 2, -1))  # bit for bit
    assert not torch.equal(got[:, 0], got[:, 1])  # two completions of the same image differ
    # the picture: a row per image of original, masked input and the 2 completions, 18 px cells
    assert Image.open(out).size == (4 * 18 + 2, 3 * 18 + 2)


def test_default_temperature_is_inpaints_own(cli, pair, tmp_path):
    """Unset --temperature means INPAINT_TEMPERATURE (not sampling's guided 1.05): the same codes, reported. The
    tiny prior's draws barely move between 1 and 1.05, so a far temperature shows that the codes can differ."""
    from vqgen.inpainting import INPAINT_TEMPERATURE
    from vqgen.sampling import GUIDED_TEMPERATURE

    assert INPAINT_TEMPERATURE != GUIDED_TEMPERATURE
    base = ["inpaint", *images(pair), "--region", "bottom", "--n", "4", "--prior", pair["pixelcnn"], "--vqvae",
            pair["vqvae"], "--seed", "5", "--json"]
    grids, reported = {}, {}
    for tag, extra in (("unset", []), ("own", ["--temperature", INPAINT_TEMPERATURE]),
                       ("guided", ["--temperature", GUIDED_TEMPERATURE]), ("far", ["--temperature", 4])):
        saved = tmp_path / f"{tag}.safetensors"
        out = cli(*base, *extra, "--out", tmp_path / f"{tag}.png", "--save-codes", saved).stdout
        reported[tag] = json.loads(out)["temperature"]
        grids[tag] = read_codes(saved).codes
    assert reported == {"unset": INPAINT_TEMPERATURE, "own": INPAINT_TEMPERATURE, "guided": GUIDED_TEMPERATURE,
                        "far": 4}
    assert torch.equal(grids["unset"], grids["own"]) and not torch.equal(grids["unset"], grids["far"])
    text = " ".join(cli("inpaint", "--help").stdout.replace("│", " ").split())
    assert f"(default: {INPAINT_TEMPERATURE:g})" in text


def test_completions_differ_across_seeds_and_repeat_for_a_seed(cli, pair, tmp_path):
    files = images(pair, 2)
    base = ["inpaint", *files, "--region", "right", "--n", "3", "--prior", pair["maskgit"], "--vqvae", pair["vqvae"]]
    grids = {}
    for tag, seed in (("a", 1), ("b", 1), ("c", 2)):
        cli(*base, "--seed", seed, "--out", tmp_path / f"{tag}.png", "--save-codes", tmp_path / f"{tag}.safetensors")
        grids[tag] = read_codes(tmp_path / f"{tag}.safetensors").codes
    assert torch.equal(grids["a"], grids["b"]) and (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not torch.equal(grids["a"], grids["c"])


def test_a_mask_image_is_resized_to_the_grid(pair, tmp_path):
    from vqgen.inpainting import region_mask

    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[17, 30] = 255  # one pixel: grid position (2, 3) of a 4x4 grid of 8-pixel cells
    mask[0:8, 0:8] = 100  # grey, not white: kept
    Image.fromarray(mask.numpy()).save(tmp_path / "m.png")
    got = region_mask(tmp_path / "m.png", 4, 4)
    assert got.nonzero().tolist() == [[2, 3]]
    assert region_mask("center", 8, 8).nonzero().tolist() == [[i, j] for i in range(2, 6) for j in range(2, 6)]
    assert region_mask("bottom", 8, 8)[4:].all() and not region_mask("bottom", 8, 8)[:4].any()
    assert region_mask("left", 8, 8)[:, :4].all() and not region_mask("left", 8, 8)[:, 4:].any()


def test_a_raster_prior_completes_a_mask_that_follows_what_it_keeps(cli, pair, tmp_path):
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[4:8, 8:] = 255  # positions (1, 2), (1, 3) ...
    mask[8:] = 255  # ... and the last two rows: kept codes are the first 6 in raster order
    Image.fromarray(mask.numpy()).save(tmp_path / "m.png")
    files = images(pair, 2)
    cli("inpaint", *files, "--region", tmp_path / "m.png", "--n", "2", "--prior", pair["pixelcnn"], "--vqvae",
        pair["vqvae"], "--out", tmp_path / "o.png", "--save-codes", tmp_path / "c.safetensors")
    got = read_codes(tmp_path / "c.safetensors").codes.view(2, 2, 16)
    assert torch.equal(got[:, :, :6], own_codes(pair, files).view(2, 1, 16)[:, :, :6].expand(2, 2, 6))


@pytest.mark.parametrize("region", ["top", "center", "left"])
def test_a_raster_prior_refuses_other_regions_naming_one_that_can(cli, pair, tmp_path, region):
    res = cli("inpaint", images(pair, 1)[0], "--region", region, "--prior", pair["pixelcnn"], "--vqvae", pair["vqvae"],
              "--out", tmp_path / "o.png", ok=False)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "raster order" in res.output and "maskgit" in res.output and "--region bottom" in res.output
    assert not (tmp_path / "o.png").exists()


def test_refusals(cli, pair, tmp_path):
    first = images(pair, 1)[0]
    before = first.read_bytes()
    base = ["inpaint", "--prior", pair["maskgit"], "--vqvae", pair["vqvae"]]
    res = cli(*base, first, "--region", "bottom", "--out", first, ok=False)  # the output would be an input
    assert res.exit_code == 1 and "would overwrite the INPUTS file" in res.output and first.read_bytes() == before
    res = cli(*base, pair["data"], "--region", "bottom", "--out", first, ok=False)  # an image inside an input folder
    assert res.exit_code == 1 and "is inside the INPUTS folder" in res.output and first.read_bytes() == before
    res = cli(*base, first, "--region", "middle", "--out", tmp_path / "o.png", ok=False)
    assert res.exit_code == 2 and "--region" in res.output
    res = cli(*base, first, "--region", "bottom", "--out", tmp_path / "o.jpg", ok=False)
    assert res.exit_code == 2 and ".png" in res.output
    Image.new("L", (16, 16)).save(tmp_path / "black.png")
    res = cli(*base, first, "--region", tmp_path / "black.png", "--out", tmp_path / "o.png", ok=False)
    assert res.exit_code == 1 and "regenerates no position" in res.output
    res = cli(*base, first, "--region", "bottom", "--guidance", "2", "--out", tmp_path / "o.png", ok=False)
    assert res.exit_code == 1 and "--class" in res.output  # guidance without a class steers towards nothing
    assert not (tmp_path / "o.png").exists()


def test_python_api(pair):
    import vqgen
    from vqgen.data import load_inputs

    pixels = load_inputs([str(f) for f in images(pair, 2)], 16).images
    done, grids = vqgen.inpaint(pixels, region="left", n=2, class_name="dogs", prior=pair["maskgit"],
                                vqvae=pair["vqvae"], seed=0, return_codes=True)
    assert done.shape == (2, 2, 3, 16, 16) and grids.shape == (2, 2, 4, 4)
    assert 0 <= float(done.min()) and float(done.max()) <= 1
    mine = vqgen.load_vqvae(pair["vqvae"]).encode(pixels)
    assert torch.equal(grids[:, :, :, 2:], mine[:, None, :, 2:].expand(2, 2, 4, 2))
    again = vqgen.inpaint(pixels, region="left", n=2, class_name="dogs", prior=pair["maskgit"], vqvae=pair["vqvae"],
                          seed=0)
    assert torch.equal(again, done)


def test_guidance_schedule_in_completions(pair):
    """inpaint's default schedule is its own (INPAINT_GUIDANCE_SCHEDULE); the two schedules draw different
    completions and both keep the kept codes."""
    import vqgen
    from vqgen.data import load_inputs
    from vqgen.inpainting import INPAINT_GUIDANCE_SCHEDULE

    pixels = load_inputs([str(f) for f in images(pair, 2)], 16).images
    # a tiny prior is nearly deterministic: many draws at a high temperature show the weights' difference
    kw = dict(region="bottom", n=16, class_name="dogs", prior=pair["pixelcnn"], vqvae=pair["vqvae"], seed=0,
              guidance=8, temperature=2.0, return_codes=True)
    _, default = vqgen.inpaint(pixels, **kw)
    _, constant = vqgen.inpaint(pixels, **kw, guidance_schedule="constant")
    _, linear = vqgen.inpaint(pixels, **kw, guidance_schedule="linear")
    assert torch.equal(default, {"constant": constant, "linear": linear}[INPAINT_GUIDANCE_SCHEDULE])
    assert not torch.equal(constant, linear)
    assert torch.equal(linear[:, :, :2], constant[:, :, :2])  # the kept top half is the images' own either way
