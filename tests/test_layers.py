r"""The package's import structure: the layer order written in README.md's Layout section,
no import cycle, and no private name imported from another top-level module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ganflow"


def _layers() -> list[list[str]]:
    """The numbered list of README.md's Layout section: each item names the modules or
    subpackages (in backquotes) of one layer, top (imported by all) to bottom."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        m = re.match(r"\s*\d+\.\s+(.*)", line)
        if m:
            names = re.findall(r"`([A-Za-z_]+)/?`", m.group(1).split(":")[0])
            layers.append(names)
    return layers


def _unit(path: Path) -> str:
    """The layer unit of a module file: its top-level module or subpackage name."""
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module imported, names imported) for every ganflow import in ``path``,
    lazy ones (inside functions) included."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # annotations only: never imported at run time
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [a.name for a in node.names]
            if not node.module and node.level:  # from . import x: x a module or a name
                for n in names:
                    sub = ROOT.joinpath(*mod.split("."), n)
                    is_module = sub.with_suffix(".py").exists() or sub.is_dir()
                    out.append((f"{mod}.{n}", []) if is_module else (mod, [n]))
            elif mod.startswith("ganflow"):
                out.append((mod, names))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("ganflow")]
    return out


FILES = sorted(p for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
               or p.parent != PKG)


def test_the_layout_section_names_every_module_once():
    named = [n for layer in _layers() for n in layer]
    assert len(named) == len(set(named)), named
    units = {_unit(p) for p in FILES}
    assert units == set(named), (sorted(units - set(named)), sorted(set(named) - units))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_layer_order(path):
    rank = {n: i for i, layer in enumerate(_layers()) for n in layer}
    me = _unit(path)
    for mod, names in _imports(path):
        parts = mod.split(".")
        if len(parts) < 2:
            continue  # `import ganflow` (the version) is not a layer
        other = parts[1]
        assert rank[other] <= rank[me], (
            f"{path.relative_to(ROOT)} (layer {rank[me] + 1}) imports {mod} "
            f"(layer {rank[other] + 1}): a layer may only import the layers above it")
        if other != me:
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.relative_to(ROOT)} imports private {private} from {mod}"


def test_there_is_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for path in FILES + [PKG / "__init__.py"]:
        rel = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[rel] = set()
        for mod, names in _imports(path):
            # `from pkg import name` may import the submodule pkg.name
            targets = [mod] + [f"{mod}.{n}" for n in names]
            graph[rel] |= {t for t in targets if (ROOT / (t.replace(".", "/") + ".py")).exists()
                           or (ROOT / t.replace(".", "/") / "__init__.py").exists()}
    # a module's own package __init__ importing it is not a cycle (re-exports)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == node or node.startswith(nxt + "."):
                continue  # a module importing its own package (its re-exports)
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if state.get(nxt) is None:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
