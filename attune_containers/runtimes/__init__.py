"""Runtimes as plug-ins: the registry, keyed by ``runtime_type`` (the seed's DependencyManagerRegistry).

A new runtime is one package beside ``python/`` implementing :class:`base.Runtime`, plus one line
in ``_PACKAGES`` below. Everything else (manager, runner, pool, pruner, CLI, HTTP API) asks
:func:`get_runtime` and never names a runtime.

Pure: ``base``, this registry and each runtime's module import no engine (tests/unit/test_core_is_pure.py
keeps it so); only a runtime's ``fetcher()`` reaches the engine, on demand.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import InvalidSpecError
from .base import LOOP_MOUNT, PACK_MOUNT, Runtime

# The registered runtimes, by package name; each package exports its instance as RUNTIME.
_PACKAGES = ("python", "nodejs")


def check_registry(runtimes: tuple[Runtime, ...]) -> dict[str, Runtime]:
    """The registry of ``runtimes`` by name; a spelling, meta key or runner type claimed by two
    runtimes is a programming error (which runtime a pack is would depend on the order)."""
    claimed: dict[tuple[str, str], str] = {}
    for runtime in runtimes:
        for kind, values in (
            ("runtime", (runtime.name, *runtime.aliases)),
            ("meta key", (runtime.meta_key,)),
            ("runner_type", runtime.runner_types),
        ):
            for value in values:
                other = claimed.setdefault((kind, value), runtime.name)
                if other != runtime.name:
                    raise ValueError(f"{kind} {value!r} is claimed by runtimes {other!r} and {runtime.name!r}")
    return {r.name: r for r in runtimes}


RUNTIMES: dict[str, Runtime] = check_registry(tuple(import_module(f"{__name__}.{p}").RUNTIME for p in _PACKAGES))
# A spec without ``runtime`` and a pack without dependencies are Python's, as in the seed.
DEFAULT_RUNTIME = "python"


class UnknownRuntimeError(InvalidSpecError):
    """A ``runtime`` (or an action's ``runner_type``) that no registered runtime handles."""


def _spellings() -> dict[str, Runtime]:
    return {spelling: r for r in RUNTIMES.values() for spelling in (r.name, *sorted(r.aliases))}


def get_runtime(runtime_type: str | None = None) -> Runtime:
    """The runtime named ``runtime_type`` (or an alias of it), else an error naming what exists."""
    spellings = _spellings()
    found = spellings.get(DEFAULT_RUNTIME if runtime_type is None else runtime_type)
    if found is None:
        raise UnknownRuntimeError(f"unknown runtime {runtime_type!r}; supported: {', '.join(sorted(spellings))}", field="runtime")
    return found


def runtimes_for_meta(meta: dict, files: set[str] | frozenset[str] = frozenset()) -> list[tuple[Runtime, object]]:
    """Every runtime a pack declares dependencies for, in registry order, with its ``meta`` key's
    value (None: only its dependency file is there). A runtime is declared by its ``meta`` key, or
    by its own dependency file beside pack.yaml (``files``: the names there; Python's
    requirements.txt, Node's package.json). A pack may declare several: each gets its own image.
    None declared: an empty list (the pack's actions, else the default runtime, decide)."""
    return [
        (r, meta.get(r.meta_key))
        for r in RUNTIMES.values()
        if meta.get(r.meta_key) is not None or (r.pack_files and r.pack_files[0] in files)
    ]


def runner_types() -> dict[str, Runtime]:
    """Every action ``runner_type`` a registered runtime runs, to that runtime."""
    return {t: r for r in RUNTIMES.values() for t in r.runner_types}


__all__ = [
    "DEFAULT_RUNTIME",
    "LOOP_MOUNT",
    "PACK_MOUNT",
    "RUNTIMES",
    "Runtime",
    "UnknownRuntimeError",
    "check_registry",
    "get_runtime",
    "runner_types",
    "runtimes_for_meta",
]
