"""Base images as the runtimes choose among them (each runtime's choice is its own: Python's is
runtimes/python/versions.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BaseImage(BaseModel):
    """A base image that provides one runtime version (Python's minor, ``3.11``)."""

    model_config = ConfigDict(frozen=True)

    minor: str
    reference: str
    # The exact runtime version (``3.11.2``) once the image has been inspected. (Named for the
    # first runtime; the build path reads it under this name.)
    python_version: str | None = None
    # What the image is made of, the same on every host that has the same image: our bootstrap
    # label, else the registry digest, else (a locally built image) its ID. Part of the hash.
    identity: str | None = None
    image_id: str | None = None
    present: bool = False

    @property
    def minor_key(self) -> tuple[int, int]:
        # Python's keys are major.minor; other runtimes may key by major alone ("22").
        major, _, minor = self.minor.partition(".")
        return int(major), int(minor.split(".")[0] or 0)
