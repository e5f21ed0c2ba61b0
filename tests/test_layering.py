"""The dependency arrows of DESIGN.md (Layout): import-linter's contracts in pyproject.toml,
a complete list of the runtime modules in them, and no import cycles between modules.

The CLI knows every part; the runtime runs the apps, which use measure and engines;
engines use calib only for training and INT8 data; measure, io, calib and engines never
import the runtime; measure never imports engines or io; engines never import io;
streamer.vocab (the domain vocabulary) and streamer.options (how a config field declares
its command-line option) sit at the bottom and import nothing from the project.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
ROOT_PACKAGES = ("streamer", "engines", "calib")
#: the parts of the streamer package below the runtime; everything else in it is runtime
NOT_RUNTIME = {"io", "measure", "vocab", "options"}


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert tuple(config["root_packages"]) == ROOT_PACKAGES
    return {c["id"]: c for c in config["contracts"]}


def _streamer_children() -> set[str]:
    """Modules and packages directly in streamer/ (``__init__`` is the package itself)."""
    base = ROOT / "streamer"
    files = {p.stem for p in base.glob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in base.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return files | packages


def test_every_runtime_module_is_in_the_contract():
    """A new module under streamer/ is runtime unless it is io, measure, vocab or options; it must be
    named in the contract, or measure/io/calib/engines could import it unnoticed."""
    listed = set(_contracts()["runtime-on-top"]["forbidden_modules"])
    runtime = {f"streamer.{name}" for name in _streamer_children() - NOT_RUNTIME}
    missing, stale = sorted(runtime - listed), sorted(listed - runtime)
    assert not missing, (f"runtime modules missing from the 'runtime-on-top' contract's "
                         f"forbidden_modules in pyproject.toml: {missing}")
    assert not stale, f"modules in the 'runtime-on-top' contract that no longer exist: {stale}"


def test_import_contracts_are_kept():
    """``lint-imports`` (the venv's, from the repository root) keeps every contract."""
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([str(exe), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def _cycles(graph) -> list[set[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.add(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def _describe(graph, component: set[str]) -> str:
    lines = []
    for a in sorted(component):
        for b in sorted(graph.find_modules_directly_imported_by(a) & component):
            where = sorted({d["line_number"] for d in graph.get_import_details(importer=a, imported=b)})
            lines.append(f"  {a} -> {b} (line {', '.join(map(str, where))})")
    return "\n".join(lines)


def test_no_import_cycles_between_modules():
    """Counting every import statement, also those inside functions (a deferred import
    hides a cycle from Python, not from the design)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph(*ROOT_PACKAGES, cache_dir=None)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n\n".join(_describe(graph, c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    class Graph:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
        modules = set(edges)

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph()) == [{"a", "b", "c"}]
