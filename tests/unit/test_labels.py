"""One label vocabulary: every ``io.attune.containers.*`` key is defined in core/labels.py, and
its value never changes (images and containers on hosts carry it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from attune_containers.core import labels as L

ROOT = Path(__file__).resolve().parents[2]
LABELS_MODULE = ROOT / "attune_containers" / "core" / "labels.py"

# The values on hosts today. Changing one strands every image and container that carries the old
# one (the pruner and the sweepers would no longer recognise them): add a key, never rename one.
ON_HOSTS = {
    "MANAGED": "io.attune.containers.managed",
    "PACK_REF": "io.attune.containers.pack_ref",
    "DEPENDENCY_HASH": "io.attune.containers.dependency_hash",
    "PYTHON_VERSION": "io.attune.containers.python.version",
    "NODEJS_VERSION": "io.attune.containers.nodejs.version",
    "RUNTIME": "io.attune.containers.runtime",
    "REQUIREMENTS": "io.attune.containers.requirements",
    "INSTALLED": "io.attune.containers.installed",
    "CREATED": "io.attune.containers.created",
    "TOOL_VERSION": "io.attune.containers.tool.version",
    "BASE_IMAGE": "io.attune.containers.base.image",
    "INSTALLER": "io.attune.containers.installer",
    "LOCK": "io.attune.containers.lock",
    "REPOSITORY": "io.attune.containers.repository",
    "CONTENT": "io.attune.containers.content",
    "BASE_MARKER": "io.attune.containers.base",
    "BASE_PYTHON_VERSION": "io.attune.containers.python.version",
    "BASE_IDENTITY": "io.attune.containers.base.identity",
    "BASE_SUITE": "io.attune.containers.base.suite",
    "RUN": "io.attune.containers.run",
    "EXECUTION_ID": "io.attune.containers.execution_id",
    "ACTION_REF": "io.attune.containers.action_ref",
    "POOL": "io.attune.containers.pool",
    "LEASE": "io.attune.containers.lease",
    "OWNER": "io.attune.containers.owner",
    "HELPER": "io.attune.containers.helper",
    "CACHE": "io.attune.containers.cache",
    "WORK": "io.attune.containers.work",
}


def _vocabulary() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(L).items()
        if name.isupper() and name != "PREFIX" and isinstance(value, str) and value.startswith(L.PREFIX)
    }


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose may name a label for people)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _spellings(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: value`` of each string in the code (f-string parts included) with a key."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    prose = _docstrings(tree)
    return [
        f"{path.relative_to(root)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose and L.PREFIX in node.value
    ]


def test_label_values_are_the_ones_hosts_carry():
    assert L.PREFIX == "io.attune.containers."
    assert _vocabulary() == ON_HOSTS


def test_no_module_outside_core_labels_spells_a_label_key():
    # Code imports the constants; a key spelled anywhere else is a second vocabulary that only
    # works while the two spellings happen to match.
    modules = [
        p
        for folder in ("attune_containers", "benchmarks", "examples")
        for p in (ROOT / folder).rglob("*.py")
        if p != LABELS_MODULE
    ]
    assert len(modules) > 20
    assert [s for p in sorted(modules) for s in _spellings(p)] == []


def test_the_scan_finds_keys_in_code_but_not_in_docstrings(tmp_path):
    module = tmp_path / "x.py"
    module.write_text(
        '"""Docstrings may name io.attune.containers.run for people."""\n'
        'KEY = "io.attune.containers.run"\nOTHER = f"io.attune.containers.{1}"\n'
    )
    assert [s.split(":")[1] for s in _spellings(module, tmp_path)] == ["2", "3"]


def test_scripts_outside_python_write_only_keys_of_the_vocabulary():
    # The base image bootstrap (shell) and the Makefile cannot import the constants: what they
    # spell must at least be a key the code knows.
    known = set(ON_HOSTS.values())
    for path in [*(ROOT / "docker").glob("*.sh"), ROOT / "Makefile"]:
        for key in re.findall(r"io\.attune\.containers\.[A-Za-z0-9_.]*[A-Za-z0-9_]", path.read_text(encoding="utf-8")):
            assert key in known, (path.name, key)
