"""Warm containers: started ahead of need, each serving one execution at a time.

A warm container is an ordinary hardened action container (every limit of the cold path, one
pack, its image) whose runner loop keeps reading requests instead of ending after one. The
worker keeps its attach connection open: a request goes in on stdin, frames come back on stdout,
so an execution costs a fork inside the container, not a container start.

A container is reused only after an execution that ended cleanly: the action returned or raised,
nothing of it was left running, /tmp was emptied. A timeout, an out-of-memory kill, a crash,
leftover processes, a protocol fault or the execution budget being spent each destroy it; a new
one replaces it when needed. Pools are keyed by the pack's image and the container-level limits
(``ResourceLimits.CONTAINER_FIELDS``: memory, CPUs, pids, nofile, network, /tmp), so one container
only ever serves one pack.

All pools of a runner share one budget (``WarmBudget``): a cap on warm containers and on the memory
they may hold. A new warm container first evicts the least recently used idle one of any pool; when
everything under the cap is busy, the execution runs cold instead of waiting (warm is a speed-up,
never a reason to queue), so callers who vary their limits cannot pile up idle containers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.execution import ResourceLimits, parse_size
from ..core.pooling import PoolSettings
from ..core.protocol import ExecutionCollector
from ..engine import AttachedStreams, ContainerRun, Engine
from ..errors import AttuneContainersError, EngineError

REAP_INTERVAL = 1.0
log = logging.getLogger(__name__)


@dataclass(eq=False)
class WarmContainer:
    id: str
    streams: AttachedStreams
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    executions: int = 0

    def alive(self) -> bool:
        """An idle container has nothing to say: anything readable means it ended or misbehaved."""
        return not self.streams.has_pending()

    def execute(self, request: bytes, collector: ExecutionCollector, timeout: float) -> tuple[bool, float]:
        """Serve one request; return (timed out, seconds). Frames past the end are a fault."""
        started = time.monotonic()
        deadline = started + timeout
        self.executions += 1
        self.streams.send(request)
        timed_out = False
        while collector.done is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            frames = self.streams.read(min(remaining, 1.0))
            if frames is None:
                break  # the container ended under the execution (OOM of the loop, engine restart)
            for stream, data in frames:
                if stream == 1:
                    if collector.feed(data):
                        collector.protocol_error = True
                else:
                    collector.stderr.write(data)
        self.last_used = time.monotonic()
        return timed_out, self.last_used - started


PoolKey = tuple


class WarmBudget:
    """The cap on warm containers (count and memory) over every pool of one runner."""

    def __init__(self, max_containers: int, max_memory: int) -> None:
        self.max_containers = max_containers
        self.max_memory = max_memory
        self.containers = 0
        self.memory = 0
        self._lock = threading.Lock()
        self._pools: list[Pool] = []

    def add(self, pool: Pool) -> None:
        with self._lock:
            self._pools.append(pool)

    def reserve(self, memory: int, evict: bool = True) -> bool:
        """Room for one more container, evicting least recently used idle ones; False when even
        that cannot make room (everything under the cap is busy)."""
        victims: list[tuple[Pool, WarmContainer]] = []
        with self._lock:
            if memory > self.max_memory or self.max_containers < 1:
                return False
            while self.containers + 1 > self.max_containers or self.memory + memory > self.max_memory:
                oldest = [(c.last_used, i, pool, c) for i, pool in enumerate(self._pools) for c in pool.idle()] if evict else []
                if not oldest:
                    break
                _, _, pool, container = min(oldest, key=lambda entry: entry[:2])
                if pool.take_idle(container):
                    victims.append((pool, container))
                    self.containers -= 1
                    self.memory -= pool.memory
            fits = self.containers + 1 <= self.max_containers and self.memory + memory <= self.max_memory
            if fits:
                self.containers += 1
                self.memory += memory
        for pool, container in victims:
            pool.destroy_unaccounted(container)
        return fits

    def free(self, memory: int) -> None:
        with self._lock:
            self.containers -= 1
            self.memory -= memory

    def stats(self) -> dict:
        with self._lock:
            return {
                "containers": self.containers,
                "memory": self.memory,
                "max_containers": self.max_containers,
                "max_memory": self.max_memory,
            }


def pool_key(pack_ref: str, image_id: str, limits: ResourceLimits) -> PoolKey:
    """One pool per pack, image and set of container-level limits (ResourceLimits.CONTAINER_FIELDS):
    a new container-level limit keys pools without a change here."""
    return (pack_ref, image_id, *limits.container_level())


class Pool:
    """The warm containers of one pack image under one set of container-level limits."""

    def __init__(
        self,
        key: PoolKey,
        run: ContainerRun,
        policy: PoolSettings,
        engine: Engine,
        create_lock: Callable[[], contextlib.AbstractContextManager] | None = None,
        budget: WarmBudget | None = None,
    ) -> None:
        self.key = key
        self.run = run
        self.budget = budget
        self.memory = parse_size(run.limits.memory) if run.limits.memory else 0
        self.preload: str | None = None  # how its containers preload libraries, as they report it
        self.policy = policy
        self.engine = engine
        self._create_lock = create_lock or contextlib.nullcontext
        self._idle: list[WarmContainer] = []
        self._busy: set[WarmContainer] = set()
        self._starting = 0
        self._cond = threading.Condition()
        self.closed = False
        self.created = 0
        self.destroyed = 0

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._busy) + self._starting

    def acquire(self, timeout: float = 300) -> WarmContainer | None:
        """An idle container (the most recently used), a new one if the pool may grow, else wait.
        None when the runner's warm budget has no room: the caller runs the execution cold."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise AttuneContainersError("the pool is closed")
                while self._idle:
                    container = self._idle.pop()
                    if container.alive():
                        self._busy.add(container)
                        return container
                    self._destroy_later(container)
                if self.size < (self.policy.max_size or 1):
                    self._starting += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AttuneContainersError(f"no warm container became free within {timeout:g} s")
                self._cond.wait(remaining)
        try:
            container = self._start()
        except BaseException as exc:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            if isinstance(exc, _NoRoom):
                return None
            raise
        with self._cond:
            self._starting -= 1
            self._busy.add(container)
        return container

    def release(self, container: WarmContainer, reusable: bool) -> None:
        alive = container.alive()
        with self._cond:
            # Not busy any more when close() already destroyed it: destroyed (and its budget
            # share given back) once, and never put back into a closed pool.
            mine = container in self._busy
            self._busy.discard(container)
            reuse = (
                mine
                and reusable
                and not self.closed
                and self.policy.reuse is not False
                and container.executions < (self.policy.max_executions or 1)
                and alive
            )
            if reuse:
                self._idle.append(container)
            self._cond.notify()
        if mine and not reuse:
            self._destroy(container)

    def prewarm(self, count: int) -> int:
        """Start containers until ``count`` are idle (bounded by max_size); return how many started."""
        started = 0
        while True:
            with self._cond:
                if self.closed or len(self._idle) + self._starting >= count or self.size >= (self.policy.max_size or 1):
                    return started
                self._starting += 1
            try:
                container = self._start(evict=False)  # topping up never evicts other pools' containers
            except _NoRoom:
                return started
            finally:
                with self._cond:
                    self._starting -= 1
            with self._cond:
                closed = self.closed
                if not closed:
                    self._idle.append(container)
                    self._cond.notify()
            if closed:
                # The pool closed while this one started (the reaper topping up during close):
                # nobody would ever destroy it.
                self._destroy(container)
                return started
            started += 1

    def reap(self) -> None:
        """Destroy idle containers past the idle timeout (down to min_idle), then top up."""
        now = time.monotonic()
        with self._cond:
            keep = self.policy.min_idle or 0
            expired = (
                [c for c in self._idle[: -keep or None] if now - c.last_used > (self.policy.idle_timeout or 300)]
                if len(self._idle) > keep
                else []
            )
            dead = [c for c in self._idle if c not in expired and not c.alive()]
            for c in expired + dead:
                self._idle.remove(c)
        for c in expired + dead:
            self._destroy(c)
        if keep:
            with contextlib.suppress(AttuneContainersError):
                self.prewarm(keep)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            victims = list(self._idle) + list(self._busy)
            self._idle.clear()
            self._busy.clear()
            self._cond.notify_all()
        for container in victims:
            self._destroy(container)

    def stats(self) -> dict:
        with self._cond:
            return {
                "pack_ref": self.key[0],
                "image": self.key[1],
                "idle": len(self._idle),
                "busy": len(self._busy),
                "starting": self._starting,
                "created": self.created,
                "destroyed": self.destroyed,
                "max_size": self.policy.max_size,
                "min_idle": self.policy.min_idle,
                "memory": self.run.limits.memory,
                "preload": self.preload,
            }

    # -- internals ----------------------------------------------------------------------------

    def note_preload(self, state: object) -> None:
        """Record how the containers preload (a zygote, or per execution and why); log a change."""
        text = state if isinstance(state, str) else None
        if text is not None and text != self.preload:
            self.preload = text[:200]
            level = logging.WARNING if text.startswith("per-execution") else logging.INFO
            log.log(level, "warm containers of %s preload libraries: %s", self.key[0], self.preload)

    def idle(self) -> list[WarmContainer]:
        with self._cond:
            return list(self._idle)

    def take_idle(self, container: WarmContainer) -> bool:
        """Take an idle container out of the pool for eviction; False if it is no longer idle."""
        with self._cond:
            if container in self._idle:
                self._idle.remove(container)
                return True
            return False

    def destroy_unaccounted(self, container: WarmContainer) -> None:
        """Destroy a container whose budget share the caller already gave back."""
        self._destroy(container, account=False)

    def _start(self, evict: bool = True) -> WarmContainer:
        if self.budget is not None and not self.budget.reserve(self.memory, evict=evict):
            raise _NoRoom()
        try:
            return self._start_container()
        except BaseException:
            if self.budget is not None:
                self.budget.free(self.memory)
            raise

    def _start_container(self) -> WarmContainer:
        with self._create_lock():
            # Auto-removed as it exits: a destroyed, crashed or engine-restarted container goes by
            # itself, whatever happens to this process.
            container_id = self.engine.create_container(self.run, auto_remove=True)
        try:
            streams = self.engine.attach(container_id)
            self.engine.start(container_id)
        except BaseException:
            self.engine.remove_container(container_id, attempts=5)
            raise
        self.created += 1
        return WarmContainer(id=container_id, streams=streams)

    def _destroy(self, container: WarmContainer, account: bool = True) -> None:
        if account and self.budget is not None:
            self.budget.free(self.memory)
        container.streams.close()
        self.engine.remove_container(container.id, attempts=20)
        self.destroyed += 1

    def _destroy_later(self, container: WarmContainer) -> None:
        threading.Thread(target=self._destroy, args=(container,), daemon=True).start()


class _NoRoom(Exception):
    """The warm budget is spent on busy containers."""


class PoolRegistry:
    """Every pool of one runner, their shared budget, and the thread that reaps and tops them up."""

    def __init__(self, budget: WarmBudget | None = None) -> None:
        self.budget = budget
        self._pools: dict[PoolKey, Pool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def get(self, key: PoolKey, factory: Callable[[], Pool]) -> Pool:
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.closed:
                pool = self._pools[key] = factory()
                if self.budget is not None:
                    self.budget.add(pool)
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_forever, name="attune-pool-reaper", daemon=True)
                self._reaper.start()
            return pool

    def pools(self) -> list[Pool]:
        with self._lock:
            return list(self._pools.values())

    def close(self) -> None:
        self._stop.set()
        for pool in self.pools():
            pool.close()

    def _reap_forever(self) -> None:
        while not self._stop.wait(REAP_INTERVAL):
            for pool in self.pools():
                try:
                    pool.reap()
                except (AttuneContainersError, EngineError, OSError):
                    continue
