"""What a warm container imports before its first request: the libraries a pack's actions import.

The runner loop imports them once, in a zygote that forks every execution (see
loop/attune_wrapper.py), so an action that imports requests and pydantic starts with both loaded.
Only libraries: the names come from the top-level ``import``/``from ... import`` statements of the
pack's action files, minus the pack's own modules (files and folders in ``actions/``), which are
never imported ahead, since importing an action runs its code. A pack may name the list itself with
``meta.container_pool.preload`` (an empty list turns preloading off).

Action files are hostile input: they are read through the pack's bounded, link-refusing reader and
parsed, never run; a file that does not parse adds nothing. The names are checked again inside the
container.
"""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

from ...core.packs import read_pack_file
from ...errors import InvalidSpecError

MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}")
MAX_MODULES = 64
NEVER = frozenset({"__future__", "attune_action"})
# CPython 3.11's AST constructor keeps its recursion depth per interpreter, not per thread: parses
# from several threads at once can fail with SystemError (gh-106905). One at a time.
_PARSE = threading.Lock()


def discover(pack_dir: Path) -> tuple[str, ...]:
    """The top-level packages the pack's action files import at module level, sorted."""
    actions = pack_dir / "actions"
    try:
        entries = sorted(actions.iterdir())
    except OSError:
        return ()
    local = {e.stem if e.suffix == ".py" else e.name for e in entries}
    found: set[str] = set()
    for entry in entries:
        if entry.suffix != ".py" or entry.is_symlink() or not entry.is_file():
            continue
        try:
            source = read_pack_file(pack_dir, ["actions", entry.name])
            with _PARSE:
                tree = ast.parse(source)
        except (InvalidSpecError, SyntaxError, ValueError, RecursionError, MemoryError, SystemError):
            continue
        found.update(top_level_imports(tree))
    return tuple(sorted(n for n in found if n not in local and n not in NEVER and MODULE.fullmatch(n)))[:MAX_MODULES]


def top_level_imports(tree: ast.Module) -> set[str]:
    """Packages imported by statements at module level (not inside functions, which may be
    deliberate lazy imports); relative imports are the pack's own."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def checked(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A pack's own preload list, validated like any pack input."""
    if len(names) > MAX_MODULES:
        raise InvalidSpecError(f"at most {MAX_MODULES} modules may be preloaded", field="container_pool.preload")
    for name in names:
        if not isinstance(name, str) or not MODULE.fullmatch(name) or name in NEVER:
            raise InvalidSpecError(f"{name!r} is not a module name", field="container_pool.preload")
    return tuple(names)
