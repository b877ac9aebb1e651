"""Which image each pack resolved to last on this host: one small file per pack under
``state_dir/current``, holding the image reference. ``ensure_environment`` writes it when a pack's
image changes; the pruner reads it so that another process's current image is never pruned."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..core.pack_ref import validate_pack_ref


class CurrentImages:
    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "current"

    def _path(self, pack_ref: str) -> Path:
        # A valid ref has no '/' and no leading dot, so it is a safe file name as it is.
        return self.directory / validate_pack_ref(pack_ref)

    def get(self, pack_ref: str) -> str | None:
        try:
            return self._path(pack_ref).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set(self, pack_ref: str, image: str) -> None:
        """Record ``image`` as the pack's current one; no write when it already is."""
        if self.get(pack_ref) == image:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Write aside and rename: a reader sees the old record or the new one, never half of one.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(image + "\n")
            os.replace(tmp, self._path(pack_ref))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def all(self) -> dict[str, str]:
        """pack_ref -> image reference, for every pack recorded."""
        if not self.directory.is_dir():
            return {}
        found = {}
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                continue
            image = path.read_text(encoding="utf-8").strip()
            if image:
                found[path.name] = image
        return found
