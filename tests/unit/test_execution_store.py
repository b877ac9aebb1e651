"""The service's store of executions: idempotency by id and request, bounds by count and age."""

from __future__ import annotations

import pytest

from attune_containers.core.execution import ExecutionError, ExecutionResult, ExecutionStatus
from attune_containers.errors import ExecutionConflictError
from attune_containers.services.executions import ExecutionState, ExecutionStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def result(execution_id: str, status: ExecutionStatus = ExecutionStatus.succeeded) -> ExecutionResult:
    return ExecutionResult(execution_id=execution_id, action_ref="probe.echo", status=status)


def request(**parameters) -> dict:
    return {"action_ref": "probe.echo", "parameters": parameters, "secrets": {"token": "s3cr3t"}}


def test_the_same_id_and_request_is_the_same_execution():
    store = ExecutionStore()
    first, new = store.claim("e-1", "probe.echo", store.fingerprint(request(x=1)))
    assert new and first.execution.state is ExecutionState.queued
    again, new = store.claim("e-1", "probe.echo", store.fingerprint({**request(x=1), "execution_id": "e-1"}))
    assert again is first and not new


def test_a_different_request_under_a_used_id_is_a_conflict_live_or_finished():
    store = ExecutionStore()
    store.claim("e-1", "probe.echo", store.fingerprint(request(x=1)))
    with pytest.raises(ExecutionConflictError):
        store.claim("e-1", "probe.echo", store.fingerprint(request(x=2)))
    store.finish("e-1", result("e-1"))
    with pytest.raises(ExecutionConflictError):
        store.claim("e-1", "probe.echo", store.fingerprint(request(x=2)))


def test_secrets_count_but_are_not_kept():
    store = ExecutionStore()
    a = store.fingerprint(request(x=1))
    assert a != store.fingerprint({**request(x=1), "secrets": {"token": "other"}})
    assert "s3cr3t" not in a
    assert a != ExecutionStore().fingerprint(request(x=1)), "keyed per process: not a plain hash"


def test_states_move_queued_running_finished():
    store = ExecutionStore()
    record, _ = store.claim("e-1", "probe.echo", "f")
    store.started("e-1")
    assert record.execution.state is ExecutionState.running and record.execution.started_at is not None
    store.finish("e-1", result("e-1", ExecutionStatus.cancelled))
    got = store.get("e-1").execution
    assert got.state is ExecutionState.finished and got.status is ExecutionStatus.cancelled
    assert got.result.status is ExecutionStatus.cancelled and got.finished_at is not None
    assert store.counts() == {"queued": 0, "running": 0, "finished": 1}


def test_a_discarded_execution_frees_its_id():
    store = ExecutionStore()
    store.claim("e-1", "probe.echo", "f")
    store.discard("e-1")
    assert store.get("e-1") is None
    assert store.claim("e-1", "probe.echo", "g")[1] is True


def test_finished_executions_are_bounded_by_count_oldest_first():
    store = ExecutionStore(max_finished=3)
    for i in range(5):
        store.claim(f"e-{i}", "probe.echo", "f")
        store.finish(f"e-{i}", result(f"e-{i}"))
    assert [store.get(f"e-{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_finished_executions_are_bounded_by_age_live_ones_are_not():
    clock = Clock()
    store = ExecutionStore(ttl=60, timer=clock)
    store.claim("done", "probe.echo", "f")
    store.finish("done", result("done"))
    store.claim("running", "probe.echo", "f")
    clock.now = 61
    assert store.get("done") is None
    assert store.get("running") is not None
    # an expired id is free again
    assert store.claim("done", "probe.echo", "other")[1] is True


def test_an_execution_that_never_reached_the_engine_may_be_retried_under_its_id():
    store = ExecutionStore()
    store.claim("e-1", "probe.echo", "f")
    failed = result("e-1", ExecutionStatus.error)
    failed.error = ExecutionError(type="EngineUnavailable", message="the Docker engine does not answer")
    store.finish("e-1", failed)
    record, new = store.claim("e-1", "probe.echo", "f")
    assert new and record.execution.state is ExecutionState.queued
