"""The build gate: every build on a host holds it shared; cleaning build leftovers holds it alone.

A build's intermediate images and helper containers look exactly like the leftovers of a finished
or crashed build, and a new build may reuse an old leftover from the layer cache. So leftovers are
only removed while no build runs, and builds that start meanwhile wait (seconds) for the pruner.
A plain ``flock`` on one file under ``state_dir/locks``: shared and exclusive modes, released by
the kernel if the process dies. It covers the processes sharing one ``state_dir``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class BuildGate:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "locks" / "builds.gate"

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Held by a build for its whole duration; waits while a pruner holds the gate alone."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Try to hold the gate alone, without waiting: yields False while any build runs."""
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(fd)

    def idle(self) -> bool:
        """Whether no build runs right now (a look, for dry runs: the gate is not kept)."""
        with self.exclusive() as alone:
            return alone
