"""The runner's choice of path on the in-memory engine (fake_engine.py): warm when it may, the same
container again only after a clean end, cold when the warm budget is all busy or warm is off, and
every container gone afterwards. The image is a stand-in (no build); tests/engine/test_warm.py and
test_runner.py run the same paths on the real engine."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime

import pytest

from attune_containers.core import labels as L
from attune_containers.core.execution import ExecutionStatus, ResourceLimits
from attune_containers.core.spec import EnvironmentInfo
from attune_containers.services import runner as runner_module
from attune_containers.services.runner import ActionRunner
from attune_containers.settings import Settings

from .fake_engine import FakeEngine

POOL_LABEL = L.POOL
EXECUTION_LABEL = L.EXECUTION_ID


class FakeManager:
    """The parts of ContainerDependencyManager the runner uses: every pack's image is ready."""

    def __init__(self, settings: Settings, engine: FakeEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.forgotten: list[str] = []

    def ensure_environment(self, pack_ref: str, spec, *, on_log=None) -> EnvironmentInfo:
        now = datetime.now(UTC)
        return EnvironmentInfo(
            id="sha256:" + "cd" * 32,
            pack_ref=pack_ref,
            image=f"test/{pack_ref}:1",
            runtime_version="3.11.2",
            dependency_hash="0" * 64,
            executable_path="/opt/attune/venv/bin/python",
            created_at=now,
            updated_at=now,
        )

    def image_lock(self, image: str, timeout: float | None = None):
        return contextlib.nullcontext()

    def forget_image(self, image_id: str) -> None:
        self.forgotten.append(image_id)


@pytest.fixture
def packs(tmp_path):
    pack = tmp_path / "packs" / "p"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text("ref: p\n")
    (pack / "actions" / "act.yaml").write_text("entry_point: act.py\n")
    (pack / "actions" / "act.py").write_text("def run(**kwargs):\n    return kwargs\n")
    return tmp_path / "packs"


@pytest.fixture
def make_runner(monkeypatch, tmp_path, packs):
    monkeypatch.chdir(tmp_path)  # no attune-containers.toml of the repository
    monkeypatch.delenv("ATTUNE__CONTAINERS__CONFIG", raising=False)
    monkeypatch.setattr(runner_module, "DEADLINE_GRACE_SECONDS", 0.1)
    monkeypatch.setattr(runner_module, "OOM_POLL_SECONDS", 0.05)
    made: list[ActionRunner] = []

    def make(**settings) -> tuple[ActionRunner, FakeEngine]:
        engine = FakeEngine()
        manager = FakeManager(Settings(state_dir=tmp_path / "state", **settings), engine)
        runner = ActionRunner(packs, manager, sweep=False)
        made.append(runner)
        return runner, engine

    yield make
    for runner in made:
        runner.close()


def test_a_warm_container_serves_one_execution_after_another(make_runner):
    runner, engine = make_runner()
    first = runner.run("p.act", {"result": 1, "stdout": "one"}, {"token": "s3cr3t"})
    second = runner.run("p.act", {"result": 2})
    assert (first.status, first.result, first.stdout) == (ExecutionStatus.succeeded, 1, "one")
    assert (second.status, second.result) == (ExecutionStatus.succeeded, 2)
    (container,) = engine.containers.values()
    assert container.run.labels[POOL_LABEL] == "true" and container.auto_remove
    assert [control["last"] for control, _ in container.requests] == [False, False]
    request = container.requests[0][1]
    assert request["secrets"] == {"token": "s3cr3t"} and request["environment"]["ATTUNE_ACTION_REF"] == "p.act"
    assert "s3cr3t" not in repr(container.run)  # secrets travel on stdin only


@pytest.mark.parametrize(
    ("parameters", "status"),
    [
        ({"dirty": True}, ExecutionStatus.succeeded),
        ({"killed": True, "oom": True}, ExecutionStatus.oom),
        ({"hang": True}, ExecutionStatus.timeout),
        ({"forge": True}, ExecutionStatus.error),
        ({"crash": True}, ExecutionStatus.error),
    ],
)
def test_after_an_unclean_end_the_next_execution_gets_a_new_container(make_runner, parameters, status):
    runner, engine = make_runner()
    result = runner.run("p.act", parameters, limits=ResourceLimits(timeout=0.2))
    assert result.status is status
    after = runner.run("p.act", {"result": "fresh"})
    assert after.result == "fresh" and engine.count("create_container") == 2
    first = next(iter(engine.containers))
    assert first in engine.removed


def test_a_raised_exception_keeps_the_container(make_runner):
    runner, engine = make_runner()
    failed = runner.run("p.act", {"raise": "RuntimeError: boom"})
    assert failed.status is ExecutionStatus.failed and failed.error.type == "RuntimeError"
    assert runner.run("p.act", {}).succeeded and engine.count("create_container") == 1


def test_warm_false_runs_cold_and_the_container_goes(make_runner):
    runner, engine = make_runner()
    result = runner.run("p.act", {"result": "cold"}, warm=False, execution_id="exec-1")
    assert result.result == "cold" and result.succeeded
    (container,) = engine.containers.values()
    assert POOL_LABEL not in container.run.labels and container.run.labels[EXECUTION_LABEL] == "exec-1"
    assert container.requests[0][0]["last"] is True and container.id in engine.removed


def test_when_the_warm_budget_is_all_busy_an_execution_runs_cold_instead_of_waiting(make_runner):
    runner, engine = make_runner(max_warm_containers=1)
    slow: list = []
    thread = threading.Thread(target=lambda: slow.append(runner.run("p.act", {"sleep": 0.5, "result": "warm"})))
    thread.start()
    deadline = time.monotonic() + 2
    while not any(s["busy"] for s in runner.pool_stats()) and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    cold = runner.run("p.act", {"result": "cold"}, limits=ResourceLimits(memory="128m"))  # another pool
    assert time.monotonic() - started < 0.4 and cold.result == "cold"
    thread.join(3)
    assert slow[0].result == "warm"
    warm_ones = [c for c in engine.containers.values() if POOL_LABEL in c.run.labels]
    cold_ones = [c for c in engine.containers.values() if POOL_LABEL not in c.run.labels]
    assert len(warm_ones) == 1 and len(cold_ones) == 1 and cold_ones[0].id in engine.removed


def test_a_cold_container_killed_for_memory_is_oom_from_the_engine_s_event_log(make_runner):
    runner, engine = make_runner()
    result = runner.run("p.act", {"oom_container": True}, warm=False)
    (container,) = engine.containers.values()
    assert result.status is ExecutionStatus.oom and container.id in engine.removed


def test_close_leaves_no_container(make_runner):
    runner, engine = make_runner()
    runner.run("p.act", {})
    runner.prewarm("p", 2)
    assert len(engine.live()) == 2
    runner.close()
    assert engine.live() == [] and engine.existing() == []


@pytest.mark.parametrize(
    "parameters",
    [
        {"result": "x" * 5000},  # refused by the action's own process before it leaves
        {"raw_result": 10_000},  # written straight into the result pipe: refused by the worker (limit + 4 KiB)
    ],
)
def test_a_result_above_the_limit_is_refused_either_way(make_runner, parameters):
    runner, _ = make_runner()
    result = runner.run("p.act", parameters, limits=ResourceLimits(result_limit=1024))
    assert result.status is ExecutionStatus.failed and result.error.type == "ResultTooLarge" and result.result is None
