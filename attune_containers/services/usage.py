"""When each pack image was last used by the runner: one empty file per image under
``state_dir/usage``, its mtime the last use. Touching a file is atomic and needs no lock, so
recording a use costs the hot path one ``utime`` call."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path


class UsageLog:
    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "usage"

    def _path(self, image_id: str) -> Path:
        digest = image_id.split(":", 1)[-1]
        if not digest.isalnum():
            raise ValueError(f"not an image ID: {image_id!r}")
        return self.directory / digest

    def touch(self, image_id: str) -> None:
        path = self._path(image_id)
        try:
            os.utime(path)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.touch()

    def last_used(self, image_id: str) -> datetime | None:
        try:
            return datetime.fromtimestamp(self._path(image_id).stat().st_mtime, UTC)
        except FileNotFoundError:
            return None

    def forget(self, image_id: str) -> None:
        self._path(image_id).unlink(missing_ok=True)
