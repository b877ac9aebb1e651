"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import uuid
from pathlib import Path

from attune_containers.core import labels as L
from attune_containers.engine import Engine, ImageRecord

RUN_ID = uuid.uuid4().hex[:8]
# Every image the tests build lives under this prefix and is removed at the end of the session.
TEST_PREFIX = f"attune-test-{RUN_ID}"


def unique_ref(stem: str = "t") -> str:
    """A pack_ref no other test (or earlier run) uses."""
    return f"{stem}{uuid.uuid4().hex[:8]}"


def images_of(engine: Engine, pack_ref: str) -> list[ImageRecord]:
    return engine.list_images({L.MANAGED: "true", L.PACK_REF: pack_ref})


class EngineRecorder:
    """A Unix-socket relay to the real engine that records the requests passing through it:
    point a CLI at it (``DOCKER_HOST=recorder.url``) to learn exactly what that process asked the
    engine, whatever else shares the engine meanwhile."""

    _REQUEST = re.compile(rb"(?m)^(GET|HEAD|POST|PUT|DELETE|PATCH) (\S+) HTTP/1\.[01]\r$")

    def __init__(self, directory: Path, engine_socket: str = "/var/run/docker.sock") -> None:
        self.path = directory / "engine.sock"
        self.engine_socket = engine_socket
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request the clients sent so far."""
        with self._lock:
            data = bytes(self.sent)
        return [(m.decode(), p.decode()) for m, p in self._REQUEST.findall(data)]

    def changes(self) -> list[tuple[str, str]]:
        """The requests that could change something in the engine (all but GET and HEAD)."""
        return [(m, p) for m, p in self.requests() if m not in ("GET", "HEAD")]

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.engine_socket)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += chunk
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
