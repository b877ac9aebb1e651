"""Image labels: the keys we write on every pack image, and reading an image back from them.

Labels, not image names, are the source of truth: lookups filter on ``MANAGED`` and ``PACK_REF``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from .render import INTERPRETER
from .spec import EnvironmentInfo

PREFIX = "io.attune.containers."
MANAGED = PREFIX + "managed"
PACK_REF = PREFIX + "pack_ref"
DEPENDENCY_HASH = PREFIX + "dependency_hash"
PYTHON_VERSION = PREFIX + "python.version"
REQUIREMENTS = PREFIX + "requirements"
INSTALLED = PREFIX + "installed"
CREATED = PREFIX + "created"
TOOL_VERSION = PREFIX + "tool.version"
BASE_IMAGE = PREFIX + "base.image"
INSTALLER = PREFIX + "installer"
# The exact distributions (name, version, wheel file, sha256) the image was built from.
LOCK = PREFIX + "lock"

# Set by `base bootstrap` on the base images it makes (docker/bootstrap-base.sh).
BASE_MARKER = PREFIX + "base"
BASE_PYTHON_VERSION = PYTHON_VERSION
BASE_IDENTITY = PREFIX + "base.identity"

OCI_CREATED = "org.opencontainers.image.created"
OCI_TITLE = "org.opencontainers.image.title"
OCI_DESCRIPTION = "org.opencontainers.image.description"
OCI_VENDOR = "org.opencontainers.image.vendor"
OCI_BASE_NAME = "org.opencontainers.image.base.name"


def environment_from_image(image_id: str, reference: str, labels: dict[str, str],
                           size_bytes: int | None = None) -> EnvironmentInfo | None:
    """An EnvironmentInfo from an image's labels, or None when the image is not one of ours."""
    if labels.get(MANAGED) != "true" or PACK_REF not in labels:
        return None
    created = _parse_time(labels.get(CREATED))
    return EnvironmentInfo(
        id=image_id,
        pack_ref=labels[PACK_REF],
        image=reference,
        runtime_version=labels.get(PYTHON_VERSION, ""),
        dependency_hash=labels.get(DEPENDENCY_HASH, ""),
        requirements=_json_list(labels.get(REQUIREMENTS)),
        installed_dependencies=_json_list(labels.get(INSTALLED)),
        executable_path=INTERPRETER,
        created_at=created,
        updated_at=created,
        is_valid=bool(labels.get(DEPENDENCY_HASH)) and bool(labels.get(PYTHON_VERSION)),
        size_bytes=size_bytes,
    )


def _json_list(value: str | None) -> list[str]:
    try:
        data = json.loads(value) if value else []
    except ValueError:
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def _parse_time(value: str | None) -> datetime:
    try:
        return datetime.fromisoformat(value) if value else datetime.fromtimestamp(0, timezone.utc)
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)
