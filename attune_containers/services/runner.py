"""The action runner: one action, in its pack's image, under limits it cannot escape.

The worker's path: ``ActionRunner(packs_dir).run(action_ref, parameters, secrets)`` ensures the
pack's image (built lazily on first use), runs the action in a fresh hardened container and
returns an ``ExecutionResult``. Parameters and secrets travel only on the container's stdin; the
result comes back in its own frames on stdout (see core/protocol.py), apart from the action's
output. The container is removed on every path out, an interrupt included.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets as tokens
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from ..core import labels as L
from ..core.actions import ActionDefinition, discover_packs, load_action
from ..core.classify import classify
from ..core.execution import (
    ExecutionError,
    ExecutionResult,
    ExecutionStatus,
    ResourceLimits,
    parse_size,
)
from ..core.packs import PackDefinition, load_pack
from ..core.pooling import PoolSettings
from ..core.protocol import ExecutionCollector, OutputObserver, encode_frame, encode_request
from ..core.render import APP_UID
from ..core.spec import EnvironmentInfo
from ..engine import ContainerRun, Engine, LogSink
from ..errors import (
    AttuneContainersError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    InvalidSpecError,
    NotFoundError,
)
from ..runtimes import LOOP_MOUNT, PACK_MOUNT, RUNTIMES, Runtime, get_runtime, runner_types
from ..settings import Settings
from . import ownership
from .manager import ContainerDependencyManager
from .pool import Pool, PoolRegistry, WarmBudget, pool_key
from .usage import UsageLog

_EXECUTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED_ENV = {"ATTUNE_EXECUTION_ID", "ATTUNE_ACTION_REF", "ATTUNE_PACK_REF", "PATH", "VIRTUAL_ENV", "HOME"}

# The engine sets OOMKilled after the exit is reported; poll this long before believing "no".
OOM_POLL_SECONDS = 1.0
# The supervisor in the container ends an execution at its deadline; the worker waits this much
# longer before it stops believing the container and kills it.
DEADLINE_GRACE_SECONDS = 3.0
# The supervisor starts as root with these capabilities only, to run each execution as APP_UID.
SUPERVISOR_CAPABILITIES = ("SETUID", "SETGID", "KILL")
# The uid of a warm container's zygote (the runtime's loop preloads as it): neither root nor APP_UID.
ZYGOTE_UID = APP_UID + 1

_RUNNERS: weakref.WeakSet[ActionRunner] = weakref.WeakSet()


@atexit.register
def _close_all_runners() -> None:
    for runner in list(_RUNNERS):
        runner.close()


def owner_id() -> str:
    """``host:pid`` of this process: for humans (``docker ps``), never proof of anything: another
    PID namespace has the same host name and its own pids. Ownership is the lease (ownership.py)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_labels() -> dict[str, str]:
    """The labels that say whose a container is: this process's lease id, and host:pid for humans."""
    return {L.OWNER: owner_id(), L.LEASE: ownership.process_id()}


class ActionRunner:
    """Runs actions of one packs tree. Safe to call from many threads at once.

    A context manager: ``with ActionRunner("packs") as runner: runner.run("pack.action", {...})``
    closes its warm pools and removes its containers when the block ends (else call ``close()``).
    """

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
        self._handles: dict[str, _Handle] = {}  # running executions by id (cancel)
        self._packs: dict[Path, tuple[tuple[float, ...], PackDefinition]] = {}
        self.pools = PoolRegistry(WarmBudget(self.settings.max_warm_containers, parse_size(self.settings.max_warm_memory)))
        self._tree: tuple[int | None, dict[str, Path]] | None = None
        self._preloads: dict[tuple[str, Path], tuple[tuple[int, int], tuple[str, ...]]] = {}
        # Held before any container exists: a sweeper can prove this process alive (ownership.py).
        self.lease = ownership.acquire(self.settings.state_dir, self.engine)
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
        warm: bool | None = None,
    ) -> ExecutionResult:
        """Run one action and return its result.

        Invalid input (an unknown action, bad parameters, a hostile pack) raises InvalidSpecError
        (NotFoundError for an unknown pack or action) before anything starts. Everything after
        that, including build and engine failures, is reported in the result, with status ``error``.
        """
        return self.run_prepared(
            self.prepare(
                action_ref, parameters, secrets, limits=limits, environment=environment, execution_id=execution_id, warm=warm
            )
        )

    def prepare(
        self,
        action_ref: str,
        parameters: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        *,
        limits: ResourceLimits | None = None,
        environment: Mapping[str, str] | None = None,
        execution_id: str | None = None,
        warm: bool | None = None,
    ) -> PreparedExecution:
        """Every check of ``run`` (raises InvalidSpecError), nothing started: the service answers
        bad input at once, before an execution is queued."""
        execution_id = execution_id or uuid.uuid4().hex
        if not _EXECUTION_ID.fullmatch(execution_id):
            raise InvalidSpecError(f"{execution_id!r} is not a valid execution id", field="execution_id")
        action = load_action(self.packs_dir, action_ref, self._packs_tree())
        pack = self._pack(action)
        action_runtime(action)  # a runner no runtime runs is refused here, before anything starts
        effective = self.settings.run_limits(pack=pack.limits, action=ResourceLimits(timeout=action.timeout), request=limits)
        request = _request(action, parameters, secrets, effective, _environment(execution_id, action, environment))
        return PreparedExecution(action, pack, effective, request, execution_id, warm)

    def run_prepared(
        self, prepared: PreparedExecution, *, submitted: float | None = None, on_output: OutputObserver | None = None
    ) -> ExecutionResult:
        """Run what ``prepare`` checked; ``submitted`` (time.monotonic()) starts the queue time;
        ``on_output`` is told the action's output chunks as they arrive (live logs)."""
        submitted = time.monotonic() if submitted is None else submitted
        execution_id = prepared.execution_id
        handle = _Handle()
        handle.on_output = on_output
        with self._live_lock:
            mine = self._handles.setdefault(execution_id, handle) is handle
        try:
            with self._slots:
                queued_ms = int((time.monotonic() - submitted) * 1000)
                started_at = datetime.now(UTC)
                if handle.cancelled:
                    result = ExecutionResult(
                        execution_id=execution_id, action_ref=prepared.action.action_ref, status=ExecutionStatus.cancelled
                    )
                else:
                    result = self._run(
                        prepared.action, prepared.pack, prepared.limits, prepared.request, execution_id, prepared.warm
                    )
        finally:
            if mine:
                with self._live_lock:
                    self._handles.pop(execution_id, None)
        if handle.cancelled:
            result.status = ExecutionStatus.cancelled
            result.error = ExecutionError(type="Cancelled", message="cancelled by request; its container was removed")
        result.started_at = started_at
        result.finished_at = datetime.now(UTC)
        result.queued_ms = queued_ms
        return result

    def cancel(self, execution_id: str) -> bool:
        """Cancel a running execution of this runner: its container is killed and removed (a warm
        one is destroyed, never reused) and its result says ``cancelled``. False if no execution
        of that id runs here (unknown, or already finished)."""
        with self._live_lock:
            handle = self._handles.get(execution_id)
            if handle is None:
                return False
            handle.cancelled = True
            container_id = handle.container_id
        if container_id is not None:
            self.engine.remove_container(container_id, attempts=3)
        return True

    def _observer(self, execution_id: str) -> OutputObserver | None:
        with self._live_lock:
            handle = self._handles.get(execution_id)
            return handle.on_output if handle is not None else None

    def _cancelled(self, execution_id: str) -> bool:
        with self._live_lock:
            handle = self._handles.get(execution_id)
            return handle is not None and handle.cancelled

    def _attach(self, execution_id: str, container_id: str) -> None:
        """Record the container an execution runs in, so that ``cancel`` finds it; a cancel that
        came first removes it at once."""
        with self._live_lock:
            handle = self._handles.get(execution_id)
            if handle is None:
                return
            handle.container_id = container_id
            cancelled = handle.cancelled
        if cancelled:
            self.engine.remove_container(container_id, attempts=3)

    def __enter__(self) -> ActionRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # its pools and live containers go with the block, whatever ended it

    def close(self) -> None:
        """Kill and remove every container this runner still has (interrupts, shutdown)."""
        self.pools.close()
        with self._live_lock:
            live = list(self._live)
        for container_id in live:
            self.engine.remove_container(container_id, attempts=3)
            self._forget(container_id)
        self.lease.withdraw(self)  # its images are no longer in use by it: prunable

    def sweep_leftovers(self) -> list[str]:
        """Remove run containers whose owner is provably dead: its lease (ownership.py) is in this
        state directory and its lock is free (the kernel released it when the owner died, however
        it died). A container is never removed for its state (``created`` is how every container
        starts), nor for a host:pid label (another PID namespace reuses both). Containers of an
        unknown lease (another state directory, another host on this engine) and old ones labelled
        only host:pid are left alone: ``prune`` removes them once stopped past the grace period."""
        removed: list[str] = []
        try:
            containers = self.engine.list_containers([L.RUN])
        except AttuneContainersError:
            return removed
        by_owner: dict[str, list[str]] = {}
        for summary in containers:
            lease_id = summary.labels.get(L.LEASE)
            if lease_id and lease_id != ownership.process_id():
                by_owner.setdefault(lease_id, []).append(summary.id)
        left = set(by_owner)
        for lease_id, ids in by_owner.items():
            # The dead owner's lock is held while its containers go: one sweeper acts on it at a time.
            with ownership.dead_owner(self.settings.state_dir, lease_id) as dead:
                if not dead:
                    continue
                gone = [c for c in ids if self.engine.remove_container(c, attempts=3)]
                removed.extend(gone)
                if len(gone) == len(ids):
                    ownership.forget(self.settings.state_dir, lease_id)
                    left.discard(lease_id)
        ownership.collect(self.settings.state_dir, keep=left)
        return removed

    # -- internals ----------------------------------------------------------------------------

    def _packs_tree(self) -> dict[str, Path]:
        # Scanned again only when a pack folder is added, removed or renamed (the root's mtime).
        try:
            stamp = self.packs_dir.stat().st_mtime_ns
        except OSError:
            stamp = None
        cached = self._tree
        if cached is None or cached[0] != stamp or stamp is None:
            cached = self._tree = (stamp, discover_packs(self.packs_dir))
        return cached[1]

    def _pack(self, action: ActionDefinition) -> PackDefinition:
        return self._pack_at(action.pack_ref, action.pack_dir)

    def _pack_at(self, pack_ref: str, pack_dir: Path) -> PackDefinition:
        # Re-read pack.yaml only when it (or a runtime's dependency file) changed: runs stay cheap.
        # An action of a runtime added since needs no re-read: spec_for gives its empty spec.
        files = [pack_dir / "pack.yaml", *(pack_dir / name for name in _PACK_FILES)]
        stamp = tuple(f.stat().st_mtime_ns if f.exists() else -1 for f in files)
        cached = self._packs.get(pack_dir)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        pack = load_pack(pack_dir)
        if pack.pack_ref != pack_ref:
            raise InvalidSpecError(f"pack.yaml says ref {pack.pack_ref!r} but lives in folder {pack_ref!r}", field="ref")
        self._packs[pack_dir] = (stamp, pack)
        return pack

    def _run(
        self,
        action: ActionDefinition,
        pack: PackDefinition,
        limits: ResourceLimits,
        request: bytes,
        execution_id: str,
        warm: bool | None,
    ) -> ExecutionResult:
        started = time.monotonic()

        def failure(status: ExecutionStatus, kind: str, message: str, **extra: Any) -> ExecutionResult:
            return ExecutionResult(
                execution_id=execution_id,
                action_ref=action.action_ref,
                status=status,
                duration_ms=int((time.monotonic() - started) * 1000),
                error=ExecutionError(type=kind, message=message),
                **extra,
            )

        try:
            return self._run_in_image(action, pack, limits, request, execution_id, warm, failure)
        except EnvironmentNotFoundError:
            # Memory vouched for an image that another process pruned since: forget it and
            # resolve again (rebuilding or pulling it if need be), once.
            try:
                return self._run_in_image(action, pack, limits, request, execution_id, warm, failure)
            except EnvironmentNotFoundError as exc:
                return failure(ExecutionStatus.error, "EnvironmentNotFoundError", str(exc))

    def _run_in_image(
        self,
        action: ActionDefinition,
        pack: PackDefinition,
        limits: ResourceLimits,
        request: bytes,
        execution_id: str,
        warm: bool | None,
        failure: Any,
    ) -> ExecutionResult:
        runtime = action_runtime(action)
        try:
            info = self._ensure_in_use(pack, runtime)  # in use: never pruned
        except EngineUnavailableError as exc:
            return failure(ExecutionStatus.error, "EngineUnavailable", str(exc))
        except AttuneContainersError as exc:
            return failure(ExecutionStatus.error, type(exc).__name__, str(exc))

        policy = self.settings.pool.merged(pack.pool)
        use_pool = policy.reuse if warm is None else warm
        per_run = {L.EXECUTION_ID: execution_id, L.ACTION_REF: action.action_ref}
        try:
            if use_pool:
                warm_run = _container_run(
                    action.pack_ref,
                    action.pack_dir,
                    info.id,
                    limits,
                    {L.POOL: "true"},
                    self._preload(runtime, action.pack_dir, policy),
                    runtime=runtime,
                    host_mounts=runtime.host_mounts(self.settings),
                )
                result = self._run_warm(warm_run, info, policy, limits, request, execution_id, action)
                if result is not None:
                    return _ran_on(result, info, warm=True)
                # The warm budget is all busy: this execution runs cold rather than queueing.
            run = _container_run(
                action.pack_ref,
                action.pack_dir,
                info.id,
                limits,
                per_run,
                runtime=runtime,
                host_mounts=runtime.host_mounts(self.settings),
            )
            return _ran_on(self._run_cold(run, info, limits, request, execution_id, action), info, warm=False)
        except EnvironmentNotFoundError:
            self.manager.forget_image(info.id)
            raise
        except EngineUnavailableError as exc:
            return failure(
                ExecutionStatus.error, "EngineUnavailable", str(exc), image=info.image, dependency_hash=info.dependency_hash
            )
        except AttuneContainersError as exc:
            return failure(
                ExecutionStatus.error, type(exc).__name__, str(exc), image=info.image, dependency_hash=info.dependency_hash
            )

    def _run_cold(
        self,
        run: ContainerRun,
        info: EnvironmentInfo,
        limits: ResourceLimits,
        request: bytes,
        execution_id: str,
        action: ActionDefinition,
    ) -> ExecutionResult:
        container_id: str | None = None
        try:
            # Hold the image's lock until the container exists: a prune cannot take the image away
            # between "ensured" and "in use".
            with self.manager.image_lock(info.image, timeout=60):
                # Removed by the engine the moment it exits (as docker run --rm); the finally
                # below covers a container that never started or was interrupted.
                container_id = self.engine.create_container(run, auto_remove=True)
                self._remember(container_id)
            self._attach(execution_id, container_id)
            self.usage.touch(info.id)
            return self._attach_and_wait(container_id, limits, request, execution_id, action, info.image)
        finally:
            if container_id is not None:
                # Retries ride out an engine restart; sweep_leftovers catches what still remains.
                self.engine.remove_container(container_id, attempts=20)
                self._forget(container_id)

    def _run_warm(
        self,
        run: ContainerRun,
        info: EnvironmentInfo,
        policy: PoolSettings,
        limits: ResourceLimits,
        request: bytes,
        execution_id: str,
        action: ActionDefinition,
    ) -> ExecutionResult | None:
        pool = self._pool(run, info, policy)
        container = pool.acquire()
        if container is None:
            return None
        reusable = False
        try:
            self._attach(execution_id, container.id)  # cancel destroys it (never reused)
            self.usage.touch(info.id)
            control = _control(limits, last=False)
            collector = _collector(limits, control, self._observer(execution_id))
            timed_out, elapsed = container.execute(encode_request(control, request), collector, _deadline_seconds(limits))
            result = finish(
                self.engine,
                container.id,
                collector,
                limits,
                timed_out,
                elapsed,
                execution_id=execution_id,
                action_ref=action.action_ref,
                image=info.image,
                cancelled=self._cancelled(execution_id),
            )
            done = collector.done or {}
            pool.note_preload(done.get("preload"))
            # Reused only after a clean end: returned or raised, nothing left running, /tmp empty.
            reusable = (
                not timed_out
                and not collector.protocol_error
                and done.get("clean") is True
                and result.status in (ExecutionStatus.succeeded, ExecutionStatus.failed)
            )
            return result
        finally:
            # Any other way out (timeout, OOM, crash, an interrupt of the caller) destroys it.
            pool.release(container, reusable)

    def prewarm(
        self, pack_ref: str, count: int | None = None, *, limits: ResourceLimits | None = None, runtime: str | None = None
    ) -> int:
        """Start warm containers for a pack ahead of need (``count`` defaults to its min_idle), for
        each of its runtimes (a mixed pack's Python and Node.js pools are separate: one per image),
        or only ``runtime``'s. Returns how many were started in all."""
        packs = self._packs_tree()
        if pack_ref not in packs:
            raise NotFoundError(f"no pack {pack_ref!r} in {self.packs_dir}", field="pack_ref")
        pack = self._pack_at(pack_ref, packs[pack_ref])
        policy = self.settings.pool.merged(pack.pool)
        effective = self.settings.run_limits(pack=pack.limits, request=limits)
        started = 0
        for chosen in _pack_runtimes(pack, runtime):
            info = self._ensure_in_use(pack, chosen)
            run = _container_run(
                pack_ref,
                packs[pack_ref],
                info.id,
                effective,
                {L.POOL: "true"},
                self._preload(chosen, packs[pack_ref], policy),
                runtime=chosen,
                host_mounts=chosen.host_mounts(self.settings),
            )
            started += self._pool(run, info, policy).prewarm((policy.min_idle or 0) if count is None else count)
        return started

    def ensure_pack(self, pack_ref: str, *, on_log: LogSink | None = None, runtime: str | None = None) -> EnvironmentInfo:
        """Ensure a pack's images by its ref in this packs tree (every runtime's, or only
        ``runtime``'s); pre-warm when its policy says so. ``on_log`` is told the lines of a build it
        starts. Returns the image of ``runtime``, else of the pack's first runtime (Python first);
        ``ensure_pack_all`` returns each."""
        return self.ensure_pack_all(pack_ref, on_log=on_log, runtime=runtime)[0]

    def ensure_pack_all(
        self, pack_ref: str, *, on_log: LogSink | None = None, runtime: str | None = None
    ) -> list[EnvironmentInfo]:
        """``ensure_pack`` for every runtime of the pack (or only ``runtime``): one image each."""
        packs = self._packs_tree()
        if pack_ref not in packs:
            raise NotFoundError(f"no pack {pack_ref!r} in {self.packs_dir}", field="pack_ref")
        pack = self._pack_at(pack_ref, packs[pack_ref])
        infos = [self._ensure_in_use(pack, chosen, on_log) for chosen in _pack_runtimes(pack, runtime)]
        policy = self.settings.pool.merged(pack.pool)
        if policy.prewarm and policy.reuse and policy.min_idle:
            self.prewarm(pack_ref, runtime=runtime)
        return infos

    def _ensure_in_use(self, pack: PackDefinition, runtime: Runtime, on_log: LogSink | None = None) -> EnvironmentInfo:
        """The pack's image for ``runtime``, ensured and recorded in this process's lease as in use by this runner,
        so that no prune removes it (ownership.py). A new record is made under the image's lock and
        the image checked after it: a prune either saw the record, or removed the image before it
        was made, and the image is then resolved again (once)."""
        for _ in range(2):
            info = self.manager.ensure_environment(pack.pack_ref, pack.spec_for(runtime.name), on_log=on_log)
            if self.lease.uses(self, pack.pack_ref, info.image, info.id, runtime.name):
                return info  # the hot path: recorded already, nothing to write or check
            with self.manager.image_lock(info.image, timeout=60):
                self.lease.use(self, pack.pack_ref, info.image, info.id, runtime.name)
                attrs = self.engine.inspect_image(info.image)
            if attrs is not None and attrs.id == info.id:
                return info
            self.manager.forget_image(info.id)
        raise EnvironmentNotFoundError(f"{info.image} of pack {pack.pack_ref!r} was removed while it was resolved")

    def pool_stats(self) -> list[dict]:
        return [pool.stats() for pool in self.pools.pools()]

    def _preload(self, runtime: Runtime, pack_dir: Path, policy: PoolSettings) -> tuple[str, ...]:
        """The libraries a pack's warm containers import ahead: its own list, else what its action
        files import, as its runtime finds them (again only when the actions folder changes)."""
        if policy.preload is not None:
            return tuple(policy.preload)
        actions = pack_dir / "actions"
        try:
            stamp = (actions.stat().st_mtime_ns, max((e.stat().st_mtime_ns for e in actions.iterdir()), default=0))
        except OSError:
            return ()
        cached = self._preloads.get((runtime.name, pack_dir))
        if cached is None or cached[0] != stamp:
            cached = self._preloads[(runtime.name, pack_dir)] = (stamp, runtime.discover_preload(pack_dir))
        return cached[1]

    def _pool(self, run: ContainerRun, info: EnvironmentInfo, policy: PoolSettings) -> Pool:
        # The preload list is part of the key: containers of an older list are not handed out.
        key = (*pool_key(run.labels[L.PACK_REF], info.id, run.limits), tuple(run.command))
        return self.pools.get(
            key,
            lambda: Pool(
                key,
                run,
                policy,
                self.engine,
                create_lock=lambda: self.manager.image_lock(info.image, timeout=60),
                budget=self.pools.budget,
            ),
        )

    def _attach_and_wait(
        self, container_id: str, limits: ResourceLimits, request: bytes, execution_id: str, action: ActionDefinition, image: str
    ) -> ExecutionResult:
        control = _control(limits, last=True)
        collector = _collector(limits, control, self._observer(execution_id))

        def on_frame(stream: int, data: bytes) -> None:
            if stream == 1:
                if collector.feed(data):
                    collector.protocol_error = True  # nothing follows the end of the last execution
            else:
                collector.stderr.write(data)  # the runner loop's own trouble, if any

        # One request, then EOF: the runner loop serves it and ends.
        exit_code, timed_out, elapsed = self.engine.run_attached(
            container_id, encode_request(control, request), _deadline_seconds(limits), on_frame
        )
        return finish(
            self.engine,
            container_id,
            collector,
            limits,
            timed_out,
            elapsed,
            execution_id=execution_id,
            action_ref=action.action_ref,
            image=image,
            container_exit=exit_code,
            cancelled=self._cancelled(execution_id),
        )

    def _remember(self, container_id: str) -> None:
        with self._live_lock:
            self._live.add(container_id)

    def _forget(self, container_id: str) -> None:
        with self._live_lock:
            self._live.discard(container_id)


class PreparedExecution(NamedTuple):
    """An execution checked by ``ActionRunner.prepare``, not started."""

    action: ActionDefinition
    pack: PackDefinition
    limits: ResourceLimits
    request: bytes
    execution_id: str
    warm: bool | None


class _Handle:
    """A running execution: whether it was cancelled and its container (``cancel``), and who is
    told its output (live logs)."""

    __slots__ = ("cancelled", "container_id", "on_output")

    def __init__(self) -> None:
        self.cancelled = False
        self.container_id: str | None = None
        self.on_output: OutputObserver | None = None


# Every runtime's dependency files beside pack.yaml (requirements.txt, package.json, ...).
_PACK_FILES = tuple(dict.fromkeys(name for r in RUNTIMES.values() for name in r.pack_files))


def action_runtime(action: ActionDefinition) -> Runtime:
    """The runtime whose image runs ``action``: the one its ``runner_type`` names. A pack with
    actions of several runtimes has an image per runtime; an action never runs in another's."""
    runtime = runner_types().get(action.runner_type)
    if runtime is None:  # load_action refuses it first; kept for definitions made by hand
        raise InvalidSpecError(f"runner_type {action.runner_type!r} is not a runner of any runtime", field="runner_type")
    return runtime


def _pack_runtimes(pack: PackDefinition, runtime: str | None) -> list[Runtime]:
    """The pack's runtimes, or only ``runtime`` (a name or alias; it need not be declared: its
    image then has no dependencies, as for an action of that runtime)."""
    return [get_runtime(runtime)] if runtime is not None else [get_runtime(name) for name in pack.runtimes]


def _ran_on(result: ExecutionResult, info: EnvironmentInfo, *, warm: bool) -> ExecutionResult:
    """Say exactly what ran: the image (by its content digest), its dependency hash, and whether
    the container was warm."""
    result.image_id = info.id
    result.dependency_hash = info.dependency_hash
    result.warm = warm
    return result


def _container_run(
    pack_ref: str,
    pack_dir: Path,
    image_id: str,
    limits: ResourceLimits,
    labels: dict[str, str],
    preload: tuple[str, ...] = (),
    *,
    runtime: Runtime | None = None,
    host_mounts: tuple[tuple[Path, str], ...] = (),
) -> ContainerRun:
    """The container of one pack's runner loop, cold or warm: same image, limits and mounts.
    ``preload``: libraries a warm container's zygote imports once (argv: never a shell).
    ``runtime``: whose loop runs (default: the default runtime's); ``host_mounts``: what its
    ``host_mounts`` made on this host for it."""
    runtime = runtime or get_runtime()
    return ContainerRun(
        image=image_id,
        command=runtime.loop_command(APP_UID, ZYGOTE_UID if preload else None, preload),
        limits=limits,
        environment={},  # per-execution variables travel in the request, on both paths
        labels={L.RUN: "true", L.PACK_REF: pack_ref, **owner_labels(), **labels},
        mounts=[
            (str(pack_dir), PACK_MOUNT, True),
            (str(runtime.loop_dir), LOOP_MOUNT, True),
            *((str(source), target, True) for source, target in (*runtime.support_mounts, *host_mounts)),
        ],
        user="0:0",
        cap_add=SUPERVISOR_CAPABILITIES,
    )


def _deadline_seconds(limits: ResourceLimits) -> float:
    """The worker's own deadline: the run's timeout (resolved limits always have one) plus the
    grace the supervisor needs to report its own timeout first."""
    if limits.timeout is None:
        raise AttuneContainersError("the run's limits have no timeout")
    return limits.timeout + DEADLINE_GRACE_SECONDS


def oom_killed(engine: Engine, container_id: str, since: float) -> bool:
    """Whether the engine saw an OOM kill in the container: its OOMKilled state or its event log,
    polled briefly since the engine reports it after the kill. Exit code 137 alone is no proof."""
    deadline = time.monotonic() + OOM_POLL_SECONDS
    while True:
        state = engine.container_state(container_id)
        if (state is not None and state.oom_killed) or engine.saw_oom(container_id, since):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def finish(
    engine: Engine,
    container_id: str,
    collector: ExecutionCollector,
    limits: ResourceLimits,
    timed_out: bool,
    elapsed: float,
    *,
    execution_id: str,
    action_ref: str,
    image: str,
    container_exit: int | None = None,
    cancelled: bool = False,
) -> ExecutionResult:
    """The ExecutionResult of one execution, the same for the cold and the warm path: the pure
    classification (core/classify.py) with the engine asked about an OOM kill only when needed
    (never for a cancelled execution: we killed it, and its result says cancelled)."""
    return classify(
        collector,
        limits,
        timed_out,
        elapsed,
        execution_id=execution_id,
        action_ref=action_ref,
        image=image,
        container_exit=container_exit,
        oom=lambda: not cancelled and oom_killed(engine, container_id, time.time() - elapsed),
    )


def _request(
    action: ActionDefinition,
    parameters: Mapping[str, Any] | None,
    secrets: Mapping[str, Any] | None,
    limits: ResourceLimits,
    environment: dict[str, str],
) -> bytes:
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
        "environment": environment,
    }
    try:
        return encode_frame(document)
    except (TypeError, ValueError) as exc:
        raise InvalidSpecError(f"parameters and secrets must be JSON: {exc}", field="parameters") from None


def _control(limits: ResourceLimits, *, last: bool) -> dict[str, Any]:
    """What the supervisor needs of one execution; the nonce is unknown to the action's process,
    so a done frame that echoes it was written by the supervisor. ``limits`` are a run's merged
    limits (``Settings.run_limits``: the defaults hold every field), so none is missing here."""
    return {"nonce": tokens.token_hex(16), "timeout": limits.timeout, "result_limit": limits.result_limit or 0, "last": last}


def _collector(limits: ResourceLimits, control: dict[str, Any], on_output: OutputObserver | None = None) -> ExecutionCollector:
    return ExecutionCollector(
        limits.stdout_limit or 0, limits.stderr_limit or 0, limits.result_limit or 0, nonce=control["nonce"], on_output=on_output
    )


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
