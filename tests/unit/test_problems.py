"""The service's error shape (RFC 9457 problem details) and how our errors map to statuses."""

from __future__ import annotations

import pytest

from attune_containers.core import problems
from attune_containers.errors import (
    AttuneContainersError,
    BuildError,
    ContainerInUseError,
    EngineError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    ExecutionConflictError,
    ImageConflictError,
    InvalidPolicyError,
    InvalidSpecError,
    NotFoundError,
)


@pytest.mark.parametrize(
    "exc, status",
    [
        (NotFoundError("no pack", field="action_ref"), 404),
        (EnvironmentNotFoundError("no image"), 404),
        (ExecutionConflictError("used id"), 409),
        (ImageConflictError("second tag"), 409),
        (ContainerInUseError("running"), 409),
        (InvalidSpecError("bad", field="limits.memory"), 422),
        (InvalidPolicyError("bad policy"), 422),
        (BuildError("pip failed", ["ERROR: no matching distribution"]), 422),
        (EngineUnavailableError("no engine"), 503),
        (EngineError("engine said no"), 502),
        (AttuneContainersError("ours, unclassified"), 502),
        (KeyError("a bug"), 500),
        (RuntimeError("a bug"), 500),
    ],
)
def test_each_error_has_its_status(exc, status):
    assert problems.status_of(exc) == status
    assert problems.from_exception(exc).status == status


def test_a_problem_has_every_member_and_one_title_per_type():
    doc = problems.from_exception(InvalidSpecError("is above the cap", field="limits.memory"), instance="/v1/executions")
    assert doc.model_dump() == {
        "type": "urn:attune-containers:problem:invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "limits.memory: is above the cap",
        "instance": "/v1/executions",
        "field": "limits.memory",
    }
    other = problems.from_exception(InvalidSpecError("other"))
    assert (other.type, other.title) == (doc.type, doc.title) and other.field is None


def test_a_bug_does_not_leak_its_message():
    doc = problems.from_exception(RuntimeError("secret=hunter2 at /srv/internal"))
    assert doc.status == 500 and "hunter2" not in doc.detail and "/srv" not in doc.detail


@pytest.mark.parametrize(
    "location, field",
    [
        (("body", "limits", "memory"), "limits.memory"),
        (("query", "wait"), "wait"),
        (("body", "parameters", 0), "parameters.0"),
        (("body",), None),
        ((), None),
    ],
)
def test_validation_locations_become_fields(location, field):
    assert problems.validation_field(location) == field


def test_documented_responses_carry_examples_and_retry_after():
    documented = problems.responses(404, 409, 422, 503)
    assert set(documented) == {404, 409, 422, 503}
    for status, entry in documented.items():
        assert entry["content"][problems.MEDIA_TYPE]["example"]["status"] == status
    assert "Retry-After" in documented[503]["headers"] and "headers" not in documented[404]


def test_fastapis_error_responses_become_problem_documents():
    schema = {
        "paths": {
            "/x": {
                "get": {
                    "responses": {
                        "200": {"content": {"application/json": {"schema": {"type": "integer"}}}},
                        "422": {
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}
                        },
                        "404": {
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}},
                                problems.MEDIA_TYPE: {"example": {"status": 404, "detail": "mine"}},
                            }
                        },
                    }
                }
            }
        },
        "components": {"schemas": {"HTTPValidationError": {}, "ValidationError": {}, "Problem": {}}},
    }
    responses = problems.document_problems(schema)["paths"]["/x"]["get"]["responses"]
    assert responses["200"]["content"] == {"application/json": {"schema": {"type": "integer"}}}
    for code in ("422", "404"):
        assert list(responses[code]["content"]) == [problems.MEDIA_TYPE]
        assert responses[code]["content"][problems.MEDIA_TYPE]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert responses["404"]["content"][problems.MEDIA_TYPE]["example"]["detail"] == "mine"
    assert responses["422"]["content"][problems.MEDIA_TYPE]["example"]["status"] == 422
    assert set(schema["components"]["schemas"]) == {"Problem"}
