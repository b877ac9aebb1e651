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
import contextlib
import errno
import functools
import grp
import hmac
import ipaddress
import json
import os
import socket as socketlib
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from . import __version__
from .core.execution import ExecutionResult, ResourceLimits
from .core.spec import EnvironmentInfo
from .errors import AttuneContainersError, InvalidSpecError
from .services.manager import ContainerDependencyManager
from .services.runner import ActionRunner
from .settings import Settings

MIN_TOKEN_LENGTH = 16


class ExecutionRequest(BaseModel):
    action_ref: str = Field(description="<pack_ref>.<action name>")
    parameters: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, Any] = Field(default_factory=dict, description="Reach the action only via attune_action")
    limits: ResourceLimits | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    execution_id: str | None = None
    warm: bool | None = Field(None, description="None: the pack's pool policy decides")


class PoolStats(BaseModel):
    pack_ref: str
    image: str
    idle: int
    busy: int
    starting: int
    created: int
    destroyed: int
    max_size: int | None
    min_idle: int | None


class Health(BaseModel):
    status: str
    version: str
    packs_dir: str


def create_app(packs_dir: str | Path, manager: ContainerDependencyManager | None = None, *,
               token: bytes | None = None) -> Any:
    """The ASGI app: FastAPI behind the guard (token, body limit). ``token``: required on every
    request when given (see ``load_token``)."""
    settings = manager.settings if manager is not None else Settings()
    runner_box: dict[str, ActionRunner] = {}
    slots = settings.max_concurrent_runs
    # Executions run here, not in the thread pool every sync endpoint shares: a queue of them then
    # holds no thread, and health and the other endpoints keep answering.
    executions: dict[str, Any] = {"pending": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The runner sweeps what a previous instance left (its owner process is gone).
        runner_box["runner"] = ActionRunner(packs_dir, manager)
        executions["pool"] = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="execution")
        try:
            yield
        finally:
            executions["pool"].shutdown(wait=False, cancel_futures=True)
            runner_box.pop("runner").close()  # running executions end as their containers go

    app = FastAPI(title="attune-containers", version=__version__, lifespan=lifespan,
                  description="Run Attune pack actions in isolated, reproducible containers.")

    def runner() -> ActionRunner:
        return runner_box["runner"]

    def invalid(exc: InvalidSpecError) -> HTTPException:
        return HTTPException(status_code=422, detail={"field": exc.field, "message": str(exc)})

    @app.get("/v1/health", response_model=Health)
    async def health() -> Health:
        # async and cheap: answered on the event loop, never behind a queue of executions.
        return Health(status="ok", version=__version__, packs_dir=str(runner().packs_dir))

    @app.post("/v1/executions", response_model=ExecutionResult,
              responses={503: {"description": "every slot busy and the queue full; retry later"}})
    async def execute(request: ExecutionRequest) -> ExecutionResult:
        """Run one action and return its result (engine trouble is a result with status error)."""
        if executions["pending"] >= slots + settings.service_max_queued:
            raise HTTPException(status_code=503, detail={"message": "too many executions queued"},
                                headers={"Retry-After": "1"})
        call = functools.partial(
            runner().run, request.action_ref, request.parameters, request.secrets, limits=request.limits,
            environment=request.environment, execution_id=request.execution_id, warm=request.warm)
        executions["pending"] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executions["pool"], call)
        except InvalidSpecError as exc:
            raise invalid(exc) from None
        finally:
            executions["pending"] -= 1

    @app.post("/v1/environments/{pack_ref}", response_model=EnvironmentInfo)
    def ensure(pack_ref: str) -> EnvironmentInfo:
        """Ensure the pack's image (build or pull it if needed); pre-warm if its policy says so."""
        try:
            info = runner().ensure_pack(pack_ref)
        except InvalidSpecError as exc:
            raise invalid(exc) from None
        except AttuneContainersError as exc:
            raise HTTPException(status_code=500, detail={"message": str(exc)}) from None
        return info

    @app.get("/v1/environments", response_model=list[EnvironmentInfo])
    def environments() -> list[EnvironmentInfo]:
        return runner().manager.list_environments()

    @app.delete("/v1/environments/{pack_ref}", response_model=list[str])
    def remove(pack_ref: str) -> list[str]:
        try:
            return runner().manager.remove_environment(pack_ref)
        except InvalidSpecError as exc:
            raise invalid(exc) from None
        except AttuneContainersError as exc:
            raise HTTPException(status_code=409, detail={"message": str(exc)}) from None

    @app.post("/v1/pools/{pack_ref}/prewarm", response_model=int)
    def prewarm(pack_ref: str, count: int | None = None) -> int:
        try:
            return runner().prewarm(pack_ref, count)
        except InvalidSpecError as exc:
            raise invalid(exc) from None

    @app.get("/v1/pools", response_model=list[PoolStats])
    def pools() -> list[PoolStats]:
        return [PoolStats(**s) for s in runner().pool_stats()]

    return Guard(app, token=token, max_body=settings.service_max_body_bytes)


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
                return await _refuse(send, 401, "a valid bearer token is required",
                                     [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _refuse(send, 400, "invalid Content-Length")
            if int(declared) > self.max_body:
                return await _refuse(send, 413, f"the request body is larger than {self.max_body} bytes")
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
                return await _refuse(send, 413, f"the request body is larger than {self.max_body} bytes")
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


async def _refuse(send: Callable, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": {"message": message}}).encode()
    # connection: close, as the rest of the body (if any) is left unread.
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *(headers or [])]})
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
                raise InvalidSpecError(f"service_token_file {path} is accessible to every user "
                                       f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod o-rwx it",
                                       field="service_token_file")
            raw = handle.read(4097)
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidSpecError(f"service_token_file {path} is not UTF-8 text", field="service_token_file") from None
    else:
        return None
    # Printable ASCII without spaces: it travels in an HTTP header. Never shown in an error.
    if len(token) < MIN_TOKEN_LENGTH or len(token) > 4096 or not all(33 <= ord(c) < 127 for c in token):
        raise InvalidSpecError(f"the service token must be {MIN_TOKEN_LENGTH} to 4096 printable ASCII "
                               "characters without spaces", field="service_token")
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
        raise InvalidSpecError(f"{host!r} is not a loopback address: the service binds loopback only, unless "
                               "--allow-remote is given together with a token (service_token_file)", field="host")
    if token is None:
        raise InvalidSpecError("--allow-remote needs a token (service_token_file or ATTUNE__CONTAINERS__SERVICE_TOKEN)",
                               field="service_token")


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
                raise InvalidSpecError(f"cannot give the socket to group {group!r}: this user is not in it",
                                       field="service_socket_group") from None
            os.chmod(staged, 0o660)
        else:
            os.chmod(staged, 0o600)
        os.rename(staged, path)  # atomic: the path appears with its final mode and group
        return sock, os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
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


def serve(packs_dir: str | Path, *, socket: str | None = None, host: str = "127.0.0.1", port: int = 8765,
          manager: ContainerDependencyManager | None = None, allow_remote: bool = False,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C. Every check (token, bind address, socket) is made before
    anything listens; a refusal is an InvalidSpecError."""
    import uvicorn

    settings = manager.settings if manager is not None else Settings()
    token = load_token(settings)
    options = dict(log_level="warning", timeout_graceful_shutdown=30)
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
        announce(f"http://{host}:{port}" + (" (token required)" if token else
                                             " (no token: every local user can call it)"))
    uvicorn.Server(config).run()
