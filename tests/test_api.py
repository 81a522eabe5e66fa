"""The Python API of docs/python-api.md: its example runs as written, and the command line draws what it draws."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vqgen
from vqgen.images import to_uint8

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


@pytest.mark.slow  # samples the shipped models
def test_the_documented_example_runs():
    example = DOC.read_text().split("## Example", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", example, re.S)
    assert len(blocks) == 1, "docs/python-api.md should hold one example under '## Example'"
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "python_api_example"})


@pytest.mark.slow  # samples the shipped models
def test_generate_draws_what_the_sample_command_writes(cli, tmp_path):
    cli("sample", "--n", 3, "--class", "cat", "--seed", 4, "--out", tmp_path / "cats")
    written = [np.array(Image.open(tmp_path / "cats" / f"sample_{i}.png")) for i in range(3)]
    drawn = to_uint8(vqgen.generate(3, class_name="cat", seed=4)).permute(0, 2, 3, 1).numpy()
    assert all(np.array_equal(a, b) for a, b in zip(written, drawn))


def test_load_functions_take_paths_and_devices(trained_vqvae):
    vq = vqgen.load_vqvae(trained_vqvae["run"] / "vqvae.safetensors", device=torch.device("cpu"))
    assert vq.config.num_codes == 16 and not vq.training
    assert vq.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 4)
