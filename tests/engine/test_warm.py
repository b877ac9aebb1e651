"""Warm containers against the real engine: the same results as cold runs, every limit still
enforced, a misbehaving container replaced, /tmp emptied, the pool within its bounds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from attune_containers.core import labels as L
from attune_containers.core.execution import ExecutionStatus, ResourceLimits
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner, owner_id

from .test_runner import TRICKY, max_overlap, run_side_by_side

PACKS = Path(__file__).resolve().parent.parent / "packs"


def warm_runner(settings, engine, **policy) -> ActionRunner:
    pool = DEFAULT_POOL.merged(PoolSettings(reuse=True, **policy))
    return ActionRunner(PACKS, ContainerDependencyManager(settings.model_copy(update={"pool": pool}), engine))


@pytest.fixture
def runner(settings, engine):
    runner = warm_runner(settings, engine)
    yield runner
    runner.close()
    assert pool_containers(engine) == [], "closing the runner left a warm container"


def pool_containers(engine) -> list[str]:
    """This process's warm containers (other test runs may share the engine)."""
    return sorted(c.id for c in engine.list_containers({L.RUN: "true", L.POOL: "true", L.OWNER: owner_id()}))


def comparable(result) -> dict:
    # What differs by nature between runs: the id, the timings, and which path ran it.
    return result.model_dump(exclude={"execution_id", "duration_ms", "started_at", "finished_at", "queued_ms", "warm"})


@pytest.mark.parametrize(
    ("action_ref", "parameters"),
    [
        ("probe.echo", TRICKY),
        ("probe.chatty", {"lines": 3}),
        ("probe.script", {"n": 4}),
        ("probe.fail", {"message": "same"}),
        ("probe.named", {"name": "w"}),
        ("probe.exit137", {}),
    ],
)
def test_warm_results_equal_cold_results(runner, action_ref, parameters):
    cold = runner.run(action_ref, parameters, warm=False)
    warm = runner.run(action_ref, parameters, warm=True)
    again = runner.run(action_ref, parameters, warm=True)
    if cold.error is not None and cold.error.traceback:  # tracebacks name the same file either way
        assert warm.error.traceback == cold.error.traceback
    assert comparable(warm) == comparable(cold) == comparable(again)


def test_a_container_is_reused_and_tmp_is_emptied_between_executions(runner, engine):
    first = runner.run("probe.tmpcheck", {"marker": "one"})
    containers = pool_containers(engine)
    second = runner.run("probe.tmpcheck", {"marker": "two"})
    assert first.result["found"] == [] and second.result["found"] == []
    assert pool_containers(engine) == containers and len(containers) == 1
    (stats,) = runner.pool_stats()
    assert stats["created"] == 1 and stats["destroyed"] == 0
    assert first.result["pid"] != second.result["pid"]  # a fresh process each time


def replaced(runner, engine, action_ref, parameters=None, **kw):
    runner.run("probe.echo", {"warm": "up"}, **{k: v for k, v in kw.items() if k == "limits"})
    before = pool_containers(engine)
    result = runner.run(action_ref, parameters, **kw)
    after_failure = pool_containers(engine)
    follow_up = runner.run("probe.echo", {"still": "works"}, **{k: v for k, v in kw.items() if k == "limits"})
    assert follow_up.status is ExecutionStatus.succeeded and follow_up.result == {"still": "works"}
    assert not set(before) & set(pool_containers(engine)), "the misbehaving container was reused"
    return result, before, after_failure


def test_timeout_destroys_and_replaces_the_container(runner, engine):
    started = time.monotonic()
    result, before, after = replaced(runner, engine, "probe.spin", limits=ResourceLimits(timeout=2))
    assert result.status is ExecutionStatus.timeout and 2000 <= result.duration_ms < 3500
    assert after == [] and time.monotonic() - started < 30


def test_oom_destroys_and_replaces_the_container(runner, engine):
    result, _, _ = replaced(runner, engine, "probe.hog", {"megabytes": 1024}, limits=ResourceLimits(memory="128m"))
    assert result.status is ExecutionStatus.oom, (result.status, result.error)


def test_fork_bomb_is_contained_and_the_container_replaced(runner, engine):
    result, _, _ = replaced(runner, engine, "probe.forkbomb", {"seconds": 3}, limits=ResourceLimits(pids=64, timeout=30))
    assert result.status is ExecutionStatus.succeeded and result.result["fork_failures"] > 0


def test_a_process_left_running_means_no_reuse(runner, engine):
    result, _, _ = replaced(runner, engine, "probe.background")
    assert result.status is ExecutionStatus.succeeded


def test_limits_hold_in_warm_containers(runner, monkeypatch):
    monkeypatch.setenv("ATTUNE_DB_URL", "postgres://worker:hunter2@db/attune")
    writes = runner.run("probe.writer").result
    assert writes.pop("/tmp/ok.txt") == "written" and writes.pop("uid") != 0
    assert set(writes.values()) <= {"OSError", "PermissionError"}
    assert runner.run("probe.network").result["connected"] is False
    env = runner.run("probe.env", execution_id="warm-1").result
    assert "ATTUNE_DB_URL" not in env and env["ATTUNE_EXECUTION_ID"] == "warm-1"
    env2 = runner.run("probe.env", execution_id="warm-2", environment={"ONLY_ONCE": "1"}).result
    assert env2["ATTUNE_EXECUTION_ID"] == "warm-2" and env2["ONLY_ONCE"] == "1"
    assert "ONLY_ONCE" not in runner.run("probe.env", execution_id="warm-3").result


def test_the_pool_respects_its_size_bound(settings, engine):
    runner = warm_runner(settings, engine, max_size=2)
    try:
        results = run_side_by_side(runner, 5)
        assert len(results) == 5 and all(r.status is ExecutionStatus.succeeded for r in results)
        assert max_overlap(results) == 2
        (stats,) = runner.pool_stats()
        assert stats["created"] == 2 and len(pool_containers(engine)) == 2
    finally:
        runner.close()


def test_idle_containers_go_after_the_idle_timeout_down_to_min_idle(settings, engine):
    runner = warm_runner(settings, engine, idle_timeout=1, min_idle=1, max_size=3)
    try:
        threads = [threading.Thread(target=runner.run, args=("probe.sleep", {"seconds": 1})) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(pool_containers(engine)) == 3
        deadline = time.monotonic() + 15
        while len(pool_containers(engine)) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(pool_containers(engine)) == 1
    finally:
        runner.close()


def test_prewarm_and_the_execution_budget(settings, engine):
    runner = warm_runner(settings, engine, min_idle=2, max_executions=2)
    try:
        assert runner.prewarm("probe") == 2
        assert len(pool_containers(engine)) == 2
        for i in range(3):
            assert runner.run("probe.echo", {"i": i}).result == {"i": i}
        (stats,) = runner.pool_stats()
        assert stats["destroyed"] >= 1  # a container that served 2 executions was replaced
    finally:
        runner.close()


def test_reuse_can_be_switched_off_per_pack(settings, engine, tmp_path):
    tree = tmp_path / "packs"
    pack = tree / "nowarm"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        yaml.safe_dump(
            {"ref": "nowarm", "meta": {"python_dependencies": {"min_version": "3.13"}, "container_pool": {"reuse": False}}}
        )
    )
    (pack / "actions" / "echo.yaml").write_text("name: echo\nrunner_type: python\nentry_point: echo.py\n")
    (pack / "actions" / "echo.py").write_text("def run(**kw):\n    return kw\n")
    pool = DEFAULT_POOL.merged(PoolSettings(reuse=True))
    runner = ActionRunner(tree, ContainerDependencyManager(settings.model_copy(update={"pool": pool}), engine))
    try:
        assert runner.run("nowarm.echo", {"a": 1}).result == {"a": 1}
        assert runner.pool_stats() == [] and pool_containers(engine) == []
    finally:
        runner.close()


def test_warm_containers_stay_within_the_runners_budget_least_recently_used_go_first(settings, engine):
    # Callers varying their limits make one pool each; the budget caps them all together.
    runner = ActionRunner(
        PACKS,
        ContainerDependencyManager(
            settings.model_copy(
                update={"pool": DEFAULT_POOL.merged(PoolSettings(reuse=True)), "max_warm_containers": 2, "max_warm_memory": "1g"}
            ),
            engine,
        ),
    )
    try:
        for memory in ("100m", "110m", "120m", "130m", "140m"):
            result = runner.run("probe.echo", {"m": memory}, limits=ResourceLimits(memory=memory))
            assert result.status is ExecutionStatus.succeeded and result.result == {"m": memory}
            assert len(pool_containers(engine)) <= 2
        assert len(pool_containers(engine)) == 2
        assert runner.pools.budget.stats()["containers"] == 2
        # The two most recently used pools kept their containers.
        idle = sorted((s["memory"], s["idle"]) for s in runner.pool_stats())
        assert [m for m, n in idle if n] == ["130m", "140m"], idle
    finally:
        runner.close()
    assert pool_containers(engine) == []


def test_memory_budget_runs_executions_cold_when_the_warm_ones_are_busy(settings, engine):
    runner = ActionRunner(
        PACKS,
        ContainerDependencyManager(
            settings.model_copy(
                update={
                    "pool": DEFAULT_POOL.merged(PoolSettings(reuse=True, max_size=4)),
                    "max_warm_containers": 4,
                    "max_warm_memory": "300m",
                }
            ),
            engine,
        ),
    )
    try:
        results = run_side_by_side(runner, 3)  # three sleeping executions at once, 256m each
        assert all(r.status is ExecutionStatus.succeeded for r in results)
        assert len(pool_containers(engine)) == 1  # only one 256m container fits; the others ran cold
        assert runner.pools.budget.stats()["memory"] <= 300 * 1024 * 1024
    finally:
        runner.close()
