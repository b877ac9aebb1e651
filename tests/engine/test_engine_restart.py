"""The engine restarting under running actions leaves no container behind. Last of the suite
(marked ``restarts_engine``: tests/conftest.py moves it to the end): it stops and restarts dockerd
itself."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.execution import ExecutionStatus
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.engine import Engine
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner, owner_id

REPO = Path(__file__).resolve().parents[2]
PACKS = REPO / "tests" / "packs"


ENGINE_PID_FILE = Path("/var/run/docker.pid")


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def restart_engine() -> None:
    # The engine the tests use, by its pid file: never another dockerd on this host (a test's
    # second engine, someone else's), and never a name that a zombie matches forever.
    pid = int(ENGINE_PID_FILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    subprocess.run(["bash", str(REPO / "docker" / "engine.sh")], check=True, timeout=120)


@pytest.mark.restarts_engine
def test_runs_interrupted_by_an_engine_restart_leave_nothing_behind(settings):
    if not ENGINE_PID_FILE.exists() or not running(int(ENGINE_PID_FILE.read_text().strip() or 0)):
        pytest.skip("the engine is not a local dockerd this test may restart")
    engine = Engine()
    pool = DEFAULT_POOL.merged(PoolSettings(reuse=True, min_idle=1))
    runner = ActionRunner(PACKS, ContainerDependencyManager(settings.model_copy(update={"pool": pool}), engine))
    results: dict[str, object] = {}
    try:
        runner.prewarm("probe", 2)
        cold = threading.Thread(target=lambda: results.setdefault("cold", runner.run("probe.sleep", {"seconds": 60}, warm=False)))
        warm = threading.Thread(target=lambda: results.setdefault("warm", runner.run("probe.sleep", {"seconds": 60}, warm=True)))
        cold.start()
        warm.start()
        deadline = time.monotonic() + 60
        while len(engine.list_containers({L.RUN: "true", L.OWNER: owner_id()})) < 3:
            assert time.monotonic() < deadline, "the runs never started"
            time.sleep(0.1)
        restart_engine()
        cold.join(timeout=120)
        warm.join(timeout=120)
        for path in ("cold", "warm"):
            result = results[path]
            assert result.status is ExecutionStatus.error, (path, result.status)
            assert "engine" in result.error.message.lower() or result.error.type in ("EngineUnavailable", "NoResult")
        # The runner goes on working once the engine is back.
        assert runner.run("probe.echo", {"after": "restart"}, warm=True).result == {"after": "restart"}
    finally:
        runner.close()
    deadline = time.monotonic() + 10
    while engine.list_containers({L.RUN: "true", L.OWNER: owner_id()}):
        assert time.monotonic() < deadline, "containers were left behind by the restart"
        time.sleep(0.2)
