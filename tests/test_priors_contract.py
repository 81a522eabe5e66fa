"""The contract every registered prior must meet (built-ins and installed plugins alike).

Each test is parametrized over list_priors(), so a new prior (or a plugin installed in this environment) is
checked automatically; the checks are plain functions of the registry name, so test_prior_plugins.py can
run them on a plugin it registers itself. Sizes come from `Prior.tiny_config()` (K=16, 4x4 grid).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from priors import Prior, get_prior, list_priors
from priors.sampling_utils import draw, filter_logits
from vqgen.errors import ConfigError

NAMES = sorted(list_priors())
POSITIONS = [(0, 0), (0, 2), (1, 0), (1, 3), (2, 1), (3, 3)]  # first cell, first/last columns, the last cell


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with each other


def make(name: str, seed: int = 0, **overrides) -> Prior:
    cls = get_prior(name)
    torch.manual_seed(seed)
    return cls(cls.tiny_config(**overrides)).eval()


def grids(prior: Prior, b: int, seed: int = 1) -> torch.Tensor:
    c = prior.config
    return torch.randint(0, c.num_codes, (b, c.height, c.width), generator=torch.Generator().manual_seed(seed))


def labels_for(prior: Prior, b: int) -> torch.Tensor | None:
    return torch.arange(b) % prior.config.num_classes if prior.config.num_classes else None


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the checks (plain functions of a registry name) -----------------------------------------------------------
def check_registered(name):
    cls = get_prior(name)
    assert issubclass(cls, Prior) and cls.name == name
    cfg = cls.tiny_config()
    assert (cfg.num_codes, cfg.height, cfg.width, cfg.num_classes) == (16, 4, 4, 0)


def check_config_roundtrip(name):
    prior = make(name, num_classes=2)
    d = json.loads(json.dumps(asdict(prior.config)))  # what train-prior stores in the weights' metadata
    cls = get_prior(prior.name)
    again = cls(cls.config_class(**d))
    assert again.config == prior.config
    again.load_state_dict(prior.state_dict())
    again.eval()
    x, y = grids(prior, 3), torch.tensor([0, 1, 1])
    torch.testing.assert_close(again.logits(x, y), prior.logits(x, y))


def check_logits_loss_log_prob(name):
    prior = make(name)
    x = grids(prior, 5)
    lg = prior.logits(x)
    assert lg.shape == (5, 16, 4, 4) and lg.dtype == torch.float32
    loss = prior.loss(x)
    assert loss.shape == () and torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(lg, x))
    lp = prior.log_prob(x)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    torch.testing.assert_close(-lp.sum() / x.numel(), loss)


def check_loss_falls(name):
    prior = make(name)
    prior.train()
    x = grids(prior, 8)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = prior.loss(x)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(prior.loss(x).detach())
    assert last < first - 0.5, f"loss {first:.3f} -> {last:.3f} after 40 Adam steps on 8 fixed grids"


def check_sample_shape_and_seed(name):
    prior = make(name)
    a = prior.sample(6, generator=gen(3))
    assert a.shape == (6, 4, 4) and a.dtype == torch.long and a.device == prior.device
    assert int(a.min()) >= 0 and int(a.max()) < 16
    assert torch.equal(a, prior.sample(6, generator=gen(3)))
    assert not torch.equal(a, prior.sample(6, generator=gen(4)))
    a[0, 0, 0] = 1  # an ordinary tensor (not an inference-mode one): the caller may modify it


def check_fast_sampler_matches_naive(name, num_classes=0):
    """`generate` (fast) must see the same logits at every step as `generate_naive` and so draw the same codes."""
    prior = make(name, num_classes=num_classes)
    n = 5
    labels = labels_for(prior, n)
    records = {}
    for kind in ("fast", "naive"):
        g, seen = gen(11), []

        def pick(step_logits, g=g, seen=seen):
            seen.append(step_logits.clone())
            return draw(step_logits, generator=g)

        fn = prior.generate if kind == "fast" else prior.generate_naive
        with torch.inference_mode():
            records[kind] = (fn(n, labels, pick), seen)
    (fast, fast_logits), (naive, naive_logits) = records["fast"], records["naive"]
    assert len(fast_logits) == len(naive_logits) == 16
    for step, (a, b) in enumerate(zip(fast_logits, naive_logits)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"step {step}: {m}")
    assert torch.equal(fast, naive)
    # and through the public API, with filters on
    kw = dict(labels=labels, temperature=0.8, top_k=7, top_p=0.9)
    assert torch.equal(prior.sample(n, generator=gen(5), **kw), prior.sample_naive(n, generator=gen(5), **kw))


def _code_embedding_grads(prior, codes, labels, pos):
    """|d(random projection of logits at pos) / d(code embedding)| summed per raster position, shape (H*W,)."""
    c = prior.config
    T = c.height * c.width
    embs = [m for m in prior.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == c.num_codes]
    if not embs:
        pytest.skip(f"{prior.name} has no nn.Embedding(num_codes, .); causality is checked by perturbation only")
    captured = []

    def hook(module, inputs, out):
        if inputs[0].shape[0] == codes.shape[0] and inputs[0].numel() == codes.numel():
            out = out.detach().requires_grad_(True)
            captured.append(out)
            return out

    handles = [m.register_forward_hook(hook) for m in embs]
    try:
        lg = prior.logits(codes, labels)
    finally:
        for h in handles:
            h.remove()
    assert captured, "the code embedding was not applied to the code grid"
    proj = torch.randn(c.num_codes, generator=gen(0))
    (lg[:, :, pos[0], pos[1]] * proj).sum().backward()
    total = torch.zeros(T)
    for out in captured:
        assert out.shape[1:3] == (c.height, c.width) or out.shape[1] == T, (
            f"code embedding output {tuple(out.shape)} is not laid out by position (b, H, W, ...) or (b, H*W, ...)")
        if out.grad is not None:
            total += out.grad.reshape(out.shape[0], T, -1).abs().sum((0, 2))
    return total


def check_causality_by_gradient(name, positions=POSITIONS, prior=None):
    prior = prior or make(name, num_classes=2)
    c = prior.config
    x = grids(prior, 2)
    for i, j in positions:
        g = _code_embedding_grads(prior, x, labels_for(prior, 2), (i, j))
        p = i * c.width + j
        assert (g[p:] == 0).all(), f"logits at {(i, j)} depend on positions {(g[p:] != 0).nonzero().flatten().tolist()} at/after it"
        if prior.full_context:
            blind = (g[:p] == 0).nonzero().flatten().tolist()
            assert not blind, f"logits at {(i, j)} ignore earlier positions {[divmod(q, c.width) for q in blind]}"


def check_causality_by_perturbation(name):
    prior = make(name)
    c = prior.config
    x = grids(prior, 3)
    base = prior.logits(x)
    for i, j in POSITIONS:
        p = i * c.width + j
        after = x.clone().view(3, -1)
        after[:, p:] = (after[:, p:] + 1 + torch.randint(0, 15, after[:, p:].shape, generator=gen(p))) % 16
        torch.testing.assert_close(prior.logits(after.view_as(x))[:, :, i, j], base[:, :, i, j], atol=1e-6, rtol=0)
        if prior.full_context:
            for q in range(p):
                before = x.clone().view(3, -1)
                before[:, q] = (before[:, q] + 1) % 16
                changed = prior.logits(before.view_as(x))[:, :, i, j]
                assert not torch.equal(changed, base[:, :, i, j]), f"{(i, j)} ignores position {divmod(q, c.width)}"


def check_class_conditioning(name):
    prior = make(name, num_classes=3)
    x = grids(prior, 4)
    l0 = prior.logits(x, torch.zeros(4, dtype=torch.long))
    l1 = prior.logits(x, torch.ones(4, dtype=torch.long))
    assert (l0 - l1).abs().amax() > 1e-5, "logits do not depend on the class label"
    for call in (lambda: prior.sample(2), lambda: prior.loss(x), lambda: prior.log_prob(x), lambda: prior.logits(x)):
        with pytest.raises(ConfigError, match="class-conditional"):
            call()
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        prior.sample(2, labels=torch.tensor([0, 3]))
    s = prior.sample(2, labels=1, generator=gen(0))  # an int label is broadcast
    assert torch.equal(s, prior.sample(2, labels=torch.tensor([1, 1]), generator=gen(0)))
    lp = prior.log_prob(x, torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(-lp.sum() / x.numel(), prior.loss(x, torch.tensor([0, 1, 2, 0])))
    uncond = make(name)
    with pytest.raises(ConfigError, match="unconditional"):
        uncond.sample(2, labels=torch.tensor([0, 1]))


def check_sampling_filters(name):
    prior = make(name)

    def greedy_pick(step_logits):
        return step_logits.argmax(-1)

    with torch.inference_mode():
        greedy = prior.generate_naive(4, None, greedy_pick)
    for seed in (0, 1, 2):
        assert torch.equal(prior.sample(4, top_k=1, generator=gen(seed)), greedy)
        assert torch.equal(prior.sample(4, top_p=1e-6, generator=gen(seed)), greedy)
    # a very low temperature is (numerically) greedy too
    assert torch.equal(prior.sample(4, temperature=1e-6, generator=gen(7)), greedy)
    # filtered sampling only ever draws codes the filter keeps
    seen = []

    def check_pick(step_logits, g=gen(9)):
        kept = torch.isfinite(filter_logits(step_logits, 1.0, 3, None))
        code = draw(step_logits, 1.0, 3, None, g)
        seen.append(bool(kept.gather(1, code[:, None]).all()))
        return code

    with torch.inference_mode():
        prior.generate(8, None, check_pick)
    assert all(seen)
    for bad in (dict(temperature=0), dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ConfigError):
            prior.sample(2, **bad)
    with pytest.raises(ConfigError):
        prior.sample(0)


def check_default_config_sees_whole_past(name):
    """At the default config every position sees every earlier one (pixelcnn: its receptive field covers the grid)."""
    cls = get_prior(name)
    torch.manual_seed(0)
    prior = cls(cls.config_class()).eval()
    c = prior.config
    corners = [(1, 0), (c.height - 1, 0), (c.height - 1, c.width - 1)]
    check_causality_by_gradient(name, positions=[p for p in corners if p[0] < c.height], prior=prior)


def check_sample_keeps_mode(name):
    prior = make(name)
    prior.train()
    prior.sample(2, generator=gen(0))
    assert prior.training
    assert all(p.grad is None for p in prior.parameters())


def check_guidance(name):
    """Classifier-free guidance: exact in the fast sampler, off at 0, refused where it has no meaning."""
    cls = get_prior(name)
    if not cls.supports_null_class:
        with pytest.raises(ConfigError, match="null class"):
            make(name, num_classes=3, label_dropout=0.1)
        with pytest.raises(ConfigError, match="guidance"):
            make(name, num_classes=3).sample(2, labels=torch.tensor([0, 1]), guidance=1.0)
        return
    prior = make(name, num_classes=3, label_dropout=0.1)
    assert prior.has_null_class and prior.null_label == 3 and prior.num_label_slots == 4
    n, labels = 5, torch.tensor([0, 1, 2, 0, 1])
    plain = prior.sample(n, labels=labels, generator=gen(5))
    for w in (0, 0.0, None):  # no guidance is plain conditional sampling, bit for bit
        assert torch.equal(prior.sample(n, labels=labels, generator=gen(5), guidance=w), plain)
    kw = dict(labels=labels, temperature=0.9, top_k=9, guidance=2.0)
    guided = prior.sample(n, generator=gen(5), **kw)
    assert torch.equal(guided, prior.sample_naive(n, generator=gen(5), **kw))  # both streams stay exact
    assert not torch.equal(guided, plain)
    uncond = prior.sample(n, labels=prior.null_label, generator=gen(5))  # p(grid): the null class as the label
    assert uncond.shape == (n, 4, 4)
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="guidance"):
            prior.sample(2, labels=torch.tensor([0, 1]), guidance=bad)
    with pytest.raises(ConfigError, match="labels must be"):
        prior.sample(1, labels=4)
    no_null = make(name, num_classes=3)
    with pytest.raises(ConfigError, match="null class"):
        no_null.sample(2, labels=torch.tensor([0, 1]), guidance=1.0)
    with pytest.raises(ConfigError, match="labels must be"):
        no_null.sample(1, labels=3)  # without a null class, index num_classes is no label at all
    with pytest.raises(ConfigError, match="label dropout needs a class-conditional"):
        make(name, label_dropout=0.1)


CHECKS = [check_registered, check_config_roundtrip, check_logits_loss_log_prob, check_loss_falls,
          check_sample_shape_and_seed, check_fast_sampler_matches_naive, check_causality_by_gradient,
          check_causality_by_perturbation, check_class_conditioning, check_sampling_filters, check_sample_keeps_mode,
          check_guidance]


def run_contract(name: str) -> None:
    """Every check on one prior (used by test_prior_plugins.py on a plugin it installs)."""
    for check in CHECKS:
        check(name)
    check_fast_sampler_matches_naive(name, num_classes=3)
    check_default_config_sees_whole_past(name)


# -- the tests -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_contract(check, name):
    check(name)


@pytest.mark.parametrize("name", NAMES)
def test_fast_sampler_matches_naive_conditional(name):
    check_fast_sampler_matches_naive(name, num_classes=3)


@pytest.mark.parametrize("name", NAMES)
def test_default_config_sees_whole_past(name):
    check_default_config_sees_whole_past(name)


def test_builtins_registered():
    assert {"pixelcnn", "transformer"} <= set(NAMES)
    assert list_priors()["pixelcnn"] == "built-in"


def test_unknown_prior_lists_known():
    with pytest.raises(ConfigError, match=r"unknown prior 'nope'; known priors: .*pixelcnn, transformer"):
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
    hot = torch.bincount(draw(many, temperature=100.0, generator=gen(0)), minlength=4) / 20000
    assert (hot - 0.25).abs().max() < 0.02
    cold = torch.bincount(draw(many, temperature=1.0, generator=gen(0)), minlength=4) / 20000
    assert (cold - torch.tensor([0.5, 0.3, 0.15, 0.05])).abs().max() < 0.02
