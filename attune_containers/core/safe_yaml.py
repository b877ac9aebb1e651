"""YAML and JSON from a pack, parsed with bounds: a pack author is not trusted.

- Aliases are refused: a few hundred bytes of nested aliases (a "billion laughs") expand to
  gigabytes; a pack file has no need for them.
- Nesting is bounded (``MAX_DEPTH``): PyYAML's composer recurses once per level, so 10,000 levels
  end in ``RecursionError``, which escaped every caller as a crash.
- The number of nodes is bounded (``MAX_NODES``): a 1 MiB file of tiny items would otherwise cost
  seconds and hundreds of MB.
- Error messages give the problem and its line and column, never the offending line itself (the
  default message quotes it: no file content is echoed).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.composer import ComposerError

MAX_DEPTH = 64
MAX_NODES = 50_000


class BoundedYAMLError(ValueError):
    """A document that breaks a bound or does not parse; the message holds no file content."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
        if isinstance(event, yaml.AliasEvent):
            # The pure-Python SafeLoader makes only yaml.error.Mark (the stubs also allow libyaml's).
            raise ComposerError(None, None, "aliases (*name) are not allowed in pack files", event.start_mark)  # type: ignore[arg-type]
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES} nodes", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _describe(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return (": ".join(parts) or "invalid YAML") + where
    # ReaderError and friends name a character and a position, not a line of the file.
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_yaml(text: str) -> Any:
    """One YAML document from pack input, within the bounds above."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise BoundedYAMLError(_describe(exc)) from None
    except RecursionError:  # defence in depth: the depth bound should make this unreachable
        raise BoundedYAMLError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def load_json(text: str) -> Any:
    """A JSON document from pack input, nested at most ``MAX_DEPTH`` levels."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BoundedYAMLError(f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise BoundedYAMLError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_depth(document)
    return document


def check_depth(document: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse a parsed document nested deeper than ``limit`` (iteratively: no recursion to exhaust)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            raise BoundedYAMLError(f"nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)
