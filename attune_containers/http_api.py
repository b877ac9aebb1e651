"""``attune-containers serve``: a long-running local service that owns the warm pools.

The attune worker (written in another language) delegates executions over HTTP on a Unix socket
or a loopback port, without paying a Python start-up per action. FastAPI validates requests and
publishes the OpenAPI schema at ``/openapi.json``. On shutdown (SIGTERM, Ctrl-C) every container the
service started is removed; on start, leftovers of a previous instance that died are removed.

Who may call it (SECURITY.md): the Unix socket is the owner's alone (0600; 0660 with
``service_socket_group``), set before the path exists; with a token configured every request needs
``Authorization: Bearer <token>``; TCP binds loopback only unless ``--allow-remote`` with a token.
Request bodies are bounded (``service_max_body_bytes``), and executions run on their own bounded
executor so that health and the other endpoints answer while every slot is busy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import grp
import hmac
import ipaddress
import json
import logging
import os
import socket as socketlib
import stat
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .core import problems
from .core.execution import ExecutionError, ExecutionResult, ExecutionStatus, ResourceLimits
from .core.spec import EnvironmentInfo
from .errors import (
    AttuneContainersError,
    EngineUnavailableError,
    ExecutionConflictError,
    InvalidSpecError,
    NotFoundError,
)
from .runtimes import RUNTIMES
from .services.executions import (
    READER_QUEUE_BYTES,
    Execution,
    ExecutionState,
    ExecutionStore,
    LogReader,
    OutputLog,
    Record,
    end_event,
    timestamp,
)
from .services.manager import ContainerDependencyManager
from .services.metrics import CONTENT_TYPE as metrics_content_type
from .services.metrics import ServiceMetrics
from .services.runner import ActionRunner
from .settings import Settings

MIN_TOKEN_LENGTH = 16
# How often a blocking execution call looks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25
log = logging.getLogger("attune_containers.service")
access_log = logging.getLogger("attune_containers.access")
build_log = logging.getLogger("attune_containers.build")
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
# A streamed answer is sent in pieces of about this size: few writes, and no reader holds much.
STREAM_PIECE_BYTES = 64 * 1024


class BaseImagesMissing(EngineUnavailableError):
    """``/readyz``: the engine answers but a configured base image is not on it (503)."""


class ExecutionRequest(BaseModel):
    """One execution to run."""

    action_ref: str = Field(description="<pack_ref>.<action name>", examples=["probe.echo"])
    parameters: dict[str, Any] = Field(default_factory=dict, description="The action's parameters (a JSON object)")
    secrets: dict[str, Any] = Field(
        default_factory=dict, description="Reach the action only via attune_action; never logged, never stored"
    )
    limits: ResourceLimits | None = Field(None, description="Lower (or, up to the operator's caps, raise) limits")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of the action")
    execution_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="The caller's id (else generated). The same id with the same "
        "request is the same execution; with another request, 409",
    )
    warm: bool | None = Field(None, description="None: the pack's pool policy decides")


class PoolStats(BaseModel):
    """One warm pool: a pack's image under one set of container-level limits."""

    pack_ref: str = Field(description="The pack")
    image: str = Field(description="The image ID its containers run")
    idle: int = Field(description="Containers ready for an execution")
    busy: int = Field(description="Containers serving an execution")
    starting: int = Field(description="Containers being started")
    created: int = Field(description="Containers started since the service started")
    destroyed: int = Field(description="Containers removed since the service started")
    max_size: int | None = Field(description="The most containers the pool holds (pool policy)")
    min_idle: int | None = Field(description="Idle containers kept ready (pool policy)")


class Health(BaseModel):
    """The service answers (``/v1/health``; ``/livez`` is the same without the details)."""

    status: str = Field(description="Always ok")
    version: str = Field(description="The version of attune-containers")
    packs_dir: str = Field(description="The packs tree the service runs actions of")


class Readiness(BaseModel):
    """The service can run executions: the engine answers and every base image is present."""

    status: str = Field(description="ready")
    base_images: list[str] = Field(description="The configured base images, all present on the engine")


class LogLine(BaseModel):
    """A chunk of an execution's output (``GET /v1/executions/{id}/logs``), or a line of a build log
    (``POST /v1/environments/{pack_ref}`` streamed)."""

    stream: str = Field(description="stdout or stderr (an execution); build (a build log)")
    data: str = Field(description="The text, as written (UTF-8; undecodable bytes replaced)")
    ts: str = Field(description="When the service received it (UTC, ISO 8601)")


class LogMissed(BaseModel):
    """Lines this reader missed because it read too slowly (the execution never waits for a reader)."""

    event: Literal["missed"] = Field("missed", description="missed")
    lines: int = Field(description="How many chunks or lines were dropped for this reader")
    bytes: int = Field(description="How many bytes they held")


class LogEnd(BaseModel):
    """The last event of an execution's log stream: it ended."""

    event: Literal["end"] = Field("end", description="end")
    status: ExecutionStatus | None = Field(description="How the execution ended")
    stdout_truncated: bool = Field(description="Whether stdout went past its limit (what followed is not in the log)")
    stderr_truncated: bool = Field(description="Whether stderr went past its limit (what followed is not in the log)")


class BuildResult(BaseModel):
    """The last line of a streamed build: the environment, ensured."""

    event: Literal["result"] = Field("result", description="result")
    environment: EnvironmentInfo = Field(description="What POST /v1/environments/{pack_ref} answers otherwise")


class BuildFailed(BaseModel):
    """The last line of a streamed build that failed after it started streaming."""

    event: Literal["error"] = Field("error", description="error")
    problem: problems.Problem = Field(description="The problem document the call would have answered")


STREAM_MODELS = (LogLine, LogMissed, LogEnd, BuildResult, BuildFailed)


def _stream_content(*models: type[BaseModel], sse: bool) -> dict[str, Any]:
    """The OpenAPI ``content`` of a streamed 200: one JSON document per line (NDJSON), or per SSE
    event (its ``data``)."""
    schema = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]}
    content: dict[str, Any] = {NDJSON: {"schema": schema}}
    if sse:
        content[SSE] = {
            "schema": {
                "type": "string",
                "description": "Server-sent events: event output, missed "
                "or end, each with one of the NDJSON documents as its data",
            }
        }
    return content


def wants_stream(request: Request) -> str | None:
    """The streamed media type the client asked for in Accept (SSE first), else None."""
    accept = request.headers.get("accept", "").lower()
    if SSE in accept:
        return SSE
    if NDJSON in accept:
        return NDJSON
    return None


def encode_event(document: dict[str, Any], media_type: str) -> bytes:
    """One stream event: a line of JSON, or an SSE event whose data is that JSON (json.dumps
    escapes every newline, so one data line holds it)."""
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    if media_type == SSE:
        name = document.get("event") or "output"
        return f"event: {name}\ndata: {body}\n\n".encode()
    return (body + "\n").encode()


async def stream_events(source: AsyncIterator[list[dict[str, Any]]], media_type: str) -> AsyncIterator[bytes]:
    """Events in pieces of about STREAM_PIECE_BYTES, sent as soon as a batch is in."""
    async for batch in source:
        piece: list[bytes] = []
        size = 0
        for document in batch:
            encoded = encode_event(document, media_type)
            piece.append(encoded)
            size += len(encoded)
            if size >= STREAM_PIECE_BYTES:
                yield b"".join(piece)
                piece, size = [], 0
        if piece:
            yield b"".join(piece)


def streaming(body: AsyncIterator[bytes], media_type: str) -> StreamingResponse:
    # no-cache and no proxy buffering: lines are worth something only as they happen.
    return StreamingResponse(body, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def log_build_lines(manager: ContainerDependencyManager) -> None:
    """Every line of a build the service starts goes to the log (``attune_containers.build``), as
    well as to whoever asked for it (a streamed POST /v1/environments)."""
    ensure = manager.ensure

    def logged(pack_ref: str, *args: Any, on_log: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
        def sink(line: str) -> None:
            if not line.strip():
                return  # the engine's blank separators say nothing
            build_log.info("%s", line.rstrip("\n"), extra={"pack_ref": pack_ref})
            if on_log is not None:
                on_log(line)

        return ensure(pack_ref, *args, on_log=sink, **kwargs)

    manager.ensure = logged  # type: ignore[method-assign]


def create_app(packs_dir: str | Path, manager: ContainerDependencyManager | None = None, *, token: bytes | None = None) -> Any:
    """The ASGI app: FastAPI behind the guard (token, body limit). ``token``: required on every
    request when given (see ``load_token``)."""
    settings = manager.settings if manager is not None else Settings()
    runner_box: dict[str, ActionRunner] = {}
    slots = settings.max_concurrent_runs
    # Executions run here, not in the thread pool every sync endpoint shares: a queue of them then
    # holds no thread, and health and the other endpoints keep answering.
    executions: dict[str, Any] = {"pending": 0}
    store = ExecutionStore(settings.service_executions_kept, settings.service_executions_ttl)
    metrics = ServiceMetrics(lambda: runner_box["runner"].pool_stats(), store.counts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The runner sweeps what a previous instance left (its owner process is gone).
        runner_box["runner"] = ActionRunner(packs_dir, manager)
        metrics.watch_builds(runner_box["runner"].manager, log)
        log_build_lines(runner_box["runner"].manager)
        executions["pool"] = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="execution")
        try:
            yield
        finally:
            executions["pool"].shutdown(wait=False, cancel_futures=True)
            runner_box.pop("runner").close()  # running executions end as their containers go

    app = FastAPI(
        title="attune-containers",
        version=__version__,
        lifespan=lifespan,
        description="Run Attune pack actions in isolated, reproducible containers. Every error "
        "is an RFC 9457 problem document (application/problem+json).",
    )

    def runner() -> ActionRunner:
        return runner_box["runner"]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            # The streamed documents are no route's response_model: add them to the components.
            definitions: dict[str, Any] = {}
            for model in STREAM_MODELS:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                definitions.update(found.pop("$defs", {}))
                definitions[model.__name__] = found
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in definitions.items():
                components.setdefault(name, definition)
            app.openapi_schema = problems.document_problems(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def answer(document: problems.Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
        if document.status == 503:
            headers = {"Retry-After": str(problems.RETRY_AFTER_SECONDS), **(headers or {})}
        return JSONResponse(document.model_dump(), status_code=document.status, headers=headers, media_type=problems.MEDIA_TYPE)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return answer(problems.problem(exc.status_code, detail, instance=request.url.path), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        fields = [problems.validation_field(e.get("loc", ())) for e in errors]
        detail = (
            "; ".join(
                f"{f}: {e.get('msg', 'invalid')}" if f else str(e.get("msg", "invalid"))
                for f, e in zip(fields, errors, strict=True)
            )
            or "invalid request"
        )
        return answer(problems.problem(422, detail, instance=request.url.path, field=fields[0] if fields else None))

    @app.exception_handler(AttuneContainersError)
    async def our_error(request: Request, exc: AttuneContainersError) -> JSONResponse:
        return answer(problems.from_exception(exc, instance=request.url.path))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return answer(problems.from_exception(exc, instance=request.url.path))

    @app.get("/livez", response_model=Health, operation_id="livez", tags=["health"])
    async def livez() -> Health:
        """The process is up and its event loop answers (nothing else is checked)."""
        return Health(status="ok", version=__version__, packs_dir=str(runner().packs_dir))

    @app.get("/readyz", response_model=Readiness, operation_id="readyz", tags=["health"], responses=problems.responses(503, 500))
    def readyz() -> Readiness:
        """Ready for executions: the engine answers and every configured base image is present."""
        engine = runner().engine
        engine.ping()  # EngineUnavailableError: 503
        bases = runner().manager.bases
        images = [image for runtime in RUNTIMES.values() for image in bases.available(runtime)]
        missing = [image.reference for image in images if not image.present]
        if missing:
            raise BaseImagesMissing(
                "base images missing: " + ", ".join(missing) + " (attune-containers base bootstrap, or pull them)"
            )
        return Readiness(status="ready", base_images=[image.reference for image in images])

    @app.get("/v1/health", response_model=Health, operation_id="health", tags=["health"])
    async def health() -> Health:
        # async and cheap: answered on the event loop, never behind a queue of executions.
        return Health(status="ok", version=__version__, packs_dir=str(runner().packs_dir))

    def finished_result(record: Record) -> ExecutionResult:
        result = record.execution.result
        assert result is not None
        if result.error is not None and result.error.type == "EngineUnavailable":
            # Never reached the engine: 503, and the same id may be retried (ExecutionStore.claim).
            raise EngineUnavailableError(result.error.message)
        return result

    async def run_record(record: Record) -> ExecutionResult:
        execution_id = record.execution.execution_id
        try:
            result = await asyncio.wrap_future(record.future)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            # Cancelled while queued: it never started.
            result = ExecutionResult(
                execution_id=execution_id,
                action_ref=record.execution.action_ref,
                status=ExecutionStatus.cancelled,
                finished_at=datetime.now(UTC),
                error=ExecutionError(type="Cancelled", message="cancelled while queued"),
            )
        except Exception as exc:  # a bug of ours: the execution still ends, as an error
            log.error("execution %s failed", execution_id, exc_info=exc, extra={"execution_id": execution_id})
            result = ExecutionResult(
                execution_id=execution_id,
                action_ref=record.execution.action_ref,
                status=ExecutionStatus.error,
                finished_at=datetime.now(UTC),
                error=ExecutionError(type="InternalError", message="an unexpected error; the service log has the details"),
            )
        finally:
            executions["pending"] -= 1
        store.finish(execution_id, result)
        metrics.observe(result)
        log.info(
            "execution finished",
            extra={
                "execution_id": execution_id,
                "action_ref": result.action_ref,
                "status": result.status.value,
                "warm": result.warm,
                "duration_ms": result.duration_ms,
                "queued_ms": result.queued_ms,
            },
        )
        return result

    async def cancel(record: Record) -> None:
        """Cancel a live execution and wait for it to end (its result then says cancelled)."""
        loop = asyncio.get_running_loop()
        execution_id = record.execution.execution_id
        if not record.future.cancel():  # not queued any more: its container goes
            deadline = loop.time() + 5
            # Between leaving the queue and the runner knowing it, there is a moment: ask again.
            while not record.future.done() and loop.time() < deadline:
                if await loop.run_in_executor(None, runner().cancel, execution_id):
                    break
                await asyncio.sleep(0.02)
        await asyncio.wait({record.task}, timeout=60)
        log.info("execution cancelled", extra={"execution_id": execution_id})

    async def wait_for(record: Record, http: Request, timeout: float | None, owner: bool) -> bool:
        """True once the execution finished; False when ``timeout`` passed first. The caller that
        started it (``owner``) cancels it by disconnecting."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not record.task.done():
            step = DISCONNECT_POLL_SECONDS if deadline is None else min(DISCONNECT_POLL_SECONDS, deadline - loop.time())
            if step <= 0:
                return False
            await asyncio.wait({record.task}, timeout=step)
            if owner and not record.task.done() and await http.is_disconnected():
                log.info("client disconnected; cancelling", extra={"execution_id": record.execution.execution_id})
                await cancel(record)
        return True

    @app.post(
        "/v1/executions",
        response_model=ExecutionResult,
        operation_id="runExecution",
        tags=["executions"],
        responses={
            202: {"model": Execution, "description": "Accepted: running (async, or ?wait passed); Location names the execution"},
            **problems.responses(404, 409, 422, 500, 503),
        },
    )
    async def execute(
        body: ExecutionRequest,
        http: Request,
        wait: float | None = Query(
            None,
            ge=0,
            le=7 * 24 * 3600,
            description="Seconds to wait for the result; past them the answer is 202 and "
            "the execution goes on (poll GET /v1/executions/{id})",
        ),
        run_async: bool = Query(
            False, alias="async", description="Answer 202 at once; the execution goes on whatever the client does"
        ),
    ) -> Any:
        """Run one action. By default the call blocks until the result, and a client that
        disconnects cancels the execution it started; ``?async=true`` answers 202 at once and
        ``?wait=SECONDS`` blocks at most that long. A failure of the action is a result (200), not
        an error; an unreachable engine is 503 (the same execution_id may be retried)."""
        execution_id = body.execution_id or uuid.uuid4().hex
        http.state.execution_id = execution_id  # for the access log
        record, new = store.claim(execution_id, body.action_ref, store.fingerprint(body.model_dump(mode="json")))
        if new:
            # Set before the first await: a request of the same id arriving meanwhile waits on it.
            record.ready = asyncio.Event()
            try:
                if executions["pending"] >= slots + settings.service_max_queued:
                    raise HTTPException(status_code=503, detail="too many executions queued")
                executions["pending"] += 1  # counted before the first await: checks and counts never interleave
                try:
                    prepared = await run_in_threadpool(
                        functools.partial(
                            runner().prepare,
                            body.action_ref,
                            body.parameters,
                            body.secrets,
                            limits=body.limits,
                            environment=body.environment,
                            execution_id=execution_id,
                            warm=body.warm,
                        )
                    )
                except BaseException:
                    executions["pending"] -= 1
                    raise
            except BaseException as exc:
                store.discard(execution_id)
                record.refused = exc
                record.ready.set()
                raise
            submitted = time.monotonic()
            # Bounded as the result is: each stream up to the execution's own output limit.
            output = record.output = OutputLog(prepared.limits.stdout_limit or 0, prepared.limits.stderr_limit or 0)

            def call() -> ExecutionResult:
                store.started(execution_id)
                return runner().run_prepared(prepared, submitted=submitted, on_output=output.write)

            record.future = executions["pool"].submit(call)
            record.task = asyncio.ensure_future(run_record(record))
            record.ready.set()
            log.info("execution accepted", extra={"execution_id": execution_id, "action_ref": body.action_ref})
        else:
            await settled(record)
        if not run_async and await wait_for(record, http, wait, owner=new):
            return finished_result(record)
        return JSONResponse(
            record.execution.model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/executions/{execution_id}"}
        )

    async def settled(record: Record) -> None:
        """Wait until the request that created ``record`` either queued it or was refused; a
        refusal is this request's too (the same id and request: the same answer)."""
        await record.ready.wait()
        if isinstance(record.refused, Exception):
            raise record.refused
        if record.refused is not None:  # the creating request was itself cancelled
            raise HTTPException(status_code=503, detail="the execution was not queued; retry")

    def record_of(execution_id: str) -> Record:
        record = store.get(execution_id)
        if record is None:
            raise NotFoundError(
                f"no execution {execution_id!r} (unknown, or finished more than "
                f"{settings.service_executions_ttl:g} s or {settings.service_executions_kept} "
                "executions ago)",
                field="execution_id",
            )
        return record

    async def queued_record(execution_id: str) -> Record:
        """The record of an execution that was queued (one refused is not found)."""
        record = record_of(execution_id)
        try:
            await settled(record)
        except Exception:
            raise NotFoundError(f"no execution {execution_id!r} (it was refused)", field="execution_id") from None
        return record

    @app.get(
        "/v1/executions/{execution_id}",
        response_model=Execution,
        operation_id="getExecution",
        tags=["executions"],
        responses=problems.responses(404, 500),
    )
    async def get_execution(execution_id: str, http: Request) -> Execution:
        """An execution: queued, running or finished (with its result)."""
        http.state.execution_id = execution_id
        return record_of(execution_id).execution

    @app.delete(
        "/v1/executions/{execution_id}",
        response_model=Execution,
        operation_id="cancelExecution",
        tags=["executions"],
        responses=problems.responses(404, 409, 500),
    )
    async def cancel_execution(execution_id: str, http: Request) -> Execution:
        """Cancel an execution: its container is killed and removed, its result says cancelled.
        Cancelling a cancelled execution answers it again; a finished one is 409."""
        http.state.execution_id = execution_id
        record = await queued_record(execution_id)
        execution = record.execution
        if execution.state is ExecutionState.finished and execution.status is not ExecutionStatus.cancelled:
            raise ExecutionConflictError(
                f"execution {execution_id!r} already finished ({execution.status.value if execution.status else 'no status'})"
            )
        if execution.state is not ExecutionState.finished:
            await cancel(record)
        return record.execution

    @app.get(
        "/v1/executions/{execution_id}/logs",
        operation_id="streamExecutionLogs",
        tags=["executions"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "The execution's output, then its end",
                "content": _stream_content(LogLine, LogMissed, LogEnd, sse=True),
            },
            **problems.responses(404, 500),
        },
    )
    async def execution_logs(execution_id: str, http: Request) -> StreamingResponse:
        """Stream an execution's stdout and stderr: what it wrote so far, then live until it ends,
        then an ``end`` event, and the stream closes (a finished execution: its result's output at
        once). ``Accept: text/event-stream`` gives server-sent events, anything else NDJSON. Each
        stream is kept up to the execution's output limit, as in its result. A reader that falls
        more than a MiB behind misses lines (a ``missed`` event says how many): the execution never
        waits for a reader. Closing the stream never cancels the execution."""
        http.state.execution_id = execution_id
        record = await queued_record(execution_id)
        media_type = wants_stream(http) or NDJSON
        output = record.output
        reader = output.subscribe(asyncio.get_running_loop()) if output is not None else None

        async def events() -> AsyncIterator[list[dict[str, Any]]]:
            if reader is None:  # finished: its output is in its result now
                yield finished_events(record)
                return
            assert output is not None
            try:
                while (batch := await reader.next()) is not None:
                    yield batch
            finally:
                output.unsubscribe(reader)

        return streaming(stream_events(events(), media_type), media_type)

    def finished_events(record: Record) -> list[dict[str, Any]]:
        result = record.execution.result
        if result is None:  # never ran
            return [{"event": "end", "status": None, "stdout_truncated": False, "stderr_truncated": False}]
        ts = (result.finished_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
        lines = [
            {"stream": name, "data": text, "ts": ts}
            for name, text in (("stdout", result.stdout), ("stderr", result.stderr))
            if text
        ]
        return [*lines, end_event(result)]

    @app.post(
        "/v1/environments/{pack_ref}",
        response_model=EnvironmentInfo,
        operation_id="ensureEnvironment",
        tags=["environments"],
        responses={
            200: {
                "description": "The environment; streamed (NDJSON): its build log lines, then a result (or an error) line",
                "content": _stream_content(LogLine, LogMissed, BuildResult, BuildFailed, sse=False),
            },
            **problems.responses(404, 422, 500, 503),
        },
    )
    async def ensure(
        pack_ref: str,
        http: Request,
        stream: bool = Query(False, description="Stream the build log as NDJSON (as Accept: application/x-ndjson does)"),
        runtime: str | None = Query(
            None,
            max_length=64,
            description="Only this runtime's image (python, nodejs); default: every runtime's image of the pack, "
            "the answer being the first (Python's first)",
        ),
    ) -> Any:
        """Ensure the pack's images (build or pull them if needed); pre-warm if its policy says so.
        A pack with Python and Node.js actions has an image of each: all are ensured, and the
        answer is ``runtime``'s, else the pack's first runtime's.
        Streamed (``Accept: application/x-ndjson`` or ``?stream=true``): the build's log lines as
        they come, then a ``result`` line with the environment; a failure once lines were sent is
        an ``error`` line holding the problem document (before any line: the usual problem answer).
        The build goes on if the client leaves."""
        media_type = NDJSON if stream else wants_stream(http)
        if media_type != NDJSON:
            return await run_in_threadpool(lambda: runner().ensure_pack(pack_ref, runtime=runtime))
        loop = asyncio.get_running_loop()
        reader = LogReader(loop, READER_QUEUE_BYTES, [])

        def build() -> None:
            def line(text: str) -> None:
                text = text.rstrip("\n")
                reader.offer({"stream": "build", "data": text, "ts": timestamp()}, len(text))

            try:
                info = runner().ensure_pack(pack_ref, on_log=line, runtime=runtime)
            except Exception as exc:
                if problems.status_of(exc) == 500:
                    log.error("building %s failed", pack_ref, exc_info=exc, extra={"pack_ref": pack_ref})
                reader.finish({"event": "error", "problem": problems.from_exception(exc, instance=http.url.path).model_dump()})
            else:
                reader.finish({"event": "result", "environment": info.model_dump(mode="json")})

        # Kept referenced by the stream; the build goes on whatever the client does.
        building = loop.run_in_executor(None, build)
        first = await reader.next() or []
        if first and first[0].get("event") == "error":  # nothing sent yet: the usual problem answer
            return answer(problems.Problem(**first[0]["problem"]))

        async def events() -> AsyncIterator[list[dict[str, Any]]]:
            yield first
            while (batch := await reader.next()) is not None:
                yield batch
            await building

        return streaming(stream_events(events(), NDJSON), NDJSON)

    @app.get(
        "/v1/environments",
        response_model=list[EnvironmentInfo],
        operation_id="listEnvironments",
        tags=["environments"],
        responses=problems.responses(500, 503),
    )
    def environments() -> list[EnvironmentInfo]:
        """Every environment (image) of this configuration's image prefix."""
        return runner().manager.list_environments()

    @app.delete(
        "/v1/environments/{pack_ref}",
        response_model=list[str],
        operation_id="removeEnvironment",
        tags=["environments"],
        responses=problems.responses(404, 409, 422, 500, 503),
    )
    def remove(pack_ref: str) -> list[str]:
        """Remove a pack's images (refused, 409, while a container uses one); the removed references."""
        return runner().manager.remove_environment(pack_ref)

    @app.post(
        "/v1/pools/{pack_ref}/prewarm",
        response_model=int,
        operation_id="prewarmPool",
        tags=["pools"],
        responses=problems.responses(404, 422, 500, 503),
    )
    def prewarm(
        pack_ref: str,
        count: int | None = Query(None, ge=0, le=1024, description="Containers to start (default: the pool's min_idle)"),
        runtime: str | None = Query(
            None, max_length=64, description="Only this runtime's pool (default: each runtime's of the pack)"
        ),
    ) -> int:
        """Start warm containers of a pack ahead of need, per runtime (a mixed pack has a pool per
        image); how many were started in all."""
        return runner().prewarm(pack_ref, count, runtime=runtime)

    @app.get("/v1/pools", response_model=list[PoolStats], operation_id="listPools", tags=["pools"])
    def pools() -> list[PoolStats]:
        """Every warm pool of the service."""
        return [PoolStats(**s) for s in runner().pool_stats()]

    @app.get(
        "/metrics",
        operation_id="metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"description": "Prometheus text exposition", "content": {metrics_content_type: {}}}},
    )
    def prometheus_metrics() -> Response:
        """Prometheus metrics: executions by status and warm/cold, duration and queue histograms,
        live executions, warm pools, builds and their durations. Behind the token like the rest."""
        return Response(metrics.exposition(), media_type=metrics_content_type)

    return AccessLog(Guard(app, token=token, max_body=settings.service_max_body_bytes))


class AccessLog:
    """ASGI middleware outside the guard: one log line per request, refusals included (method,
    path, status_code, duration_ms, and the execution id an endpoint noted). Never the body, the query
    or the headers (the token)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = {"code": 0}

        async def noting(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            extra = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status_code": status["code"],
                "duration_ms": int((time.monotonic() - started) * 1000),
            }
            execution_id = (scope.get("state") or {}).get("execution_id")
            if execution_id is not None:
                extra["execution_id"] = execution_id
            access_log.info("%s %s %s", extra["method"], extra["path"], extra["status_code"], extra=extra)


class Guard:
    """ASGI middleware in front of everything (the OpenAPI schema included): the bearer token,
    then the body limit. A refused request's body is never read."""

    def __init__(self, app: Any, *, token: bytes | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            # compare_digest: the time taken tells nothing about how much of a guess was right.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                return await _refuse(
                    send, 401, "a valid bearer token is required", [(b"www-authenticate", b"Bearer")], instance=scope.get("path")
                )
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _refuse(send, 400, "invalid Content-Length", instance=scope.get("path"))
            if int(declared) > self.max_body:
                return await _refuse(
                    send, 413, f"the request body is larger than {self.max_body} bytes", instance=scope.get("path")
                )
        # Read the body here, counting (chunked bodies declare no length): at most max_body bytes
        # are ever held, and the app gets it replayed.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _refuse(
                    send, 413, f"the request body is larger than {self.max_body} bytes", instance=scope.get("path")
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _refuse(send: Callable, status: int, message: str, headers: list | None = None, instance: str | None = None) -> None:
    body = json.dumps(problems.problem(status, message, instance=instance).model_dump()).encode()
    # connection: close, as the rest of the body (if any) is left unread.
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", problems.MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def load_token(settings: Settings) -> bytes | None:
    """The service's bearer token from ``service_token_file`` or ``service_token``, or None."""
    if settings.service_token_file is not None and settings.service_token is not None:
        raise InvalidSpecError("set service_token_file or service_token, not both", field="service_token")
    if settings.service_token is not None:
        token = settings.service_token.get_secret_value().strip()
    elif settings.service_token_file is not None:
        path = settings.service_token_file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidSpecError(f"service_token_file {path}: {exc.strerror}", field="service_token_file") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidSpecError(f"service_token_file {path} is not a regular file", field="service_token_file")
            if info.st_mode & 0o007:
                raise InvalidSpecError(
                    f"service_token_file {path} is accessible to every user "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod o-rwx it",
                    field="service_token_file",
                )
            raw = handle.read(4097)
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidSpecError(f"service_token_file {path} is not UTF-8 text", field="service_token_file") from None
    else:
        return None
    # Printable ASCII without spaces: it travels in an HTTP header. Never shown in an error.
    if len(token) < MIN_TOKEN_LENGTH or len(token) > 4096 or not all(33 <= ord(c) < 127 for c in token):
        raise InvalidSpecError(
            f"the service token must be {MIN_TOKEN_LENGTH} to 4096 printable ASCII characters without spaces",
            field="service_token",
        )
    return token.encode("ascii")


def check_bind_address(host: str, *, allow_remote: bool, token: bytes | None) -> None:
    """Loopback only, unless ``allow_remote`` and a token: a port on another interface is open to
    the network, and without a token anyone there runs any action."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a name other than localhost may resolve anywhere
    if loopback:
        return
    if not allow_remote:
        raise InvalidSpecError(
            f"{host!r} is not a loopback address: the service binds loopback only, unless "
            "--allow-remote is given together with a token (service_token_file)",
            field="host",
        )
    if token is None:
        raise InvalidSpecError(
            "--allow-remote needs a token (service_token_file or ATTUNE__CONTAINERS__SERVICE_TOKEN)", field="service_token"
        )


def bind_unix_socket(path: str | Path, group: str | None = None) -> tuple[socketlib.socket, int]:
    """A listening-ready Unix socket at ``path``, mode 0600 (0660 and ``group`` with a group) from
    the moment the path exists: bound inside a fresh 0700 folder beside it, its mode and group set
    there, then renamed into place. Returns the socket and the inode of its path (for clean-up)."""
    path = Path(path)
    gid = None
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise InvalidSpecError(f"no group {group!r}", field="service_socket_group") from None
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise InvalidSpecError(f"{path} exists and is not a socket; not replacing it", field="socket")
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            pass  # a stale socket of a previous instance: replaced below
        else:
            raise InvalidSpecError(f"another service is listening on {path}", field="socket")
        finally:
            probe.close()
    try:
        private = tempfile.mkdtemp(prefix=".ac", dir=path.parent)  # 0700: nobody else reaches what is inside
    except OSError as exc:
        raise InvalidSpecError(f"cannot create the socket in {path.parent}: {exc.strerror}", field="socket") from None
    staged = os.path.join(private, "s")
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        sock.bind(staged)
        if gid is not None:
            try:
                os.chown(staged, -1, gid)
            except PermissionError:
                raise InvalidSpecError(
                    f"cannot give the socket to group {group!r}: this user is not in it", field="service_socket_group"
                ) from None
            os.chmod(staged, 0o660)
        else:
            os.chmod(staged, 0o600)
        os.rename(staged, path)  # atomic: the path appears with its final mode and group
        return sock, os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        # CPython refuses an AF_UNIX path longer than sun_path with a bare OSError (no errno, no
        # subclass): its message is the only sign. ENAMETOOLONG is the file system's own refusal.
        if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
            raise InvalidSpecError(f"the socket path {path} is too long", field="socket") from None
        raise InvalidSpecError(f"cannot create the socket {path}: {exc.strerror or exc}", field="socket") from None
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        with contextlib.suppress(OSError):
            os.rmdir(private)


def serve(
    packs_dir: str | Path,
    *,
    socket: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    manager: ContainerDependencyManager | None = None,
    allow_remote: bool = False,
    announce: Callable[[str], None] | None = None,
    log_level: str = "info",
) -> None:
    """Serve until SIGTERM or Ctrl-C. Every check (token, bind address, socket) is made before
    anything listens; a refusal is an InvalidSpecError. Logs are JSON lines on stderr (logs.py)."""
    import uvicorn

    from . import logs

    settings = manager.settings if manager is not None else Settings()
    token = load_token(settings)
    logs.configure(log_level)
    # Our access log (AccessLog) replaces uvicorn's; uvicorn's own lines go through our handler.
    options: dict[str, Any] = dict(log_level=log_level, log_config=None, access_log=False, timeout_graceful_shutdown=30)
    if socket:
        sock, inode = bind_unix_socket(socket, settings.service_socket_group)
        config = uvicorn.Config(create_app(packs_dir, manager, token=token), **options)
        if announce:
            announce(f"unix:{socket}" + (" (token required)" if token else ""))
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
            # Remove the path only while it is still ours (a later instance may have replaced it).
            with contextlib.suppress(OSError):
                if os.lstat(socket).st_ino == inode:
                    os.unlink(socket)
        return
    check_bind_address(host, allow_remote=allow_remote, token=token)
    config = uvicorn.Config(create_app(packs_dir, manager, token=token), host=host, port=port, **options)
    if announce:
        announce(f"http://{host}:{port}" + (" (token required)" if token else " (no token: every local user can call it)"))
    uvicorn.Server(config).run()
