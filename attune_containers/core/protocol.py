"""Decoding what a container's stdout carries: frames written by the in-container wrapper
(``attune_containers/runtime/attune_wrapper.py``), with the action's own output capped on the way.

Memory stays bounded whatever the action prints: output beyond a cap is counted, not kept, and a
result frame beyond its cap is skipped rather than buffered.
"""

from __future__ import annotations

import struct

MAGIC = b"\x00ATC"
HEADER = len(MAGIC) + 1 + 4
KIND_OUTPUT = b"o"
KIND_RESULT = b"r"


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


class FrameDecoder:
    """Incremental decoder of the wrapper's stdout frames.

    Bytes that are not frames (an action that wrote straight to the wrapper's private descriptor)
    switch the decoder to raw mode: the rest is treated as the action's output, never as a result.
    """

    def __init__(self, stdout: CappedBuffer, result_limit: int) -> None:
        self.stdout = stdout
        self.result_limit = result_limit
        self.result: bytes | None = None
        self.result_too_large: int | None = None
        self.protocol_error = False
        self._pending = b""
        self._kind: bytes | None = None
        self._remaining = 0
        self._result_parts: list[bytes] | None = None

    def feed(self, data: bytes) -> None:
        if self.protocol_error:
            self.stdout.write(data)
            return
        self._pending += data
        while self._pending:
            if self._kind is None:
                if len(self._pending) < HEADER:
                    if not MAGIC.startswith(self._pending[: len(MAGIC)]):
                        self._raw()
                    return
                if self._pending[: len(MAGIC)] != MAGIC:
                    self._raw()
                    return
                self._kind = self._pending[len(MAGIC): len(MAGIC) + 1]
                (self._remaining,) = struct.unpack(">I", self._pending[len(MAGIC) + 1: HEADER])
                self._pending = self._pending[HEADER:]
                if self._kind == KIND_RESULT:
                    if self._remaining > self.result_limit + 4096:
                        self.result_too_large = self._remaining
                        self._result_parts = None
                    else:
                        self._result_parts = []
                if self._remaining == 0:
                    self._finish()
                continue
            piece = self._pending[: self._remaining]
            self._pending = self._pending[len(piece):]
            self._remaining -= len(piece)
            if self._kind == KIND_OUTPUT:
                self.stdout.write(piece)
            elif self._kind == KIND_RESULT and self._result_parts is not None:
                self._result_parts.append(piece)
            if self._remaining == 0:
                self._finish()

    def _finish(self) -> None:
        if self._kind == KIND_RESULT and self._result_parts is not None:
            self.result = b"".join(self._result_parts)
        self._kind, self._result_parts = None, None

    def _raw(self) -> None:
        self.protocol_error = True
        self.stdout.write(self._pending)
        self._pending = b""
