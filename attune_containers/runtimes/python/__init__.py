"""The Python runtime (the first one). Pure modules: ``runtime`` (all but ``fetcher``), ``lock`` and
``preload``; ``loop/`` is what runs inside action containers (standard library only, never
imported on the host)."""

from .runtime import PYTHON, PythonRuntime

RUNTIME = PYTHON  # what the registry (runtimes/__init__.py) takes from each runtime's package

__all__ = ["PYTHON", "RUNTIME", "PythonRuntime"]
