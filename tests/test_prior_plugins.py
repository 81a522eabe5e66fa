"""Third-party priors through the `vqgen.priors` entry-point group.

Plugins are "installed" for real: a module plus a `<dist>.dist-info` folder (METADATA, entry_points.txt)
written to tmp_path and put on sys.path, so importlib.metadata discovers them exactly as after a pip install.
The example plugin is the one in docs/plugins.md (its python and TOML blocks are read from the file), so the
documented example is known to load and to pass the whole prior contract; so does the example as the docs
gave it before priors had two levels (tests/plugin_examples/mixprior_v1.*: subclassing Prior with logits), which
must keep working unchanged. Deliberately broken priors of each kind must fail the contract, naming the property.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import priors.registry
import vqgen.log
from priors import AutoregressivePrior, Prior, PriorConfig, get_prior, list_priors, register_prior, reset_plugins
from priors.contract import ContractFailure, properties, run_contract
from priors.maskgit import MaskGIT
from vqgen.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "plugins.md"
LEGACY = Path(__file__).resolve().parent / "plugin_examples"  # the docs' example before the two-level seam
BUILTINS = {"maskgit": "built-in", "pixelcnn": "built-in", "transformer": "built-in"}


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test starts and ends with only the built-ins registered and plugins not yet loaded."""
    monkeypatch.delenv("VQGEN_NO_PLUGINS", raising=False)
    torch.set_num_threads(1)
    before = set(sys.modules)
    reset_plugins()
    yield
    reset_plugins()
    for name in set(sys.modules) - before:
        if name.startswith("vqgen_"):
            del sys.modules[name]


@pytest.fixture
def warnings_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(vqgen.log, "warn", seen.append)
    return seen


def docs_example(text: str | None = None) -> tuple[str, dict]:
    """(module source, parsed pyproject) of the example in docs/plugins.md (or in `text`)."""
    text = DOCS.read_text() if text is None else text
    code = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class MixPrior" in b]
    toml = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "vqgen.priors" in b]
    assert len(code) == 1 and len(toml) == 1, "docs/plugins.md should hold one example module and one pyproject"
    return code[0], tomllib.loads(toml[0])


def install(site: Path, monkeypatch, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write modules and a dist-info folder declaring `vqgen.priors` entry points; put site on sys.path."""
    site.mkdir(exist_ok=True)
    for mod, src in modules.items():
        (site / f"{mod}.py").write_text(src)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vqgen.priors]\n{eps}")
    monkeypatch.syspath_prepend(str(site))  # also invalidates import caches


def install_example(site: Path, monkeypatch, code: str, pyproject: dict) -> None:
    eps = pyproject["project"]["entry-points"]["vqgen.priors"]
    install(site, monkeypatch, pyproject["project"]["name"], eps, {"vqgen_mixprior": code})


def install_docs_example(tmp_path, monkeypatch) -> None:
    install_example(tmp_path / "site", monkeypatch, *docs_example())


def test_docs_example_is_discovered(tmp_path, monkeypatch, warnings_seen):
    install_docs_example(tmp_path, monkeypatch)
    assert list_priors() == {**BUILTINS, "mixprior": "vqgen-mixprior"}
    cls = get_prior("mixprior")
    assert cls.__name__ == "MixPrior" and cls.name == "mixprior" and issubclass(cls, AutoregressivePrior)
    assert "raster causality by gradient" in properties("mixprior")
    assert warnings_seen == []  # the contract itself runs in the plugin's own test file, below


def test_the_example_as_it_was_keeps_working(tmp_path, monkeypatch, warnings_seen):
    """The 30-line example docs/plugins.md gave before priors had two levels (MixPrior(Prior) with logits only)."""
    code = (LEGACY / "mixprior_v1.py").read_text()
    assert "class MixPrior(Prior):" in code and "AutoregressivePrior" not in code
    install_example(tmp_path / "site", monkeypatch, code, tomllib.loads((LEGACY / "mixprior_v1.toml").read_text()))
    cls = get_prior("mixprior")
    # subclassing Prior with logits makes an autoregressive prior: raster loss, exact log_prob, cached-style sampler
    assert issubclass(cls, AutoregressivePrior) and cls.likelihood == "exact"
    run_contract("mixprior")
    prior = cls(cls.tiny_config())
    x = torch.randint(0, 16, (3, 4, 4))
    torch.testing.assert_close(prior.loss(x), torch.nn.functional.cross_entropy(prior.logits(x), x))
    assert prior.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 4, 4)
    assert warnings_seen == []


def test_a_plugins_own_test_file_from_the_docs_runs(tmp_path, monkeypatch):
    """docs/plugins.md's pytest file for a plugin, run by pytest as the plugin's author would, outside vqgen's tests."""
    install_docs_example(tmp_path, monkeypatch)
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if "priors.contract" in b]
    assert len(blocks) == 1, "docs/plugins.md should show one pytest file that runs priors.contract"
    own = tmp_path / "plugin-tests"
    own.mkdir()
    (own / "test_mixprior.py").write_text(blocks[0])
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(own)], cwd=own,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"{len(properties('mixprior'))} passed" in res.stdout


def test_plugins_load_lazily_and_once(tmp_path, monkeypatch):
    install_docs_example(tmp_path, monkeypatch)
    calls = []
    real = priors.registry._entry_points
    monkeypatch.setattr(priors.registry, "_entry_points", lambda: calls.append(1) or real())
    assert calls == [] and "mixprior" not in priors.registry._REGISTRY  # nothing loaded until asked
    get_prior("pixelcnn")
    list_priors()
    get_prior("mixprior")
    assert calls == [1]
    reset_plugins()
    assert "mixprior" not in priors.registry._REGISTRY and "pixelcnn" in priors.registry._REGISTRY
    assert "mixprior" in list_priors() and calls == [1, 1]


BROKEN_MODULES = {
    "vqgen_boom": "raise RuntimeError('boom at import')\n",
    "vqgen_lines": "raise ImportError('first line\\n  second line\\n\\tthird')\n",
    "vqgen_notprior": "class Thing:\n    pass\n\nnot_a_class = 3\n",
    "vqgen_badconfig": (
        "from priors import Prior\n\n"
        "class BadConfig(Prior):\n    config_class = dict\n"
    ),
    "vqgen_nologits": (
        "from priors import Prior, PriorConfig\n\n"
        "class NoLogits(Prior):\n    config_class = PriorConfig\n"
    ),
}
BROKEN_EPS = {
    "boom": "vqgen_boom:Model",
    "lines": "vqgen_lines:Model",
    "missingmod": "vqgen_no_such_module:Model",
    "missingattr": "vqgen_notprior:NoSuchThing",
    "notprior": "vqgen_notprior:Thing",
    "notaclass": "vqgen_notprior:not_a_class",
    "badconfig": "vqgen_badconfig:BadConfig",
    "nologits": "vqgen_nologits:NoLogits",
}


def test_broken_plugins_warn_once_each_and_are_skipped(tmp_path, monkeypatch, warnings_seen):
    install_docs_example(tmp_path, monkeypatch)
    install(tmp_path / "site2", monkeypatch, "vqgen-broken", BROKEN_EPS, BROKEN_MODULES)
    # a well-formed prior that claims a built-in's name is refused too
    install(tmp_path / "site3", monkeypatch, "vqgen-squatter", {"pixelcnn": "vqgen_mixprior:MixPrior"}, {})

    assert list_priors() == {**BUILTINS, "mixprior": "vqgen-mixprior"}
    assert len(warnings_seen) == len(BROKEN_EPS) + 1, warnings_seen
    for name, value, dist in [*((n, v, "vqgen-broken") for n, v in BROKEN_EPS.items()),
                              ("pixelcnn", "vqgen_mixprior:MixPrior", "vqgen-squatter")]:
        hits = [w for w in warnings_seen if f"'{name}' ({value}) of {dist}:" in w]
        assert len(hits) == 1, (name, warnings_seen)
        assert f"uninstall {dist}, or set VQGEN_NO_PLUGINS=1" in hits[0]
    assert all("\n" not in w and "\t" not in w for w in warnings_seen)  # one line each, whatever the error said
    text = "\n".join(warnings_seen)
    assert "RuntimeError: boom at import" in text and "ImportError: first line second line third" in text
    assert "ModuleNotFoundError" in text and "AttributeError" in text
    assert "not a subclass of priors.Prior" in text and "config_class" in text
    assert "does not implement logits(codes, labels)" in text
    assert "already taken (built-in)" in text
    # the registry still works, the built-in keeps its name, and nothing warns again in this process
    assert get_prior("pixelcnn").__module__ == "priors.pixelcnn"
    with pytest.raises(ConfigError, match="unknown prior 'boom'; known priors: maskgit, mixprior, pixelcnn, transformer"):
        get_prior("boom")
    list_priors()
    assert len(warnings_seen) == len(BROKEN_EPS) + 1


def test_broken_plugin_warns_once_per_process_on_the_command_line(tmp_path, monkeypatch, cli):
    install(tmp_path / "site", monkeypatch, "vqgen-broken", {"boom": "vqgen_boom:Model"}, BROKEN_MODULES)
    outputs = [cli("priors").output for _ in range(2)]  # two commands in one process
    lines = [line for out in outputs for line in out.splitlines() if "boom" in line]
    assert len(lines) == 1 and "vqgen-broken" in lines[0] and "VQGEN_NO_PLUGINS=1" in lines[0], outputs
    assert "maskgit" in outputs[1] and "boom" not in outputs[1]


def test_entry_point_listing_failure_is_one_warning(monkeypatch, warnings_seen):
    def fail():
        raise OSError("unreadable site-packages")

    monkeypatch.setattr(priors.registry, "_entry_points", fail)
    assert list_priors() == BUILTINS
    assert len(warnings_seen) == 1 and "unreadable site-packages" in warnings_seen[0]


@pytest.mark.parametrize("value", ["1", "true"])
def test_vqgen_no_plugins_turns_loading_off(tmp_path, monkeypatch, warnings_seen, value):
    install_docs_example(tmp_path, monkeypatch)
    monkeypatch.setenv("VQGEN_NO_PLUGINS", value)

    def must_not_run():
        raise AssertionError("entry points were read although VQGEN_NO_PLUGINS is set")

    monkeypatch.setattr(priors.registry, "_entry_points", must_not_run)
    assert list_priors() == BUILTINS
    with pytest.raises(ConfigError, match="unknown prior 'mixprior'; known priors: maskgit, pixelcnn, transformer"):
        get_prior("mixprior")
    assert warnings_seen == []


def test_vqgen_no_plugins_zero_keeps_loading_on(tmp_path, monkeypatch):
    install_docs_example(tmp_path, monkeypatch)
    monkeypatch.setenv("VQGEN_NO_PLUGINS", "0")
    assert "mixprior" in list_priors()


def test_register_prior_decorator():
    @register_prior("test_uniform")
    class Uniform(Prior):
        """Every code equally likely: trivially causal (it sees nothing), so not full-context."""

        full_context = False

        def __init__(self, config):
            super().__init__(config)
            self.bias = torch.nn.Parameter(torch.zeros(self.config.num_codes))

        def logits(self, codes, labels=None):
            self.check_labels(labels, codes.shape[0])
            b, H, W = codes.shape
            return self.bias[None, :, None, None].expand(b, -1, H, W)

    assert get_prior("test_uniform") is Uniform and Uniform.name == "test_uniform"
    assert list_priors()["test_uniform"] == "tests"  # origin: the top-level package that defined it
    s = Uniform(Uniform.tiny_config()).sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_prior("test_uniform")(type("Other", (Uniform,), {}))
    with pytest.raises(TypeError, match="not a subclass"):
        register_prior("test_bad")(object)
    reset_plugins()
    with pytest.raises(ConfigError):
        get_prior("test_uniform")


def test_config_validation():
    cls = get_prior("pixelcnn")
    with pytest.raises(ConfigError, match="num_codes"):
        cls(cls.tiny_config(num_codes=1))
    with pytest.raises(ConfigError, match="kernel_size"):
        cls(cls.tiny_config(kernel_size=4))
    with pytest.raises(ConfigError, match="cannot see the whole"):
        cls(cls.config_class(layers=3))
    with pytest.raises(ConfigError, match="needs a PixelCNNConfig"):
        cls(PriorConfig())
    t = get_prior("transformer")
    with pytest.raises(ConfigError, match="must divide"):
        t(t.tiny_config(n_embd=30, n_head=4))


# -- deliberately broken priors of each kind fail the contract, naming the property ---------------------------------
class Peeker(AutoregressivePrior):
    """A raster prior whose logits at (i, j) see the code at (i, j) itself."""

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        self.embed = torch.nn.Embedding(c.num_codes, 8)
        self.mix = torch.nn.Parameter(torch.randn(c.height * c.width, c.height * c.width))
        self.head = torch.nn.Linear(8, c.num_codes)

    def logits(self, codes, labels=None):
        b, H, W = codes.shape
        self.check_labels(labels, b)
        mask = torch.ones(H * W, H * W).tril(0)  # tril(-1) would be causal
        h = torch.einsum("pq,bqd->bpd", self.mix * mask, self.embed(codes.reshape(b, -1)))
        return self.head(h).transpose(1, 2).reshape(b, -1, H, W)


class ChangesKnownCodes(MaskGIT):
    """A masked prior that draws every position, the known ones too."""

    def sample_codes(self, n, labels, known, how):
        return super().sample_codes(n, labels, None, how)


class IgnoresTheGenerator(MaskGIT):
    """A masked prior whose sampler draws from torch's global generator."""

    def sample_codes(self, n, labels, known, how):
        how.generator = None
        return super().sample_codes(n, labels, known, how)


class RasterIgnoresTheGenerator(AutoregressivePrior):
    """A raster prior whose decoding loop draws with multinomial from torch's global generator."""

    def __init__(self, config):
        super().__init__(config)
        self.inner = get_prior("pixelcnn")(get_prior("pixelcnn").tiny_config(**{
            k: getattr(config, k) for k in ("num_codes", "height", "width", "num_classes")}))

    def logits(self, codes, labels=None):
        return self.inner.logits(codes, labels)

    def sample_codes(self, n, labels, known, how):
        def pick(step_logits):
            return torch.multinomial(torch.softmax(how.filter(step_logits), -1), 1)[:, 0]
        return self.generate(n, labels, pick)


@pytest.mark.parametrize("cls,prop", [
    (Peeker, "raster causality by perturbation"),
    (ChangesKnownCodes, "known positions kept exactly"),
    (IgnoresTheGenerator, "seeds"),
    (RasterIgnoresTheGenerator, "seeds"),
], ids=lambda v: v.__name__ if isinstance(v, type) else v.replace(" ", "_"))
def test_broken_priors_fail_the_contract_naming_the_property(cls, prop):
    name = f"broken_{cls.__name__.lower()}"
    register_prior(name)(type(cls.__name__, (cls,), {}))
    with pytest.raises(ContractFailure) as failed:
        run_contract(name)
    assert failed.value.prior == name and failed.value.property == prop, str(failed.value)
    assert f"prior '{name}' fails the contract property '{prop}'" in str(failed.value)
