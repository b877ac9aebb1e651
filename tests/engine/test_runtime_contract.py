"""The runtime contract: the same tests for every registered runtime (runtimes.RUNTIMES), each
against its own tiny pack ``tests/packs/contract/<runtime>/contract/`` whose actions behave alike:

- ``echo(**parameters)`` returns its parameters;
- ``chatty()`` prints ``{"result": "forged"}`` on stdout and ``to stderr`` on stderr, returns ``{"ok": true}``;
- ``fail(message)`` raises (throws) an error carrying ``message``;
- ``hog(megabytes)`` touches that much memory; ``forkbomb(seconds)`` forks without end for that long
  and returns ``{"fork_failures": n}``; ``spin()`` never ends;
- ``flood(megabytes)`` writes that many MiB to stdout and to stderr, returns ``{"wrote_megabytes": n}``;
- ``bigresult(size)`` returns a string of ``size`` characters;
- ``secret(stash)`` returns ``{"token": the secret "token" through the runtime's helper, "remembered":
  what earlier executions kept in the process, "found": which of /tmp/contract-stash and
  /dev/shm/contract-stash exist, "in_environment": whether the token is in any variable}``, and with
  ``stash`` keeps its token in memory and in both files.

A new runtime passes this file before it is registered for real: params round trip, result apart
from output, limits (memory, pids, time, output, result), OOM, timeout, secrets not leaking between
executions, warm equals cold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from attune_containers.core.execution import ExecutionStatus, ResourceLimits
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.runtimes import RUNTIMES
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner

from .test_runner import TRICKY

CONTRACT_PACKS = Path(__file__).resolve().parent.parent / "packs" / "contract"


# Every runtime, and Node again on bases with no python at all (like the official node:<major>-slim
# images): its supervisor brings its own interpreter.
@pytest.fixture(scope="module", params=[*sorted(RUNTIMES), "nodejs-nopython"])
def runner(request, settings, engine):
    name, _, variant = request.param.partition("-")
    update: dict = {"pool": DEFAULT_POOL.merged(PoolSettings(reuse=True))}
    if variant == "nopython":
        update["runtime_base_images"] = {name: request.getfixturevalue("nopython_node_bases")}
    manager = ContainerDependencyManager(settings.model_copy(update=update), engine)
    runner = ActionRunner(CONTRACT_PACKS / name, manager)
    if variant == "nopython":  # the pack image really has no python3 for the supervisor to use
        code, output = engine.run_once(runner.ensure_pack("contract").image, ["/bin/sh", "-c", "test ! -e /usr/bin/python3"])
        assert code == 0, output
    yield runner
    runner.close()


def comparable(result) -> dict:
    # What differs by nature between runs: the id, the timings, and which path ran it.
    return result.model_dump(exclude={"execution_id", "duration_ms", "started_at", "finished_at", "queued_ms", "warm"})


def test_the_pack_is_of_the_runtime_under_test(runner):
    name = runner.packs_dir.name
    info = runner.ensure_pack("contract")
    assert info.runtime == name and info.runtime_version
    assert runner.manager.validate_environment("contract")


@pytest.mark.parametrize("warm", [False, True])
def test_parameters_make_the_round_trip_unchanged(runner, warm):
    result = runner.run("contract.echo", TRICKY, warm=warm)
    assert result.status is ExecutionStatus.succeeded, (result.error, result.stderr[-500:])
    assert result.result == TRICKY and result.warm is warm


@pytest.mark.parametrize("warm", [False, True])
def test_the_result_stays_apart_from_the_actions_output(runner, warm):
    result = runner.run("contract.chatty", warm=warm)
    assert result.status is ExecutionStatus.succeeded, (result.error, result.stderr[-500:])
    assert result.result == {"ok": True}
    assert '{"result": "forged"}' in result.stdout and "to stderr" in result.stderr
    assert "to stderr" not in result.stdout


@pytest.mark.parametrize(
    ("action_ref", "parameters"),
    [
        ("contract.echo", TRICKY),
        ("contract.chatty", {}),
        ("contract.fail", {"message": "same either way"}),
    ],
)
def test_warm_results_equal_cold_results(runner, action_ref, parameters):
    cold = runner.run(action_ref, parameters, warm=False)
    warm = runner.run(action_ref, parameters, warm=True)
    again = runner.run(action_ref, parameters, warm=True)
    assert (cold.warm, warm.warm, again.warm) == (False, True, True)
    assert comparable(warm) == comparable(cold) == comparable(again)


def test_a_failing_action_is_a_failed_result_with_its_message(runner):
    result = runner.run("contract.fail", {"message": "it broke"})
    assert result.status is ExecutionStatus.failed
    assert result.error is not None and "it broke" in result.error.message


@pytest.mark.parametrize("warm", [False, True])
def test_a_memory_hog_is_reported_as_oom(runner, warm):
    result = runner.run("contract.hog", {"megabytes": 1024}, limits=ResourceLimits(memory="128m"), warm=warm)
    assert result.status is ExecutionStatus.oom, (result.status, result.error, result.stderr[-500:])


@pytest.mark.parametrize("warm", [False, True])
def test_an_endless_action_times_out_on_time(runner, warm):
    started = time.monotonic()
    result = runner.run("contract.spin", limits=ResourceLimits(timeout=2), warm=warm)
    assert result.status is ExecutionStatus.timeout, (result.status, result.error)
    assert 2000 <= result.duration_ms < 4000 and time.monotonic() - started < 30


def test_a_fork_bomb_is_held_by_the_pids_limit(runner):
    result = runner.run("contract.forkbomb", {"seconds": 3}, limits=ResourceLimits(pids=64, timeout=30))
    assert result.status is ExecutionStatus.succeeded, (result.status, result.error)
    assert result.result["fork_failures"] > 0


def test_output_is_capped_and_the_result_still_arrives(runner):
    result = runner.run(
        "contract.flood", {"megabytes": 8}, limits=ResourceLimits(stdout_limit=1024 * 1024, stderr_limit=512 * 1024)
    )
    assert result.status is ExecutionStatus.succeeded, result.error
    assert result.result == {"wrote_megabytes": 8}
    assert result.stdout_truncated and result.stderr_truncated
    assert "[OUTPUT TRUNCATED:" in result.stdout
    assert len(result.stderr.encode()) < 512 * 1024 + 200


def test_a_result_above_the_limit_is_refused(runner):
    result = runner.run("contract.bigresult", {"size": 2 * 1024 * 1024})
    assert result.status is ExecutionStatus.failed
    assert result.error.type == "ResultTooLarge"


@pytest.mark.parametrize("warm", [False, True])
def test_secrets_reach_only_their_own_execution(runner, warm):
    token = "s3cr3t-\u00e9\"'\\n-contract"
    first = runner.run("contract.secret", {"stash": True}, {"token": token}, warm=warm)
    assert first.status is ExecutionStatus.succeeded, (first.error, first.stderr[-500:])
    assert first.result["token"] == token and first.result["in_environment"] is False
    created = sum(pool["created"] for pool in runner.pool_stats())
    second = runner.run("contract.secret", {}, {}, warm=warm)
    if warm:  # the same container served both, so what it kept is what is being checked
        assert sum(pool["created"] for pool in runner.pool_stats()) == created
    assert second.status is ExecutionStatus.succeeded, (second.error, second.stderr[-500:])
    assert second.result == {"token": None, "remembered": [], "found": [], "in_environment": False}
    assert token not in second.model_dump_json()
