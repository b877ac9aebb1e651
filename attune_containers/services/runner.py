"""The action runner: one action, in its pack's image, under limits it cannot escape.

The worker's path: ``ActionRunner(packs_dir).run(action_ref, parameters, secrets)`` ensures the
pack's image (built lazily on first use), runs the action in a fresh hardened container and
returns an ``ExecutionResult``. Parameters and secrets travel only on the container's stdin; the
result comes back in its own frames on stdout (see core/protocol.py), apart from the action's
output. The container is removed on every path out, an interrupt included.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.actions import ActionDefinition, load_action
from ..core.execution import (
    ExecutionError,
    ExecutionResult,
    ExecutionStatus,
    ResourceLimits,
    parse_script_output,
)
from ..core.packs import PackDefinition, load_pack
from ..core.protocol import CappedBuffer, FrameDecoder
from ..core.render import APP_UID, INTERPRETER
from ..engine import ContainerRun, Engine
from ..errors import AttuneContainersError, EngineUnavailableError, InvalidSpecError
from ..settings import Settings
from .manager import ContainerDependencyManager
from .usage import UsageLog

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
PACK_MOUNT = "/opt/attune/pack"
RUNTIME_MOUNT = "/opt/attune/runtime"
WRAPPER = f"{RUNTIME_MOUNT}/attune_wrapper.py"

LABEL_RUN = "io.attune.containers.run"
LABEL_EXECUTION_ID = "io.attune.containers.execution_id"
LABEL_ACTION_REF = "io.attune.containers.action_ref"
LABEL_PACK_REF = "io.attune.containers.pack_ref"
LABEL_OWNER = "io.attune.containers.owner"

_EXECUTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED_ENV = {"ATTUNE_EXECUTION_ID", "ATTUNE_ACTION_REF", "ATTUNE_PACK_REF", "PATH", "VIRTUAL_ENV", "HOME"}

# The engine sets OOMKilled after the exit is reported; poll this long before believing "no".
OOM_POLL_SECONDS = 1.0

_RUNNERS: weakref.WeakSet[ActionRunner] = weakref.WeakSet()


@atexit.register
def _close_all_runners() -> None:
    for runner in list(_RUNNERS):
        runner.close()


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ActionRunner:
    """Runs actions of one packs tree. Safe to call from many threads at once."""

    def __init__(
        self,
        packs_dir: str | Path,
        manager: ContainerDependencyManager | None = None,
        *,
        settings: Settings | None = None,
        max_concurrent: int | None = None,
        sweep: bool = True,
    ) -> None:
        self.packs_dir = Path(packs_dir).resolve()
        self.manager = manager or ContainerDependencyManager(settings)
        self.settings = self.manager.settings
        self.engine: Engine = self.manager.engine
        self.usage = UsageLog(self.settings.state_dir)
        self._slots = threading.BoundedSemaphore(max_concurrent or self.settings.max_concurrent_runs)
        self._live: set[str] = set()
        self._live_lock = threading.Lock()
        self._packs: dict[Path, tuple[tuple[float, ...], PackDefinition]] = {}
        _RUNNERS.add(self)
        if sweep:
            self.sweep_leftovers()

    # -- public -------------------------------------------------------------------------------

    def run(
        self,
        action_ref: str,
        parameters: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        *,
        limits: ResourceLimits | None = None,
        environment: Mapping[str, str] | None = None,
        execution_id: str | None = None,
    ) -> ExecutionResult:
        """Run one action and return its result.

        Invalid input (an unknown action, bad parameters, a hostile pack) raises InvalidSpecError
        before anything starts. Everything after that, including build and engine failures, is
        reported in the result, with status ``error``.
        """
        execution_id = execution_id or uuid.uuid4().hex
        if not _EXECUTION_ID.fullmatch(execution_id):
            raise InvalidSpecError(f"{execution_id!r} is not a valid execution id", field="execution_id")
        action = load_action(self.packs_dir, action_ref)
        pack = self._pack(action)
        effective = self.settings.limits.merged(pack.limits, ResourceLimits(timeout=action.timeout), limits)
        stdin = _stdin_document(action, parameters, secrets, effective)
        env = _environment(execution_id, action, environment)
        with self._slots:
            return self._run(action, pack, effective, stdin, env, execution_id)

    def close(self) -> None:
        """Kill and remove every container this runner still has (interrupts, shutdown)."""
        with self._live_lock:
            live = list(self._live)
        for container_id in live:
            self.engine.remove_container(container_id, attempts=3)
            self._forget(container_id)

    def sweep_leftovers(self) -> list[str]:
        """Remove run containers left by processes of this host that no longer exist (a killed
        worker, an engine restart). Containers of live processes are left alone."""
        removed = []
        host = socket.gethostname()
        try:
            containers = self.engine.list_containers([LABEL_RUN])
        except AttuneContainersError:
            return removed
        for summary in containers:
            owner = (summary.get("Labels") or {}).get(LABEL_OWNER, "")
            owner_host, _, pid = owner.rpartition(":")
            mine = owner == owner_id()
            if owner_host != host or mine:
                continue
            if not pid.isdigit() or not _alive(int(pid)) or summary.get("State") in ("exited", "dead", "created"):
                if self.engine.remove_container(summary["Id"]):
                    removed.append(summary["Id"])
        return removed

    # -- internals ----------------------------------------------------------------------------

    def _pack(self, action: ActionDefinition) -> PackDefinition:
        # Re-read pack.yaml only when it (or requirements.txt) changed: runs stay cheap.
        files = [action.pack_dir / "pack.yaml", action.pack_dir / "requirements.txt"]
        stamp = tuple(f.stat().st_mtime_ns if f.exists() else -1 for f in files)
        cached = self._packs.get(action.pack_dir)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        pack = load_pack(action.pack_dir)
        if pack.pack_ref != action.pack_ref:
            raise InvalidSpecError(
                f"pack.yaml says ref {pack.pack_ref!r} but lives in folder {action.pack_ref!r}", field="ref"
            )
        self._packs[action.pack_dir] = (stamp, pack)
        return pack

    def _run(self, action: ActionDefinition, pack: PackDefinition, limits: ResourceLimits,
             stdin: bytes, env: dict[str, str], execution_id: str) -> ExecutionResult:
        started = time.monotonic()

        def failure(status: ExecutionStatus, kind: str, message: str, **extra: Any) -> ExecutionResult:
            return ExecutionResult(
                execution_id=execution_id, action_ref=action.action_ref, status=status,
                duration_ms=int((time.monotonic() - started) * 1000),
                error=ExecutionError(type=kind, message=message), **extra,
            )

        try:
            info = self.manager.ensure_environment(pack.pack_ref, pack.spec)
        except EngineUnavailableError as exc:
            return failure(ExecutionStatus.error, "EngineUnavailable", str(exc))
        except AttuneContainersError as exc:
            return failure(ExecutionStatus.error, type(exc).__name__, str(exc))

        run = ContainerRun(
            image=info.id,
            command=[INTERPRETER, "-I", "-B", WRAPPER],
            limits=limits,
            environment=env,
            labels={
                LABEL_RUN: "true",
                LABEL_EXECUTION_ID: execution_id,
                LABEL_ACTION_REF: action.action_ref,
                LABEL_PACK_REF: action.pack_ref,
                LABEL_OWNER: owner_id(),
            },
            mounts=[(str(action.pack_dir), PACK_MOUNT, True), (str(RUNTIME_DIR), RUNTIME_MOUNT, True)],
            user=f"{APP_UID}:{APP_UID}",
        )
        container_id: str | None = None
        try:
            # Hold the image's lock until the container exists: a prune cannot take the image away
            # between "ensured" and "in use".
            with self.manager.image_lock(info.image, timeout=60):
                container_id = self.engine.create_container(run)
                self._remember(container_id)
            self.usage.touch(info.id)
            return self._attach_and_wait(container_id, limits, stdin, execution_id, action, info.image)
        except EngineUnavailableError as exc:
            return failure(ExecutionStatus.error, "EngineUnavailable", str(exc), image=info.image)
        except AttuneContainersError as exc:
            return failure(ExecutionStatus.error, type(exc).__name__, str(exc), image=info.image)
        finally:
            if container_id is not None:
                # Retries ride out an engine restart; sweep_leftovers catches what still remains.
                self.engine.remove_container(container_id, attempts=20)
                self._forget(container_id)

    def _attach_and_wait(self, container_id: str, limits: ResourceLimits, stdin: bytes,
                         execution_id: str, action: ActionDefinition, image: str) -> ExecutionResult:
        stdout = CappedBuffer(limits.stdout_limit or 0)
        stderr = CappedBuffer(limits.stderr_limit or 0)
        decoder = FrameDecoder(stdout, limits.result_limit or 0)
        streams = self.engine.attach(container_id)
        timed_out = False
        try:
            self.engine.start(container_id)
            started = time.monotonic()
            deadline = started + (limits.timeout or 300)
            streams.send_stdin(stdin)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    self.engine.kill(container_id)
                    break
                frames = streams.read(min(remaining, 1.0))
                if frames is None:
                    break
                for stream, data in frames:
                    (decoder.feed if stream == 1 else stderr.write)(data)
        finally:
            streams.close()
        elapsed_ms = int((time.monotonic() - started) * 1000)
        exit_code = self.engine.wait(container_id, timeout=10)
        common = dict(
            execution_id=execution_id, action_ref=action.action_ref, exit_code=exit_code,
            duration_ms=elapsed_ms, stdout=stdout.text(), stderr=stderr.text(),
            stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated, image=image,
        )
        if timed_out:
            return ExecutionResult(status=ExecutionStatus.timeout, error=ExecutionError(
                type="Timeout", message=f"the action ran longer than {limits.timeout:g} s and was killed "
                                        f"after {elapsed_ms / 1000:.2f} s"), **common)
        if self._oom_killed(container_id, exit_code):
            return ExecutionResult(status=ExecutionStatus.oom, error=ExecutionError(
                type="OutOfMemory", message=f"the action exceeded its memory limit of {limits.memory}"), **common)
        return _outcome(decoder, exit_code, limits, common)

    def _oom_killed(self, container_id: str, exit_code: int | None) -> bool:
        deadline = time.monotonic() + (OOM_POLL_SECONDS if exit_code == 137 else 0)
        while True:
            state = self.engine.container_state(container_id) or {}
            if state.get("OOMKilled"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _remember(self, container_id: str) -> None:
        with self._live_lock:
            self._live.add(container_id)

    def _forget(self, container_id: str) -> None:
        with self._live_lock:
            self._live.discard(container_id)


def _outcome(decoder: FrameDecoder, exit_code: int | None, limits: ResourceLimits,
             common: dict[str, Any]) -> ExecutionResult:
    if decoder.result_too_large is not None:
        return ExecutionResult(status=ExecutionStatus.failed, error=ExecutionError(
            type="ResultTooLarge",
            message=f"the result is {decoder.result_too_large} bytes; the limit is {limits.result_limit}"), **common)
    if decoder.result is None:
        return ExecutionResult(
            status=ExecutionStatus.failed if exit_code else ExecutionStatus.error,
            error=ExecutionError(type="NoResult", message=(
                f"the action's process ended (exit code {exit_code}) without reporting a result")),
            **common,
        )
    try:
        outcome = json.loads(decoder.result)
    except ValueError:
        return ExecutionResult(status=ExecutionStatus.error, error=ExecutionError(
            type="ProtocolError", message="the result frame is not JSON"), **common)
    kind = outcome.get("status")
    if kind == "error":
        return ExecutionResult(status=ExecutionStatus.failed, error=ExecutionError(**outcome["error"]), **common)
    result = outcome.get("result") if kind == "success" else parse_script_output(common["stdout"])
    status = ExecutionStatus.succeeded if exit_code == 0 else ExecutionStatus.failed
    error = None if exit_code == 0 else ExecutionError(type="NonZeroExit", message=f"the action exited with {exit_code}")
    return ExecutionResult(status=status, result=result, error=error, **common)


def _stdin_document(action: ActionDefinition, parameters: Mapping[str, Any] | None,
                    secrets: Mapping[str, Any] | None, limits: ResourceLimits) -> bytes:
    for name, value in (("parameters", parameters), ("secrets", secrets)):
        if value is not None and not isinstance(value, Mapping):
            raise InvalidSpecError("must be a JSON object", field=name)
        if value is not None and not all(isinstance(k, str) for k in value):
            raise InvalidSpecError("keys must be strings", field=name)
    document = {
        "action": {
            "pack_dir": PACK_MOUNT,
            "entry_point": action.entry_point,
            "function": action.function,
            "result_limit": limits.result_limit,
        },
        "parameters": dict(parameters or {}),
        "secrets": dict(secrets or {}),
    }
    try:
        return json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidSpecError(f"parameters and secrets must be JSON: {exc}", field="parameters") from None


def _environment(execution_id: str, action: ActionDefinition, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "ATTUNE_EXECUTION_ID": execution_id,
        "ATTUNE_ACTION_REF": action.action_ref,
        "ATTUNE_PACK_REF": action.pack_ref,
    }
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or name in RESERVED_ENV:
            raise InvalidSpecError(f"{name!r} cannot be set", field="environment")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidSpecError(f"the value of {name} must be a string without NUL", field="environment")
        env[name] = value
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
