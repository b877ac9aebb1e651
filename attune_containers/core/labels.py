"""The label vocabulary: every ``io.attune.containers.*`` key we write, on images and on
containers, and reading a pack image back from its labels.

Labels, not image names, are the source of truth: lookups filter on ``MANAGED`` and ``PACK_REF``.
Every key is defined here and only here (tests/unit/test_labels.py keeps it so): the pruner tells
our containers from others by ``PREFIX``, and images and containers on hosts carry these exact
strings, so a value never changes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from .spec import EnvironmentInfo

PREFIX = "io.attune.containers."
MANAGED = PREFIX + "managed"
PACK_REF = PREFIX + "pack_ref"
DEPENDENCY_HASH = PREFIX + "dependency_hash"
PYTHON_VERSION = PREFIX + "python.version"
# Which registered runtime built the image (runtimes/); images from before it are Python's.
RUNTIME = PREFIX + "runtime"
REQUIREMENTS = PREFIX + "requirements"
INSTALLED = PREFIX + "installed"
CREATED = PREFIX + "created"
TOOL_VERSION = PREFIX + "tool.version"
BASE_IMAGE = PREFIX + "base.image"
INSTALLER = PREFIX + "installer"
# The exact distributions (name, version, wheel file, sha256) the image was built from.
LOCK = PREFIX + "lock"
# The repository (``<image_prefix>/<name>``) the image was built for: which configuration made it.
REPOSITORY = PREFIX + "repository"
# Build identity: a digest of the image's own filesystem layers and run configuration, taken from
# the unlabelled image at the labelling step (``content_identity``). An image built FROM ours
# inherits every label, this one too, but not our layers and config: it no longer verifies.
CONTENT = PREFIX + "content"

# Set by `base bootstrap` on the base images it makes (docker/bootstrap-base.sh).
BASE_MARKER = PREFIX + "base"
BASE_PYTHON_VERSION = PYTHON_VERSION
BASE_IDENTITY = PREFIX + "base.identity"
# The Debian suite the base image was bootstrapped from (read by people, not by the code).
BASE_SUITE = PREFIX + "base.suite"

# On containers. A container also inherits its image's labels: only those it was given itself
# (any ``PREFIX`` key) make it one of ours.
# Action containers (services/runner.py): every one, one execution's, a warm pool's. They carry
# ``PACK_REF`` too, the same key as their image.
RUN = PREFIX + "run"
EXECUTION_ID = PREFIX + "execution_id"
ACTION_REF = PREFIX + "action_ref"
POOL = PREFIX + "pool"
# Whose a container is (services/ownership.py): the lease id decides; ``host:pid`` is for people.
LEASE = PREFIX + "lease"
OWNER = PREFIX + "owner"
# Containers made only to read something out of an image (engine.py) or to fetch wheels (its
# value says which), so a crash between create and remove leaves something the pruner recognises.
HELPER = PREFIX + "helper"
# Fetch containers (services/wheels.py): which cache (this host's, this configuration's) and which
# work folder they belong to, so a later sweep can tell a dead build's container from a live one's.
CACHE = PREFIX + "cache"
WORK = PREFIX + "work"

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
    from ..runtimes import RUNTIMES, get_runtime  # imported here: runtimes/ imports this module

    # Its own label says; an image from before that label is the default runtime's (Python's).
    # Never guessed from a version label: images inherit their base's, Python's on our bases.
    named = labels.get(RUNTIME)
    runtime = get_runtime() if named is None else RUNTIMES.get(named)
    # A runtime this process does not know (another version's): listed, never valid to run.
    version = labels.get(runtime.version_label, "") if runtime is not None else ""
    created = _parse_time(labels.get(CREATED))
    return EnvironmentInfo(
        id=image_id,
        pack_ref=labels[PACK_REF],
        image=reference,
        runtime=runtime.name if runtime is not None else str(named)[:64],
        runtime_version=version,
        dependency_hash=labels.get(DEPENDENCY_HASH, ""),
        requirements=_json_list(labels.get(REQUIREMENTS)),
        installed_dependencies=_json_list(labels.get(INSTALLED)),
        executable_path=runtime.executable if runtime is not None else "",
        created_at=created,
        updated_at=created,
        is_valid=bool(labels.get(DEPENDENCY_HASH)) and bool(version),
        size_bytes=size_bytes,
    )


def content_identity(attrs: dict) -> str:
    """The digest ``CONTENT`` binds an image to: its RootFS layers (diff IDs, which push and pull
    keep) and the configuration a container runs with. Labels are not part of it, so the label
    step that adds it does not change it; any layer or run setting a derived image adds does."""
    config = attrs.get("Config") or {}
    document = {
        "layers": list((attrs.get("RootFS") or {}).get("Layers") or []),
        "env": config.get("Env") or [],
        "user": config.get("User") or "",
        "workdir": config.get("WorkingDir") or "",
        "cmd": config.get("Cmd") or [],
        "entrypoint": config.get("Entrypoint") or [],
        "volumes": sorted((config.get("Volumes") or {}).keys()),
        "shell": config.get("Shell") or [],
        "onbuild": config.get("OnBuild") or [],
        "stopsignal": config.get("StopSignal") or "",
        "healthcheck": config.get("Healthcheck") or {},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def is_built_by_us(attrs: dict) -> bool:
    """Whether an image (its engine inspect document) is a pack image as our build made it: the
    managed labels are there and ``CONTENT`` matches the image's own layers and configuration, so
    the labels are not inherited by an image built FROM one of ours."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    if labels.get(MANAGED) != "true" or not labels.get(PACK_REF) or not labels.get(DEPENDENCY_HASH):
        return False
    return bool(labels.get(CONTENT)) and labels.get(CONTENT) == content_identity(attrs)


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
