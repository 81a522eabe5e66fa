"""scripts/train-default.sh, the recipe behind the shipped weights, runs end to end (on tiny legs) and resumes.

The script is copied into a scratch tree, so the weights it copies into vqgen/weights/ land there, not in the
package. It runs on tiny networks (VQ_ARGS, PRIOR_ARGS) and tiny step counts; that its defaults are the shipped
network is read from the script itself.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_PRIOR, TINY_VQVAE_ARGS, make_images
from vqgen.checkpoint import file_sha256, read_header
from vqgen.vqvae import VQVAEConfig, read_vqvae_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "scripts" / "train-default.sh"


def _run_recipe(tree: Path, data: Path, runs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA": str(data), "RUN_ROOT": str(runs), "VQ_LEGS": "2 3", "GROWN_LEGS": "2",
           "PRIOR_LEGS": "2 3", "FINETUNE_LEGS": "1 2", "WEAK_LEGS": "2 3",
           "WEAK_ARGS": shlex.join(TINY_PRIOR), "VQ_ARGS": shlex.join(TINY_VQVAE_ARGS),
           "GROWN_ARGS": "--hidden 24 --res-blocks 2 --res-channels 8", "PRIOR_ARGS": shlex.join(TINY_PRIOR),
           "OMP_NUM_THREADS": "2", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(tree / "scripts" / "train-default.sh")], env=env, capture_output=True,
                          text=True, timeout=600)


def _default(name: str) -> list[str]:
    found = re.search(rf'^{name}=\$\{{{name}:-"([^"]*)"\}}', RECIPE.read_text(), re.M)
    assert found, name
    return shlex.split(found.group(1))


def test_recipe_defaults_are_the_default_network_grown_with_512_codes():
    """Without VQ_ARGS the recipe trains the CLI's default network (K=512), then grows it as the shipped one was."""
    assert _default("VQ_ARGS") == []
    assert VQVAEConfig().num_codes == 512 and (VQVAEConfig().hidden, VQVAEConfig().res_blocks) == (128, 2)
    assert _default("GROWN_ARGS") == ["--hidden", "192", "--res-blocks", "4", "--res-channels", "64"]
    assert _default("FINETUNE_LEGS") == ["3000", "6000", "9000", "12000"]
    assert _default("WEAK_LEGS") == ["2500"] and _default("WEAK_ARGS") == ["-o", "channels=64", "-o", "layers=8"]


@pytest.mark.slow
def test_recipe_trains_every_stage_copies_a_matching_pair_and_resumes_legs(tmp_path):
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / "vqgen" / "weights").mkdir(parents=True)
    shutil.copy(RECIPE, tree / "scripts")
    data = make_images(tmp_path / "images", per_class=12, size=16)
    runs = tmp_path / "runs"

    res = _run_recipe(tree, data, runs)
    assert res.returncode == 0, res.stderr[-3000:]
    vq, prior = tree / "vqgen" / "weights" / "vqvae.safetensors", tree / "vqgen" / "weights" / "prior.safetensors"
    cfg = read_vqvae_config(vq)
    assert (cfg.hidden, cfg.res_blocks, cfg.num_codes) == (24, 2, 16)  # VQ_ARGS' network, grown as GROWN_ARGS says
    meta = read_header(prior)[1]
    assert meta["vqvae_sha256"] == file_sha256(vq)  # the prior learned the shipped VQ-VAE's codes
    assert json.loads(meta["config"])["label_dropout"] == 0.1  # the fine-tuned prior, with its null class
    weak = read_header(tree / "vqgen" / "weights" / "prior-weak.safetensors")[1]
    assert weak["vqvae_sha256"] == file_sha256(vq) and weak["num_codes"] == meta["num_codes"]
    assert json.loads(read_header(runs / "prior" / "prior.safetensors")[1]["config"])["label_dropout"] == 0
    figures = json.loads((runs / "evaluate-val.json").read_text())
    assert figures["vqvae"].endswith("vqgen/weights/vqvae.safetensors") and figures["codes_used"] >= 1
    for stage in ("vq", "prior", "prior-cfg", "prior-weak"):  # each stage's second leg continued its first
        events = [json.loads(x).get("event") for x in (runs / stage / "metrics.jsonl").read_text().splitlines()]
        assert events.count("resume") == 1, stage
        assert f"resuming {runs / stage} at step" in res.stderr
    # a re-run passes legs already trained: tests/test_resume.py shows such a leg keeps the files as they are
