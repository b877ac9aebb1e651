"""The service's executions as resources: each one by its id, queued, running or finished.

Live executions are held until they finish (their number is bounded by the service's queue);
finished ones are kept in a bounded cache (``cachetools.TTLCache``): at most ``max_finished`` of
them, each for at most ``ttl`` seconds, the oldest dropped first. An execution id names one request:
the same id with the same request is the same execution (its result, or a wait for it), the same id
with a different request is a conflict. Requests are compared by an HMAC of their canonical JSON
under a key of this process, so that no secret is kept, not even as a plain hash. An execution
that ended because the engine was unreachable never ran: its id may be used again.

Live logs: a running execution's output goes to its ``OutputLog`` (each stream kept up to the
execution's own output limit, as its result keeps it, and released when it finishes: the result
holds it then), which readers of ``GET /v1/executions/{id}/logs`` replay and then follow. The
execution never waits for a reader: each reader has its own bounded queue, and what does not fit
there is dropped for that reader alone and reported to it as missed.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from cachetools import TTLCache
from pydantic import BaseModel, Field

from ..core.execution import ExecutionResult, ExecutionStatus
from ..errors import ExecutionConflictError


class ExecutionState(str, Enum):
    """Where an execution is."""

    queued = "queued"
    running = "running"
    finished = "finished"


class Execution(BaseModel):
    """An execution as a resource (``GET /v1/executions/{id}``)."""

    execution_id: str = Field(description="The execution's id")
    action_ref: str = Field(description="<pack_ref>.<action name>")
    state: ExecutionState = Field(description="queued (waiting for a slot), running or finished")
    status: ExecutionStatus | None = Field(None, description="How it ended; null until it finished")
    submitted_at: datetime = Field(description="When the service accepted it (UTC)")
    started_at: datetime | None = Field(None, description="When it started running (UTC)")
    finished_at: datetime | None = Field(None, description="When it finished (UTC)")
    result: ExecutionResult | None = Field(None, description="Its result, once finished")


class Record:
    """One execution of the store, with what the service needs to wait for or cancel it."""

    def __init__(self, execution: Execution, fingerprint: str) -> None:
        self.execution = execution
        self.fingerprint = fingerprint
        self.task: Any = None  # the service's asyncio task running it
        self.future: Any = None  # its concurrent.futures.Future on the executor
        self.ready: Any = None  # an asyncio.Event: set once it is queued, or refused
        self.refused: BaseException | None = None  # why it was never queued
        self.output: OutputLog | None = None  # its live output, while it runs


class ExecutionStore:
    """Thread-safe: the event loop and the executor threads both update it."""

    def __init__(self, max_finished: int = 1000, ttl: float = 3600.0, timer: Callable[[], float] = time.monotonic) -> None:
        self._live: dict[str, Record] = {}
        self._finished: TTLCache[str, Record] = TTLCache(maxsize=max_finished, ttl=ttl, timer=timer)
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)

    def fingerprint(self, request: dict[str, Any]) -> str:
        """An HMAC of the request's canonical JSON (the execution id left out)."""
        document = {k: v for k, v in request.items() if k != "execution_id"}
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()
        return hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def claim(self, execution_id: str, action_ref: str, fingerprint: str) -> tuple[Record, bool]:
        """(the execution of this id, whether it is new). Raises ExecutionConflictError when the
        id is used by a different request (live, or finished and still kept)."""
        with self._lock:
            record = self._live.get(execution_id) or self._finished.get(execution_id)
            if record is not None and _never_ran(record):
                record = None  # the engine was unreachable: the same id may be tried again
            if record is not None:
                if not hmac.compare_digest(record.fingerprint, fingerprint):
                    raise ExecutionConflictError(
                        f"execution {execution_id!r} exists with a different request; use a new execution_id"
                    )
                return record, False
            record = Record(
                Execution(execution_id=execution_id, action_ref=action_ref, state=ExecutionState.queued, submitted_at=_now()),
                fingerprint,
            )
            self._live[execution_id] = record
            return record, True

    def discard(self, execution_id: str) -> None:
        """Forget an execution that never ran (refused): its id is free again."""
        with self._lock:
            self._live.pop(execution_id, None)

    def started(self, execution_id: str) -> None:
        with self._lock:
            record = self._live.get(execution_id)
            if record is not None and record.execution.state is ExecutionState.queued:
                record.execution.state = ExecutionState.running
                record.execution.started_at = _now()

    def finish(self, execution_id: str, result: ExecutionResult) -> Record | None:
        """Record the result; the execution moves to the bounded cache of finished ones."""
        with self._lock:
            record = self._live.pop(execution_id, None)
            if record is None:
                return None
            execution = record.execution
            execution.state = ExecutionState.finished
            execution.status = result.status
            execution.result = result
            execution.started_at = result.started_at or execution.started_at
            execution.finished_at = result.finished_at or _now()
            self._finished[execution_id] = record
        if record.output is not None:
            record.output.close(end_event(result))
        return record

    def get(self, execution_id: str) -> Record | None:
        with self._lock:
            return self._live.get(execution_id) or self._finished.get(execution_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            live = list(self._live.values())
            finished = len(self._finished)
        return {
            "queued": sum(r.execution.state is ExecutionState.queued for r in live),
            "running": sum(r.execution.state is ExecutionState.running for r in live),
            "finished": finished,
        }


STREAMS = ("stdout", "stderr")
# What one log reader may have queued and unread before its lines are dropped (for it alone).
READER_QUEUE_BYTES = 1024 * 1024


class LogReader:
    """One follower of an ``OutputLog``, read on the event loop. ``offer`` and ``finish`` come
    from any thread and never block: past ``max_bytes`` unread, lines are dropped (and counted)
    until the reader has caught up, so the gap it is told of sits where the lines went missing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_bytes: int, backlog: list[dict[str, Any]]) -> None:
        self._loop = loop
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._queue: deque[tuple[dict[str, Any], int]] = deque((line, 0) for line in backlog)
        self._bytes = 0
        self._missed_lines = 0
        self._missed_bytes = 0
        self._end: dict[str, Any] | None = None
        self._done = False
        self._wake = asyncio.Event()
        self._woken = False

    def offer(self, line: dict[str, Any], size: int) -> None:
        with self._lock:
            if self._missed_lines or self._bytes + size > self._max_bytes:
                self._missed_lines += 1
                self._missed_bytes += size
            else:
                self._queue.append((line, size))
                self._bytes += size
            self._signal()

    def finish(self, end: dict[str, Any]) -> None:
        with self._lock:
            self._end = end
            self._signal()

    def _signal(self) -> None:
        # One wake-up call in flight at most: a flood of output never floods the event loop.
        if not self._woken:
            self._woken = True
            with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody reads
                self._loop.call_soon_threadsafe(self._wake.set)

    async def next(self) -> list[dict[str, Any]] | None:
        """The next events (lines, then a ``missed`` note if lines were dropped, then ``end``);
        None once ``end`` was given."""
        while True:
            with self._lock:
                events = [line for line, _ in self._queue]
                self._queue.clear()
                self._bytes = 0
                if self._missed_lines:
                    events.append({"event": "missed", "lines": self._missed_lines, "bytes": self._missed_bytes})
                    self._missed_lines = self._missed_bytes = 0
                if self._end is not None and not self._done:
                    events.append(self._end)
                    self._done = True
                if events:
                    return events
                if self._done:
                    return None
                self._wake.clear()
                self._woken = False
            await self._wake.wait()


class OutputLog:
    """The output of one live execution: what it wrote so far, each stream up to its limit, and
    the readers following it. Thread-safe: written from the executor thread, read on the loop."""

    def __init__(self, stdout_limit: int, stderr_limit: int, reader_bytes: int = READER_QUEUE_BYTES) -> None:
        self._lock = threading.Lock()
        self._limits = {"stdout": stdout_limit, "stderr": stderr_limit}
        self._kept = dict.fromkeys(STREAMS, 0)
        # Incremental: a chunk that ends inside a UTF-8 character leaves the rest for the next one.
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in STREAMS}
        self._lines: list[dict[str, Any]] = []
        self._readers: set[LogReader] = set()
        self._reader_bytes = reader_bytes
        self.closed = False

    @property
    def kept(self) -> dict[str, int]:
        with self._lock:
            return dict(self._kept)

    def write(self, stream: str, data: bytes) -> None:
        """A chunk of ``stream`` (runner.OutputObserver): kept up to the stream's limit, the rest
        dropped here as it is cut from the result; never blocks."""
        with self._lock:
            if self.closed:
                return
            room = max(0, self._limits[stream] - self._kept[stream])
            piece = data[:room]
            if not piece:
                return
            self._kept[stream] += len(piece)
            text = self._decoders[stream].decode(piece)
            if not text:
                return
            line = {"stream": stream, "data": text, "ts": timestamp()}
            self._lines.append(line)
            for reader in self._readers:
                reader.offer(line, len(piece))

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> LogReader | None:
        """A reader that replays what is kept, then follows; None once the log is closed."""
        with self._lock:
            if self.closed:
                return None
            reader = LogReader(loop, self._reader_bytes, list(self._lines))
            self._readers.add(reader)
            return reader

    def unsubscribe(self, reader: LogReader) -> None:
        with self._lock:
            self._readers.discard(reader)

    def close(self, end: dict[str, Any]) -> None:
        """The execution ended: every reader gets ``end``; the lines are released (the result
        holds the output now)."""
        with self._lock:
            self.closed = True
            self._lines = []
            readers, self._readers = self._readers, set()
            for reader in readers:
                reader.finish(end)


def end_event(result: ExecutionResult) -> dict[str, Any]:
    """The last event of an execution's log stream."""
    return {
        "event": "end",
        "status": result.status.value,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
    }


def timestamp() -> str:
    return _now().isoformat(timespec="milliseconds")


def _never_ran(record: Record) -> bool:
    result = record.execution.result
    return result is not None and result.error is not None and result.error.type == "EngineUnavailable"


def _now() -> datetime:
    return datetime.now(UTC)
