"""A build plan: everything about one pack image that can be decided without an engine.

Given a validated spec, the chosen base image and the build options, the plan holds the content
hash, the tag, the Dockerfile, the build context and the labels. The hash is a sha256 over a
canonical JSON document of everything that decides the image's content:

- the normalized requirements (sorted, deduplicated, canonical names; order and formatting of the
  pack's text do not matter) and any allowed pip option lines;
- the base image reference, its exact Python version and its identity (what it is made of: the
  bootstrap label, else the registry digest, else the local image ID), so a changed base rebuilds;
- the installer and the index URLs (credentials removed), the Dockerfile template and build files,
  and ``HASH_FORMAT``, bumped whenever the image layout changes in a way the template does not show.

Not in it: the pack ref (two packs with one spec share a hash, each under its own name), the extra
CA bundle (it changes how we download, not what we install) and anything time-dependent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict

from .. import __version__
from . import labels as L
from .pack_ref import image_name_for, validate_pack_ref
from .render import BuildOptions, build_context, render_dockerfile, template_source
from .spec import ValidatedSpec
from .versions import BaseImage

HASH_FORMAT = 4  # 4: one committed layer, no pip or setuptools in the venv (issue 11)
TAG_LENGTH = 16


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _redact(text: str) -> str:
    """Credentials in any URL of an (allowed) option line never reach a label."""
    return re.sub(r"://[^/@\s]+@", "://***@", text)


def hash_document(spec: ValidatedSpec, base: BaseImage, options: BuildOptions) -> dict[str, Any]:
    """The canonical document the dependency hash is taken over (exposed for `inspect`/tests)."""
    return {
        "format": HASH_FORMAT,
        "runtime": spec.runtime,
        "requirements": [r.canonical() for r in spec.requirements],
        "pip_options": list(spec.pip_options),
        "python": {
            "minor": base.minor,
            "version": base.python_version,
            "base_image": base.reference,
            "base_identity": base.identity,
        },
        "installer": options.installer,
        "index_url": _without_credentials(options.index_url) if options.index_url else None,
        "extra_index_urls": [_without_credentials(u) for u in options.extra_index_urls],
        "template": hashlib.sha256(template_source().encode()).hexdigest(),
        "build_files": {
            name: hashlib.sha256(template_source(name).encode()).hexdigest()
            for name in ("build/freeze.py", "build/uv-bootstrap.txt", "build/fetch.py", "build/install.py")
        },
    }


def dependency_hash(spec: ValidatedSpec, base: BaseImage, options: BuildOptions) -> str:
    document = hash_document(spec, base, options)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class BuildPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    pack_ref: str
    spec: ValidatedSpec
    base: BaseImage
    options: BuildOptions
    image_prefix: str

    @cached_property
    def dependency_hash(self) -> str:
        return dependency_hash(self.spec, self.base, self.options)

    @property
    def repository(self) -> str:
        return f"{self.image_prefix}/{image_name_for(self.pack_ref)}"

    @property
    def tag(self) -> str:
        return self.dependency_hash[:TAG_LENGTH]

    @property
    def image(self) -> str:
        return f"{self.repository}:{self.tag}"

    def dockerfile(self) -> str:
        return render_dockerfile(self.base, self.options)

    def context(self, wheels: Sequence[Path] = (), tools: Sequence[Path] = ()) -> IO[bytes]:
        return build_context(self.dockerfile(), wheels, tools)

    def labels(self, installed: list[str], created: datetime) -> dict[str, str]:
        """Every label of the final image. Build-only settings (CA, credentials) never appear."""
        stamp = created.isoformat()
        return {
            L.MANAGED: "true",
            L.PACK_REF: self.pack_ref,
            L.DEPENDENCY_HASH: self.dependency_hash,
            L.RUNTIME: self.spec.runtime,
            L.PYTHON_VERSION: self.base.python_version or self.base.minor,
            L.REQUIREMENTS: json.dumps([_redact(line) for line in self.spec.as_given]),
            L.INSTALLED: json.dumps(installed),
            L.CREATED: stamp,
            L.TOOL_VERSION: __version__,
            L.BASE_IMAGE: self.base.reference,
            L.INSTALLER: self.options.installer,
            L.OCI_CREATED: stamp,
            L.OCI_TITLE: self.pack_ref,
            L.OCI_DESCRIPTION: f"Python {self.base.python_version or self.base.minor} environment of pack {self.pack_ref}",
            L.OCI_VENDOR: "attune-containers",
            L.OCI_BASE_NAME: self.base.reference,
        }


def make_plan(pack_ref: str, spec: ValidatedSpec, base: BaseImage, options: BuildOptions, image_prefix: str) -> BuildPlan:
    validate_pack_ref(pack_ref)
    return BuildPlan(pack_ref=pack_ref, spec=spec, base=base, options=options, image_prefix=image_prefix)
