"""``attune-containers serve``: a long-running local service that owns the warm pools.

The attune worker (written in another language) delegates executions over HTTP on a Unix socket
or a loopback port, without paying a Python start-up per action. FastAPI validates requests and
publishes the OpenAPI schema at ``/openapi.json``. On shutdown (SIGTERM, Ctrl-C) every container the
service started is removed; on start, leftovers of a previous instance that died are removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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


def create_app(packs_dir: str | Path, manager: ContainerDependencyManager | None = None) -> FastAPI:
    runner_box: dict[str, ActionRunner] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The runner sweeps what a previous instance left (its owner process is gone).
        runner_box["runner"] = ActionRunner(packs_dir, manager)
        try:
            yield
        finally:
            runner_box.pop("runner").close()

    app = FastAPI(title="attune-containers", version=__version__, lifespan=lifespan,
                  description="Run Attune pack actions in isolated, reproducible containers.")

    def runner() -> ActionRunner:
        return runner_box["runner"]

    def invalid(exc: InvalidSpecError) -> HTTPException:
        return HTTPException(status_code=422, detail={"field": exc.field, "message": str(exc)})

    @app.get("/v1/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", version=__version__, packs_dir=str(runner().packs_dir))

    @app.post("/v1/executions", response_model=ExecutionResult)
    def execute(request: ExecutionRequest) -> ExecutionResult:
        """Run one action and return its result (engine trouble is a result with status error)."""
        try:
            return runner().run(request.action_ref, request.parameters, request.secrets, limits=request.limits,
                                environment=request.environment, execution_id=request.execution_id,
                                warm=request.warm)
        except InvalidSpecError as exc:
            raise invalid(exc) from None

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

    return app


def serve(packs_dir: str | Path, *, socket: str | None = None, host: str = "127.0.0.1", port: int = 8765,
          manager: ContainerDependencyManager | None = None) -> None:
    import uvicorn

    app = create_app(packs_dir, manager)
    if socket:
        with contextlib.suppress(FileNotFoundError):
            Path(socket).unlink()  # a stale socket of a previous instance
        config = uvicorn.Config(app, uds=socket, log_level="warning", timeout_graceful_shutdown=30)
    else:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()
