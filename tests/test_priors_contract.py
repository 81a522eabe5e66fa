"""The contract every registered prior must meet (built-ins and installed plugins alike): priors.contract, one test
per prior and property, so a new prior (or a plugin installed in this environment) is checked automatically."""

from __future__ import annotations

import pytest
import torch

from priors import AutoregressivePrior, Prior, get_prior, list_priors
from priors.contract import check, properties
from priors.sampling_utils import draw, filter_logits
from vqgen.errors import ConfigError

NAMES = sorted(list_priors())
CASES = [(name, prop) for name in NAMES for prop in properties(name)]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with each other


@pytest.mark.parametrize("name,prop", CASES, ids=[f"{n}-{p.replace(' ', '_')}" for n, p in CASES])
def test_contract(name, prop):
    check(name, prop)


def test_builtins_registered_with_their_kinds():
    assert {"pixelcnn", "transformer", "maskgit"} <= set(NAMES)
    assert all(list_priors()[n] == "built-in" for n in ("pixelcnn", "transformer", "maskgit"))
    assert issubclass(get_prior("pixelcnn"), AutoregressivePrior) and get_prior("pixelcnn").likelihood == "exact"
    maskgit = get_prior("maskgit")
    assert issubclass(maskgit, Prior) and not issubclass(maskgit, AutoregressivePrior)
    assert maskgit.likelihood == "bound" and maskgit.sampling_fields == ("steps", "choice_temperature")


def test_the_properties_follow_the_kind():
    raster, masked = set(properties("pixelcnn")), set(properties("maskgit"))
    assert masked < raster
    assert {"raster causality by perturbation", "fast sampler equals the naive loop"} <= raster - masked
    assert {"known positions kept exactly", "seeds", "declared likelihood", "guidance"} <= masked


def test_unknown_prior_lists_known():
    with pytest.raises(ConfigError, match=r"unknown prior 'nope'; known priors: maskgit, pixelcnn, transformer"):
        get_prior("nope")


def test_filter_logits_and_draw():
    lg = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(lg, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(lg, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(lg, top_p=0.79)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(lg, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(lg, top_p=1.0)).all()
    torch.testing.assert_close(filter_logits(lg, temperature=2.0), lg / 2)
    # temperature reshapes the distribution as softmax(logits / T)
    many = lg.expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    hot = torch.bincount(draw(many, temperature=100.0, generator=g), minlength=4) / 20000
    assert (hot - 0.25).abs().max() < 0.02
    cold = torch.bincount(draw(many, temperature=1.0, generator=torch.Generator().manual_seed(0)), minlength=4) / 20000
    assert (cold - torch.tensor([0.5, 0.3, 0.15, 0.05])).abs().max() < 0.02
