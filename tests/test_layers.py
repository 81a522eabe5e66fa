"""The layers the tree promises (docs/architecture.md): the library never imports a command or the CLI, the
priors import only vqgen's errors and log, and no two modules import each other, not even through imports
inside functions. The import graph is read from the source with ast; the first check also imports every
library module for real."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vqgen", "priors")
TOP_LAYER = ("vqgen.cli", "vqgen.__main__", "vqgen.commands")  # what the library must never import
PRIORS_MAY_IMPORT = {"vqgen.errors", "vqgen.log"}  # all of vqgen a prior may see


def _modules() -> dict[str, Path]:
    """Every module of the two packages: dotted name -> file."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _in_top_layer(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in TOP_LAYER)


LIBRARY = sorted(m for m in MODULES if m.startswith("vqgen") and not _in_top_layer(m))


def _imports(name: str, path: Path) -> set[str]:
    """The modules of MODULES that `name` imports anywhere in its source: at module level, inside functions
    and classes. `from a import b` names the module a.b when there is one, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_walk_sees_both_layers():
    assert {"vqgen.metrics", "vqgen.run", "vqgen.train", "vqgen.prior_file", "vqgen.vqvae"} <= set(LIBRARY)
    assert {"vqgen.commands.stage1", "vqgen.commands.stage2", "vqgen.commands.sample",
            "vqgen.commands.evaluate"} <= set(MODULES)
    assert "priors.registry" in MODULES and GRAPH["vqgen.cli"]  # the CLI imports something, as it must


def test_importing_a_library_module_imports_no_command():
    """`python -c "import vqgen.<module>"` for each library module, in one fresh interpreter that imports them
    one by one: sys.modules only grows, so a command module showing up first after importing X was imported
    by X (or by what X imports), exactly as a fresh interpreter per module would tell."""
    code = (
        "import importlib, json, sys\n"
        "top = ('vqgen.cli', 'vqgen.__main__', 'vqgen.commands')\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    bad = sorted(m for m in sys.modules if any(m == t or m.startswith(t + '.') for t in top))\n"
        "    if bad:\n"
        "        found[name] = bad\n"
        "        break\n"
        "print(json.dumps(found))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, *LIBRARY], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("name", LIBRARY + sorted(m for m in MODULES if m.startswith("priors")))
def test_no_library_module_imports_a_command_even_inside_a_function(name):
    assert not {m for m in GRAPH[name] if _in_top_layer(m)}


def test_commands_do_not_import_one_another():
    commands = [m for m in MODULES if m.startswith("vqgen.commands.")]
    for name in commands:
        assert not GRAPH[name] & set(commands), name


def test_priors_import_only_vqgens_errors_and_log():
    for name in (m for m in MODULES if m.startswith("priors")):
        assert {m for m in GRAPH[name] if m.startswith("vqgen")} <= PRIORS_MAY_IMPORT, name


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as a path that ends where it starts; None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_is_acyclic():
    cycle = _cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_vqgen_and_help_stay_free_of_torch():
    code = ("import sys, vqgen\nassert 'torch' not in sys.modules, 'import vqgen'\n"
            "from vqgen.cli import app\napp(['--help'], standalone_mode=False)\nprint('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "False"
