"""The local service as the worker meets it: a real process on a Unix socket, real containers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from attune_containers.core import labels as L

from ..support import TEST_PREFIX

PACKS = Path(__file__).resolve().parent.parent / "packs"


def start(socket: Path, settings) -> tuple[subprocess.Popen, httpx.Client]:
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
    }
    # Its log goes to a file beside the socket: a pipe nobody reads would fill up (a build logs
    # every line) and stall the service.
    with open(socket.with_suffix(".log"), "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "attune_containers.cli", "serve", "--packs-dir", str(PACKS), "--socket", str(socket)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://attune", timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/v1/health").status_code == 200:
                return process, client
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    process.communicate()
    raise AssertionError("the service did not start: " + socket.with_suffix(".log").read_text())


def containers_of(engine, pid: int) -> list[str]:
    return [c.id for c in engine.list_containers({L.RUN: "true"}) if c.labels.get(L.OWNER, "").endswith(f":{pid}")]


@pytest.fixture
def service(tmp_path, settings):
    process, client = start(tmp_path / "attune.sock", settings)
    yield process, client
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_executions_over_the_socket(service, engine):
    process, client = service
    first = client.post("/v1/executions", json={"action_ref": "probe.echo", "parameters": {"q": 'it\'s "ok"\n'}})
    assert first.status_code == 200 and first.json()["result"] == {"q": 'it\'s "ok"\n'}
    secret = client.post("/v1/executions", json={"action_ref": "probe.secret", "secrets": {"token": "s3cr3t-é\"'\\n"}})
    assert secret.json()["result"]["token_matches"] is True
    assert client.get("/v1/pools").json()[0]["created"] >= 1
    assert containers_of(engine, process.pid), "the service keeps its warm container"
    refused = client.post("/v1/executions", json={"action_ref": "../../etc.passwd"})
    assert refused.status_code == 422 and "action_ref" in refused.text
    timed_out = client.post("/v1/executions", json={"action_ref": "probe.spin", "limits": {"timeout": 1}})
    assert timed_out.json()["status"] == "timeout"


def test_the_openapi_schema_describes_the_api(service):
    _, client = service
    schema = client.get("/openapi.json").json()
    assert {"/v1/executions", "/v1/environments", "/v1/pools", "/v1/health"} <= set(schema["paths"])
    result = schema["components"]["schemas"]["ExecutionResult"]["properties"]
    assert {
        "status",
        "exit_code",
        "duration_ms",
        "result",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "error",
        "image",
    } <= set(result)


def test_graceful_stop_removes_every_container(service, engine):
    process, client = service
    assert client.post("/v1/pools/probe/prewarm", params={"count": 2}).json() == 2
    assert len(containers_of(engine, process.pid)) == 2
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 0
    assert containers_of(engine, process.pid) == []


def test_a_restart_after_a_crash_removes_the_leftovers(tmp_path, settings, engine):
    process, client = start(tmp_path / "a.sock", settings)
    client.post("/v1/executions", json={"action_ref": "probe.echo", "parameters": {}})
    client.post("/v1/pools/probe/prewarm", params={"count": 2})
    left = containers_of(engine, process.pid)
    assert left
    process.kill()
    process.communicate(timeout=60)
    assert containers_of(engine, process.pid) == left  # a SIGKILL leaves them behind...
    again, client = start(tmp_path / "b.sock", settings)
    try:
        assert containers_of(engine, process.pid) == []  # ...and the next instance removes them
        answer = client.post("/v1/executions", json={"action_ref": "probe.echo", "parameters": {"x": 1}})
        assert answer.json()["result"] == {"x": 1}
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)
    assert containers_of(engine, again.pid) == []
    assert not [
        c
        for c in engine.list_containers({L.POOL: "true"})
        if c.labels.get(L.OWNER, "").endswith((f":{process.pid}", f":{again.pid}"))
    ]
