"""The package follows its pipeline: no import climbs back up it, and no two modules import each other.

Layers, lowest first (docs/architecture.md draws them):
base (errors, schemas, atomic, io) -> extraction -> store -> ranking -> engines
-> api -> analysis, demo -> service -> cli. A module may import its own layer or lower
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
    "nagindex.sources": 0, "nagindex.progress": 0, "nagindex.heap": 0,
    "nagindex.extraction": 1,
    "nagindex.store": 2,
    "nagindex.ranking": 3,
    "nagindex.engines": 4,
    "nagindex.api": 5,
    "nagindex.analysis": 6, "nagindex.demo": 6,
    "nagindex.service": 7,
    "nagindex.cli": 8, "nagindex.__main__": 8,
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


# Third-party libraries whose import costs start-up time or memory: the only
# reason an in-package import may sit inside a function is that the module it
# imports loads one of these.
HEAVY = ("torch", "transformers", "accelerate", "gguf", "lancedb", "lance", "faiss", "ray", "matplotlib",
         "sklearn", "scipy", "numba", "tqdm", "sentence_transformers")


def _top_level_imports(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(nagindex modules, third-party top-level names) imported when the module loads."""
    ours, theirs = set(), set()
    for node in ast.parse(path.read_text()).body:
        stmts = [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else (
            [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))] if isinstance(node, ast.Try) else [])
        for s in stmts:
            if isinstance(s, ast.Import):
                for a in s.names:
                    (ours if a.name.startswith("nagindex") else theirs).add(a.name.split(".")[0] if not a.name.startswith("nagindex") else a.name)
            elif s.module:
                if s.module.startswith("nagindex"):
                    ours.update(f"{s.module}.{a.name}" if f"{s.module}.{a.name}" in known else s.module for a in s.names)
                else:
                    theirs.add(s.module.split(".")[0])
    return ours, theirs


def test_in_package_imports_are_lazy_only_for_heavy_libraries():
    mods = modules()
    known = set(mods)
    parsed = {m: _top_level_imports(p, known) for m, p in mods.items()}

    def heavy(m: str) -> set[str]:
        """Heavy libraries loaded by importing `m`: every module reached through top-level imports."""
        found, todo, seen = set(), [m], set()
        while todo:
            cur = todo.pop()
            while cur not in mods and "." in cur:
                cur = cur.rsplit(".", 1)[0]
            if cur in seen or cur not in mods:
                continue
            seen.add(cur)
            ours, theirs = parsed[cur]
            found |= {t for t in theirs if t in HEAVY}
            todo.extend(ours)
        return found

    light = []
    for m, p in mods.items():
        # the root re-exports Index lazily (`import nagindex` stays cheap for extraction workers), and a
        # command module may defer what only its command needs (start-up time of every `nag` call)
        if m == "nagindex" or m.startswith("nagindex.cli"):
            continue
        tree = ast.parse(p.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nagindex") and id(node) not in top:
                for a in node.names:
                    target = f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                    if not heavy(target):
                        light.append(f"{m}:{node.lineno} imports {target} inside a function; it loads no heavy library")
    assert not light, "\n".join(sorted(light))


def test_the_store_loads_no_model():
    """Model loading (backbone, embedder) lives in the extraction layer's `Extractor`; the store
    reads and writes an index and never imports nagindex.extraction."""
    bad = sorted(f"{m} imports {d}" for m, deps in graph().items() if m.startswith("nagindex.store")
                 for d in deps if d.startswith("nagindex.extraction"))
    assert not bad, "\n".join(bad)
