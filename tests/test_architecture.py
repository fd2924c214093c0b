"""Imports point one way: ``vlm_core`` ← ``data_pipeline`` ← ``sweeps`` (the top: the CLI and the study); inside
``vlm_core`` its rooms are ranked too (``base`` ← ``config`` ← ``assets`` ← ``model`` ← ``data`` ← ``training`` ←
``evaluation`` ← the top modules ``presets`` and ``commands``); and no module imports itself back through others.
Every import statement counts — deferred ones in function bodies and ``if TYPE_CHECKING:`` ones included: a
deferred import still makes the dependency, it only hides it, and an annotation-only one is a dependency of the
reader.

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
ROOMS = ("base", "config", "assets", "model", "data", "training", "evaluation", "")
"""``vlm_core``'s folders, lowest first; ``""`` is its top-level modules (``presets``, ``commands``)."""


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


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a project module by a project module, at any depth of the file."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:  # the longest module prefix of a dotted name (``pkg.mod.attr``)
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
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


def room(module: str) -> str:
    """The ``vlm_core`` room a module is in (``""`` for its top-level modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else ""


def direction_violations(edges: list[Edge]) -> list[str]:
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    return [f"{e.where}: {e.source} imports {e.target} (a higher package)" for e in edges
            if rank[e.target.split(".")[0]] > rank[e.source.split(".")[0]]]


def room_violations(edges: list[Edge]) -> list[str]:
    rank = {r: i for i, r in enumerate(ROOMS)}
    return [f"{e.where}: {e.source} imports {e.target} (a higher room of vlm_core)" for e in edges
            if e.source.startswith("vlm_core") and e.target.startswith("vlm_core")
            and rank[room(e.target)] > rank[room(e.source)]]


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


def test_imports_point_one_way_between_packages_and_rooms_and_form_no_cycle():
    edges = import_edges()
    assert len({e.source for e in edges}) > 60  # the parser sees the project (not an empty tree)
    assert {room(e.source) for e in edges if e.source.startswith("vlm_core")} == set(ROOMS)  # every room is seen
    assert direction_violations(edges) == []
    assert room_violations(edges) == []
    assert cycles(edges) == []


def test_every_vlm_core_module_is_in_a_ranked_room():
    mods = [m for m in _modules(ROOT) if m.startswith("vlm_core.")]
    assert {room(m) for m in mods} == set(ROOMS)
    top = sorted(m for m in mods if room(m) == "")
    assert top == ["vlm_core.commands", "vlm_core.presets"]


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
    (root / "data_pipeline" / "planted.py").write_text("import sweeps.reporting.sweep_report\n")
    found = sorted(direction_violations(import_edges(root)))
    assert found == ["data_pipeline/planted.py:1: data_pipeline.planted imports sweeps.reporting.sweep_report (a "
                     "higher package)",
                     "vlm_core/planted.py:5: vlm_core.planted imports sweeps.driver (a higher package)"]


def test_a_planted_import_of_a_higher_room_is_caught_even_when_deferred(tmp_path):
    root = _copy(tmp_path)
    config = root / "vlm_core" / "config" / "vlm.py"
    config.write_text(config.read_text() + "\n\ndef _planted():\n    from ..model.projectors import PROJECTORS\n\n"
                      "    return PROJECTORS\n")
    found = room_violations(import_edges(root))
    assert len(found) == 1 and "vlm_core.config.vlm imports vlm_core.model.projectors (a higher room" in found[0]


def test_a_planted_cycle_is_caught_even_when_deferred(tmp_path):
    root = _copy(tmp_path)
    checkpoint = root / "vlm_core" / "training" / "checkpoint.py"
    checkpoint.write_text(checkpoint.read_text() + "\n\ndef _planted():\n    from .loop import train\n\n"
                          "    return train\n")
    assert any({"vlm_core.training.checkpoint", "vlm_core.training.loop"} <= set(c)
               for c in cycles(import_edges(root)))
    assert direction_violations(import_edges(root)) == room_violations(import_edges(root)) == []


def test_annotation_only_imports_count_too(tmp_path):
    root = _copy(tmp_path)
    (root / "vlm_core" / "base" / "planted.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from vlm_core.config import VLMConfig\n\n\n"
        "def helper(cfg: 'VLMConfig'):\n    return cfg\n")
    assert room_violations(import_edges(root)) == [
        "vlm_core/base/planted.py:4: vlm_core.base.planted imports vlm_core.config (a higher room of vlm_core)"]
