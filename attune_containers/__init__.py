"""attune-containers: run Attune pack actions in isolated, reproducible container images.

    from attune_containers import ActionRunner, ExecutionStatus

    with ActionRunner("packs") as runner:
        result = runner.run("hello_requests.versions", {"greeting": "hi"})
        assert result.status is ExecutionStatus.succeeded, result.error

The public names below are imported lazily, so that importing the pure core
(``attune_containers.core``) never drags in the Docker SDK. The package is typed (``py.typed``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # Running actions: the worker's path.
    "ActionRunner": "attune_containers.services.runner",
    "ExecutionResult": "attune_containers.core.execution",
    "ExecutionStatus": "attune_containers.core.execution",
    "ExecutionError": "attune_containers.core.execution",
    "ResourceLimits": "attune_containers.core.execution",
    # Environments: one image per pack.
    "DependencySpec": "attune_containers.core.spec",
    "EnvironmentInfo": "attune_containers.core.spec",
    "ContainerDependencyManager": "attune_containers.services.manager",
    "DependencyManagerRegistry": "attune_containers.services.manager",
    "Settings": "attune_containers.settings",
    # Errors: each carries the CLI exit code it maps to (``exit_code``).
    "AttuneContainersError": "attune_containers.errors",
    "InvalidSpecError": "attune_containers.errors",
    "NotFoundError": "attune_containers.errors",
    "BuildError": "attune_containers.errors",
    "EngineUnavailableError": "attune_containers.errors",
    "EnvironmentNotFoundError": "attune_containers.errors",
    "ExecutionConflictError": "attune_containers.errors",
}

__all__ = [*_PUBLIC, "__version__"]


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'attune_containers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
