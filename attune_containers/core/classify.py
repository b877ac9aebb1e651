"""What one execution came to: the ``ExecutionResult`` from what its container sent back.

Pure: the frames the worker collected (``ExecutionCollector``), the run's limits, whether the worker
gave up at the deadline and how long it took. The one fact only the engine knows, whether the
kernel killed the container for memory, is asked through ``oom`` (a callable, so the engine is
polled only when the end looks like a kill: an exit code of 137 alone is no proof). The same
classification serves the cold and the warm path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from .execution import ExecutionError, ExecutionResult, ExecutionStatus, ResourceLimits, parse_script_output
from .protocol import ExecutionCollector


def looks_killed(collector: ExecutionCollector, exit_code: int | None) -> bool:
    """Whether the end could be an OOM kill: no end declared, SIGKILL, or exit code 137."""
    done = collector.done or {}
    return collector.done is None or done.get("signal") == 9 or exit_code == 137


def classify(
    collector: ExecutionCollector,
    limits: ResourceLimits,
    timed_out: bool,
    elapsed: float,
    *,
    execution_id: str,
    action_ref: str,
    image: str | None,
    container_exit: int | None = None,
    oom: bool | Callable[[], bool] = False,
) -> ExecutionResult:
    """The ExecutionResult of one execution.

    ``timed_out``: the worker stopped waiting at the deadline; ``elapsed``: seconds it took;
    ``container_exit``: the container's exit code when the supervisor declared none (cold path);
    ``oom``: whether the engine saw an OOM kill, or a callable asked only when the end looks like one.
    """
    done = collector.done or {}
    exit_code = done.get("exit_code", container_exit)
    timed_out = timed_out or done.get("timed_out") is True
    common: dict[str, Any] = dict(
        execution_id=execution_id,
        action_ref=action_ref,
        exit_code=exit_code,
        duration_ms=int(elapsed * 1000),
        stdout=collector.stdout.text(),
        stderr=collector.stderr.text(),
        stdout_truncated=collector.stdout.truncated,
        stderr_truncated=collector.stderr.truncated,
        image=image,
    )

    def failed(status: ExecutionStatus, kind: str, message: str) -> ExecutionResult:
        return ExecutionResult(status=status, error=ExecutionError(type=kind, message=message), **common)

    if timed_out:
        return failed(
            ExecutionStatus.timeout,
            "Timeout",
            f"the action ran longer than {limits.timeout:g} s and was killed after {elapsed:.2f} s",
        )
    if collector.protocol_error:
        return failed(
            ExecutionStatus.error,
            "ProtocolError",
            "the container's output broke the runner protocol; the container was destroyed",
        )
    if looks_killed(collector, exit_code) and (oom() if callable(oom) else oom):
        return failed(ExecutionStatus.oom, "OutOfMemory", f"the action exceeded its memory limit of {limits.memory}")
    if collector.result_too_large:
        return failed(
            ExecutionStatus.failed,
            "ResultTooLarge",
            f"the result is {collector.result_size} bytes; the limit is {limits.result_limit}",
        )
    outcome = collector.outcome()
    error = _error(outcome) if outcome is not None and outcome.get("status") == "error" else None
    if outcome is None or outcome.get("status") == "none" or (outcome.get("status") == "error" and error is None):
        # An error document that is not one (the action's process can write its result pipe
        # itself) is no result either, never an exception in the worker.
        what = "was killed by signal %s" % done["signal"] if done.get("signal") else f"ended (exit code {exit_code})"
        return failed(
            ExecutionStatus.failed if collector.done else ExecutionStatus.error,
            "NoResult",
            f"the action's process {what} without reporting a result",
        )
    if error is not None:
        return ExecutionResult(status=ExecutionStatus.failed, error=error, **common)
    result = outcome.get("result") if outcome.get("status") == "success" else parse_script_output(common["stdout"])
    if exit_code == 0:
        return ExecutionResult(status=ExecutionStatus.succeeded, result=result, **common)
    return ExecutionResult(
        status=ExecutionStatus.failed,
        result=result,
        error=ExecutionError(type="NonZeroExit", message=f"the action exited with {exit_code}"),
        **common,
    )


def _error(outcome: dict[str, Any]) -> ExecutionError | None:
    """The error an outcome document reports, or None when it is not a well-formed one."""
    try:
        return ExecutionError.model_validate(outcome.get("error"))
    except ValidationError:
        return None
