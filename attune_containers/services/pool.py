"""Warm containers: started ahead of need, each serving one execution at a time.

A warm container is an ordinary hardened action container (every limit of the cold path, one
pack, its image) whose runner loop keeps reading requests instead of ending after one. The
worker keeps its attach connection open: a request goes in on stdin, frames come back on stdout,
so an execution costs a fork inside the container, not a container start.

A container is reused only after an execution that ended cleanly: the action returned or raised,
nothing of it was left running, /tmp was emptied. A timeout, an out-of-memory kill, a crash,
leftover processes, a protocol fault or the execution budget being spent each destroy it; a new
one replaces it when needed. Pools are keyed by the pack's image and the container-level limits
(memory, CPUs, pids, nofile, network, /tmp), so one container only ever serves one pack.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.execution import ResourceLimits
from ..core.pooling import PoolSettings
from ..core.protocol import ExecutionCollector
from ..engine import AttachedStreams, ContainerRun, Engine
from ..errors import AttuneContainersError, EngineError

REAP_INTERVAL = 1.0


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


def pool_key(pack_ref: str, image_id: str, limits: ResourceLimits) -> PoolKey:
    return (pack_ref, image_id, limits.memory, limits.cpus, limits.pids, limits.nofile, limits.network, limits.tmp_size)


class Pool:
    """The warm containers of one pack image under one set of container-level limits."""

    def __init__(self, key: PoolKey, run: ContainerRun, policy: PoolSettings, engine: Engine,
                 create_lock: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        self.key = key
        self.run = run
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

    def acquire(self, timeout: float = 300) -> WarmContainer:
        """An idle container (the most recently used), a new one if the pool may grow, else wait."""
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
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            self._busy.add(container)
        return container

    def release(self, container: WarmContainer, reusable: bool) -> None:
        reuse = (reusable and not self.closed and self.policy.reuse is not False
                 and container.executions < (self.policy.max_executions or 1) and container.alive())
        with self._cond:
            self._busy.discard(container)
            if reuse:
                self._idle.append(container)
            self._cond.notify()
        if not reuse:
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
                container = self._start()
            finally:
                with self._cond:
                    self._starting -= 1
            with self._cond:
                self._idle.append(container)
                self._cond.notify()
            started += 1

    def reap(self) -> None:
        """Destroy idle containers past the idle timeout (down to min_idle), then top up."""
        now = time.monotonic()
        with self._cond:
            keep = self.policy.min_idle or 0
            expired = [c for c in self._idle[:-keep or None]
                       if now - c.last_used > (self.policy.idle_timeout or 300)] if len(self._idle) > keep else []
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
            self._cond.notify_all()
        for container in victims:
            self._destroy(container)

    def stats(self) -> dict:
        with self._cond:
            return {"pack_ref": self.key[0], "image": self.key[1], "idle": len(self._idle), "busy": len(self._busy),
                    "starting": self._starting, "created": self.created, "destroyed": self.destroyed,
                    "max_size": self.policy.max_size, "min_idle": self.policy.min_idle}

    # -- internals ----------------------------------------------------------------------------

    def _start(self) -> WarmContainer:
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

    def _destroy(self, container: WarmContainer) -> None:
        container.streams.close()
        self.engine.remove_container(container.id, attempts=20)
        self.destroyed += 1

    def _destroy_later(self, container: WarmContainer) -> None:
        threading.Thread(target=self._destroy, args=(container,), daemon=True).start()


class PoolRegistry:
    """Every pool of one runner, and the thread that reaps and tops them up."""

    def __init__(self) -> None:
        self._pools: dict[PoolKey, Pool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def get(self, key: PoolKey, factory: Callable[[], Pool]) -> Pool:
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.closed:
                pool = self._pools[key] = factory()
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
