"""A Python image's lock: the distributions it was built from, as its lock label records them and
as ``inspect --lock`` prints them (pure)."""

from __future__ import annotations

from pydantic import BaseModel


class LockedDistribution(BaseModel):
    """One distribution an image was built from: what a lock file pins."""

    name: str
    version: str
    filename: str
    sha256: str

    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"
