"""The protocol between the worker and the in-container runner loop
(``attune_containers/runtimes/python/loop/attune_wrapper.py``), worker side.

Each request goes in on the container's stdin as two frames ``length(4, big endian) JSON``: the
control frame the supervisor reads (nonce, deadline, result limit) and the payload it passes unread
to the execution's child (action, parameters, secrets, environment). Everything comes back on the
container's stdout as frames ``MAGIC kind(1) length(4) payload``: ``o``/``e`` chunks of the action's
stdout/stderr, ``r`` chunks of the outcome document, ``d`` the end of one execution.

Nothing read here is trusted further than its bounds: only the four kinds are accepted, a done frame
is small and must echo the request's nonce (which the action's process never sees), and memory stays
bounded whatever arrives: output beyond a cap is counted, not kept; a result beyond its cap is
counted and skipped. Any violation is a protocol error: the execution fails and its container goes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

# Told each chunk of the action's output as it arrives ("stdout" or "stderr", the raw bytes), for
# live logs. Called on the reading thread: it must return at once and never raise.
OutputObserver = Callable[[str, bytes], None]

MAGIC = b"\x00ATC"
HEADER = len(MAGIC) + 1 + 4
OUTPUT, ERRORS, RESULT, DONE = b"o", b"e", b"r", b"d"
KINDS = (OUTPUT, ERRORS, RESULT, DONE)
DONE_LIMIT = 4096  # the done document is a handful of numbers


def encode_frame(document: dict[str, Any]) -> bytes:
    body = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return struct.pack(">I", len(body)) + body


def encode_request(control: dict[str, Any], payload: bytes) -> bytes:
    """One request: the supervisor's control frame, then the child's payload (``encode_frame``)."""
    return encode_frame(control) + payload


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
            body += f"\n[OUTPUT TRUNCATED: {self.total - self.kept} of {self.total} bytes dropped; limit {self.limit} bytes]\n"
        return body


class ExecutionCollector:
    """What one execution sent back, capped, assembled from the frames as they arrive."""

    def __init__(
        self,
        stdout_limit: int,
        stderr_limit: int,
        result_limit: int,
        nonce: str | None = None,
        on_output: OutputObserver | None = None,
    ) -> None:
        self.nonce = nonce
        self.on_output = on_output
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
        reported = (self.done or {}).get("result_bytes")
        return self.result_size > self.result_limit or (isinstance(reported, int) and reported > self.result_limit)

    def outcome(self) -> dict[str, Any] | None:
        if self.done is None or self.protocol_error or self.result_too_large or not self._result:
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
                self._kind = self._pending[len(MAGIC) : len(MAGIC) + 1]
                (self._remaining,) = struct.unpack(">I", self._pending[len(MAGIC) + 1 : HEADER])
                if self._kind not in KINDS or (self._kind == DONE and self._remaining > DONE_LIMIT):
                    self._kind = None
                    self._raw()
                    return b""
                self._pending = self._pending[HEADER:]
                if self._remaining == 0:
                    self._end_frame()
                continue
            piece = self._pending[: self._remaining]
            self._pending = self._pending[len(piece) :]
            self._remaining -= len(piece)
            self._accept(piece)
            if self._remaining == 0:
                self._end_frame()
        rest, self._pending = (self._pending, b"") if self.done is not None else (b"", self._pending)
        return rest

    def _accept(self, piece: bytes) -> None:
        if self._kind == OUTPUT:
            self.stdout.write(piece)
            if self.on_output is not None:
                self.on_output("stdout", piece)
        elif self._kind == ERRORS:
            self.stderr.write(piece)
            if self.on_output is not None:
                self.on_output("stderr", piece)
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
                done = None
            if not isinstance(done, dict) or (self.nonce is not None and done.get("nonce") != self.nonce):
                # Not the end of this execution: the stream is not what the supervisor writes.
                self.protocol_error = True
                done = {}
            self.done = done
        self._kind = None

    def _raw(self) -> None:
        # Bytes that are not frames: the loop itself broke. Keep them (capped) as output, never as
        # a result, and end the execution: nothing more from this stream is believed.
        self.protocol_error = True
        self.stdout.write(self._pending)
        self._pending = b""
        self.done = {}
