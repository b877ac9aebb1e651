"""The warm pool as a state machine, on the in-memory engine (fake_engine.py): acquire and release,
reuse rules, waiting at max_size, idle reaping and min_idle top-up, the execution budget of one
container, closing, and the warm budget over all pools (LRU eviction, cold when all is busy).

The containers speak the real frame protocol, so every execution here goes through the worker's
real request encoding, collector and classification. What the real engine does (limits, OOM,
auto-removal) is tested in tests/engine/test_warm.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.actions import ActionDefinition
from attune_containers.core.execution import DEFAULT_LIMITS, ExecutionStatus, ResourceLimits
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.core.protocol import encode_request
from attune_containers.engine import ContainerRun
from attune_containers.errors import AttuneContainersError, EngineError
from attune_containers.services import runner as runner_module
from attune_containers.services.pool import Pool, PoolRegistry, WarmBudget, WarmContainer, pool_key
from attune_containers.services.runner import _collector, _control, _request, finish

from .fake_engine import FakeEngine

ACTION = ActionDefinition(action_ref="p.act", pack_ref="p", name="act", pack_dir=Path("/packs/p"), entry_point="act.py")
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _short_oom_poll(monkeypatch):
    """finish() polls the engine's OOM record this long after a kill-like end; the fake answers at once."""
    monkeypatch.setattr(runner_module, "OOM_POLL_SECONDS", 0.05)


def limits(**fields) -> ResourceLimits:
    return DEFAULT_LIMITS.merged(ResourceLimits(**fields))


def make_pool(engine: FakeEngine, budget: WarmBudget | None = None, *, pack: str = "p", memory: str = "256m", **policy) -> Pool:
    run_limits = limits(memory=memory)
    run = ContainerRun(
        image="sha256:" + "ab" * 32,
        command=["loop"],
        limits=run_limits,
        environment={},
        labels={L.POOL: "true"},
        mounts=[],
        user="0:0",
    )
    pool = Pool(pool_key(pack, run.image, run_limits), run, DEFAULT_POOL.merged(PoolSettings(**policy)), engine, budget=budget)
    if budget is not None:
        budget.add(pool)
    return pool


def execute(
    container: WarmContainer, parameters: dict | None = None, *, timeout: float = 5.0, run_limits: ResourceLimits | None = None
):
    """One execution as ActionRunner._run_warm does it: request, collector, classification, and
    whether the container may serve another one."""
    run_limits = run_limits or DEFAULT_LIMITS
    control = _control(run_limits, last=False)
    collector = _collector(run_limits, control)
    request = _request(ACTION, parameters or {}, {}, run_limits, {"ATTUNE_EXECUTION_ID": "e1"})
    timed_out, elapsed = container.execute(encode_request(control, request), collector, timeout)
    result = finish(
        container_engine(container),
        container.id,
        collector,
        run_limits,
        timed_out,
        elapsed,
        execution_id="e1",
        action_ref=ACTION.action_ref,
        image="img",
    )
    done = collector.done or {}
    reusable = (
        not timed_out
        and not collector.protocol_error
        and done.get("clean") is True
        and result.status in (ExecutionStatus.succeeded, ExecutionStatus.failed)
    )
    return result, reusable


def container_engine(container: WarmContainer) -> FakeEngine:
    return container.streams._container.engine


def eventually(condition, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


# -- acquire, execute, release -------------------------------------------------------------------


def test_a_container_is_created_auto_removed_attached_before_start_and_serves_the_protocol():
    engine = FakeEngine()
    pool = make_pool(engine)
    container = pool.acquire()
    assert [name for name, _ in engine.calls] == ["create_container", "attach", "start"]
    assert engine.containers[container.id].auto_remove is True
    result, reusable = execute(container, {"stdout": "printed", "result": {"answer": 42}})
    assert result.status is ExecutionStatus.succeeded and result.result == {"answer": 42}
    assert result.stdout == "printed" and reusable
    control, request = engine.containers[container.id].requests[0]
    assert request["parameters"] == {"stdout": "printed", "result": {"answer": 42}}
    assert set(control) == {"nonce", "timeout", "result_limit", "last"} and control["last"] is False


def test_a_released_clean_container_is_reused_and_the_most_recently_used_first():
    engine = FakeEngine()
    pool = make_pool(engine)
    first, second = pool.acquire(), pool.acquire()
    pool.release(first, True)
    pool.release(second, True)
    assert pool.acquire() is second and pool.acquire() is first
    assert engine.count("create_container") == 2
    assert pool.stats()["busy"] == 2 and pool.stats()["idle"] == 0


def test_many_executions_on_one_container_each_get_their_own_nonce_and_result():
    engine = FakeEngine(chunk=3)  # output arrives in 3-byte pieces: frames are reassembled
    pool = make_pool(engine)
    for i in range(5):
        container = pool.acquire()
        result, reusable = execute(container, {"result": i, "stdout": f"run {i}"})
        assert (result.result, result.stdout) == (i, f"run {i}")
        pool.release(container, reusable)
    fake = engine.containers[container.id]
    assert engine.count("create_container") == 1 and len(fake.requests) == 5
    assert len({control["nonce"] for control, _ in fake.requests}) == 5


@pytest.mark.parametrize(
    ("parameters", "status"),
    [
        ({"dirty": True}, ExecutionStatus.succeeded),  # left a process behind
        ({"hang": True}, ExecutionStatus.timeout),
        ({"supervisor_timeout": True}, ExecutionStatus.timeout),
        ({"killed": True, "oom": True}, ExecutionStatus.oom),
        ({"forge": True}, ExecutionStatus.error),
        ({"trailing": True}, ExecutionStatus.error),  # a frame after the end
        ({"garbage": "not a frame"}, ExecutionStatus.error),
        ({"crash": True}, ExecutionStatus.error),
    ],
)
def test_a_container_is_destroyed_after_any_unclean_end(parameters, status):
    engine = FakeEngine()
    pool = make_pool(engine)
    container = pool.acquire()
    result, reusable = execute(container, parameters, timeout=0.3)
    assert result.status is status and not reusable
    pool.release(container, reusable)
    assert container.id in engine.removed and pool.stats()["idle"] == 0
    assert pool.acquire() is not container and engine.count("create_container") == 2


def test_a_raised_exception_is_a_clean_end_and_the_container_is_reused():
    engine = FakeEngine()
    pool = make_pool(engine)
    container = pool.acquire()
    result, reusable = execute(container, {"raise": "ValueError: bad input"})
    assert result.status is ExecutionStatus.failed and result.error.type == "ValueError" and reusable
    pool.release(container, reusable)
    assert pool.acquire() is container


def test_reuse_false_destroys_every_container_after_one_execution():
    engine = FakeEngine()
    pool = make_pool(engine, reuse=False)
    container = pool.acquire()
    pool.release(container, True)
    assert container.id in engine.removed and pool.size == 0


def test_max_executions_replaces_a_container_once_its_budget_is_spent():
    engine = FakeEngine()
    pool = make_pool(engine, max_executions=3)
    seen = []
    for _ in range(7):
        container = pool.acquire()
        seen.append(container.id)
        _, reusable = execute(container)
        pool.release(container, reusable)
    assert [seen.count(i) for i in dict.fromkeys(seen)] == [3, 3, 1]
    assert engine.count("create_container") == 3 and len(engine.removed) == 2


def test_an_idle_container_that_ended_is_never_handed_out():
    engine = FakeEngine()
    pool = make_pool(engine)
    container = pool.acquire()
    pool.release(container, True)
    engine.containers[container.id].end(137)  # e.g. the engine restarted, or it was removed by hand
    fresh = pool.acquire()
    assert fresh is not container
    assert eventually(lambda: pool.destroyed == 1)  # destroyed in the background


def test_a_container_that_ends_while_busy_is_not_put_back():
    engine = FakeEngine()
    pool = make_pool(engine)
    container = pool.acquire()
    engine.containers[container.id].end(0)
    pool.release(container, True)  # the caller thought it clean; the stream says otherwise
    assert pool.stats()["idle"] == 0 and container.id in engine.removed


def test_a_failed_start_removes_the_container_and_frees_the_slot():
    engine = FakeEngine()
    budget = WarmBudget(4, 4096 * MiB)
    pool = make_pool(engine, budget, max_size=1)
    engine.fail["start"] = EngineError("the engine answered 500")
    with pytest.raises(EngineError):
        pool.acquire()
    created = next(iter(engine.containers))
    assert created in engine.removed and pool.size == 0 and budget.stats()["containers"] == 0
    assert pool.acquire(timeout=0.1) is not None  # the slot is free again


def test_a_failed_create_gives_its_budget_back():
    engine = FakeEngine()
    budget = WarmBudget(4, 4096 * MiB)
    pool = make_pool(engine, budget)
    engine.fail["create_container"] = EngineError("no space left")
    with pytest.raises(EngineError):
        pool.acquire()
    assert budget.stats()["containers"] == 0 and budget.stats()["memory"] == 0 and pool.size == 0


# -- max_size --------------------------------------------------------------------------------------


def test_at_max_size_an_acquire_waits_for_a_release():
    engine = FakeEngine()
    pool = make_pool(engine, max_size=1)
    held = pool.acquire()
    got: list[WarmContainer] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.1)
    assert got == [] and engine.count("create_container") == 1
    pool.release(held, True)
    waiter.join(5)
    assert got == [held] and engine.count("create_container") == 1


def test_at_max_size_a_destroyed_container_makes_room_for_a_new_one():
    engine = FakeEngine()
    pool = make_pool(engine, max_size=1)
    held = pool.acquire()
    got: list[WarmContainer] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.05)
    pool.release(held, False)
    waiter.join(5)
    assert len(got) == 1 and got[0] is not held and engine.count("create_container") == 2


def test_at_max_size_an_acquire_gives_up_after_its_timeout():
    pool = make_pool(FakeEngine(), max_size=2)
    pool.acquire(), pool.acquire()
    started = time.monotonic()
    with pytest.raises(AttuneContainersError, match="no warm container became free within 0.2 s"):
        pool.acquire(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2


# -- reaping and min_idle --------------------------------------------------------------------------


def idle_pool(engine: FakeEngine, count: int, **policy) -> tuple[Pool, list[WarmContainer]]:
    pool = make_pool(engine, **policy)
    containers = [pool.acquire() for _ in range(count)]
    for c in containers:
        pool.release(c, True)
    return pool, containers


def test_reap_destroys_containers_idle_past_the_timeout_only():
    engine = FakeEngine()
    pool, (old, recent) = idle_pool(engine, 2, idle_timeout=60)
    old.last_used -= 61
    pool.reap()
    assert old.id in engine.removed and recent.id not in engine.removed
    assert pool.idle() == [recent]


def test_reap_keeps_min_idle_containers_however_old_the_most_recent_ones_are():
    engine = FakeEngine()
    pool, containers = idle_pool(engine, 3, idle_timeout=60, min_idle=1)
    for c in containers:
        c.last_used -= 3600
    pool.reap()
    assert pool.idle() == [containers[-1]]  # the most recently released one stays
    assert {c.id for c in containers[:-1]} <= engine.removed


def test_reap_tops_up_to_min_idle():
    engine = FakeEngine()
    pool = make_pool(engine, min_idle=2)
    pool.reap()
    assert len(pool.idle()) == 2 and engine.count("create_container") == 2
    pool.reap()
    assert engine.count("create_container") == 2  # already there: nothing more


def test_reap_replaces_dead_idle_containers_below_min_idle():
    engine = FakeEngine()
    pool, (container,) = idle_pool(engine, 1, min_idle=1)
    engine.containers[container.id].end(137)
    pool.reap()
    assert container.id in engine.removed and len(pool.idle()) == 1 and pool.idle()[0] is not container


def test_prewarm_starts_up_to_count_bounded_by_max_size():
    engine = FakeEngine()
    pool = make_pool(engine, max_size=3)
    assert pool.prewarm(2) == 2 and pool.prewarm(2) == 0
    assert pool.prewarm(10) == 1 and len(pool.idle()) == 3


# -- closing ---------------------------------------------------------------------------------------


def test_close_destroys_idle_and_busy_containers_and_refuses_new_acquires():
    engine = FakeEngine()
    pool, (idle,) = idle_pool(engine, 1)
    busy = pool.acquire(), pool.acquire()
    pool.close()
    assert {idle.id, busy[0].id, busy[1].id} <= engine.removed and engine.live() == []
    with pytest.raises(AttuneContainersError, match="closed"):
        pool.acquire()
    assert pool.prewarm(2) == 0 and pool.size == 0


def test_a_container_busy_at_close_is_destroyed_once_and_its_budget_given_back_once():
    engine = FakeEngine()
    budget = WarmBudget(4, 4096 * MiB)
    pool = make_pool(engine, budget)
    busy = pool.acquire()
    _, reusable = execute(busy)
    pool.close()
    pool.release(busy, reusable)  # the execution in flight at close ends afterwards
    assert engine.count("remove_container") == 1 and pool.destroyed == 1
    assert budget.stats()["containers"] == 0 and budget.stats()["memory"] == 0 and pool.idle() == []


def test_a_container_that_finishes_starting_after_close_is_destroyed_not_kept():
    """The reaper tops up min_idle while the runner closes: the new container must not outlive the pool."""
    engine = FakeEngine()
    budget = WarmBudget(4, 4096 * MiB)
    pool = make_pool(engine, budget, min_idle=1)
    create = engine.create_container

    def create_while_closing(run, **kw):
        container_id = create(run, **kw)
        pool.close()
        return container_id

    engine.create_container = create_while_closing
    assert pool.prewarm(1) == 0
    assert engine.live() == [] and pool.idle() == [] and budget.stats()["containers"] == 0


def test_a_waiter_is_woken_by_close():
    pool = make_pool(FakeEngine(), max_size=1)
    pool.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire(timeout=5)
        except AttuneContainersError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    pool.close()
    waiter.join(2)
    assert not waiter.is_alive() and "closed" in str(errors[0])


def test_a_registry_replaces_a_closed_pool_and_close_stops_everything():
    engine = FakeEngine()
    registry = PoolRegistry(WarmBudget(8, 4096 * MiB))
    key = ("p", "img")
    pool = registry.get(key, lambda: make_pool(engine))
    assert registry.get(key, lambda: make_pool(engine)) is pool
    pool.acquire()
    pool.close()
    assert registry.get(key, lambda: make_pool(engine)) is not pool
    registry.close()
    assert all(p.closed for p in registry.pools()) and engine.live() == []


# -- pool keys -------------------------------------------------------------------------------------


def test_pools_are_keyed_by_every_container_level_limit_and_no_per_execution_one():
    base = pool_key("p", "img", DEFAULT_LIMITS)
    for name in ResourceLimits.CONTAINER_FIELDS:
        changed = {"memory": "512m", "cpus": 2.0, "pids": 256, "nofile": 2048, "network": "bridge", "tmp_size": "128m"}[name]
        assert pool_key("p", "img", limits(**{name: changed})) != base, name
    for name in ResourceLimits.EXECUTION_FIELDS:
        changed = {"timeout": 5, "stdout_limit": 1, "stderr_limit": 1, "result_limit": 2048}[name]
        assert pool_key("p", "img", limits(**{name: changed})) == base, name
    assert pool_key("q", "img", DEFAULT_LIMITS) != base and pool_key("p", "other", DEFAULT_LIMITS) != base


def test_per_execution_limits_apply_to_each_execution_of_a_shared_container():
    """Executions with different timeouts and output caps share one warm container."""
    engine = FakeEngine()
    pool = make_pool(engine)
    container = pool.acquire()
    small = limits(stdout_limit=4, timeout=7)
    result, reusable = execute(container, {"stdout": "0123456789"}, run_limits=small)
    assert result.stdout_truncated and result.stdout.startswith("0123") and reusable
    pool.release(container, reusable)
    again = pool.acquire()
    result, _ = execute(again, {"stdout": "0123456789"})
    assert again is container and result.stdout == "0123456789" and not result.stdout_truncated
    timeouts = [control["timeout"] for control, _ in engine.containers[container.id].requests]
    assert timeouts == [7, DEFAULT_LIMITS.timeout]


# -- the warm budget over all pools ------------------------------------------------------------------


def test_the_budget_caps_containers_over_all_pools_evicting_the_least_recently_used_idle_one():
    engine = FakeEngine()
    budget = WarmBudget(2, 4096 * MiB)
    a, b, c = (make_pool(engine, budget, pack=name) for name in "abc")
    ca, cb = a.acquire(), b.acquire()
    a.release(ca, True)
    b.release(cb, True)
    ca.last_used -= 10  # a's container was used longest ago
    cc = c.acquire()
    assert cc is not None and ca.id in engine.removed and cb.id not in engine.removed
    assert a.idle() == [] and b.idle() == [cb]
    assert budget.stats()["containers"] == 2 and len(engine.live()) == 2


def test_the_budget_caps_memory_over_all_pools():
    engine = FakeEngine()
    budget = WarmBudget(16, 512 * MiB)
    small, big = make_pool(engine, budget, pack="s", memory="256m"), make_pool(engine, budget, pack="b", memory="512m")
    s1, s2 = small.acquire(), small.acquire()
    assert budget.stats()["memory"] == 512 * MiB
    small.release(s1, True)
    small.release(s2, True)
    b1 = big.acquire()  # both small ones go to make room for 512m
    assert b1 is not None and {s1.id, s2.id} <= engine.removed
    assert budget.stats() == {"containers": 1, "memory": 512 * MiB, "max_containers": 16, "max_memory": 512 * MiB}


def test_when_everything_under_the_cap_is_busy_the_execution_runs_cold():
    engine = FakeEngine()
    budget = WarmBudget(1, 4096 * MiB)
    a, b = make_pool(engine, budget, pack="a"), make_pool(engine, budget, pack="b")
    busy = a.acquire()
    started = time.monotonic()
    assert b.acquire() is None and a.acquire() is None  # no waiting: the caller runs it cold
    assert time.monotonic() - started < 0.5
    assert engine.count("create_container") == 1 and busy.id not in engine.removed
    assert budget.stats()["containers"] == 1 and b.size == 0 and a.size == 1
    a.release(busy, True)
    assert b.acquire() is not None and busy.id in engine.removed  # idle now: evicted for b


def test_a_pool_whose_memory_exceeds_the_whole_budget_always_runs_cold():
    engine = FakeEngine()
    budget = WarmBudget(8, 256 * MiB)
    pool = make_pool(engine, budget, memory="512m")
    assert pool.acquire() is None and engine.calls == []


def test_a_zero_budget_means_no_warm_containers():
    engine = FakeEngine()
    pool = make_pool(engine, WarmBudget(0, 4096 * MiB))
    assert pool.acquire() is None and pool.prewarm(2) == 0 and engine.calls == []


def test_topping_up_never_evicts_other_pools_containers():
    engine = FakeEngine()
    budget = WarmBudget(2, 4096 * MiB)
    a, b = make_pool(engine, budget, pack="a"), make_pool(engine, budget, pack="b", min_idle=2)
    a.prewarm(2)
    b.reap()
    assert len(a.idle()) == 2 and b.idle() == [] and engine.count("remove_container") == 0
    assert b.acquire() is not None and len(a.idle()) == 1  # an execution may evict


def test_destroying_gives_the_budget_back():
    engine = FakeEngine()
    budget = WarmBudget(2, 4096 * MiB)
    pool = make_pool(engine, budget, max_executions=1)
    for _ in range(5):
        container = pool.acquire()
        assert container is not None
        _, reusable = execute(container)
        pool.release(container, reusable)
        assert budget.stats()["containers"] == 0 and budget.stats()["memory"] == 0
    assert engine.count("create_container") == 5 and engine.live() == []
