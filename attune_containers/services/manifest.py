"""The trusted manifest: which registry image, by digest, each pack's image is.

A tag in a registry proves nothing: anyone who can push may put an image with copied labels under
the expected tag. The manifest is what the operator trusts instead. CI writes it from what it built
and pushed itself (``build --all --push --manifest FILE``); a worker reads it (``trusted_manifest``)
and pulls only ``<registry>/<prefix>/<name>@sha256:<digest>``, which the registry cannot answer
with other content, then checks that the image's ID and labels are the ones recorded.

    {"format": 1,
     "packs": {"<pack_ref>": {"dependency_hash": "<64 hex>", "image": "<prefix>/<name>:<tag>",
                              "reference": "<registry>/<prefix>/<name>@sha256:<64 hex>",
                              "image_id": "sha256:<64 hex>",
                              "runtime": "python", "runtime_version": "3.13.5"}},
     "other_runtimes": {"<pack_ref>": [{... "runtime": "nodejs", "runtime_version": "20.19.2"}]}}

A pack with actions of several runtimes has an image of each: ``packs`` holds its first (Python's
first), ``other_runtimes`` the others. Workers of earlier versions read ``packs`` alone and ignore
the rest, so a manifest with mixed packs stays readable by them (they pull the first image only).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from ..core.pack_ref import validate_pack_ref
from ..errors import AttuneContainersError, InvalidSpecError

FORMAT = 1
MAX_BYTES = 16 * 1024 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class TrustedImage(BaseModel):
    dependency_hash: str = Field(description="The pack's dependency hash the image was built for")
    image: str = Field(description="The local reference: <prefix>/<name>:<tag>")
    reference: str = Field(description="Where to pull it: <registry>/<prefix>/<name>@sha256:<digest>")
    image_id: str = Field(description="The image ID (its config digest), the same on every host")
    # Optional: manifests written before these were recorded stay valid.
    runtime: str | None = Field(None, description="The runtime that built it (python, ...)")
    runtime_version: str | None = Field(None, description="The exact runtime version in the image (3.13.5)")

    @field_validator("dependency_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("not a dependency hash")
        return v

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        name, sep, digest = v.partition("@")
        if not sep or not _DIGEST.fullmatch(digest) or not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]{0,254}", name):
            raise ValueError(f"{v!r} is not a reference by digest (<repository>@sha256:<64 hex>)")
        return v

    @field_validator("image_id")
    @classmethod
    def _image_id(cls, v: str) -> str:
        if not _DIGEST.fullmatch(v):
            raise ValueError(f"{v!r} is not an image ID")
        return v

    @property
    def digest(self) -> str:
        return self.reference.partition("@")[2]


class TrustManifest(BaseModel):
    format: int = FORMAT
    packs: dict[str, TrustedImage] = Field(default_factory=dict)
    other_runtimes: dict[str, list[TrustedImage]] = Field(
        default_factory=dict, description="A pack's images of its other runtimes (a pack with Python and Node.js actions)"
    )

    @field_validator("packs", "other_runtimes")
    @classmethod
    def _refs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for pack_ref in v:
            validate_pack_ref(pack_ref)
        return v

    @classmethod
    def load(cls, path: str | Path) -> TrustManifest:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise AttuneContainersError(f"cannot read the trusted manifest {path}: {exc.strerror}") from None
        if len(data) > MAX_BYTES:
            raise InvalidSpecError(f"{path} is larger than {MAX_BYTES} bytes", field="trusted_manifest")
        try:
            manifest = cls.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            raise InvalidSpecError(f"{path} is not a trusted manifest: {exc}", field="trusted_manifest") from None
        if manifest.format != FORMAT:
            raise InvalidSpecError(f"{path} has format {manifest.format}, not {FORMAT}", field="trusted_manifest")
        return manifest

    def save(self, path: str | Path) -> None:
        """Write atomically: a worker reading it meanwhile sees the old manifest or the new one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.model_dump_json(indent=2) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entry(self, pack_ref: str, dependency_hash: str) -> TrustedImage | None:
        """The trusted image of this pack for this exact spec (of any of its runtimes), or None."""
        first = self.packs.get(pack_ref)
        for found in (*((first,) if first is not None else ()), *self.other_runtimes.get(pack_ref, ())):
            if found.dependency_hash == dependency_hash:
                return found
        return None
