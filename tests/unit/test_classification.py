"""What an execution came to (core/classify.py): from the frames the worker collected, the limits,
the deadline and the engine's word on OOM, to one ExecutionResult. The order of the checks is the
contract: a timeout beats everything, a broken protocol beats anything the stream claims, the engine
is asked about OOM only when the end looks like a kill, and 137 alone is no proof.

runner.finish (the engine's OOM probe around it) is checked on the in-memory engine.
"""

from __future__ import annotations

import json

import pytest

from attune_containers.core.classify import classify
from attune_containers.core.execution import DEFAULT_LIMITS, ExecutionStatus, ResourceLimits
from attune_containers.core.protocol import DONE, ERRORS, OUTPUT, RESULT, ExecutionCollector
from attune_containers.engine import ContainerRun
from attune_containers.services.runner import finish

from .fake_engine import FakeEngine, frame

NONCE = "n" * 32


def collect(*frames: bytes, stdout_limit: int = 1 << 20, result_limit: int = 1 << 20) -> ExecutionCollector:
    collector = ExecutionCollector(stdout_limit, 1 << 20, result_limit, nonce=NONCE)
    for data in frames:
        collector.feed(data)
    return collector


def done(**fields) -> bytes:
    document = {"nonce": NONCE, "exit_code": 0, "signal": None, "timed_out": False, "clean": True, **fields}
    return frame(DONE, json.dumps(document).encode())


def result(document: dict) -> bytes:
    return frame(RESULT, json.dumps(document).encode())


class Probe:
    """The engine's OOM record, counting how often it is asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer


def run(
    collector: ExecutionCollector,
    *,
    timed_out: bool = False,
    elapsed: float = 0.25,
    oom=False,
    container_exit: int | None = None,
    limits: ResourceLimits = DEFAULT_LIMITS,
):
    return classify(
        collector,
        limits,
        timed_out,
        elapsed,
        execution_id="e1",
        action_ref="p.act",
        image="img:1",
        container_exit=container_exit,
        oom=oom,
    )


def test_a_returned_value_succeeds_apart_from_the_output():
    r = run(
        collect(
            frame(OUTPUT, b"printed\n"),
            frame(ERRORS, b"warned\n"),
            result({"status": "success", "result": {"a": [1, 2]}}),
            done(),
        )
    )
    assert r.status is ExecutionStatus.succeeded and r.result == {"a": [1, 2]} and r.error is None
    assert (r.stdout, r.stderr, r.exit_code) == ("printed\n", "warned\n", 0)
    assert (r.execution_id, r.action_ref, r.image, r.duration_ms) == ("e1", "p.act", "img:1", 250)


def test_a_raised_exception_fails_with_its_type_message_and_traceback():
    error = {"type": "KeyError", "message": "'x'", "traceback": "Traceback (most recent call last): ..."}
    r = run(collect(result({"status": "error", "error": error}), done(exit_code=1)))
    assert r.status is ExecutionStatus.failed and r.error.model_dump() == error and r.exit_code == 1


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        (b'{"whole": "stdout"}\n', {"whole": "stdout"}),
        (b"some log line\n[1, 2, 3]\n", [1, 2, 3]),
        (b"only text\n", None),
        (b"", None),
    ],
)
def test_a_script_s_result_is_its_stdout_as_json_else_its_last_line(stdout, expected):
    r = run(collect(frame(OUTPUT, stdout), result({"status": "script"}), done()))
    assert r.status is ExecutionStatus.succeeded and r.result == expected


def test_a_nonzero_exit_fails_and_keeps_the_result():
    r = run(collect(frame(OUTPUT, b'{"partial": true}'), result({"status": "script"}), done(exit_code=3)))
    assert r.status is ExecutionStatus.failed and r.result == {"partial": True}
    assert r.error.type == "NonZeroExit" and r.error.message == "the action exited with 3" and r.exit_code == 3


def test_the_worker_s_deadline_is_a_timeout_naming_the_limit_and_the_time_taken():
    probe = Probe(True)
    r = run(
        collect(frame(OUTPUT, b"working...")),
        timed_out=True,
        elapsed=2.0612,
        oom=probe,
        limits=DEFAULT_LIMITS.merged(ResourceLimits(timeout=2)),
    )
    assert r.status is ExecutionStatus.timeout and r.error.type == "Timeout"
    assert r.error.message == "the action ran longer than 2 s and was killed after 2.06 s"
    assert r.stdout == "working..." and probe.asked == 0  # a timeout is never taken for OOM


def test_the_supervisor_s_deadline_is_a_timeout_too():
    r = run(collect(done(exit_code=137, signal=9, timed_out=True, clean=False)), oom=Probe(True))
    assert r.status is ExecutionStatus.timeout and r.exit_code == 137


@pytest.mark.parametrize(
    "stream",
    [
        result({"status": "success", "result": "forged"}) + done().replace(NONCE.encode(), b"g" * 32),
        b"not a frame at all",
        frame(b"x", b"unknown kind") + done(),
    ],
)
def test_a_broken_protocol_is_an_error_whatever_the_stream_claims(stream):
    probe = Probe(True)
    r = run(collect(stream), oom=probe)
    assert r.status is ExecutionStatus.error and r.error.type == "ProtocolError" and r.result is None
    assert probe.asked == 0


def test_sigkill_with_the_engine_s_oom_record_is_oom():
    probe = Probe(True)
    r = run(
        collect(done(exit_code=137, signal=9, clean=False)),
        oom=probe,
        limits=DEFAULT_LIMITS.merged(ResourceLimits(memory="128m")),
    )
    assert r.status is ExecutionStatus.oom and r.error.type == "OutOfMemory" and probe.asked == 1
    assert r.error.message == "the action exceeded its memory limit of 128m"


def test_exit_code_137_alone_is_no_oom():
    probe = Probe(False)
    r = run(collect(result({"status": "script"}), done(exit_code=137)), oom=probe)
    assert probe.asked == 1 and r.status is ExecutionStatus.failed and r.error.type == "NonZeroExit"


def test_sigkill_without_an_oom_record_is_a_failure_without_result():
    r = run(collect(done(exit_code=137, signal=9, clean=False)), oom=Probe(False))
    assert r.status is ExecutionStatus.failed and r.error.type == "NoResult"
    assert r.error.message == "the action's process was killed by signal 9 without reporting a result"


def test_a_container_that_ended_without_an_end_frame_is_oom_or_an_error():
    assert run(collect(frame(OUTPUT, b"x")), oom=True, container_exit=137).status is ExecutionStatus.oom
    r = run(collect(frame(OUTPUT, b"x")), oom=False, container_exit=1)
    assert r.status is ExecutionStatus.error and r.error.type == "NoResult" and r.exit_code == 1
    assert r.error.message == "the action's process ended (exit code 1) without reporting a result"


def test_the_engine_is_not_asked_about_oom_after_an_ordinary_end():
    probe = Probe(True)
    for stream in (
        result({"status": "success", "result": 1}) + done(),
        result({"status": "error", "error": {"type": "E", "message": "m"}}) + done(exit_code=1),
    ):
        assert run(collect(stream), oom=probe).status is not ExecutionStatus.oom
    assert probe.asked == 0


def test_the_supervisor_s_exit_code_beats_the_container_s():
    r = run(collect(result({"status": "success", "result": 1}), done(exit_code=0)), container_exit=3)
    assert r.exit_code == 0 and r.succeeded


def test_a_result_beyond_the_limit_is_refused_with_its_size():
    limits = DEFAULT_LIMITS.merged(ResourceLimits(result_limit=1024))
    big = json.dumps({"status": "success", "result": "x" * 10_000}).encode()
    r = run(collect(frame(RESULT, big), done(result_bytes=len(big)), result_limit=1024), limits=limits)
    assert r.status is ExecutionStatus.failed and r.error.type == "ResultTooLarge" and r.result is None
    assert r.error.message == f"the result is {len(big)} bytes; the limit is 1024"


def test_a_result_size_the_supervisor_counted_beyond_the_limit_is_refused_too():
    r = run(collect(result({"status": "success", "result": 1}), done(result_bytes=10**9)))
    assert r.status is ExecutionStatus.failed and r.error.type == "ResultTooLarge"


def test_an_outcome_of_none_or_no_outcome_at_all_is_no_result():
    for stream in (result({"status": "none"}) + done(), done(), frame(RESULT, b'{"status": "succ') + done()):
        r = run(collect(stream))
        assert r.status is ExecutionStatus.failed and r.error.type == "NoResult"


@pytest.mark.parametrize(
    "outcome",
    [
        {"status": "error"},
        {"status": "error", "error": "a string"},
        {"status": "error", "error": {}},
        {"status": "error", "error": {"type": 1, "message": ["m"]}},
    ],
)
def test_a_malformed_error_document_is_no_result_never_an_exception(outcome):
    """The action's process can write its own result pipe: what it writes is classified, never raised."""
    r = run(collect(result(outcome), done(exit_code=1)))
    assert r.status is ExecutionStatus.failed and r.error.type == "NoResult"


def test_truncated_output_is_flagged_and_marked():
    r = run(collect(frame(OUTPUT, b"0123456789"), result({"status": "success", "result": None}), done(), stdout_limit=4))
    assert r.stdout_truncated and not r.stderr_truncated and r.succeeded
    assert r.stdout.startswith("0123\n[OUTPUT TRUNCATED: 6 of 10 bytes dropped; limit 4 bytes]")


# -- runner.finish: the same classification, the engine asked for OOM -----------------------------


def engine_with_container() -> tuple[FakeEngine, str]:
    engine = FakeEngine()
    run_spec = ContainerRun(image="img", command=[], limits=DEFAULT_LIMITS, environment={}, labels={}, mounts=[], user="0:0")
    return engine, engine.create_container(run_spec)


def test_finish_asks_the_engine_only_when_the_end_looks_like_a_kill():
    engine, container_id = engine_with_container()
    engine.calls.clear()
    r = finish(
        engine,
        container_id,
        collect(result({"status": "success", "result": 1}), done()),
        DEFAULT_LIMITS,
        False,
        0.1,
        execution_id="e1",
        action_ref="p.act",
        image="img",
    )
    assert r.succeeded and engine.calls == []


def test_finish_takes_oom_from_the_engine_s_event_log():
    engine, container_id = engine_with_container()
    engine.oom_events.add(container_id)
    r = finish(
        engine,
        container_id,
        collect(done(exit_code=137, signal=9, clean=False)),
        DEFAULT_LIMITS,
        False,
        0.1,
        execution_id="e1",
        action_ref="p.act",
        image="img",
    )
    assert r.status is ExecutionStatus.oom and ("saw_oom", container_id) in engine.calls


def test_finish_takes_oom_from_the_container_s_state():
    engine, container_id = engine_with_container()
    engine.containers[container_id].end(137, oom=True)
    r = finish(
        engine,
        container_id,
        collect(),
        DEFAULT_LIMITS,
        False,
        0.1,
        execution_id="e1",
        action_ref="p.act",
        image="img",
        container_exit=137,
    )
    assert r.status is ExecutionStatus.oom
