"""What this configuration's builds made: the build identity that tells our leftovers from others'.

Two configurations (two ``image_prefix`` values, two ``state_dir``) may share one engine and the
same base images, and their build stages look alike: the same Dockerfile on the same base. The
engine cannot tell whose a dangling build stage is, so each build records the image IDs it made
or reused (every ``---> <id>`` step result of its log and the final image) under ``state_dir``.
The pruner removes a dangling image only when this record (or its own verified labels) says it is
this configuration's. One line per ID, appended; bounded to the newest ``LIMIT`` lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock

LIMIT = 50_000
_STEP_RESULT = re.compile(r" ---> ([0-9a-f]{12})")
_BUILT = re.compile(r"Successfully built ([0-9a-f]{12})")


class BuildRecord:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "builds" / "images"

    def add(self, image_ids: Iterable[str]) -> None:
        ids = sorted({_short(i) for i in image_ids if _short(i)})
        if not ids:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=30):
            existing = self._read()
            new = [i for i in ids if i not in existing]
            if not new:
                return
            lines = [*self._lines(), *new]
            if len(lines) > LIMIT:
                lines = lines[-LIMIT:]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in lines), encoding="ascii")
                os.replace(tmp, self.path)
            else:
                with open(self.path, "a", encoding="ascii") as f:
                    f.write("".join(line + "\n" for line in new))

    def ids(self) -> set[str]:
        """The short (12 hex) IDs of every image this configuration's builds made or reused."""
        return self._read()

    def contains(self, image_id: str, ids: set[str] | None = None) -> bool:
        return _short(image_id) in (self._read() if ids is None else ids)

    def _lines(self) -> list[str]:
        try:
            return [line.strip() for line in self.path.read_text(encoding="ascii").splitlines() if line.strip()]
        except (FileNotFoundError, UnicodeDecodeError):
            return []

    def _read(self) -> set[str]:
        return set(self._lines())


class BuildLogIds:
    """A log sink that passes every line on and keeps the image IDs of the build's own steps.

    Only the builder's own lines count: a step result (`` ---> <id>``) outside a RUN step's output
    (between `` ---> Running in`` and ``Removing intermediate container``, which is what the
    step's processes print), and ``Successfully built <id>``.
    """

    def __init__(self, sink: Callable[[str], None] | None) -> None:
        self.sink = sink
        self.ids: list[str] = []
        self._in_step_output = False

    def __call__(self, line: str) -> None:
        text = line.rstrip("\r\n")
        if text.startswith(" ---> Running in "):
            self._in_step_output = True
        elif text.startswith("Removing intermediate container "):
            self._in_step_output = False
        elif not self._in_step_output:
            m = _STEP_RESULT.fullmatch(text) or _BUILT.fullmatch(text)
            if m:
                self.ids.append(m.group(1))
        if self.sink is not None:
            self.sink(line)


def _short(image_id: str) -> str:
    value = image_id.removeprefix("sha256:")
    return value[:12] if re.fullmatch(r"[0-9a-f]{12,64}", value) else ""
