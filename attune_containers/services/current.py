"""Which image each pack resolved to last on this host, per runtime: one small file per (pack,
runtime) under ``state_dir/current``, holding the image reference. ``ensure_environment`` writes it
when a pack's image changes; the pruner reads it so that another process's current image is never
pruned.

File names: the default runtime's (Python's) record is ``<pack_ref>``, as before packs had several
runtimes, so records written by earlier versions keep their meaning; another runtime's is
``<pack_ref>@<runtime>`` (``@`` is never part of a valid ref, so the two cannot collide).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..core.pack_ref import validate_pack_ref
from ..runtimes import DEFAULT_RUNTIME, RUNTIMES

_SEPARATOR = "@"


class CurrentImages:
    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "current"

    def _path(self, pack_ref: str, runtime: str) -> Path:
        # A valid ref has no '/' and no leading dot, and a runtime is a registered name: a safe file name.
        if runtime not in RUNTIMES:
            raise ValueError(f"{runtime!r} is not a registered runtime name")
        name = validate_pack_ref(pack_ref)
        return self.directory / (name if runtime == DEFAULT_RUNTIME else f"{name}{_SEPARATOR}{runtime}")

    def get(self, pack_ref: str, runtime: str = DEFAULT_RUNTIME) -> str | None:
        try:
            return self._path(pack_ref, runtime).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set(self, pack_ref: str, image: str, runtime: str = DEFAULT_RUNTIME) -> None:
        """Record ``image`` as the pack's current one for ``runtime``; no write when it already is."""
        if self.get(pack_ref, runtime) == image:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Write aside and rename: a reader sees the old record or the new one, never half of one.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(image + "\n")
            os.replace(tmp, self._path(pack_ref, runtime))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def all(self) -> dict[tuple[str, str], str]:
        """(pack_ref, runtime) -> image reference, for every pack and runtime recorded."""
        if not self.directory.is_dir():
            return {}
        found = {}
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                continue
            pack_ref, _, runtime = path.name.partition(_SEPARATOR)
            image = path.read_text(encoding="utf-8").strip()
            if image:
                found[(pack_ref, runtime or DEFAULT_RUNTIME)] = image
        return found
