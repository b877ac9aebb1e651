"""Actions in their pack's image, against the real engine: the calling convention, isolation and
every limit, each decided by the engine, not by us."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.execution import ExecutionStatus, ResourceLimits
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.engine import ContainerRecord
from attune_containers.errors import InvalidSpecError
from attune_containers.services.runner import ActionRunner, owner_id

from ..support import TEST_PREFIX

PACKS = Path(__file__).resolve().parent.parent / "packs"


def cold(settings):
    """These tests are about the cold path (a fresh container per run); test_warm.py has the warm one."""
    return settings.model_copy(update={"pool": DEFAULT_POOL.merged(PoolSettings(reuse=False))})


@pytest.fixture(scope="module")
def runner(settings, engine):
    from attune_containers.services.manager import ContainerDependencyManager

    return ActionRunner(PACKS, ContainerDependencyManager(cold(settings), engine))


def containers_of(engine, **labels) -> list[ContainerRecord]:
    return engine.list_containers({L.RUN: "true", **labels})


def gone_soon(engine, timeout: float = 3.0, **labels) -> bool:
    """Cold containers are removed by the engine as they exit (auto-remove, as docker run --rm):
    allow it the moment it takes."""
    deadline = time.monotonic() + timeout
    while containers_of(engine, **labels):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(autouse=True)
def _no_container_left(engine):
    yield
    # This process's own containers (other test runs may share the engine).
    assert gone_soon(engine, **{L.OWNER: owner_id()}), "a run container was left behind"


TRICKY = {
    "quotes": 'it\'s "quoted" and `backticked` $(not run) ${NOR_THIS}',
    "backslashes": "C:\\path\\to\\file \\n not a newline \\\\",
    "newlines": "line one\nline two\r\nline three\n",
    "unicode": "héllo wörld ✓ 日本語 🎉 \u0000 nul",
    "nested": {"list": [1, 2.5, None, True, {"k": "v"}], "empty": {}},
    "big": "z" * 100_000,
}


def test_parameters_arrive_intact(runner):
    result = runner.run("probe.echo", TRICKY)
    assert result.status is ExecutionStatus.succeeded, result.error
    assert result.result == TRICKY
    assert result.exit_code == 0 and result.image.startswith(TEST_PREFIX + "/")


def test_printing_does_not_corrupt_the_result(runner):
    result = runner.run("probe.chatty", {"lines": 5})
    assert result.status is ExecutionStatus.succeeded, result.error
    assert result.result == {"ok": True}
    assert result.stdout.count('"result": "forged"') == 5
    assert "from a child process" in result.stdout
    assert "garbage that looks like a frame header" in result.stdout
    assert "line 4" in result.stderr


def test_two_packs_pinning_one_library_each_see_their_own(runner):
    old = runner.run("pins_old.six_version")
    new = runner.run("pins_new.six_version")
    assert (old.result, new.result) == ("1.16.0", "1.17.0"), (old.error, new.error)
    assert old.image != new.image


def test_memory_hog_is_reported_as_oom(runner):
    result = runner.run("probe.hog", {"megabytes": 1024}, limits=ResourceLimits(memory="128m"))
    assert result.status is ExecutionStatus.oom, (result.status, result.error, result.stderr[-500:])
    assert result.exit_code == 137
    assert "128m" in result.error.message


def test_a_clean_exit_137_is_not_taken_for_oom(runner):
    # Exit code 137 alone is not proof of OOM: the engine's OOMKilled state decides.
    result = runner.run("probe.exit137")
    assert result.exit_code == 137
    assert result.status is ExecutionStatus.failed, (result.status, result.error)


def test_infinite_loop_times_out_and_its_container_goes(runner, engine):
    started = time.monotonic()
    result = runner.run("probe.spin", limits=ResourceLimits(timeout=2))
    returned_after = time.monotonic() - started
    assert result.status is ExecutionStatus.timeout
    assert "2 s" in result.error.message
    assert 2000 <= result.duration_ms < 3500
    assert gone_soon(engine, timeout=1.0, **{L.EXECUTION_ID: result.execution_id})
    # Container creation and start take a few hundred ms before the clock starts; removal follows the kill.
    assert returned_after < 2 + 2.5


def test_fork_bomb_is_contained_and_the_host_stays_responsive(runner, engine):
    outcome: dict = {}

    def bomb() -> None:
        outcome["result"] = runner.run("probe.forkbomb", {"seconds": 6}, limits=ResourceLimits(pids=64, timeout=20))

    thread = threading.Thread(target=bomb)
    thread.start()
    peak, host_latencies = 0, []
    try:
        time.sleep(1.5)
        while thread.is_alive():
            for summary in containers_of(engine, **{L.ACTION_REF: "probe.forkbomb"}):
                try:
                    stats = engine.api.stats(summary.id, stream=False)
                except Exception:  # noqa: BLE001 - the container may end between list and stats
                    continue
                peak = max(peak, stats.get("pids_stats", {}).get("current", 0))
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
            host_latencies.append(time.monotonic() - t)
            time.sleep(0.2)
    finally:
        thread.join(timeout=60)
    result = outcome["result"]
    assert result.status is ExecutionStatus.succeeded, (result.status, result.error)
    assert result.result["fork_failures"] > 0
    assert 0 < peak <= 64
    assert host_latencies and max(host_latencies) < 5


def test_network_is_off_by_default_and_can_be_asked_for(runner, settings, engine):
    off = runner.run("probe.network")
    assert off.status is ExecutionStatus.succeeded and off.result["connected"] is False, off.result
    # Only from the operator's allow-list (empty by default): a request alone cannot turn it on.
    with pytest.raises(InvalidSpecError) as refused:
        runner.run("probe.network", limits=ResourceLimits(network="bridge"))
    assert refused.value.field == "limits.network"
    from attune_containers.services.manager import ContainerDependencyManager

    allowing = cold(settings).model_copy(update={"allowed_networks": ["bridge"]})
    allowed = ActionRunner(PACKS, ContainerDependencyManager(allowing, engine), sweep=False)
    try:
        on = allowed.run("probe.network", limits=ResourceLimits(network="bridge"))
    finally:
        allowed.close()
    assert on.result["connected"] is True, on.result
    with pytest.raises(ValueError):
        ResourceLimits(network="host")


def test_only_tmp_is_writable_and_the_user_is_not_root(runner):
    result = runner.run("probe.writer")
    assert result.status is ExecutionStatus.succeeded, result.error
    outcome = result.result
    assert outcome.pop("/tmp/ok.txt") == "written"
    assert outcome.pop("uid") != 0
    assert set(outcome.values()) <= {"OSError", "PermissionError"}, outcome


def test_the_workers_environment_does_not_leak(runner, monkeypatch):
    monkeypatch.setenv("ATTUNE_DB_URL", "postgres://worker:hunter2@db/attune")
    result = runner.run("probe.env", environment={"EXTRA": "given"}, execution_id="exec-123")
    env = result.result
    assert "ATTUNE_DB_URL" not in env and "hunter2" not in json.dumps(env)
    assert env["ATTUNE_EXECUTION_ID"] == "exec-123"
    assert env["ATTUNE_ACTION_REF"] == "probe.env" and env["ATTUNE_PACK_REF"] == "probe"
    assert env["EXTRA"] == "given"
    assert env["PATH"].startswith("/opt/attune/venv/bin")
    assert not [
        k for k in env if k.startswith("ATTUNE_") and k not in ("ATTUNE_EXECUTION_ID", "ATTUNE_ACTION_REF", "ATTUNE_PACK_REF")
    ]


def test_secrets_reach_the_helper_but_never_docker_inspect(runner, engine):
    secret = "s3cr3t-\u00e9\"'\\n"
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", runner.run("probe.secret", {"hold": 3}, {"token": secret}))
    )
    thread.start()
    inspected = []
    deadline = time.monotonic() + 30
    while not inspected and time.monotonic() < deadline:
        for summary in containers_of(engine, **{L.ACTION_REF: "probe.secret"}):
            inspected.append(json.dumps(engine.api.inspect_container(summary.id)))
        time.sleep(0.1)
    thread.join(timeout=60)
    assert inspected, "never saw the running container"
    assert "s3cr3t" not in inspected[0]
    result = outcome["result"]
    assert result.result == {"token_length": len(secret), "token_matches": True, "in_environment": False}
    assert "s3cr3t" not in result.model_dump_json()


def test_output_floods_are_capped_and_the_worker_stays_small(runner):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = runner.run(
        "probe.flood", {"megabytes": 64}, limits=ResourceLimits(stdout_limit=1024 * 1024, stderr_limit=512 * 1024)
    )
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.status is ExecutionStatus.succeeded, result.error
    assert result.result == {"wrote_megabytes": 64}
    assert result.stdout_truncated and result.stderr_truncated
    assert result.stdout.startswith("y" * 1024 * 1024) and "[OUTPUT TRUNCATED:" in result.stdout
    assert len(result.stderr.encode()) < 512 * 1024 + 200
    assert growth_mib < 48, f"the worker grew by {growth_mib:.0f} MiB for 128 MiB of output"


def test_results_above_the_cap_are_refused(runner):
    result = runner.run("probe.bigresult", {"size": 2 * 1024 * 1024})
    assert result.status is ExecutionStatus.failed
    assert result.error.type == "ResultTooLarge" and "limit" in result.error.message


def test_script_style_actions_read_stdin_and_print_json(runner):
    result = runner.run("probe.script", {"n": 21})
    assert result.status is ExecutionStatus.succeeded, (result.error, result.stderr)
    assert result.result == {"doubled": 42}
    assert "some log line" in result.stdout


def test_exceptions_become_structured_errors(runner):
    result = runner.run("probe.fail", {"message": "it broke"})
    assert result.status is ExecutionStatus.failed and result.exit_code == 1
    assert result.error.type == "ValueError" and result.error.message == "it broke"
    assert "fail.py" in result.error.traceback


def test_entry_point_function_is_called(runner):
    assert runner.run("probe.named", {"name": "ann"}).result == "hello ann"


@pytest.mark.parametrize("action_ref", ["probe.traversal", "probe.missing", "nopack.echo", "probe", "probe.a/b"])
def test_bad_action_refs_are_invalid_input(runner, action_ref):
    with pytest.raises(InvalidSpecError):
        runner.run(action_ref)


def run_side_by_side(runner, count: int, action_ref: str = "probe.sleep", parameters=None) -> list:
    """``count`` runs from as many threads at once; their results."""
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(runner.run(action_ref, parameters or {"seconds": 1})))
        for _ in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def max_overlap(results) -> int:
    """The most executions that ran at the same moment, from the actions' own clocks."""
    edges = sorted([(r.result["started"], 1) for r in results] + [(r.result["ended"], -1) for r in results])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_many_threads_share_a_bounded_number_of_containers(settings, engine):
    from attune_containers.services.manager import ContainerDependencyManager

    runner = ActionRunner(PACKS, ContainerDependencyManager(cold(settings), engine), max_concurrent=2)
    results = run_side_by_side(runner, 5)
    assert len(results) == 5 and all(r.status is ExecutionStatus.succeeded for r in results)
    assert max_overlap(results) == 2


def cli_run(*args: str, state_dir=None, **kw) -> subprocess.Popen:
    env = {**os.environ, "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX}
    if state_dir is not None:  # a sweeper proves an owner dead by its lease in the shared state dir
        env["ATTUNE__CONTAINERS__STATE_DIR"] = str(state_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "attune_containers.cli", "run", *args, "--packs-dir", str(PACKS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def owned_by(process: subprocess.Popen) -> dict[str, str]:
    return {L.OWNER: f"{socket.gethostname()}:{process.pid}"}


def wait_for_container(engine, process: subprocess.Popen, timeout: float = 60) -> list[ContainerRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = containers_of(engine, **owned_by(process))
        if found and found[0].status == "running":
            return found
        time.sleep(0.1)
    raise AssertionError(f"no running container of process {process.pid}")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupted_caller_leaves_no_container(engine, signum):
    import signal

    process = cli_run("probe.sleep", "--params", '{"seconds": 120}')
    wait_for_container(engine, process)
    process.send_signal(getattr(signal, signum))
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert gone_soon(engine, **owned_by(process))


def test_a_killed_callers_container_is_swept_by_the_next_runner(settings, engine):
    from attune_containers.services.manager import ContainerDependencyManager

    process = cli_run("probe.sleep", "--params", '{"seconds": 120}', state_dir=settings.state_dir)
    left = wait_for_container(engine, process)
    process.kill()
    process.communicate(timeout=60)
    assert [c.id for c in containers_of(engine, **owned_by(process))] == [left[0].id]
    swept = ActionRunner(PACKS, ContainerDependencyManager(settings, engine), sweep=False).sweep_leftovers()
    assert left[0].id in swept
    assert gone_soon(engine, **owned_by(process))


def test_an_image_pruned_behind_the_runners_back_is_resolved_again(settings, engine):
    from attune_containers.services.manager import ContainerDependencyManager

    runner = ActionRunner(PACKS, ContainerDependencyManager(cold(settings), engine))
    first = runner.run("pins_old.six_version")
    assert first.result == "1.16.0"
    engine.remove_image(first.image, force=True)  # another process pruned it; memory still vouches
    again = runner.run("pins_old.six_version")
    assert again.status is ExecutionStatus.succeeded and again.result == "1.16.0", again.error


def test_cli_exit_codes(engine):
    ok = cli_run("probe.echo", "--params", '{"x": 1}', "--json")
    out, _ = ok.communicate(timeout=120)
    assert ok.returncode == 0 and json.loads(out)["result"] == {"x": 1}
    failed = cli_run("probe.fail")
    failed.communicate(timeout=120)
    assert failed.returncode == 1
    timed_out = cli_run("probe.spin", "--timeout", "1")
    timed_out.communicate(timeout=120)
    assert timed_out.returncode == 1
    invalid = cli_run("probe.echo", "--params", "[1, 2]")
    _, err = invalid.communicate(timeout=120)
    assert invalid.returncode == 2 and "JSON object" in err
    unreachable = subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", "run", "probe.echo", "--packs-dir", str(PACKS)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    assert unreachable.returncode == 3, unreachable.stderr


def test_a_pack_added_to_the_tree_is_found_without_a_restart(settings, engine, tmp_path):
    from attune_containers.services.manager import ContainerDependencyManager

    tree = tmp_path / "packs"
    shutil.copytree(PACKS / "probe", tree / "probe")
    runner = ActionRunner(tree, ContainerDependencyManager(cold(settings), engine), sweep=False)
    assert runner.run("probe.echo", {"a": 1}).result == {"a": 1}
    with pytest.raises(InvalidSpecError):
        runner.run("pins_new.six_version")
    shutil.copytree(PACKS / "pins_new", tree / "pins_new")  # the tree's scan is cached until it changes
    assert runner.run("pins_new.six_version").result == "1.17.0"
