"""What a fetch container hands back over its attached streams, bounded.

A fetch container runs with network and, where the operator allows it, build code: its output is
untrusted. Its stdout is the tar it hands back, written to a file and cut off past a byte limit;
its stderr is the log, split into lines of bounded length (a line that never ends cannot grow
without bound), scrubbed of secrets, the last few hundred kept for the error message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import IO

from ..engine import ContainerRun, Engine, LogSink
from ..errors import BuildError

LINE_LIMIT = 4096
KEPT_LINES = 400


class FetchOutput:
    """The collector ``Engine.run_attached`` calls with ``(1 | 2, bytes)``."""

    def __init__(
        self,
        out: IO[bytes],
        limit: int,
        on_log: LogSink | None = None,
        scrub: Callable[[str], str] = lambda line: line,
    ) -> None:
        self.out, self.limit, self.on_log, self.scrub = out, limit, on_log, scrub
        self.written = 0
        self.log: deque[str] = deque(maxlen=KEPT_LINES)
        self._partial = b""

    def __call__(self, kind: int, data: bytes) -> None:
        if kind == 1:
            self.written += len(data)
            if self.written > self.limit:
                raise BuildError(f"the fetch step handed back more than {self.limit} bytes (fetch_max_bytes); it was stopped")
            self.out.write(data)
            return
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        if len(self._partial) > LINE_LIMIT:
            lines, self._partial = [*lines, self._partial[:LINE_LIMIT]], b""
        for raw in lines:
            line = self.scrub(raw[:LINE_LIMIT].decode("utf-8", "replace").rstrip())
            self.log.append(line)
            if self.on_log is not None and line.strip():
                self.on_log(line)


def run_fetch_container(
    engine: Engine, run: ContainerRun, output: FetchOutput, remaining: float, build_timeout: int, what: str
) -> int | None:
    """Run one fetch container to its end, its streams into ``output``; its exit code. The
    container is gone afterwards whatever happened; past ``remaining`` seconds it is stopped and
    the build fails saying so."""
    container_id = engine.create_container(run, auto_remove=True)
    try:
        exit_code, timed_out, _ = engine.run_attached(container_id, b"", remaining, output)
    finally:
        engine.kill(container_id)
        engine.remove_container(container_id, attempts=10)
    if timed_out:
        raise BuildError(f"the build took longer than {build_timeout} s (build_timeout) while fetching {what}; it was stopped")
    return exit_code
