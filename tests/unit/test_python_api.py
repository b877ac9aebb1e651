"""The Python API as a worker imports it: the runner, its results and statuses at the top level,
documented and typed; the runner as a context manager that closes what it started."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import attune_containers
from attune_containers.core.execution import ExecutionStatus
from attune_containers.services.runner import ActionRunner
from attune_containers.settings import Settings

from .fake_engine import FakeEngine
from .test_runner_paths import FakeManager, packs  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_needs_only_top_level_names():
    for name in (
        "ActionRunner",
        "ExecutionResult",
        "ExecutionStatus",
        "ExecutionError",
        "ResourceLimits",
        "EngineUnavailableError",
        "NotFoundError",
        "InvalidSpecError",
    ):
        assert name in attune_containers.__all__ and name in dir(attune_containers), name
    for name in attune_containers.__all__:
        value = getattr(attune_containers, name)
        assert name == "__version__" or (value.__doc__ or "").strip(), f"{name} has no docstring"
    assert attune_containers.ActionRunner is ActionRunner


def test_importing_the_package_stays_light():
    # The names are lazy: `import attune_containers` must not pull in the Docker SDK.
    code = "import sys, attune_containers; print('docker' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_py_typed_ships_with_the_package():
    assert (ROOT / "attune_containers" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["attune_containers"]


def test_the_runner_as_a_context_manager_closes_its_warm_containers(packs, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTUNE__CONTAINERS__CONFIG", raising=False)
    engine = FakeEngine()
    with ActionRunner(packs, FakeManager(Settings(state_dir=tmp_path / "state"), engine), sweep=False) as runner:
        result = runner.run("p.act", {"result": 1})
        assert result.status is ExecutionStatus.succeeded
        (container,) = engine.containers
        assert container not in engine.removed  # warm: kept for the next execution
    assert container in engine.removed
