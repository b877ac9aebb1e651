"""attune-containers: run Attune pack actions in isolated, reproducible container images.

The public names below are imported lazily, so that importing the pure core
(``attune_containers.core``) never drags in the Docker SDK.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "AttuneContainersError": "attune_containers.errors",
    "InvalidSpecError": "attune_containers.errors",
    "DependencySpec": "attune_containers.core.spec",
    "EnvironmentInfo": "attune_containers.core.spec",
    "ContainerDependencyManager": "attune_containers.services.manager",
    "DependencyManagerRegistry": "attune_containers.services.manager",
    "Settings": "attune_containers.settings",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'attune_containers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
