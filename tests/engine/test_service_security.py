"""The local service against a hostile local user or caller: the real ``attune-containers serve``
process, a real socket or port, real containers.

- the Unix socket is the owner's alone (0600, or 0660 with a configured group) from the first
  moment its path exists;
- a token, when configured, is needed for every request; TCP is loopback only unless
  ``--allow-remote`` with a token;
- a request body is bounded, and refused without being read;
- health answers at once while every execution slot is busy and more executions are queued.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..support import TEST_PREFIX

PACKS = Path(__file__).resolve().parent.parent / "packs"
TOKEN = "t0k3n-" + "x" * 26 + "-never-printed"


def launch(settings, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "attune_containers.cli", "serve", "--packs-dir", str(PACKS), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ready(process: subprocess.Popen, client: httpx.Client, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the service ended: " + process.communicate()[1])
        try:
            if client.get("/v1/health", headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the service did not start: " + process.communicate()[1])


def stop(process: subprocess.Popen) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect_as(uid: int, gid: int, path: str) -> int:
    """0 if a process of uid:gid (no other groups) can connect to the socket, 13 if refused."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            os._exit(0)
        except PermissionError:
            os._exit(13)
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def open_dir():
    """A folder every user may traverse (as /run is): only the socket's own mode protects it."""
    path = tempfile.mkdtemp(prefix="ac-sock-", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    for child in Path(path).iterdir():
        child.unlink()
    os.rmdir(path)


def first_mode(process: subprocess.Popen, path: Path) -> os.stat_result:
    """The socket's status the first moment its path is seen (polled as fast as Python can)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return os.lstat(path)
        except FileNotFoundError:
            if process.poll() is not None:
                raise AssertionError(process.communicate()[1]) from None
    raise AssertionError("no socket appeared")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root")


@needs_root
def test_the_socket_is_the_owners_alone_from_its_first_moment(settings, open_dir):
    path = open_dir / "ac.sock"
    process = launch(settings, "--socket", str(path))
    try:
        seen = first_mode(process, path)
        assert stat.S_ISSOCK(seen.st_mode) and stat.S_IMODE(seen.st_mode) == 0o600, oct(seen.st_mode)
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://attune")
        ready(process, client)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert connect_as(65534, 65534, str(path)) == 13, "another local user reached the socket"
    finally:
        stop(process)
    assert not path.exists(), "a graceful stop removes its socket"


@needs_root
def test_a_configured_group_may_use_the_socket_and_no_one_else(settings, open_dir):
    path = open_dir / "ac.sock"
    process = launch(settings, "--socket", str(path), env={"ATTUNE__CONTAINERS__SERVICE_SOCKET_GROUP": "nogroup"})
    try:
        seen = first_mode(process, path)
        assert stat.S_IMODE(seen.st_mode) == 0o660 and seen.st_gid == 65534, (oct(seen.st_mode), seen.st_gid)
        ready(process, httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://attune"))
        assert connect_as(65534, 65534, str(path)) == 0, "a member of the group is let in"
        assert connect_as(65534, 54321, str(path)) == 13, "anyone else is not"
    finally:
        stop(process)


def test_an_existing_file_at_the_socket_path_is_left_alone(settings, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    process = launch(settings, "--socket", str(path))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "not a socket" in err, err
    assert path.read_text() == "precious"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--host", "0.0.0.0"], "--allow-remote"),
        (["--host", "192.0.2.1"], "not a loopback address"),
        (["--host", "0.0.0.0", "--allow-remote"], "needs a token"),
    ],
)
def test_tcp_is_loopback_only_unless_remote_is_allowed_with_a_token(settings, args, needle):
    process = launch(settings, "--port", str(free_port()), *args)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and needle in err, err


def test_a_token_file_others_can_read_is_refused(settings, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    process = launch(settings, "--port", str(free_port()), env={"ATTUNE__CONTAINERS__SERVICE_TOKEN_FILE": str(token_file)})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "chmod o-rwx" in err and TOKEN not in err, err


def test_with_a_token_every_request_needs_it(settings, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    # --allow-remote with a token: accepted, and the token guards it.
    process = launch(
        settings,
        "--port",
        str(port),
        "--host",
        "0.0.0.0",
        "--allow-remote",
        env={"ATTUNE__CONTAINERS__SERVICE_TOKEN_FILE": str(token_file)},
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    good = {"Authorization": f"Bearer {TOKEN}"}
    try:
        ready(process, client, good)
        execution = {"action_ref": "probe.echo", "parameters": {"a": 1}}
        for headers in (
            {},
            {"Authorization": "Bearer " + TOKEN[:-1] + "X"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            for method, url, body in (
                ("POST", "/v1/executions", execution),
                ("GET", "/v1/health", None),
                ("GET", "/openapi.json", None),
                ("GET", "/v1/pools", None),
            ):
                answer = client.request(method, url, json=body, headers=headers)
                assert answer.status_code == 401, (headers, url, answer.status_code)
                assert answer.headers["www-authenticate"] == "Bearer"
        done = client.post("/v1/executions", json=execution, headers=good)
        assert done.status_code == 200 and done.json()["result"] == {"a": 1}, done.text
    finally:
        out, err = stop(process)
    assert TOKEN not in out + err


def raw_request(path: Path, head: bytes, body_parts, timeout: float = 20) -> bytes:
    """Send a request by hand over the Unix socket; what the service answered (until it closes)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(head)
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service answered and closed before the whole body was sent: the point
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


@pytest.fixture
def service(settings, tmp_path):
    path = tmp_path / "ac.sock"
    process = launch(settings, "--socket", str(path))
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://attune", timeout=120)
    ready(process, client)
    yield path, client
    stop(process)


def test_a_huge_body_is_refused_without_being_read(service):
    path, client = service
    head = (
        b"POST /v1/executions HTTP/1.1\r\nHost: attune\r\nContent-Type: application/json\r\n"
        b"Content-Length: 314572800\r\n\r\n"
    )  # 300 MB announced, 64 kB sent
    started = time.monotonic()
    answer = raw_request(path, head, [b"{" + b" " * 65535])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 10
    assert client.get("/v1/health").status_code == 200


def test_a_chunked_body_is_cut_at_the_limit(service):
    path, _ = service
    head = b"POST /v1/executions HTTP/1.1\r\nHost: attune\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    mib = b" " * (1024 * 1024)
    chunks = [b"100000\r\n" + mib + b"\r\n" for _ in range(12)] + [b"0\r\n\r\n"]  # 12 MiB > 8 MiB
    assert raw_request(path, head, chunks).startswith(b"HTTP/1.1 413")


def test_a_body_within_the_limit_and_the_caps_is_served(service):
    _, client = service
    big = "x" * (512 * 1024)  # echoed back: within the 1 MiB result limit
    done = client.post("/v1/executions", json={"action_ref": "probe.echo", "parameters": {"big": big}})
    assert done.status_code == 200 and len(done.json()["result"]["big"]) == len(big)
    # Issue 9's request: a caller may not widen its own box beyond the operator's caps.
    refused = client.post("/v1/executions", json={"action_ref": "probe.echo", "limits": {"network": "bridge", "memory": "2g"}})
    assert refused.status_code == 422 and refused.json()["field"] == "limits.network"
    refused = client.post("/v1/executions", json={"action_ref": "probe.echo", "limits": {"memory": "64g"}})
    assert refused.status_code == 422 and refused.json()["field"] == "limits.memory"


def test_health_answers_at_once_while_every_slot_is_busy(settings, tmp_path):
    """2 slots running sleeping actions, 40 more queued and 3 turned away: health (and the other
    endpoints) still answer. Before, 40 queued requests took every thread and health waited."""
    path = tmp_path / "ac.sock"
    process = launch(
        settings,
        "--socket",
        str(path),
        env={"ATTUNE__CONTAINERS__MAX_CONCURRENT_RUNS": "2", "ATTUNE__CONTAINERS__SERVICE_MAX_QUEUED": "40"},
    )
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://attune", timeout=300)
    statuses: list[int] = []

    def sleeper() -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://attune", timeout=300) as c:
            try:
                statuses.append(
                    c.post("/v1/executions", json={"action_ref": "probe.sleep", "parameters": {"seconds": 20}}).status_code
                )
            except httpx.TransportError:
                statuses.append(-1)  # the service stopped under it: the end of the test

    try:
        ready(process, client)
        threads = [threading.Thread(target=sleeper, daemon=True) for _ in range(45)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while sum(p["busy"] for p in client.get("/v1/pools").json()) < 2:
            assert time.monotonic() < deadline, "the executions never started"
            time.sleep(0.2)
        time.sleep(0.5)
        assert sorted(statuses) == [503, 503, 503], statuses  # 2 running + 40 queued; the rest turned away
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            assert client.get("/v1/health").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        started = time.monotonic()
        assert client.get("/v1/environments").status_code == 200
        other = time.monotonic() - started
        assert statistics.median(latencies) < 0.1, latencies
        assert max(latencies) < 1.0 and other < 2.0, (latencies, other)
        assert sum(p["busy"] for p in client.get("/v1/pools").json()) == 2  # still saturated while measured
    finally:
        stop(process)
