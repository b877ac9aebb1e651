"""The Python runtime (the first one). Pure modules: ``runtime`` (all but ``fetcher``) and
``preload``; ``loop/`` is what runs inside action containers (standard library only, never
imported on the host)."""

from .runtime import PYTHON, PythonRuntime

__all__ = ["PYTHON", "PythonRuntime"]
