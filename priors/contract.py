"""The contract every registered prior must meet, built-in or plugin: the properties that apply to its kind.

    from priors.contract import run_contract, properties, check
    run_contract("mixprior")          # ContractFailure naming the first property that fails
    for prop in properties("mixprior"):
        check("mixprior", prop)       # the same, one property at a time (one pytest test each, say)

Every prior (`priors.Prior`) is checked for: a config that survives JSON, a loss that is a finite scalar and
falls when trained, what its declared likelihood promises (exact: exp(log_prob) sums to 1 over every grid of a
tiny config; bound: finite, at most 0, the same on every call; none: log_prob refuses), sampling shape and range,
seeds (every random number from the generator), codes drawn through the shared filters, known positions kept
exactly (and the codes at the other positions never read), class conditioning, classifier-free guidance, and
sample() leaving the training mode as it was; a prior with growable_fields, for a larger one grown from it
(grow_from, what train-prior --init-from calls) computing what it computed. An AutoregressivePrior is also checked for raster causality (by
perturbation and by gradient), loss and log_prob equal to the cross-entropy of its logits, its fast sampler
against the naive loop step by step, greedy filters, and, at its default config, seeing the whole past.

Checks run on `tiny_config()` (K=16, 4x4 grid) and never need pytest.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from priors.base import AutoregressivePrior, Known, Prior, Sampling
from priors.registry import get_prior
from priors.sampling_utils import draw
from vqgen.errors import ConfigError

POSITIONS = [(0, 0), (0, 2), (1, 0), (1, 3), (2, 1), (3, 3)]  # first cell, first/last columns, the last cell


class ContractFailure(AssertionError):
    """A prior lacks a property of the contract: `.prior` and `.property` name them."""

    def __init__(self, prior: str, prop: str, detail: str):
        self.prior, self.property, self.detail = prior, prop, detail
        super().__init__(f"prior '{prior}' fails the contract property '{prop}': {detail}")


class _Unmet(AssertionError):
    pass


def _require(ok, message) -> None:
    if not ok:
        raise _Unmet(message() if callable(message) else message)


@contextlib.contextmanager
def _raises(exc: type[BaseException], match: str, what: str):
    try:
        yield
    except exc as e:
        _require(re.search(match, str(e)), f"{what} raised {type(e).__name__}({str(e)!r}), which does not say "
                                           f"{match!r}")
    else:
        raise _Unmet(f"{what} did not raise {exc.__name__}")


def _close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    try:
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    except AssertionError as e:
        raise _Unmet(f"{what}: {' '.join(str(e).split())}") from None


# -- helpers ----------------------------------------------------------------------------------------------------
def make(name: str, seed: int = 0, **overrides) -> Prior:
    cls = get_prior(name)
    torch.manual_seed(seed)
    return cls(cls.tiny_config(**overrides)).eval()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grids(prior: Prior, b: int, seed: int = 1) -> torch.Tensor:
    c = prior.config
    return torch.randint(0, c.num_codes, (b, c.height, c.width), generator=gen(seed))


def labels_for(prior: Prior, b: int) -> torch.Tensor | None:
    return torch.arange(b) % prior.config.num_classes if prior.config.num_classes else None


def _raster(cls) -> bool:
    return issubclass(cls, AutoregressivePrior)


class _ConstantDraw(Sampling):
    """A Sampling whose every drawn code is `code`: shows that a sampler draws through Sampling.draw."""

    def __init__(self, code: int, **kw):
        super().__init__(**kw)
        self.code = code

    def draw(self, logits):
        return torch.full((logits.shape[0],), self.code, dtype=torch.long, device=logits.device)


class _Recording(Sampling):
    """A Sampling that keeps every (m, K) logits it draws from."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def draw(self, logits):
        self.seen.append(logits.float().clone())
        return super().draw(logits)


def _masks(c, n: int) -> dict[str, torch.Tensor]:
    """Named (n, H, W) masks of positions to keep."""
    T, g = c.height * c.width, gen(21)
    flat = {
        "nothing": torch.zeros(n, T, dtype=torch.bool),
        "everything": torch.ones(n, T, dtype=torch.bool),
        "the first row": (torch.arange(T) < c.width).expand(n, T),
        "a raster prefix of 5": (torch.arange(T) < 5).expand(n, T),
        "raster prefixes of different lengths": torch.arange(T)[None] < torch.arange(n)[:, None] * 3 % T,
        "random positions": torch.rand(n, T, generator=g) < 0.5,
        "the last row": (torch.arange(T) >= T - c.width).expand(n, T),
    }
    return {k: v.reshape(n, c.height, c.width).contiguous() for k, v in flat.items()}


# -- the properties of every prior ------------------------------------------------------------------------------
def check_registered(name):
    cls = get_prior(name)
    _require(issubclass(cls, Prior) and cls.name == name, f"get_prior({name!r}) is {cls!r}")
    cfg = cls.tiny_config()
    _require((cfg.num_codes, cfg.height, cfg.width, cfg.num_classes) == (16, 4, 4, 0),
             f"tiny_config() must keep K=16, a 4x4 grid and no classes, got {cfg}")


@torch.no_grad()
def check_config_roundtrip(name):
    prior = make(name, num_classes=2)
    d = json.loads(json.dumps(asdict(prior.config)))  # what train-prior stores in the weights' metadata
    cls = get_prior(prior.name)
    again = cls(cls.config_class(**d))
    _require(again.config == prior.config, "the config rebuilt from JSON differs")
    again.load_state_dict(prior.state_dict())
    again.eval()
    x, y = grids(prior, 3), torch.tensor([0, 1, 1])
    torch.manual_seed(5)
    a = again.loss(x, y)
    torch.manual_seed(5)
    _close(a, prior.loss(x, y), "the rebuilt prior's loss")


@torch.no_grad()
def check_growing_keeps_the_function(name):
    """A prior grown along its growable_fields (train-prior --init-from) computes what the smaller one did."""
    cls = get_prior(name)
    if not cls.growable_fields:
        return
    small = make(name, num_classes=2, label_dropout=0.25)
    base = asdict(small.config)
    grown = {f: base[f] + max(1, base[f] // 2) for f in cls.growable_fields}
    big = make(name, seed=1, num_classes=2, label_dropout=0.25, **grown)
    big.grow_from(small.state_dict(), small.config)
    x, y = grids(small, 4), torch.tensor([0, 1, 2, 1])  # 2 = the null class

    def figure(p):
        with torch.random.fork_rng():
            torch.manual_seed(5)
            return p.log_prob(x, y) if cls.likelihood != "none" else p.loss(x, y)
    _close(figure(big), figure(small), f"the prior grown to {grown}: its figure against the smaller one's")


@torch.no_grad()
def check_loss(name):
    prior = make(name)
    x = grids(prior, 5)
    loss = prior.loss(x)
    _require(isinstance(loss, torch.Tensor) and loss.shape == () and bool(torch.isfinite(loss)) and float(loss) >= 0,
             lambda: f"loss must be a finite scalar >= 0 (nats per code), got {loss!r}")


def check_loss_falls(name):
    prior = make(name)
    prior.train()
    x = grids(prior, 8)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)

    def measured():  # the same random draws each time, for a prior whose objective is random
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            return sum(float(prior.loss(x)) for _ in range(4)) / 4

    first = measured()
    for _ in range(40):
        loss = prior.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = measured()
    _require(last < first - 0.5, f"loss {first:.3f} -> {last:.3f} after 40 Adam steps on 8 fixed grids")


@torch.no_grad()
def check_likelihood(name):
    cls = get_prior(name)
    prior = make(name)
    x = grids(prior, 5)
    if cls.likelihood == "none":
        with _raises(ConfigError, "likelihood", "log_prob of a prior that declares none"):
            prior.log_prob(x)
        return
    lp = prior.log_prob(x)
    _require(lp.shape == (5,) and bool(torch.isfinite(lp).all()) and bool((lp <= 1e-4).all()),
             lambda: f"log_prob must be (b,) finite log-probabilities in nats (<= 0), got {lp!r}")
    torch.manual_seed(99)  # a figure checkpoints are compared by: the same on every call, whatever torch's RNG
    _require(torch.equal(prior.log_prob(x), lp), "log_prob gives another value on a second call")
    if cls.likelihood == "exact":
        small = make(name, num_codes=3, height=2, width=2)
        every = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
        total = float(small.log_prob(every).double().exp().sum())
        _require(abs(total - 1) < 1e-4, f"exact: exp(log_prob) sums to {total:.6f} over all 81 grids of a 2x2, K=3 "
                                        "config, not 1")


def check_sample_shape(name):
    prior = make(name)
    a = prior.sample(6, generator=gen(3))
    c = prior.config
    _require(a.shape == (6, c.height, c.width) and a.dtype == torch.long and a.device == prior.device,
             lambda: f"sample(6) gave a {tuple(a.shape)} {a.dtype} tensor on {a.device}")
    _require(0 <= int(a.min()) and int(a.max()) < c.num_codes, "sampled codes outside [0, K)")
    a[0, 0, 0] = 1  # an ordinary tensor (not an inference-mode one): the caller may modify it


def check_seeds(name):
    prior = make(name)
    a = prior.sample(6, generator=gen(3))
    torch.manual_seed(1234)  # torch's global RNG must not matter: every random number comes from the generator
    _require(torch.equal(a, prior.sample(6, generator=gen(3))),
             "the same generator seed gave other grids: the sampler draws random numbers elsewhere")
    _require(not torch.equal(a, prior.sample(6, generator=gen(4))),
             "another generator seed gave the same grids: the sampler ignores the generator")


def check_draws_through_sampling(name):
    """Every code comes from Sampling.draw, so temperature, top-k, top-p and the generator apply to it."""
    prior = make(name)
    c = prior.config
    mask = _masks(c, 3)["the first row"]
    known = Known(grids(prior, 3), mask)
    with torch.inference_mode():
        out = prior.sample_codes(3, None, known, _ConstantDraw(5, generator=gen(0)))
    _require(bool((out[~mask] == 5).all()), "a Sampling whose draw always returns code 5 did not give code 5 at "
                                            "every position drawn: codes come from elsewhere than Sampling.draw")
    for bad in (dict(temperature=0), dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with _raises(ConfigError, ".", f"sample(2, **{bad})"):
            prior.sample(2, **bad)
    with _raises(ConfigError, ".", "sample(0)"):
        prior.sample(0)


def check_known_kept(name):
    prior = make(name)
    c = prior.config
    n = 6
    codes = grids(prior, n, seed=5)
    accepted = []
    for what, mask in _masks(c, n).items():
        problem = prior.keep_problem(mask)
        if problem:
            with _raises(ConfigError, ".", f"sample keeping {what}, which keep_problem refuses"):
                prior.sample(n, known=(codes, mask), generator=gen(0))
            continue
        accepted.append(what)
        out = prior.sample(n, known=(codes, mask), generator=gen(0))
        _require(torch.equal(out[mask], codes[mask]), f"the known codes at {what} were not kept exactly")
        garbage = torch.where(mask, codes, (codes + 7) % c.num_codes)
        _require(torch.equal(prior.sample(n, known=(garbage, mask), generator=gen(0)), out),
                 f"keeping {what}: the codes at positions not kept changed the draw (they must not be read)")
        if what == "a raster prefix of 5":  # the logits drawn from, not the codes: an untrained prior's are flat
            other = torch.where(mask, (codes + 1) % c.num_codes, codes)
            seen = []
            for k in (codes, other):
                how = _Recording(generator=gen(0))
                with torch.inference_mode():
                    prior.sample_codes(n, None, Known(k, mask), how)
                seen.append(torch.cat([lg.flatten() for lg in how.seen]))
            _require(seen[0].shape != seen[1].shape or not torch.allclose(seen[0], seen[1], atol=1e-6, rtol=0),
                     "the logits the codes are drawn from do not depend on the known codes")
    for must in ("nothing", "everything", "the first row", "a raster prefix of 5", "raster prefixes of different lengths"):
        _require(must in accepted, f"the prior refuses to keep {must}; every prior must keep a raster prefix")
    one = prior.sample(n, known=(codes[0], _masks(c, 1)["the first row"][0]), generator=gen(0))  # (H, W): broadcast
    _require(bool((one[:, 0] == codes[0, 0]).all()), "known (codes, mask) of shape (H, W) were not kept in every grid")
    with _raises(ConfigError, "known", "sample with known codes outside [0, K)"):
        prior.sample(2, known=(torch.full((c.height, c.width), c.num_codes), torch.ones(c.height, c.width, dtype=torch.bool)))


@torch.no_grad()
def check_class_conditioning(name):
    prior = make(name, num_classes=3)
    x = grids(prior, 4)
    calls = [("sample(2)", lambda: prior.sample(2)), ("loss(codes)", lambda: prior.loss(x))]
    if prior.likelihood != "none":
        calls.append(("log_prob(codes)", lambda: prior.log_prob(x)))
    for what, call in calls:
        with _raises(ConfigError, "class-conditional", f"{what} without labels on a class-conditional prior"):
            call()
    with _raises(ConfigError, r"\[0, 3\)", "sample with label 3 of 3 classes"):
        prior.sample(2, labels=torch.tensor([0, 3]))
    s = prior.sample(2, labels=1, generator=gen(0))  # an int label is broadcast
    _require(torch.equal(s, prior.sample(2, labels=torch.tensor([1, 1]), generator=gen(0))),
             "an int label is not the same as that label for every grid")
    losses = []
    for label in (0, 1):
        with torch.random.fork_rng():  # the same draws of a random objective for both labels
            torch.manual_seed(3)
            losses.append(float(prior.loss(x, torch.full((4,), label))))
    _require(abs(losses[0] - losses[1]) > 1e-6, "the loss does not depend on the class label")
    uncond = make(name)
    with _raises(ConfigError, "unconditional", "labels given to an unconditional prior"):
        uncond.sample(2, labels=torch.tensor([0, 1]))


def check_guidance(name):
    """Classifier-free guidance: off at 0, changes the draw at W > 0, refused where it has no meaning."""
    cls = get_prior(name)
    if not cls.supports_null_class:
        with _raises(ConfigError, "null class", "label dropout on a prior without a null class"):
            make(name, num_classes=3, label_dropout=0.1)
        with _raises(ConfigError, "guidance", "guidance on a prior without a null class"):
            make(name, num_classes=3).sample(2, labels=torch.tensor([0, 1]), guidance=1.0)
        return
    prior = make(name, num_classes=3, label_dropout=0.1)
    _require(prior.has_null_class and prior.null_label == 3 and prior.num_label_slots == 4,
             "label dropout must give a null class, label num_classes")
    n, labels = 5, torch.tensor([0, 1, 2, 0, 1])
    plain = prior.sample(n, labels=labels, generator=gen(5))
    for w in (0, 0.0, None):  # no guidance is plain conditional sampling, bit for bit
        _require(torch.equal(prior.sample(n, labels=labels, generator=gen(5), guidance=w), plain),
                 f"guidance={w!r} is not plain conditional sampling")
    guided = prior.sample(n, labels=labels, generator=gen(5), temperature=0.9, top_k=9, guidance=2.0)
    _require(not torch.equal(guided, plain), "guidance 2 did not change the draw")
    kw = dict(labels=labels, generator=gen(5), temperature=0.9, top_k=9, guidance=2.0)
    _require(torch.equal(prior.sample(n, **kw, guidance_schedule="constant"), guided),
             "guidance_schedule='constant' is not the default")
    _require(not torch.equal(prior.sample(n, **{**kw, "generator": gen(5)}, guidance_schedule="linear"), guided),
             "guidance_schedule='linear' drew what 'constant' draws: pass the step as "
             "how.guide(logits, step, steps) / how.guided(fn, codes, labels, step, steps)")
    _require(torch.equal(prior.sample(n, labels=labels, generator=gen(5), guidance=0, guidance_schedule="linear"),
                         plain), "guidance 0 with guidance_schedule='linear' is not plain conditional sampling")
    with _raises(ConfigError, "guidance_schedule", "guidance_schedule='cosine'"):
        prior.sample(2, labels=torch.tensor([0, 1]), guidance=1.0, guidance_schedule="cosine")
    uncond = prior.sample(n, labels=prior.null_label, generator=gen(5))  # p(grid): the null class as the label
    _require(uncond.shape == plain.shape, "sampling with the null label failed")
    for bad in (-1.0, float("nan"), float("inf"), True):
        with _raises(ConfigError, "guidance", f"guidance={bad!r}"):
            prior.sample(2, labels=torch.tensor([0, 1]), guidance=bad)
    with _raises(ConfigError, "labels must be", "label 4 with 3 classes and the null class"):
        prior.sample(1, labels=4)
    no_null = make(name, num_classes=3)
    with _raises(ConfigError, "null class", "guidance without a null class"):
        no_null.sample(2, labels=torch.tensor([0, 1]), guidance=1.0)
    with _raises(ConfigError, "labels must be", "label num_classes without a null class"):
        no_null.sample(1, labels=3)
    with _raises(ConfigError, "label dropout needs a class-conditional", "label dropout on an unconditional prior"):
        make(name, label_dropout=0.1)


def check_sample_keeps_mode(name):
    prior = make(name)
    prior.train()
    prior.sample(2, generator=gen(0))
    _require(prior.training, "sample() left the prior in eval mode")
    _require(all(p.grad is None for p in prior.parameters()), "sample() computed gradients")


# -- the properties of a raster-order (autoregressive) prior ------------------------------------------------------
@torch.no_grad()
def check_raster_likelihood(name):
    prior = make(name)
    x = grids(prior, 5)
    c = prior.config
    lg = prior.logits(x)
    _require(lg.shape == (5, c.num_codes, c.height, c.width) and lg.dtype == torch.float32,
             lambda: f"logits gave a {tuple(lg.shape)} {lg.dtype} tensor, not (b, K, H, W) float32")
    _close(prior.loss(x), F.cross_entropy(lg, x), "loss against F.cross_entropy(logits, codes)")
    _close(-prior.log_prob(x).sum() / x.numel(), prior.loss(x), "-log_prob.sum() / codes.numel() against loss")
    cond = make(name, num_classes=3)
    y = torch.tensor([0, 1, 2, 0, 1])
    _require(float((cond.logits(x, torch.zeros_like(y)) - cond.logits(x, torch.ones_like(y))).abs().amax()) > 1e-5,
             "logits do not depend on the class label")
    _close(-cond.log_prob(x, y).sum() / x.numel(), cond.loss(x, y), "conditional log_prob against loss")


def _fast_matches_naive(name, num_classes):
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
    T = prior.config.height * prior.config.width
    _require(len(fast_logits) == len(naive_logits) == T,
             f"generate called pick {len(fast_logits)} times, generate_naive {len(naive_logits)}; once per position ({T})")
    for step, (a, b) in enumerate(zip(fast_logits, naive_logits)):
        _close(a, b, f"generate's logits at step {step} against generate_naive's")
    _require(torch.equal(fast, naive), "generate and generate_naive drew different grids")
    kw = dict(labels=labels, temperature=0.8, top_k=7, top_p=0.9)
    _require(torch.equal(prior.sample(n, generator=gen(5), **kw), prior.sample_naive(n, generator=gen(5), **kw)),
             "sample and sample_naive differ with filters on")
    prefix = _masks(prior.config, n)["raster prefixes of different lengths"]
    kw["known"] = (grids(prior, n, seed=8), prefix)
    _require(torch.equal(prior.sample(n, generator=gen(6), **kw), prior.sample_naive(n, generator=gen(6), **kw)),
             "sample and sample_naive differ given a known raster prefix")
    # autoguided: a weak prior of the same kind decodes in lockstep (its `decode`) against the reference loops
    kw = dict(labels=labels, temperature=0.9, weak=make(name, seed=1, num_classes=num_classes), autoguidance=1.5)
    _require(torch.equal(prior.sample(n, generator=gen(7), **kw), prior.sample_naive(n, generator=gen(7), **kw)),
             "autoguided sample and sample_naive differ: decode's logits are not generate_naive's")
    if num_classes and prior.supports_null_class:  # guided: both streams stay exact
        guided = make(name, num_classes=num_classes, label_dropout=0.1)
        kw = dict(labels=labels, temperature=0.9, top_k=9, guidance=2.0)
        _require(torch.equal(guided.sample(n, generator=gen(5), **kw), guided.sample_naive(n, generator=gen(5), **kw)),
                 "guided sample and sample_naive differ")
        kw["guidance_schedule"] = "linear"
        _require(torch.equal(guided.sample(n, generator=gen(5), **kw), guided.sample_naive(n, generator=gen(5), **kw)),
                 "guided sample and sample_naive differ with guidance_schedule='linear'")


def check_fast_sampler_matches_naive(name):
    """`generate` (fast) must see the same logits at every step as `generate_naive` and so draw the same codes,
    also as the weak prior of autoguidance (stepped through `decode`)."""
    _fast_matches_naive(name, 0)
    _fast_matches_naive(name, 3)


def _code_embedding_grads(prior, codes, labels, pos):
    """|d(random projection of logits at pos) / d(code embedding)| summed per raster position, shape (H*W,);
    None when the prior has no nn.Embedding(num_codes, .)."""
    c = prior.config
    T = c.height * c.width
    embs = [m for m in prior.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == c.num_codes]
    if not embs:
        return None
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
    _require(captured, "the code embedding was not applied to the code grid")
    proj = torch.randn(c.num_codes, generator=gen(0))
    (lg[:, :, pos[0], pos[1]] * proj).sum().backward()
    total = torch.zeros(T)
    for out in captured:
        _require(out.shape[1:3] == (c.height, c.width) or out.shape[1] == T,
                 f"code embedding output {tuple(out.shape)} is not laid out by position (b, H, W, ...) or (b, H*W, ...)")
        if out.grad is not None:
            total += out.grad.reshape(out.shape[0], T, -1).abs().sum((0, 2))
    return total


def check_causality_by_gradient(name, positions=POSITIONS, prior=None):
    """By gradients of the logits through every nn.Embedding(num_codes, .) applied to the grid (none: nothing
    to check here; the perturbation check still applies)."""
    prior = prior or make(name, num_classes=2)
    c = prior.config
    x = grids(prior, 2)
    for i, j in positions:
        g = _code_embedding_grads(prior, x, labels_for(prior, 2), (i, j))
        if g is None:
            return
        p = i * c.width + j
        _require((g[p:] == 0).all(), lambda: f"logits at {(i, j)} depend on positions "
                                             f"{[divmod(q, c.width) for q in (g[p:] != 0).nonzero().flatten().tolist()]}"
                                             " at or after it")
        if prior.full_context:
            blind = (g[:p] == 0).nonzero().flatten().tolist()
            _require(not blind, lambda: f"logits at {(i, j)} ignore earlier positions {[divmod(q, c.width) for q in blind]}")


@torch.no_grad()
def check_causality_by_perturbation(name):
    prior = make(name)
    c = prior.config
    K = c.num_codes
    x = grids(prior, 3)
    base = prior.logits(x)
    for i, j in POSITIONS:
        p = i * c.width + j
        after = x.clone().view(3, -1)
        after[:, p:] = (after[:, p:] + 1 + torch.randint(0, K - 1, after[:, p:].shape, generator=gen(p))) % K
        changed = prior.logits(after.view_as(x))[:, :, i, j]
        _require(torch.allclose(changed, base[:, :, i, j], atol=1e-6, rtol=0),
                 f"the logits at {(i, j)} change with the codes at or after it")
        if prior.full_context:
            for q in range(p):
                before = x.clone().view(3, -1)
                before[:, q] = (before[:, q] + 1) % K
                _require(not torch.equal(prior.logits(before.view_as(x))[:, :, i, j], base[:, :, i, j]),
                         f"the logits at {(i, j)} ignore position {divmod(q, c.width)}")


def check_greedy_filters(name):
    prior = make(name)

    def greedy_pick(step_logits):
        return step_logits.argmax(-1)

    with torch.inference_mode():
        greedy = prior.generate_naive(4, None, greedy_pick)
    for seed in (0, 1, 2):
        _require(torch.equal(prior.sample(4, top_k=1, generator=gen(seed)), greedy), "top_k=1 is not the greedy grid")
        _require(torch.equal(prior.sample(4, top_p=1e-6, generator=gen(seed)), greedy), "a tiny top_p is not greedy")
    _require(torch.equal(prior.sample(4, temperature=1e-6, generator=gen(7)), greedy), "a tiny temperature is not greedy")


def check_default_config_sees_whole_past(name):
    """At the default config every position sees every earlier one (pixelcnn: its receptive field covers the grid)."""
    cls = get_prior(name)
    torch.manual_seed(0)
    prior = cls(cls.config_class()).eval()
    c = prior.config
    corners = [(1, 0), (c.height - 1, 0), (c.height - 1, c.width - 1)]
    check_causality_by_gradient(name, positions=[p for p in corners if p[0] < c.height], prior=prior)


# property name -> (check, applies to raster-order priors only); the order runs cheap, telling checks first
_PROPERTIES: dict[str, tuple[Callable[[str], None], bool]] = {
    "registered": (check_registered, False),
    "config round trip": (check_config_roundtrip, False),
    "raster causality by perturbation": (check_causality_by_perturbation, True),
    "raster causality by gradient": (check_causality_by_gradient, True),
    "growing keeps the function": (check_growing_keeps_the_function, False),
    "loss is a finite scalar": (check_loss, False),
    "raster loss and log_prob are the cross-entropy of the logits": (check_raster_likelihood, True),
    "declared likelihood": (check_likelihood, False),
    "sample shape and range": (check_sample_shape, False),
    "seeds": (check_seeds, False),
    "codes drawn through the shared filters": (check_draws_through_sampling, False),
    "greedy filters": (check_greedy_filters, True),
    "known positions kept exactly": (check_known_kept, False),
    "fast sampler equals the naive loop": (check_fast_sampler_matches_naive, True),
    "class conditioning": (check_class_conditioning, False),
    "guidance": (check_guidance, False),
    "sample keeps the training mode": (check_sample_keeps_mode, False),
    "loss falls when trained": (check_loss_falls, False),
    "the default config sees the whole past": (check_default_config_sees_whole_past, True),
}


def properties(name: str) -> list[str]:
    """The names of the properties that apply to the registered prior `name`, in the order run_contract runs them."""
    raster = _raster(get_prior(name))
    return [p for p, (_, raster_only) in _PROPERTIES.items() if raster or not raster_only]


def check(name: str, prop: str) -> None:
    """Check one property of the registered prior `name`; ContractFailure naming it when it does not hold."""
    fn, raster_only = _PROPERTIES[prop]
    if raster_only and not _raster(get_prior(name)):
        raise ValueError(f"'{prop}' applies to raster-order priors only; {name} is not one")
    try:
        fn(name)
    except _Unmet as e:
        raise ContractFailure(name, prop, str(e)) from None
    except ContractFailure:
        raise
    except Exception as e:  # a prior that crashes lacks the property too
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise ContractFailure(name, prop, f"raised {detail}") from e


def run_contract(name: str) -> None:
    """Every property that applies to the registered prior `name`; ContractFailure at the first that fails."""
    for prop in properties(name):
        check(name, prop)
