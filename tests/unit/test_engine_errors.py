"""How the engine layer reads the SDK's errors: by type and status code, never by message text, except
where the engine gives nothing else (a registry's failures: credentials, certificate, network)."""

from __future__ import annotations

from types import SimpleNamespace

import docker.errors
import pytest
import requests

from attune_containers.engine import Engine
from attune_containers.errors import (
    EngineError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    RegistryAuthError,
    RegistryTLSError,
    RegistryUnavailableError,
)


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    kind = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return kind(f"{status} Client Error", response=response, explanation=explanation)


class ScriptedAPI:
    """The SDK's low-level client, answering each call with the next outcome (None: success)."""

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def _next(self, *args, **kwargs) -> dict:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {}

    inspect_distribution = remove_container = pull = push = _next


def engine_with(api: ScriptedAPI) -> Engine:
    engine = Engine()
    engine._client = SimpleNamespace(api=api)  # no engine is asked anything
    return engine


def test_a_manifest_the_registry_does_not_know_is_absent():
    assert engine_with(ScriptedAPI(api_error(404, "manifest unknown: manifest unknown"))).in_registry("r:5000/a/b:1") is False
    assert engine_with(ScriptedAPI(None)).in_registry("r:5000/a/b:1") is True


@pytest.mark.parametrize(
    "error",
    [
        api_error(500, 'Get "http://127.0.0.1:5798/v2/": dial tcp 127.0.0.1:5798: connect: connection refused'),
        api_error(401, "unauthorized: authentication required"),
        api_error(403, "denied: requested access to the resource is denied"),
    ],
)
def test_a_registry_that_fails_is_an_error_not_an_absent_image(error):
    with pytest.raises(EngineError, match="looking up r:5000/a/b:1 in its registry"):
        engine_with(ScriptedAPI(error)).in_registry("r:5000/a/b:1")


def test_an_engine_that_does_not_answer_is_unavailable_not_absent():
    with pytest.raises(EngineUnavailableError):
        engine_with(ScriptedAPI(requests.exceptions.ConnectionError("refused"))).in_registry("r:5000/a/b:1")


@pytest.mark.parametrize(
    "error",
    [
        None,
        api_error(404, "No such container: 0123456789ab"),
        api_error(409, "removal of container 0123456789ab is already in progress"),
        # The type and the code decide, not the words.
        api_error(404, "something the SDK may word differently one day"),
        api_error(409, "something the SDK may word differently one day"),
    ],
)
def test_a_container_removed_gone_or_being_removed_is_gone(error):
    api = ScriptedAPI(error)
    assert engine_with(api).remove_container("0123456789abcdef", attempts=3, delay=0) is True
    assert api.calls == 1


def test_removal_retries_through_engine_failures_and_reports_one_that_stays():
    api = ScriptedAPI(
        api_error(500, "No such container, says a 500"),
        requests.exceptions.ConnectionError("restarting"),
        api_error(404, "No such container: 0123456789ab"),
    )
    assert engine_with(api).remove_container("0123456789abcdef", attempts=3, delay=0) is True
    assert api.calls == 3
    stays = ScriptedAPI(api_error(500, "driver failed"), api_error(500, "driver failed"))
    assert engine_with(stays).remove_container("0123456789abcdef", attempts=2, delay=0) is False


@pytest.mark.parametrize(
    ("error", "expected", "code"),
    [
        (
            api_error(500, 'Get "https://10.0.0.9:5798/v2/": dial tcp 10.0.0.9:5798: connect: connection refused'),
            RegistryUnavailableError,
            6,
        ),
        (
            api_error(500, 'Get "https://r.example:5000/v2/": dial tcp: lookup r.example: no such host'),
            RegistryUnavailableError,
            6,
        ),
        (api_error(401, "unauthorized: authentication required"), RegistryAuthError, 4),
        (
            api_error(404, "pull access denied for r:5000/a/b, repository does not exist or may require 'docker login'"),
            RegistryAuthError,
            4,
        ),
        (api_error(500, 'Get "https://10.0.0.9:5000/v2/": x509: certificate signed by unknown authority'), RegistryTLSError, 5),
        (
            api_error(500, 'Get "https://10.0.0.9:5000/v2/": x509: certificate has expired or is not yet valid'),
            RegistryTLSError,
            5,
        ),
    ],
)
def test_a_registry_failure_is_named_by_its_cause_with_its_own_exit_code(error, expected, code):
    for call in (lambda e: e.in_registry("r:5000/a/b:1"), lambda e: e.pull("r:5000/a/b:1"), lambda e: e.push("r:5000/a/b:1")):
        with pytest.raises(expected) as raised:
            call(engine_with(ScriptedAPI(error)))
        assert type(raised.value) is expected and raised.value.exit_code == code
        assert str(raised.value).count("r:5000/a/b:1 ") <= 2  # the cause once, not the prefix repeated


def test_a_missing_manifest_is_still_absent_not_a_registry_failure():
    response = requests.Response()
    response.status_code = 404
    missing = docker.errors.ImageNotFound(
        "404 Client Error", response=response, explanation="manifest for r:5000/a/b:1 not found: manifest unknown"
    )
    with pytest.raises(EnvironmentNotFoundError):
        engine_with(ScriptedAPI(missing)).pull("r:5000/a/b:1")
