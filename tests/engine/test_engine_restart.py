"""The engine restarting under running actions leaves no container behind. Last of the suite
(marked ``restarts_engine``: tests/conftest.py moves it to the end): it stops and restarts dockerd
itself."""

from __future__ import annotations

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


def restart_engine() -> None:
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=False)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            subprocess.run(["pkill", "-KILL", "-x", "dockerd"], check=False)
        time.sleep(0.2)
    subprocess.run(["bash", str(REPO / "docker" / "engine.sh")], check=True, timeout=120)


@pytest.mark.restarts_engine
def test_runs_interrupted_by_an_engine_restart_leave_nothing_behind(settings):
    if subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode != 0:
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
