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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from .spec import EnvironmentInfo

PREFIX = "io.attune.containers."
MANAGED = PREFIX + "managed"
PACK_REF = PREFIX + "pack_ref"
DEPENDENCY_HASH = PREFIX + "dependency_hash"
PYTHON_VERSION = PREFIX + "python.version"
# The exact Node.js version of a Node pack image, and of a bootstrapped Node base image.
NODEJS_VERSION = PREFIX + "nodejs.version"
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


def environment_from_image(
    image_id: str, reference: str, labels: Mapping[str, str], size_bytes: int | None = None
) -> EnvironmentInfo | None:
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


class RunConfig(Protocol):
    """What ``content_identity`` reads of an image's run configuration (the engine layer's
    ``ImageConfig`` is one; the core does not import the engine)."""

    @property
    def user(self) -> str: ...
    @property
    def env(self) -> tuple[str, ...]: ...
    @property
    def working_dir(self) -> str: ...
    @property
    def cmd(self) -> tuple[str, ...]: ...
    @property
    def entrypoint(self) -> tuple[str, ...]: ...
    @property
    def volumes(self) -> tuple[str, ...]: ...
    @property
    def shell(self) -> tuple[str, ...]: ...
    @property
    def on_build(self) -> tuple[str, ...]: ...
    @property
    def stop_signal(self) -> str: ...
    @property
    def healthcheck(self) -> Mapping[str, Any]: ...


class InspectedImage(Protocol):
    """What the label checks read of an inspected image (the engine layer's ``ImageRecord``)."""

    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def layers(self) -> tuple[str, ...]: ...
    @property
    def config(self) -> RunConfig | None: ...


def content_identity(image: InspectedImage | None) -> str:
    """The digest ``CONTENT`` binds an image to: its RootFS layers (diff IDs, which push and pull
    keep) and the configuration a container runs with. Labels are not part of it, so the label
    step that adds it does not change it; any layer or run setting a derived image adds does.

    The document's keys and shapes are those of the first version: images already labelled carry
    its digest. ValueError for an image that is gone (None) or whose configuration is unknown (a
    listing's record): no identity rather than a wrong one."""
    if image is None:
        raise ValueError("the image is gone: it has no content identity")
    config = image.config
    if config is None:
        raise ValueError("the image's configuration is unknown: content identity needs an inspected image")
    document = {
        "layers": list(image.layers),
        "env": list(config.env),
        "user": config.user,
        "workdir": config.working_dir,
        "cmd": list(config.cmd),
        "entrypoint": list(config.entrypoint),
        "volumes": sorted(config.volumes),
        "shell": list(config.shell),
        "onbuild": list(config.on_build),
        "stopsignal": config.stop_signal,
        "healthcheck": dict(config.healthcheck),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def is_built_by_us(image: InspectedImage) -> bool:
    """Whether an inspected image is a pack image as our build made it: the managed labels are
    there and ``CONTENT`` matches the image's own layers and configuration, so the labels are not
    inherited by an image built FROM one of ours."""
    labels = image.labels
    if labels.get(MANAGED) != "true" or not labels.get(PACK_REF) or not labels.get(DEPENDENCY_HASH):
        return False
    return bool(labels.get(CONTENT)) and labels.get(CONTENT) == content_identity(image)


def _json_list(value: str | None) -> list[str]:
    try:
        data = json.loads(value) if value else []
    except ValueError:
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def _parse_time(value: str | None) -> datetime:
    try:
        return datetime.fromisoformat(value) if value else datetime.fromtimestamp(0, UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
