"""What a run is allowed (``ResourceLimits``) and what it returns (``ExecutionResult``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from ..errors import InvalidSpecError
from .layering import Layered

MiB = 1024 * 1024
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)i?b?", re.IGNORECASE)
_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}


def parse_size(value: str | int) -> int:
    """``"256m"`` -> bytes. Accepts b/k/m/g (binary units), as ``docker run --memory`` does."""
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a size like '256m' or '1g'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class ResourceLimits(Layered):
    """Every limit of one run. All fields optional so that layers can be merged:
    settings defaults < pack (``meta.container_limits``) < action YAML (``timeout``) < the run."""

    memory: str | None = Field(None, description="Memory, swap equal to memory (no swap), e.g. 256m")
    cpus: float | None = Field(None, gt=0, le=256, description="CPUs (fractions allowed)")
    pids: int | None = Field(None, ge=8, le=1_000_000, description="Most processes and threads at once")
    nofile: int | None = Field(None, ge=16, le=1_048_576, description="Most open files per process")
    timeout: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="Seconds")
    stdout_limit: int | None = Field(None, ge=0, description="Bytes of stdout kept (the rest is cut)")
    stderr_limit: int | None = Field(None, ge=0, description="Bytes of stderr kept (the rest is cut)")
    result_limit: int | None = Field(None, ge=1024, description="Largest result, in bytes of JSON")
    network: str | None = Field(None, description="none, bridge or a named network; never host")
    tmp_size: str | None = Field(None, description="Size of the writable tmpfs /tmp")

    # Every field is one of two kinds (a unit test holds that). Container-level limits are fixed
    # when the container is created: a warm container serves only executions that agree on all of
    # them, so they key its pool. Per-execution limits are applied to each execution by the runner
    # loop and the worker, so executions with different ones share warm containers.
    CONTAINER_FIELDS: ClassVar[tuple[str, ...]] = ("memory", "cpus", "pids", "nofile", "network", "tmp_size")
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ("timeout", "stdout_limit", "stderr_limit", "result_limit")

    def container_level(self) -> tuple[Any, ...]:
        """The values of the container-level limits, in CONTAINER_FIELDS order."""
        return tuple(getattr(self, name) for name in self.CONTAINER_FIELDS)

    @field_validator("memory", "tmp_size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and parse_size(v) < 4 * MiB:
            raise ValueError(f"{v!r} is below the 4 MiB minimum")
        return v

    @field_validator("network")
    @classmethod
    def _network(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v == "host" or v.startswith("container:") or not _NETWORK.fullmatch(v):
            raise ValueError(f"network {v!r} is not allowed: use none, bridge or a named network")
        return v


DEFAULT_LIMITS = ResourceLimits(
    memory="256m",
    cpus=1.0,
    pids=128,
    nofile=1024,
    timeout=300,
    stdout_limit=10 * MiB,
    stderr_limit=10 * MiB,
    result_limit=1 * MiB,
    network="none",
    tmp_size="64m",
)

# The operator's caps (setting ``max_limits``): a pack, an action or a request may lower any limit
# freely but raise it only up to these. Generous for real actions, small enough that one pack cannot
# take the host: 2 GiB is 8x the default memory, an hour is 12x the default timeout.
DEFAULT_MAX_LIMITS = ResourceLimits(
    memory="2g",
    cpus=4.0,
    pids=1024,
    nofile=4096,
    timeout=3600,
    stdout_limit=64 * MiB,
    stderr_limit=64 * MiB,
    result_limit=16 * MiB,
    tmp_size="512m",
)
_SIZE_FIELDS = ("memory", "tmp_size")


def _magnitude(field: str, value: Any) -> float:
    return parse_size(value) if field in _SIZE_FIELDS else value


def check_within_caps(layer: ResourceLimits, caps: ResourceLimits, allowed_networks: Iterable[str], where: str) -> None:
    """Refuse a layer that asks for more than the operator allows (refused, not clamped: an action
    silently given less than it asked for fails in ways that are hard to trace)."""
    allowed = set(allowed_networks)
    for field, value in layer.model_dump(exclude_none=True).items():
        if field == "network":
            if value != "none" and value not in allowed:
                raise InvalidSpecError(
                    f"network {value!r} is not allowed: the operator allows none"
                    + "".join(f", {n}" for n in sorted(allowed))
                    + " (setting allowed_networks)",
                    field=f"{where}.network",
                )
            continue
        cap = getattr(caps, field)
        if cap is not None and _magnitude(field, value) > _magnitude(field, cap):
            raise InvalidSpecError(
                f"{field} {value!r} is above the operator's cap of {cap!r} (setting max_limits.{field})", field=f"{where}.{field}"
            )


def effective_limits(
    defaults: ResourceLimits,
    caps: ResourceLimits,
    allowed_networks: Iterable[str],
    layers: Sequence[tuple[str, ResourceLimits | None]],
) -> ResourceLimits:
    """The limits of one run: ``defaults`` (the operator's, trusted) with each named layer on top,
    in order, every layer first checked against the caps and the network allow-list."""
    for where, layer in layers:
        if layer is not None:
            check_within_caps(layer, caps, allowed_networks, where)
    return defaults.merged(*(layer for _, layer in layers))


class ExecutionStatus(str, Enum):
    """How an execution ended."""

    succeeded = "succeeded"
    failed = "failed"
    timeout = "timeout"
    oom = "oom"
    error = "error"
    cancelled = "cancelled"


class ExecutionError(BaseModel):
    """Why an execution did not succeed."""

    type: str = Field(
        description="The kind of error: the action's exception class, or ours (Timeout, OOM, EngineUnavailable, Cancelled, ...)"
    )
    message: str = Field(description="What happened, for a human")
    traceback: str | None = Field(None, description="The action's traceback, when it raised")


class ExecutionResult(BaseModel):
    """The outcome of one action run, the same whichever path ran it."""

    execution_id: str = Field(description="The execution's id (the caller's, or generated)")
    action_ref: str = Field(description="<pack_ref>.<action name>")
    status: ExecutionStatus = Field(description="How the execution ended")
    exit_code: int | None = Field(None, description="The exit code of the action's process, when it exited")
    duration_ms: int = Field(0, description="Milliseconds from start to end of the run (the queue excluded)")
    result: Any = Field(None, description="What the action returned (JSON)")
    stdout: str = Field("", description="The action's standard output, up to stdout_limit")
    stderr: str = Field("", description="The action's standard error, up to stderr_limit")
    stdout_truncated: bool = Field(False, description="Whether stdout was cut at stdout_limit")
    stderr_truncated: bool = Field(False, description="Whether stderr was cut at stderr_limit")
    error: ExecutionError | None = Field(None, description="Why it did not succeed; null when it succeeded")
    image: str | None = Field(None, description="The image it ran in: <prefix>/<name>:<hash prefix>")
    image_id: str | None = Field(
        None,
        description="The ID of that image (sha256:..., the digest of its "
        "content): exactly which image ran, whatever its tag says now",
    )
    dependency_hash: str | None = Field(
        None, description="The dependency hash of that image: exactly which dependencies the action ran with"
    )
    warm: bool | None = Field(
        None, description="True: it ran in a warm (reused) container; false: in a fresh one; null: it never reached a container"
    )
    started_at: datetime | None = Field(None, description="When it left the queue and started (UTC)")
    finished_at: datetime | None = Field(None, description="When it ended (UTC)")
    queued_ms: int = Field(0, description="Milliseconds it waited for a free execution slot")

    @property
    def succeeded(self) -> bool:
        return self.status is ExecutionStatus.succeeded


def parse_script_output(stdout: str) -> Any:
    """A script action's result: its whole stdout as JSON, else its last non-empty line, else None."""
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    last = text.splitlines()[-1].strip()
    try:
        return json.loads(last)
    except ValueError:
        return None
