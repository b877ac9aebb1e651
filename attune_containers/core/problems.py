"""The service's one error shape: RFC 9457 problem details (``application/problem+json``).

Every error the HTTP service answers, whatever raised it (the guard, request validation, our own
errors, a bug), is a ``Problem``: ``type`` (a URN naming the kind), ``title`` (the same for every
problem of a type), ``status`` (the HTTP status, repeated), ``detail`` (this occurrence),
``instance`` (the request path) and, for invalid input, ``field`` (which field is wrong). Pure: the
mapping from our exceptions to a status lives here so that it is tested without a service.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..errors import (
    AttuneContainersError,
    BuildError,
    ContainerInUseError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    ExecutionConflictError,
    ImageInUseError,
    InvalidPolicyError,
    InvalidSpecError,
    NotFoundError,
)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:attune-containers:problem:"
# Seconds a caller should wait before retrying after a 503.
RETRY_AFTER_SECONDS = 5

# status -> (type slug, title): one title per type, as RFC 9457 asks.
KINDS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "A valid bearer token is required"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    422: ("invalid-input", "Invalid input"),
    500: ("internal-error", "Internal error (a bug of attune-containers)"),
    502: ("engine-error", "The container engine failed the request"),
    503: ("unavailable", "Service unavailable; retry later"),
}


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = Field(description="A URN naming the kind of problem, e.g. urn:attune-containers:problem:not-found")
    title: str = Field(description="A short summary of the kind of problem, the same for every problem of a type")
    status: int = Field(description="The HTTP status code of this response")
    detail: str = Field(description="What went wrong this time, for a human")
    instance: str | None = Field(None, description="The request path this problem is about")
    field: str | None = Field(None, description="For invalid input: the field at fault (dotted path, e.g. limits.memory)")


def problem(status: int, detail: str, *, instance: str | None = None, field: str | None = None) -> Problem:
    slug, title = KINDS.get(status, ("error", "Error"))
    return Problem(type=TYPE_PREFIX + slug, title=title, status=status, detail=detail, instance=instance, field=field)


def status_of(exc: BaseException) -> int:
    """The HTTP status of one of our exceptions; 500 for anything that is not ours (a bug)."""
    if isinstance(exc, NotFoundError | EnvironmentNotFoundError):
        return 404
    if isinstance(exc, ExecutionConflictError | ImageInUseError | ContainerInUseError):
        return 409
    if isinstance(exc, InvalidSpecError | InvalidPolicyError | BuildError):
        return 422  # the pack or the request is at fault (a build: its requirements)
    if isinstance(exc, EngineUnavailableError):
        return 503
    if isinstance(exc, AttuneContainersError):
        return 502  # the engine answered with an error we could not handle
    return 500


def from_exception(exc: BaseException, *, instance: str | None = None) -> Problem:
    status = status_of(exc)
    if status == 500:
        # A bug: its text may hold anything; the log has the traceback.
        return problem(500, "an unexpected error; the service log has the details", instance=instance)
    return problem(status, str(exc), instance=instance, field=getattr(exc, "field", None))


def validation_field(location: tuple[Any, ...] | list[Any]) -> str | None:
    """``('body', 'limits', 'memory')`` -> ``limits.memory``; ``('query', 'wait')`` -> ``wait``."""
    parts = [str(p) for p in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or None


def example(status: int, detail: str, field: str | None = None, instance: str = "/v1/executions") -> dict[str, Any]:
    """An example document for the OpenAPI schema."""
    return problem(status, detail, instance=instance, field=field).model_dump()


def default_example(status: int) -> dict[str, Any]:
    """The example problem document of a status, for the OpenAPI schema."""
    defaults = {
        404: example(404, "no known pack is a prefix of 'nopack.echo'", "action_ref"),
        409: example(409, "execution 'e-1' exists with a different request", "execution_id"),
        422: example(
            422, "limits.memory: memory '64g' is above the operator's cap of '2g' (setting max_limits.memory)", "limits.memory"
        ),
        500: example(500, "an unexpected error; the service log has the details"),
        503: example(503, "the Docker engine does not answer"),
    }
    return defaults.get(status) or example(status, KINDS.get(status, ("error", "Error"))[1])


def responses(*statuses: int, examples: dict[int, dict[str, Any]] | None = None) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for the problems it may answer, with examples."""
    descriptions = {
        404: "Unknown pack, action or execution",
        409: "Conflict with the current state",
        422: "Invalid input (``field`` names it)",
        500: "A bug of attune-containers",
        503: "The engine is unreachable or the queue is full; retry after ``Retry-After`` seconds",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        doc = (examples or {}).get(status) or default_example(status)
        entry: dict[str, Any] = {
            "model": Problem,
            "description": descriptions.get(status, KINDS[status][1]),
            "content": {MEDIA_TYPE: {"example": doc}},
        }
        if status == 503:
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
        out[status] = entry
    return out


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response of an OpenAPI schema as a problem: ``application/problem+json`` with the
    Problem schema and an example (FastAPI files a response model under application/json, and its
    own 422 under HTTPValidationError, a shape this service never answers)."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for code, response in operation.get("responses", {}).items():
                if not (code.isdigit() and int(code) >= 400):
                    continue
                content = response.setdefault("content", {})
                content.pop("application/json", None)
                entry = content.setdefault(MEDIA_TYPE, {})
                entry["schema"] = {"$ref": "#/components/schemas/Problem"}
                entry.setdefault("example", default_example(int(code)))
                if int(code) == 422:
                    response["description"] = "Invalid input (``field`` names it)"
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return schema
