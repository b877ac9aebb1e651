"""The Node.js runtime. Pure modules: ``runtime``, ``spec``, ``versions``; ``loop/`` is the
JavaScript the per-execution child runs inside action containers (never loaded on the host). The
supervisor is the Python runtime's (runtime.py says why)."""

from .runtime import NODEJS, NodeRuntime

RUNTIME = NODEJS  # what the registry (runtimes/__init__.py) takes from each runtime's package

__all__ = ["NODEJS", "RUNTIME", "NodeRuntime"]
