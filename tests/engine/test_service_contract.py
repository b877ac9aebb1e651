"""The service's contract as the worker (in any language) codes against it: one error shape
(RFC 9457 problem details), executions as resources (GET, DELETE to cancel, idempotent ids, async
and bounded waits, a disconnect cancels), results that say what ran, and the OpenAPI schema that
documents all of it. A real ``attune-containers serve`` on a Unix socket, real containers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from attune_containers.core import labels as L

from ..support import TEST_PREFIX
from .test_service import start

PACKS = Path(__file__).resolve().parent.parent / "packs"
PROBLEM = "application/problem+json"
MEMBERS = {"type", "title", "status", "detail", "instance", "field"}


@pytest.fixture
def client(tmp_path, settings):
    process, client = start(tmp_path / "attune.sock", settings)
    yield client
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def new_id() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert set(body) == MEMBERS and body["status"] == status
    assert body["type"].startswith("urn:attune-containers:problem:") and body["title"] and body["detail"]
    if field is not None:
        assert body["field"] == field
    return body


def finished(client: httpx.Client, execution_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = client.get(f"/v1/executions/{execution_id}").json()
        if execution["state"] == "finished":
            return execution
        time.sleep(0.1)
    raise AssertionError(f"{execution_id} did not finish: {execution}")


def labelled(engine, execution_id: str, within: float = 10) -> list[str]:
    """The containers of an execution, once none is left or ``within`` seconds passed (a removal
    the engine's auto-remove already started is still listed for a moment)."""
    deadline = time.monotonic() + within
    while True:
        left = [c.id for c in engine.list_containers({L.EXECUTION_ID: execution_id})]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_every_error_is_one_problem_document(client):
    missing = client.post("/v1/executions", json={"action_ref": "nopack.echo"})
    assert assert_problem(missing, 404, "action_ref")["instance"] == "/v1/executions"
    assert_problem(client.post("/v1/executions", json={"action_ref": "probe.nosuchaction"}), 404, "action_ref")
    assert_problem(client.post("/v1/pools/nopack/prewarm"), 404, "pack_ref")
    assert_problem(client.post("/v1/environments/nopack"), 404, "pack_ref")
    assert_problem(client.post("/v1/executions", json={"action_ref": "../../etc.passwd"}), 422, "action_ref")
    assert_problem(client.post("/v1/executions", json={"action_ref": "probe.echo", "limits": {"cpus": -1}}), 422, "limits.cpus")
    assert_problem(
        client.post("/v1/executions", json={"action_ref": "probe.echo", "limits": {"memory": "64g"}}), 422, "limits.memory"
    )
    assert_problem(client.post("/v1/executions", json={"parameters": {}}), 422, "action_ref")
    assert_problem(client.post("/v1/executions", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_problem(client.post("/v1/executions", json={"action_ref": "probe.echo", "execution_id": "../x"}), 422, "execution_id")
    assert_problem(client.post("/v1/executions?wait=-1", json={"action_ref": "probe.echo"}), 422, "wait")
    assert_problem(client.get("/v1/executions/never-was"), 404, "execution_id")
    assert_problem(client.get("/v1/nothing-here"), 404)
    assert_problem(client.put("/v1/pools"), 405)


def test_an_unreachable_engine_is_503_with_retry_after_never_plain_text(tmp_path, settings):
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
    }
    socket = tmp_path / "attune.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "attune_containers.cli", "serve", "--packs-dir", str(PACKS), "--socket", str(socket)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://attune", timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if client.get("/livez").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        for response in (
            client.get("/v1/environments"),
            client.get("/readyz"),
            client.post("/v1/executions", json={"action_ref": "probe.echo"}),
            client.post("/v1/environments/probe"),
        ):
            assert_problem(response, 503)
            assert int(response.headers["retry-after"]) > 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_readyz_checks_the_engine_and_the_base_images(client):
    assert client.get("/livez").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["base_images"]


def test_an_execution_is_a_resource_and_its_id_names_one_request(client, engine):
    execution_id = new_id()
    request = {"action_ref": "probe.echo", "parameters": {"n": 1}, "execution_id": execution_id, "warm": False}
    first = client.post("/v1/executions", json=request)
    assert first.status_code == 200
    result = first.json()
    assert result["status"] == "succeeded" and result["result"] == {"n": 1}
    assert result["warm"] is False and result["queued_ms"] >= 0
    assert result["started_at"] <= result["finished_at"]
    images = {e["image"]: e["dependency_hash"] for e in client.get("/v1/environments").json()}
    assert result["dependency_hash"] == images[result["image"]]
    got = client.get(f"/v1/executions/{execution_id}").json()
    assert got["state"] == "finished" and got["status"] == "succeeded" and got["result"] == result
    # The same id and request: the same execution, not a second run.
    assert client.post("/v1/executions", json=request).json() == result
    # The same id, another request: 409.
    assert_problem(client.post("/v1/executions", json={**request, "parameters": {"n": 2}}), 409)
    # A finished execution is not cancelled.
    assert_problem(client.delete(f"/v1/executions/{execution_id}"), 409)
    warm = client.post("/v1/executions", json={"action_ref": "probe.echo", "warm": True}).json()
    assert warm["warm"] is True and warm["dependency_hash"] == result["dependency_hash"]


@pytest.mark.parametrize("warm", [False, True])
def test_delete_cancels_a_running_execution_and_removes_its_container(client, engine, warm):
    execution_id = new_id()
    accepted = client.post(
        "/v1/executions",
        params={"async": "true"},
        json={"action_ref": "probe.sleep", "parameters": {"seconds": 120}, "execution_id": execution_id, "warm": warm},
    )
    assert accepted.status_code == 202 and accepted.headers["location"] == f"/v1/executions/{execution_id}"
    assert accepted.json()["state"] in ("queued", "running")
    deadline = time.monotonic() + 60
    while client.get(f"/v1/executions/{execution_id}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)  # inside its container by now
    destroyed = sum(p["destroyed"] for p in client.get("/v1/pools").json())
    started = time.monotonic()
    cancelled = client.delete(f"/v1/executions/{execution_id}")
    assert cancelled.status_code == 200 and time.monotonic() - started < 30
    execution = cancelled.json()
    assert execution["state"] == "finished" and execution["status"] == "cancelled"
    assert execution["result"]["status"] == "cancelled" and execution["result"]["error"]["type"] == "Cancelled"
    if warm:
        assert sum(p["destroyed"] for p in client.get("/v1/pools").json()) == destroyed + 1
    else:
        assert labelled(engine, execution_id) == []
    assert client.delete(f"/v1/executions/{execution_id}").json()["status"] == "cancelled"  # idempotent


def test_a_client_that_disconnects_cancels_its_execution(client, engine):
    execution_id = new_id()
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/executions",
            timeout=3,
            json={"action_ref": "probe.sleep", "parameters": {"seconds": 120}, "execution_id": execution_id, "warm": False},
        )
    execution = finished(client, execution_id, timeout=30)
    assert execution["status"] == "cancelled"
    assert labelled(engine, execution_id) == []


def test_a_bounded_wait_turns_into_async_and_the_execution_goes_on(client):
    execution_id = new_id()
    request = {"action_ref": "probe.sleep", "parameters": {"seconds": 3}, "execution_id": execution_id}
    accepted = client.post("/v1/executions", params={"wait": 0.5}, json=request)
    assert accepted.status_code == 202 and accepted.json()["state"] == "running"
    # The caller went away after the 202; the execution was not cancelled.
    assert finished(client, execution_id)["status"] == "succeeded"
    # Asked again with the same id and request: its result, not a second run.
    again = client.post("/v1/executions", params={"wait": 0.5}, json=request)
    assert again.status_code == 200 and again.json()["result"]["slept"] == 3


def test_the_openapi_schema_documents_the_contract(client):
    schema = client.get("/openapi.json").json()
    operations = {op["operationId"]: (path, method, op) for path, item in schema["paths"].items() for method, op in item.items()}
    assert {
        "runExecution",
        "getExecution",
        "cancelExecution",
        "listEnvironments",
        "ensureEnvironment",
        "removeEnvironment",
        "prewarmPool",
        "listPools",
        "health",
        "livez",
        "readyz",
    } <= set(operations)
    _, _, run = operations["runExecution"]
    assert {"200", "202", "404", "409", "422", "503"} <= set(run["responses"])
    example = run["responses"]["422"]["content"][PROBLEM]["example"]
    assert set(example) == MEMBERS and example["status"] == 422
    assert "Retry-After" in run["responses"]["503"]["headers"]
    undocumented = [
        f"{name}.{field}"
        for name, component in schema["components"]["schemas"].items()
        for field, spec in component.get("properties", {}).items()
        if not spec.get("description")
    ]
    assert undocumented == []
    # Every error response of every operation is documented as what it is: a problem document.
    for operation_id, (_, _, op) in operations.items():
        for code, response in op["responses"].items():
            if int(code) >= 400:
                assert list(response["content"]) == [PROBLEM], (operation_id, code)
                assert response["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
                assert response["content"][PROBLEM]["example"]["status"] == int(code)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


TOKEN = "metrics-" + "y" * 24


def launch_logged(tmp_path, settings, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, httpx.Client, Path]:
    """The service with its stderr (the JSON log) in a file."""
    socket, log = tmp_path / "logged.sock", tmp_path / "service.log"
    full_env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
        **(env or {}),
    }
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "attune_containers.cli", "serve", "--packs-dir", str(PACKS), "--socket", str(socket), *args],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket)),
        base_url="http://attune",
        timeout=120,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if client.get("/livez").status_code == 200:
                return process, client, log
        except httpx.TransportError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")
    }


def test_metrics_and_the_json_access_log(tmp_path, settings):
    process, client, log = launch_logged(
        tmp_path, settings, "--log-level", "info", env={"ATTUNE__CONTAINERS__SERVICE_TOKEN": TOKEN}
    )
    try:
        refused = client.get("/metrics", headers={"Authorization": ""})
        assert_problem(refused, 401)  # behind the same token as everything else
        execution_id = new_id()
        client.post("/v1/executions", json={"action_ref": "probe.echo", "execution_id": execution_id, "warm": True})
        client.post("/v1/executions", json={"action_ref": "probe.fail", "warm": False})
        scraped = client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        got = samples(scraped.text)
        assert got['attune_executions_total{container="warm",status="succeeded"}'] == 1
        assert got['attune_executions_total{container="cold",status="failed"}'] == 1
        assert got['attune_execution_duration_seconds_count{container="warm"}'] == 1
        assert got["attune_execution_queue_seconds_count"] == 2
        assert got['attune_executions_held{state="finished"}'] == 2
        idle = [v for k, v in got.items() if k.startswith("attune_pool_containers{") and 'state="idle"' in k]
        assert idle == [1]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "attune_containers.access"]
    posted = [r for r in access if r["path"] == "/v1/executions" and r.get("execution_id") == execution_id]
    assert len(posted) == 1 and posted[0]["status_code"] == 200 and posted[0]["method"] == "POST"
    assert any(r["path"] == "/metrics" and r["status_code"] == 401 for r in access), "refusals are logged too"
    finished_lines = [r for r in records if r.get("message") == "execution finished" and r.get("execution_id") == execution_id]
    assert finished_lines and finished_lines[0]["status"] == "succeeded" and finished_lines[0]["warm"] is True
    assert TOKEN not in log.read_text()


def test_log_level_warning_keeps_the_access_log_quiet(tmp_path, settings):
    process, client, log = launch_logged(tmp_path, settings, "--log-level", "warning")
    try:
        assert client.get("/v1/health").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert "attune_containers.access" not in log.read_text()


def test_concurrent_requests_of_one_id_are_one_execution(client):
    import concurrent.futures

    def post(request: dict) -> httpx.Response:
        return client.post("/v1/executions", json=request)

    request = {"action_ref": "probe.sleep", "parameters": {"seconds": 1}, "execution_id": new_id()}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, [request] * 4))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["result"]["started"] for a in answers}) == 1, "one run, one result for all"
    refused = {"action_ref": "nopack.sleep", "execution_id": new_id()}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, [refused] * 4))
    assert [a.status_code for a in answers] == [404] * 4
    assert all(a.headers["content-type"] == PROBLEM for a in answers)
