"""The package follows its pipeline: no import climbs back up it, and no two modules import each other.

Layers, lowest first (docs/architecture.md draws them):
base (errors, schemas, atomic, io) -> extraction -> store -> ranking -> engines
-> api -> analysis, demo -> cli. A module may import its own layer or lower
ones. Every in-package import counts, also those inside functions (the lazy
imports of heavy libraries are third-party and not checked).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nagindex"

LAYERS = {
    "nagindex.errors": 0, "nagindex.schemas": 0, "nagindex.atomic": 0, "nagindex.io": 0,
    "nagindex.sources": 0, "nagindex.progress": 0,
    "nagindex.extraction": 1,
    "nagindex.store": 2,
    "nagindex.ranking": 3,
    "nagindex.engines": 4,
    "nagindex.api": 5,
    "nagindex.analysis": 6, "nagindex.demo": 6,
    "nagindex.cli": 7, "nagindex.__main__": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS and docs/architecture.md")


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The nagindex modules that `module` imports (anywhere in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import; use absolute nagindex.* imports"
            base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "nagindex" or name.startswith("nagindex."):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in modules():
        if m != "nagindex":
            layer(m)


def test_no_import_climbs_up_the_pipeline():
    bad = []
    for m, deps in graph().items():
        if m == "nagindex":  # the package root re-exports the public API, lazily
            continue
        for d in deps:
            if d == "nagindex":
                bad.append(f"{m} imports the package root; import the module that defines the name")
            elif layer(d) > layer(m):
                bad.append(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = {m: d for m, d in graph().items() if m != "nagindex"}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if d == "nagindex" or d not in g:
                continue
            # a package imports its own submodules' names; only module-to-module cycles count
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("heavy", ["torch", "transformers", "lancedb", "faiss", "ray"])
def test_base_layer_needs_no_heavy_library(heavy):
    for m, p in modules().items():
        if m != "nagindex" and layer(m) == 0:
            tree = ast.parse(p.read_text())
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
            assert not any(x == heavy or x.startswith(heavy + ".") for x in names), f"{m} imports {heavy} at load time"
