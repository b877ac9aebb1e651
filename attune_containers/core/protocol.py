"""The protocol between the worker and the in-container runner loop
(``attune_containers/runtime/attune_wrapper.py``), worker side.

Requests go in on the container's stdin as ``length(4, big endian) JSON``. Everything comes back
on the container's stdout as frames ``MAGIC kind(1) length(4) payload``: ``o``/``e`` chunks of the
action's stdout/stderr, ``r`` the outcome document, ``d`` the end of one execution.

Memory stays bounded whatever the action prints: output beyond a cap is counted, not kept, and a
result beyond its cap is counted and skipped rather than buffered.
"""

from __future__ import annotations

import json
import struct
from typing import Any

MAGIC = b"\x00ATC"
HEADER = len(MAGIC) + 1 + 4
OUTPUT, ERRORS, RESULT, DONE = b"o", b"e", b"r", b"d"


def encode_request(document: dict[str, Any]) -> bytes:
    body = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return struct.pack(">I", len(body)) + body


class CappedBuffer:
    """Keeps the first ``limit`` bytes written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self.kept = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.kept
        if room > 0:
            piece = data[:room]
            self._parts.append(piece)
            self.kept += len(piece)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept

    def text(self) -> str:
        body = b"".join(self._parts).decode("utf-8", "replace")
        if self.truncated:
            body += (f"\n[OUTPUT TRUNCATED: {self.total - self.kept} of {self.total} bytes dropped; "
                     f"limit {self.limit} bytes]\n")
        return body


class ExecutionCollector:
    """What one execution sent back, capped, assembled from the frames as they arrive."""

    def __init__(self, stdout_limit: int, stderr_limit: int, result_limit: int) -> None:
        self.stdout = CappedBuffer(stdout_limit)
        self.stderr = CappedBuffer(stderr_limit)
        self.result_limit = result_limit + 4096  # the outcome document wraps the result
        self._result: list[bytes] = []
        self.result_size = 0
        self.done: dict[str, Any] | None = None
        self._done_parts: list[bytes] = []
        self.protocol_error = False
        self._pending = b""
        self._kind: bytes | None = None
        self._remaining = 0

    @property
    def result_too_large(self) -> bool:
        return self.result_size > self.result_limit

    def outcome(self) -> dict[str, Any] | None:
        if self.done is None or self.result_too_large or not self._result:
            return None
        try:
            document = json.loads(b"".join(self._result))
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    def feed(self, data: bytes) -> bytes:
        """Consume frames; return the bytes that follow this execution's end (none, normally)."""
        if self.protocol_error:
            self.stdout.write(data)
            return b""
        self._pending += data
        while self._pending and self.done is None:
            if self._kind is None:
                if len(self._pending) < HEADER:
                    if not MAGIC.startswith(self._pending[: len(MAGIC)]):
                        self._raw()
                    return b""
                if self._pending[: len(MAGIC)] != MAGIC:
                    self._raw()
                    return b""
                self._kind = self._pending[len(MAGIC): len(MAGIC) + 1]
                (self._remaining,) = struct.unpack(">I", self._pending[len(MAGIC) + 1: HEADER])
                self._pending = self._pending[HEADER:]
                if self._remaining == 0:
                    self._end_frame()
                continue
            piece = self._pending[: self._remaining]
            self._pending = self._pending[len(piece):]
            self._remaining -= len(piece)
            self._accept(piece)
            if self._remaining == 0:
                self._end_frame()
        rest, self._pending = (self._pending, b"") if self.done is not None else (b"", self._pending)
        return rest

    def _accept(self, piece: bytes) -> None:
        if self._kind == OUTPUT:
            self.stdout.write(piece)
        elif self._kind == ERRORS:
            self.stderr.write(piece)
        elif self._kind == RESULT:
            self.result_size += len(piece)
            if not self.result_too_large:
                self._result.append(piece)
        elif self._kind == DONE:
            self._done_parts.append(piece)

    def _end_frame(self) -> None:
        if self._kind == DONE:
            try:
                done = json.loads(b"".join(self._done_parts) or b"{}")
            except ValueError:
                done = {}
            self.done = done if isinstance(done, dict) else {}
        self._kind = None

    def _raw(self) -> None:
        # Bytes that are not frames: the loop itself broke. Keep them as output, never as a result.
        self.protocol_error = True
        self.stdout.write(self._pending)
        self._pending = b""
