"""Hostile actions against the real engine: an execution must not reach the runner loop, the
worker's stream, or anything a later execution (another caller) sees. Each test runs an action
that tries to cross the line (tests/packs/probe/actions/{takeover,memscan,leave_state}.py), then
checks the next caller gets exactly its own answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.execution import ExecutionStatus, ResourceLimits
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner

from .test_hostile_builds import hostile, index, make_wheel  # noqa: F401 - fixtures used below
from .test_warm import PACKS, pool_containers, warm_runner


@pytest.fixture
def runner(settings, engine):
    runner = warm_runner(settings, engine, max_size=1)
    yield runner
    runner.close()


def canary() -> str:
    return "CANARY" + uuid.uuid4().hex


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_an_action_reaches_neither_the_loop_nor_the_stream_and_the_next_caller_gets_its_own_answer(runner, engine, warm):
    runner.run("probe.echo", {"warm": "up"}, warm=warm)
    before = pool_containers(engine)
    attack = runner.run("probe.takeover", warm=warm)
    assert attack.status is ExecutionStatus.succeeded, attack
    assert attack.result["reached"] == [], attack.result["reached"]
    assert attack.result["uid"] != attack.result["parent_uid"]  # the loop runs as another uid
    # Only a warm container's zygote (uid 65533, which ignores signals) may be signalled at all.
    assert set(attack.result["signalable_uids"]) <= {65533}
    assert attack.result != "forged"
    assert "forged" in attack.stdout  # frames printed by the action are only its output

    secret = canary()
    after = runner.run("probe.secret", {}, {"token": secret}, warm=warm)
    assert after.status is ExecutionStatus.succeeded and after.result["token_length"] == len(secret)
    nxt = runner.run("probe.echo", {"caller": "two", "n": 2}, warm=warm)
    assert nxt.status is ExecutionStatus.succeeded and nxt.result == {"caller": "two", "n": 2}
    if warm:
        # It left a process behind: its container was destroyed, never reused.
        assert before and not set(before) & set(pool_containers(engine))


def test_a_later_execution_finds_no_trace_of_an_earlier_request_in_its_memory(runner, engine):
    first_secret, first_param = canary(), canary()
    remembered = runner.run("probe.memscan", {"remember": first_param}, {"canary": first_secret})
    assert remembered.status is ExecutionStatus.succeeded and first_secret in remembered.stdout
    containers = pool_containers(engine)
    own = canary()
    scan = runner.run("probe.memscan", {}, {"canary": own})
    assert scan.status is ExecutionStatus.succeeded, scan
    assert pool_containers(engine) == containers, "the scan must run in the same warm container"
    assert scan.result["own_found"] is True  # the scan does see what this execution holds
    assert scan.result["foreign"] == []
    assert all(isinstance(v, str) for v in scan.result["other_processes"].values()), (
        "the loop's and init's memory must not be readable"
    )


def test_no_state_of_any_kind_survives_into_the_next_execution(runner, engine):
    left = runner.run("probe.leave_state", {"marker": "one"})
    assert left.status is ExecutionStatus.succeeded, left
    assert {"sysv shm", "sysv msg", "sysv sem", "posix mq"} <= set(left.result["left"])
    assert any(p.startswith("/dev/shm/") for p in left.result["left"])
    assert any(p.startswith("/tmp/") for p in left.result["left"])
    containers = pool_containers(engine)
    found = runner.run("probe.find_state")
    assert found.status is ExecutionStatus.succeeded, found
    assert found.result == {"found": [], "tmp": [], "shm": []}
    # Cleared, not merely discarded: the same container served both (state can be wiped safely).
    assert pool_containers(engine) == containers


def test_the_deadline_holds_when_the_caller_is_killed(settings, engine, tmp_path):
    execution_id = "killed-" + uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": settings.image_prefix,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
    }
    cli = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "attune-containers"),
            "run",
            "--packs-dir",
            str(PACKS),
            "probe.sleep",
            "--params",
            '{"seconds": 600}',
            "--timeout",
            "4",
            "--execution-id",
            execution_id,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        container = None
        deadline = time.monotonic() + 120
        while container is None and time.monotonic() < deadline:
            for summary in engine.list_containers({L.RUN: "true", L.EXECUTION_ID: execution_id}):
                if summary.status == "running":
                    container = summary.id
            time.sleep(0.2)
        assert container is not None, "the action's container never started"
        killed_at = time.monotonic()
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        while engine.inspect_container(container) is not None and time.monotonic() - killed_at < 30:
            time.sleep(0.2)
        assert engine.inspect_container(container) is None, "the container outlived its deadline"
        assert time.monotonic() - killed_at < 12
    finally:
        if cli.poll() is None:
            cli.kill()


def test_a_timed_out_execution_is_ended_by_the_loop_itself(runner, engine):
    result = runner.run("probe.spin", limits=ResourceLimits(timeout=2))
    assert result.status is ExecutionStatus.timeout
    # The loop ended it at its deadline; the worker's later deadline (the grace) was not needed.
    assert 2000 <= result.duration_ms < 2000 + 1500


@pytest.mark.parametrize("stop", [False, True], ids=["ignored", "stopped"])
def test_signals_to_the_zygote_are_ignored_or_end_its_container(runner, engine, stop):
    first = runner.run("probe.echo", {"n": 1})
    containers = pool_containers(engine)
    attack = runner.run("probe.signal_all", {"stop": stop})
    assert attack.status is ExecutionStatus.succeeded and attack.result["sent"] >= (1 if stop else 0)
    for n in (2, 3):
        after = runner.run("probe.echo", {"n": n})
        assert after.status is ExecutionStatus.succeeded and after.result == {"n": n}, after
    if stop:  # a stopped zygote is found out after the execution: its container goes
        assert not set(containers) & set(pool_containers(engine))
    else:
        assert pool_containers(engine) == containers
    assert first.result == {"n": 1}


def test_a_library_changed_by_one_execution_is_pristine_in_the_next(runner, engine):
    first = runner.run("probe.mutate", {"mark": "one"})
    containers = pool_containers(engine)
    second = runner.run("probe.mutate", {"mark": "two"})
    assert first.status is ExecutionStatus.succeeded and second.status is ExecutionStatus.succeeded, second
    assert pool_containers(engine) == containers  # the same warm container, forked from its zygote
    assert first.result["seen"] is None and second.result["seen"] is None
    assert second.result["precision_before"] == 28  # not the 3 the first execution set
    assert second.result["preloaded"] is True
    (stats,) = runner.pool_stats()
    assert stats["preload"] == "zygote"


def test_a_library_that_fails_to_preload_fails_no_execution(settings, engine, tmp_path):
    pack = tmp_path / "packs" / "badlib"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        "ref: badlib\nmeta:\n  python_dependencies:\n    min_version: '3.13'\n"
        "  container_pool:\n    preload: [no_such_library_zz, json]\n"
    )
    (pack / "actions" / "uses.py").write_text("import no_such_library_zz\n\ndef run():\n    return 1\n")
    (pack / "actions" / "plain.py").write_text("import json\n\ndef run():\n    return json.dumps([1])\n")
    for name in ("uses", "plain"):
        (pack / "actions" / f"{name}.yaml").write_text(f"name: {name}\nrunner_type: python\nentry_point: {name}.py\n")
    runner = ActionRunner(
        tmp_path / "packs",
        ContainerDependencyManager(settings.model_copy(update={"pool": DEFAULT_POOL.merged(PoolSettings(reuse=True))}), engine),
    )
    try:
        assert runner.run("badlib.plain").result == "[1]"
        warm = runner.run("badlib.uses")
        cold = runner.run("badlib.uses", warm=False)
        assert warm.status is ExecutionStatus.failed and warm.error.type == "ModuleNotFoundError"
        assert warm.error.model_dump(exclude={"traceback"}) == cold.error.model_dump(exclude={"traceback"})
        assert runner.run("badlib.plain").result == "[1]"
        (stats,) = runner.pool_stats()
        assert stats["preload"] == "zygote"
    finally:
        runner.close()


def test_a_library_whose_import_starts_a_thread_is_imported_per_execution_instead(hostile, index, engine, tmp_path):  # noqa: F811 - the fixtures imported above
    # A daemon thread in the zygote would make every fork unsafe: the loop must notice and fall back.
    filename, data = make_wheel(
        "threadlib",
        "1.0",
        {
            "threadlib.py": (
                "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\nVALUE = 42\n"
            )
        },
    )
    index.add("threadlib", filename, data)
    pack = tmp_path / "packs" / "threaded"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        "ref: threaded\nmeta:\n  python_dependencies:\n    dependencies: ['threadlib==1.0']\n    min_version: '3.13'\n"
    )
    (pack / "actions" / "use.py").write_text(
        "import threading\nimport threadlib\n\ndef run():\n"
        "    return {'value': threadlib.VALUE, 'threads': threading.active_count()}\n"
    )
    (pack / "actions" / "use.yaml").write_text("name: use\nrunner_type: python\nentry_point: use.py\n")
    runner = ActionRunner(
        tmp_path / "packs",
        ContainerDependencyManager(hostile.model_copy(update={"pool": DEFAULT_POOL.merged(PoolSettings(reuse=True))}), engine),
    )
    try:
        first, second = runner.run("threaded.use"), runner.run("threaded.use")
        assert first.status is ExecutionStatus.succeeded, first
        assert first.result == second.result == {"value": 42, "threads": 2}
        (stats,) = runner.pool_stats()
        assert stats["preload"].startswith("per-execution") and "thread" in stats["preload"]
        assert stats["created"] == 1  # still warm: the container is reused, only the zygote is off
    finally:
        runner.close()
