"""The errors this package raises. Every layer raises these, never the Docker SDK's own.

Each error maps to one CLI exit code so that scripts can tell bad input from a broken engine.
"""

from __future__ import annotations


class AttuneContainersError(Exception):
    """Base class for every error of this package."""

    exit_code = 1


class InvalidSpecError(AttuneContainersError, ValueError):
    """A pack, its ref or its dependency spec is not acceptable. Nothing was changed."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFoundError(InvalidSpecError):
    """No pack or action by the name asked for (exit code 2 like any invalid input on the CLI; 404
    over HTTP)."""


class ExecutionConflictError(AttuneContainersError):
    """An execution id already used by a different request, or an execution that cannot change any
    more (409 over HTTP)."""


class PythonVersionUnavailableError(InvalidSpecError):
    """No configured Python version lies inside the pack's [min_version, max_version] range."""


class InvalidPolicyError(AttuneContainersError, ValueError):
    """A prune policy (a duration, a count, a combination of options) is not acceptable.

    Raised before anything is listed or removed.
    """

    exit_code = 2


class ConfigurationError(AttuneContainersError):
    """The configuration (environment variables, the config file) is not acceptable: raised at
    start-up, before anything is done."""

    exit_code = 2


class EngineUnavailableError(AttuneContainersError):
    """The Docker engine does not answer."""

    exit_code = 3


class EngineError(AttuneContainersError):
    """The engine answered with an error we could not handle."""


class BuildError(AttuneContainersError):
    """An image build failed; ``log_tail`` holds the last lines of the build log (pip's errors)."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        self.log_tail = list(log_tail or [])
        detail = "\n".join(self.log_tail)
        super().__init__(f"{message}\n{detail}" if detail else message)


class EnvironmentNotFoundError(AttuneContainersError):
    """No image exists for the pack asked for."""


class ImageInUseError(AttuneContainersError):
    """The engine refused to remove an image because a container uses it."""


class ImageConflictError(ImageInUseError):
    """The engine refused to remove an image (409) for another reason than a container using it:
    it has other tags, or images built on it. The message carries the engine's own cause.
    (A subclass of ImageInUseError so that every "refused, never forced" path still holds.)"""


class ContainerInUseError(AttuneContainersError):
    """The engine refused to remove a container because it is running."""


class RegistryError(EngineError):
    """The registry could not be used; the subclass says why, each with its own exit code so that
    an operator (or a fleet's health check) tells a credential from a certificate from a network
    problem without reading the message."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (wrong, missing or rotated away)."""

    exit_code = 4


class RegistryTLSError(RegistryError):
    """The registry's certificate is not trusted by the engine (unknown or expired CA, wrong name)."""

    exit_code = 5


class RegistryUnavailableError(RegistryError):
    """The registry does not answer (connection refused, no route, unknown host, timeout)."""

    exit_code = 6
