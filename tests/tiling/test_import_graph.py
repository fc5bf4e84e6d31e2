"""The import graph of geoloc/ and tiling/, read from the source (ast), including imports inside
functions: no cycle between modules or between packages, tiling at the bottom, and the store
below models and tiling."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("geoloc", "tiling")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, path: Path) -> set[str]:
    """Modules of ours that ``name`` imports (a package counts as its ``__init__``); its own
    ancestors are left out: Python imports them before ``name`` anyway."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            targets = subs if len(subs) == len(node.names) else [mod, *subs]
        for t in targets:
            r = _resolve(t)
            if r is not None and r != name and not name.startswith(r + "."):
                found.add(r)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _package(module: str) -> str:
    """``geoloc.store.database`` -> ``geoloc.store``; ``geoloc.errors`` -> ``geoloc.errors``."""
    return ".".join(module.split(".")[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_function_level_imports() -> None:
    # explain imports the tiler at module level, the CLI imports it inside its commands
    assert "tiling.image" in GRAPH["geoloc.models.explain"]
    assert "tiling.policy" in GRAPH["geoloc.cli.tiles"] or "tiling" in GRAPH["geoloc.cli.tiles"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_no_package_cycle() -> None:
    packages: dict[str, set[str]] = {}
    for mod, deps in GRAPH.items():
        packages.setdefault(_package(mod), set()).update(
            _package(d) for d in deps if _package(d) != _package(mod)
        )
    assert _cycles(packages) == []


def test_tiling_imports_nothing_of_geoloc() -> None:
    bad = {m: sorted(d for d in deps if d.startswith("geoloc")) for m, deps in GRAPH.items()}
    assert {m: d for m, d in bad.items() if m.startswith("tiling") and d} == {}


def test_store_imports_neither_models_nor_tiling() -> None:
    bad = {
        m: sorted(d for d in deps if d.startswith(("geoloc.models", "tiling")))
        for m, deps in GRAPH.items()
        if m.startswith("geoloc.store")
    }
    assert {m: d for m, d in bad.items() if d} == {}
