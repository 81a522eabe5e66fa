"""Third-party priors through the `vqgen.priors` entry-point group.

Plugins are "installed" for real: a module plus a `<dist>.dist-info` folder (METADATA, entry_points.txt)
written to tmp_path and put on sys.path, so importlib.metadata discovers them exactly as after a pip install.
The example plugin is the one in docs/plugins.md (its python and TOML blocks are read from the file), so the
documented example is known to load and to pass the whole prior contract.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import priors.registry
import vqgen.log
from priors import Prior, PriorConfig, get_prior, list_priors, register_prior, reset_plugins
from tests.test_priors_contract import run_contract
from vqgen.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BUILTINS = {"pixelcnn": "built-in", "transformer": "built-in"}


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


def docs_example() -> tuple[str, dict]:
    """(module source, parsed pyproject) of the example in docs/plugins.md."""
    text = DOCS.read_text()
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


def install_docs_example(tmp_path, monkeypatch) -> None:
    code, pyproject = docs_example()
    eps = pyproject["project"]["entry-points"]["vqgen.priors"]
    install(tmp_path / "site", monkeypatch, pyproject["project"]["name"], eps, {"vqgen_mixprior": code})


def test_docs_example_is_discovered_and_passes_the_contract(tmp_path, monkeypatch, warnings_seen):
    install_docs_example(tmp_path, monkeypatch)
    assert list_priors() == {**BUILTINS, "mixprior": "vqgen-mixprior"}
    cls = get_prior("mixprior")
    assert cls.__name__ == "MixPrior" and cls.name == "mixprior" and issubclass(cls, Prior)
    run_contract("mixprior")
    assert warnings_seen == []


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
    for name, value in [*BROKEN_EPS.items(), ("pixelcnn", "vqgen_mixprior:MixPrior")]:
        hits = [w for w in warnings_seen if f"'{name}' ({value})" in w]
        assert len(hits) == 1, (name, warnings_seen)
    text = "\n".join(warnings_seen)
    assert "RuntimeError: boom at import" in text
    assert "ModuleNotFoundError" in text and "AttributeError" in text
    assert "not a subclass of priors.Prior" in text and "config_class" in text
    assert "does not implement logits(codes, labels)" in text
    assert "already taken (built-in)" in text
    # the registry still works, the built-in keeps its name, and nothing warns again
    assert get_prior("pixelcnn").__module__ == "priors.pixelcnn"
    with pytest.raises(ConfigError, match="unknown prior 'boom'; known priors: mixprior, pixelcnn, transformer"):
        get_prior("boom")
    list_priors()
    assert len(warnings_seen) == len(BROKEN_EPS) + 1


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
    with pytest.raises(ConfigError, match="unknown prior 'mixprior'; known priors: pixelcnn, transformer"):
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
