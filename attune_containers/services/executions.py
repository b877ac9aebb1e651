"""The service's executions as resources: each one by its id, queued, running or finished.

Live executions are held until they finish (their number is bounded by the service's queue);
finished ones are kept in a bounded cache (``cachetools.TTLCache``): at most ``max_finished`` of
them, each for at most ``ttl`` seconds, the oldest dropped first. An execution id names one request:
the same id with the same request is the same execution (its result, or a wait for it), the same id
with a different request is a conflict. Requests are compared by an HMAC of their canonical JSON
under a key of this process, so that no secret is kept, not even as a plain hash. An execution
that ended because the engine was unreachable never ran: its id may be used again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
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


class ExecutionStore:
    """Thread-safe: the event loop and the executor threads both update it."""

    def __init__(self, max_finished: int = 1000, ttl: float = 3600.0,
                 timer: Callable[[], float] = time.monotonic) -> None:
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
                    raise ExecutionConflictError(f"execution {execution_id!r} exists with a different request; "
                                                 "use a new execution_id")
                return record, False
            record = Record(Execution(execution_id=execution_id, action_ref=action_ref, state=ExecutionState.queued,
                                      submitted_at=_now()), fingerprint)
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
            return record

    def get(self, execution_id: str) -> Record | None:
        with self._lock:
            return self._live.get(execution_id) or self._finished.get(execution_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            live = list(self._live.values())
            finished = len(self._finished)
        return {"queued": sum(r.execution.state is ExecutionState.queued for r in live),
                "running": sum(r.execution.state is ExecutionState.running for r in live),
                "finished": finished}


def _never_ran(record: Record) -> bool:
    result = record.execution.result
    return result is not None and result.error is not None and result.error.type == "EngineUnavailable"


def _now() -> datetime:
    return datetime.now(timezone.utc)
