"""The service's guard and start-up checks, fast and without an engine (the real process is tested
in tests/engine/test_service_security.py)."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from attune_containers.errors import InvalidSpecError
from attune_containers.http_api import Guard, bind_unix_socket, check_bind_address, load_token
from attune_containers.settings import Settings

TOKEN = b"a-token-of-32-characters-exactly"


def call(guard: Guard, headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> tuple[int, bytes | None, int]:
    """(status, body the app saw or None, how many body messages the guard read)."""
    seen: dict = {}
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    read = 0

    async def receive():
        nonlocal read
        read += 1
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"] = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]

    guard.app = app
    asyncio.run(guard({"type": "http", "headers": headers}, receive, send))
    return seen["status"], seen.get("body"), read


def test_no_token_configured_lets_requests_through():
    assert call(Guard(None, token=None, max_body=1024), [], [b"{}"])[:2] == (200, b"{}")


@pytest.mark.parametrize(
    "header, status",
    [
        (None, 401),
        (b"Bearer " + TOKEN[:-1], 401),
        (b"Bearer " + TOKEN + b"x", 401),
        (TOKEN, 401),
        (b"Basic " + TOKEN, 401),
        (b"Bearer " + TOKEN, 200),
        (b"bearer " + TOKEN, 200),
    ],
)
def test_the_token_is_required_and_compared_whole(header, status):
    headers = [(b"authorization", header)] if header is not None else []
    got, body, read = call(Guard(None, token=TOKEN, max_body=1024), headers, [b"{}"])
    assert got == status
    if status == 401:
        assert body is None and read == 0, "a refused request's body is never read"


def test_a_declared_length_above_the_limit_is_refused_unread():
    status, body, read = call(Guard(None, token=None, max_body=1024), [(b"content-length", b"314572800")], [b"x"])
    assert (status, body, read) == (413, None, 0)


def test_an_undeclared_body_is_cut_as_soon_as_it_passes_the_limit():
    parts = [b"x" * 512] * 10
    status, body, read = call(Guard(None, token=None, max_body=1024), [], parts)
    assert (status, body) == (413, None) and read == 3


def test_a_body_within_the_limit_is_replayed_whole():
    parts = [b"a" * 300, b"b" * 300, b"c" * 300]
    assert call(Guard(None, token=None, max_body=1024), [], parts)[:2] == (200, b"".join(parts))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_nothing(host):
    check_bind_address(host, allow_remote=False, token=None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com"])
def test_anything_else_needs_allow_remote_and_a_token(host):
    with pytest.raises(InvalidSpecError, match="allow-remote"):
        check_bind_address(host, allow_remote=False, token=TOKEN)
    with pytest.raises(InvalidSpecError, match="needs a token"):
        check_bind_address(host, allow_remote=True, token=None)
    check_bind_address(host, allow_remote=True, token=TOKEN)


def settings(tmp_path, monkeypatch, **values) -> Settings:
    monkeypatch.chdir(tmp_path)
    for name in ("SERVICE_TOKEN", "SERVICE_TOKEN_FILE"):
        monkeypatch.delenv(f"ATTUNE__CONTAINERS__{name}", raising=False)
    return Settings(**values)


def test_the_token_comes_from_a_private_file_or_the_environment(tmp_path, monkeypatch):
    assert load_token(settings(tmp_path, monkeypatch)) is None
    path = tmp_path / "token"
    path.write_bytes(TOKEN + b"\n")
    path.chmod(0o600)
    assert load_token(settings(tmp_path, monkeypatch, service_token_file=path)) == TOKEN
    monkeypatch.setenv("ATTUNE__CONTAINERS__SERVICE_TOKEN", TOKEN.decode())
    assert load_token(Settings()) == TOKEN
    assert TOKEN.decode() not in repr(Settings()), "the settings never show the token"


@pytest.mark.parametrize(
    "content, mode, needle",
    [
        (TOKEN, 0o604, "chmod o-rwx"),
        (b"short", 0o600, "16 to 4096"),
        (b"with space " + TOKEN, 0o600, "printable"),
    ],
)
def test_a_bad_token_file_is_refused_without_showing_it(tmp_path, monkeypatch, content, mode, needle):
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(InvalidSpecError, match=needle) as exc:
        load_token(settings(tmp_path, monkeypatch, service_token_file=path))
    assert content.decode() not in str(exc.value)


def test_a_linked_token_file_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.write_bytes(TOKEN)
    real.chmod(0o600)
    os.symlink(real, tmp_path / "link")
    with pytest.raises(InvalidSpecError):
        load_token(settings(tmp_path, monkeypatch, service_token_file=tmp_path / "link"))


def test_the_socket_gets_its_mode_before_its_path_exists(tmp_path):
    path = tmp_path / "s.sock"
    sock, inode = bind_unix_socket(path)
    try:
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_ino == inode
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock"], "the staging folder is gone"
        with pytest.raises(InvalidSpecError, match="another service"):
            sock.listen()
            bind_unix_socket(path)
    finally:
        sock.close()
    again, _ = bind_unix_socket(path)  # a stale socket (nobody listening) is replaced
    again.close()
    with pytest.raises(InvalidSpecError, match="no group"):
        bind_unix_socket(tmp_path / "g.sock", "no-such-group-here")
