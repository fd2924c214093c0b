"""Imports point one way: ``vlm_core`` ← ``data_pipeline`` ← ``sweeps`` (the top: the CLI and the study), and no
module imports itself back through others. Every import statement that runs counts, deferred ones in function
bodies included: a deferred import still makes the dependency, it only hides it. Only ``if TYPE_CHECKING:``
imports (annotations, never executed) are left out.

    pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("vlm_core", "data_pipeline", "sweeps")
"""Lowest first: a package may import the ones before it, never the ones after."""


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module of the project
    where: str  # file:line


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations only, never run."""
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a project module by a project module, at any depth of the file (deferred ones included;
    annotation-only imports under ``if TYPE_CHECKING:`` excluded: they never run)."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:  # the longest module prefix of a dotted name (``pkg.mod.attr``)
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != mod:
                    edges.append(Edge(mod, target, f"{path.relative_to(root)}:{node.lineno}"))
    return edges


def direction_violations(edges: list[Edge]) -> list[str]:
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    return [f"{e.where}: {e.source} imports {e.target} (a higher package)" for e in edges
            if rank[e.target.split(".")[0]] > rank[e.source.split(".")[0]]]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_one_way_and_form_no_cycle():
    edges = import_edges()
    assert len({e.source for e in edges}) > 40  # the parser sees the project (not an empty tree)
    assert direction_violations(edges) == []
    assert cycles(edges) == []


def _copy(tmp_path: Path) -> Path:
    for pkg in LAYERS:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.jinja",
                                                                                  "*.md"))
    return tmp_path


def test_a_planted_upward_import_is_caught_even_when_deferred(tmp_path):
    root = _copy(tmp_path)
    (root / "vlm_core" / "planted.py").write_text(
        '"""A module that reaches up."""\n\n\ndef helper():\n    from sweeps.driver import run_sweep\n\n'
        '    return run_sweep\n')
    (root / "data_pipeline" / "planted.py").write_text("import sweeps.report\n")
    found = sorted(direction_violations(import_edges(root)))
    assert found == ["data_pipeline/planted.py:1: data_pipeline.planted imports sweeps.report (a higher package)",
                     "vlm_core/planted.py:5: vlm_core.planted imports sweeps.driver (a higher package)"]


def test_a_planted_cycle_is_caught_even_when_deferred(tmp_path):
    root = _copy(tmp_path)
    config = root / "vlm_core" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _planted():\n    from .training import train\n\n    return train\n")
    assert any({"vlm_core.config", "vlm_core.training"} <= set(c) for c in cycles(import_edges(root)))
    assert direction_violations(import_edges(root)) == []


def test_annotation_only_imports_do_not_count_but_running_ones_do(tmp_path):
    root = _copy(tmp_path)
    (root / "vlm_core" / "planted.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from sweeps.driver import SweepConfig\n\n\n"
        "def helper(cfg: 'SweepConfig'):\n    import sweeps.cli\n\n    return sweeps.cli\n")
    assert direction_violations(import_edges(root)) == [
        "vlm_core/planted.py:8: vlm_core.planted imports sweeps.cli (a higher package)"]
