"""Live logs and build progress on the service, as a client meets them: a real ``serve`` on a Unix
socket and real containers. ``GET /v1/executions/{id}/logs`` replays then follows an execution's
output (NDJSON or SSE) and ends with its status; it is bounded by the execution's output limits, a
reader that never reads never holds the execution up, and closing the stream cancels nothing.
``POST /v1/environments/{pack_ref}`` streams a build's lines, and the service logs them too."""

from __future__ import annotations

import json
import os
import signal
import socket as socketlib
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from ..support import TEST_PREFIX
from .test_service import start
from .test_service_contract import TOKEN, assert_problem, finished, launch_logged, new_id

MiB = 1024 * 1024


@pytest.fixture
def service(tmp_path, settings):
    socket = tmp_path / "attune.sock"
    process, client = start(socket, settings)
    yield client, socket
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def submit(client: httpx.Client, action_ref: str, **fields) -> str:
    execution_id = new_id()
    accepted = client.post(
        "/v1/executions", params={"async": "true"}, json={"action_ref": action_ref, "execution_id": execution_id, **fields}
    )
    assert accepted.status_code == 202, accepted.text
    return execution_id


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line]


def text_of(events: list[dict], stream: str) -> str:
    return "".join(e["data"] for e in events if e.get("stream") == stream)


def test_logs_follow_a_running_execution_live_as_ndjson(service):
    client, _ = service
    execution_id = submit(client, "probe.ticker", parameters={"ticks": 6, "every": 0.5}, warm=False)
    events, states = [], []
    with client.stream("GET", f"/v1/executions/{execution_id}/logs") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if not line:
                continue
            events.append(json.loads(line))
            if len(events) == 1:  # the first line came while the action was still ticking
                states.append(client.get(f"/v1/executions/{execution_id}").json()["state"])
    assert states == ["running"]
    assert text_of(events, "stdout") == "".join(f"tick {i}\n" for i in range(6))
    assert text_of(events, "stderr") == "".join(f"tock {i}\n" for i in range(6))
    assert all(set(e) == {"stream", "data", "ts"} for e in events[:-1])
    assert events[-1] == {"event": "end", "status": "succeeded", "stdout_truncated": False, "stderr_truncated": False}
    # Finished: the same output, from its result, then the end.
    again = ndjson(client.get(f"/v1/executions/{execution_id}/logs"))
    assert text_of(again, "stdout") == text_of(events, "stdout") and again[-1] == events[-1]


def test_logs_as_server_sent_events(service):
    client, _ = service
    execution_id = submit(client, "probe.ticker", parameters={"ticks": 3, "every": 0.3}, warm=True)
    with client.stream("GET", f"/v1/executions/{execution_id}/logs", headers={"Accept": "text/event-stream"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        raw = response.read().decode()
    events = [dict(line.split(": ", 1) for line in block.splitlines()) for block in raw.split("\n\n") if block]
    assert {e["event"] for e in events[:-1]} == {"output"} and events[-1]["event"] == "end"
    documents = [json.loads(e["data"]) for e in events]
    assert text_of(documents, "stdout") == "tick 0\ntick 1\ntick 2\n"
    assert documents[-1]["status"] == "succeeded"


def test_output_larger_than_the_limit_stops_at_the_limit_in_the_log_too(service):
    client, _ = service
    execution_id = submit(
        client, "probe.flood", parameters={"megabytes": 16}, warm=False, limits={"stdout_limit": MiB, "stderr_limit": MiB}
    )
    events = ndjson(client.get(f"/v1/executions/{execution_id}/logs"))
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "succeeded"
    assert end["stdout_truncated"] is True and end["stderr_truncated"] is True
    missed = sum(e["bytes"] for e in events if e.get("event") == "missed")
    # Exactly each stream's limit went to the log: what this reader got, and what it missed.
    assert len(text_of(events, "stdout")) + len(text_of(events, "stderr")) + missed == 2 * MiB
    assert len(text_of(events, "stdout")) <= MiB


def test_a_reader_that_never_reads_never_holds_the_execution_up(service):
    client, socket = service
    execution_id = submit(client, "probe.sleep", parameters={"seconds": 1}, warm=False)
    flood_id = submit(
        client,
        "probe.flood",
        parameters={"megabytes": 24},
        warm=False,
        limits={"stdout_limit": 24 * MiB, "stderr_limit": 24 * MiB},
    )
    stalled = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    stalled.connect(str(socket))
    stalled.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096)
    try:
        stalled.sendall(f"GET /v1/executions/{flood_id}/logs HTTP/1.1\r\nHost: attune\r\n\r\n".encode())
        started = time.monotonic()
        execution = finished(client, flood_id, timeout=120)  # 48 MiB of output, nobody reading it
        assert execution["status"] == "succeeded", execution["result"]["error"]
        assert time.monotonic() - started < 60
        assert finished(client, execution_id)["status"] == "succeeded"
        # The stalled reader, read at last: what fitted, then how much it missed, then the end.
        stalled.settimeout(30)
        received = b""
        while b'"event":"end"' not in received:
            chunk = stalled.recv(1 << 20)
            assert chunk, received[-500:]
            received += chunk
    finally:
        stalled.close()
    assert b'"event":"missed"' in received
    assert len(received) < 24 * MiB


def test_closing_a_log_stream_cancels_nothing(service):
    client, _ = service
    execution_id = submit(client, "probe.sleep", parameters={"seconds": 3}, warm=False)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v1/executions/{execution_id}/logs", timeout=1)
    assert finished(client, execution_id)["status"] == "succeeded"
    assert_problem(client.get("/v1/executions/no-such-id/logs"), 404, "execution_id")


def test_a_build_streams_its_lines_and_the_service_logs_them(tmp_path, settings):
    # A prefix of its own: the probe image is built here, not found from an earlier test.
    prefix = f"{TEST_PREFIX}/live{uuid.uuid4().hex[:8]}"
    process, client, log = launch_logged(
        tmp_path,
        settings,
        "--log-level",
        "info",
        env={"ATTUNE__CONTAINERS__SERVICE_TOKEN": TOKEN, "ATTUNE__CONTAINERS__IMAGE_PREFIX": prefix},
    )
    try:
        # Behind the token like everything else: no token, no logs (and no build).
        assert_problem(client.get("/v1/executions/x/logs", headers={"Authorization": ""}), 401)
        assert_problem(client.post("/v1/environments/probe", params={"stream": "true"}, headers={"Authorization": ""}), 401)
        assert_problem(client.post("/v1/environments/nopack", params={"stream": "true"}), 404, "pack_ref")
        with client.stream("POST", "/v1/environments/probe", headers={"Accept": "application/x-ndjson"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            events = ndjson(response)
        lines = [e for e in events if e.get("stream") == "build"]
        assert lines and all(set(e) == {"stream", "data", "ts"} for e in lines)
        assert events[-1]["event"] == "result"
        environment = events[-1]["environment"]
        assert environment["pack_ref"] == "probe" and environment["image"].startswith(prefix + "/")
        # Ensured already: no build, only the result; unstreamed, the environment as before.
        again = ndjson(client.post("/v1/environments/probe", params={"stream": "true"}))
        assert [e["event"] for e in again] == ["result"] and again[0]["environment"]["id"] == environment["id"]
        assert client.post("/v1/environments/probe").json()["id"] == environment["id"]
        # What ran says which image exactly.
        result = client.post("/v1/executions", json={"action_ref": "probe.echo", "warm": False}).json()
        assert result["image_id"] == environment["id"] and result["image"] == environment["image"]
        assert result["dependency_hash"] == environment["dependency_hash"]
    finally:
        client.delete("/v1/environments/probe")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    logged = [r["message"] for r in records if r["logger"] == "attune_containers.build" and r.get("pack_ref") == "probe"]
    assert logged == [e["data"] for e in lines]


def test_the_openapi_schema_documents_both_streams(service):
    client, _ = service
    schema = client.get("/openapi.json").json()
    logs = schema["paths"]["/v1/executions/{execution_id}/logs"]["get"]
    assert logs["operationId"] == "streamExecutionLogs"
    assert set(logs["responses"]["200"]["content"]) == {"application/x-ndjson", "text/event-stream"}
    streamed = logs["responses"]["200"]["content"]["application/x-ndjson"]["schema"]["oneOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in streamed} == {"LogLine", "LogMissed", "LogEnd"}
    ensure = schema["paths"]["/v1/environments/{pack_ref}"]["post"]
    assert set(ensure["responses"]["200"]["content"]) == {"application/json", "application/x-ndjson"}
    assert "stream" in {p["name"] for p in ensure["parameters"]}
    components = schema["components"]["schemas"]
    assert {"LogLine", "LogMissed", "LogEnd", "BuildResult", "BuildFailed"} <= set(components)
    assert "image_id" in components["ExecutionResult"]["properties"]


def test_a_failed_build_ends_its_stream_with_a_problem_and_lazy_builds_are_logged_too(tmp_path, settings):
    pack = tmp_path / "packs" / "broken"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        "ref: broken\nversion: 1.0.0\nmeta:\n  python_dependencies:\n    - definitely-not-a-package-zz==1.0\n"
    )
    (pack / "actions" / "act.yaml").write_text("name: act\nrunner_type: python\nentry_point: act.py\n")
    (pack / "actions" / "act.py").write_text("def run():\n    return 1\n")
    socket, log = tmp_path / "broken.sock", tmp_path / "broken.log"
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
    }
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "attune_containers.cli",
                "serve",
                "--packs-dir",
                str(tmp_path / "packs"),
                "--socket",
                str(socket),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://attune", timeout=300)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if client.get("/livez").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        events = ndjson(client.post("/v1/environments/broken", params={"stream": "true"}))
        assert any("definitely-not-a-package-zz" in e.get("data", "") for e in events[:-1])
        failed = events[-1]
        assert failed["event"] == "error" and failed["problem"]["status"] == 422
        assert "definitely-not-a-package-zz" in failed["problem"]["detail"]
        # An execution's lazy build: its lines are logged although nobody streams them.
        result = client.post("/v1/executions", json={"action_ref": "broken.act"}).json()
        assert result["status"] == "error"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    logged = [r for r in records if r["logger"] == "attune_containers.build" and r.get("pack_ref") == "broken"]
    missing = [r for r in logged if "No matching distribution found" in r["message"]]
    assert len(missing) == 2, [r["message"] for r in logged]  # the streamed build and the lazy one
