"""The services import each other in one direction: no cycle, not even through an import hidden
inside a function (which only postpones the cycle to the first call)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "attune_containers"
SERVICES = "attune_containers.services"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports anywhere in its code (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def _graph(prefix: str) -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    inside = {name for name in paths if name.startswith(prefix)}
    return {name: _imports(paths[name], inside) for name in sorted(inside)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it (a depth-first search)."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(name)

    for name in graph:
        if name not in done:
            visit(name, [name])
    return cycles


def test_the_pruner_does_not_import_the_manager():
    # The manager's cleanup() delegates to the pruner; the pruner asks only for PackImages.
    graph = _graph(SERVICES)
    assert f"{SERVICES}.pruner" in graph[f"{SERVICES}.manager"]
    assert f"{SERVICES}.manager" not in graph[f"{SERVICES}.pruner"]


def test_the_services_import_each_other_without_a_cycle():
    graph = _graph(SERVICES)
    assert len(graph) > 10
    assert _cycles(graph) == []


def test_the_search_finds_a_cycle_through_a_function_level_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
