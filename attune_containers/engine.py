"""The engine layer: the one module that talks to the Docker SDK.

It speaks in plain values (image IDs, references, label dicts, bytes) and small frozen records
(``ImageRecord``, ``ContainerRecord``, ``ContainerState``, ``DiskUsage``, ``HistoryStep``), and raises
only this package's errors. The engine's documents are read here and only here: their key names,
time formats (RFC 3339 with nanoseconds, or epoch seconds), ``<none>`` placeholders and -1 sizes
are the engine's dialect, which the rest of the package never sees.

Streaming builds use the SDK's low-level ``APIClient`` (the models' ``build`` hides the log until
the end); everything else uses whichever side of the SDK is simpler.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import re
import select
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions

import docker

from .core import labels as L
from .core.execution import ResourceLimits, parse_size
from .errors import (
    AttuneContainersError,
    BuildError,
    ContainerInUseError,
    EngineError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    ImageConflictError,
    ImageInUseError,
    RegistryAuthError,
    RegistryError,
    RegistryTLSError,
    RegistryUnavailableError,
)

LogSink = Callable[[str], None]


# -- typed records of the engine's documents ----------------------------------------------------


_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """What a container of an image runs with: the inspect document's ``Config`` (labels aside)."""

    user: str = ""
    env: tuple[str, ...] = ()  # "NAME=value" entries, in the image's order
    working_dir: str = ""
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()  # mount points, sorted
    shell: tuple[str, ...] = ()
    on_build: tuple[str, ...] = ()
    stop_signal: str = ""
    healthcheck: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def env_value(self, name: str) -> str | None:
        """The value the image's ``ENV`` gives ``name``, or None."""
        for entry in self.env:
            key, _, value = entry.partition("=")
            if key == name:
                return value
        return None


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """An image, from a listing or an inspection. Only an inspection carries ``config`` and
    ``layers`` (a listing's ``config`` is None); everything else is the same from both."""

    id: str
    tags: tuple[str, ...] = ()  # "repository:tag"; the engine's "<none>:<none>" is left out
    digests: tuple[str, ...] = ()  # "repository@sha256:..."; "<none>@<none>" left out
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    created: datetime | None = None  # aware (UTC)
    size: int | None = None
    parent: str | None = None  # the image it was built on, when the engine knows it locally
    config: ImageConfig | None = None
    layers: tuple[str, ...] = ()  # RootFS diff IDs (an inspection only)

    @classmethod
    def from_summary(cls, doc: Mapping[str, Any]) -> ImageRecord:
        """From an entry of the engine's image list (``docker images``)."""
        return cls(
            id=doc["Id"],
            tags=_real_names(doc.get("RepoTags"), "<none>:<none>"),
            digests=_real_names(doc.get("RepoDigests"), "<none>@<none>"),
            labels=_labels(doc.get("Labels")),
            created=parse_engine_time(doc.get("Created")),
            size=_size(doc.get("Size")),
            parent=doc.get("ParentId") or None,
        )

    @classmethod
    def from_inspect(cls, doc: Mapping[str, Any]) -> ImageRecord:
        """From the engine's inspect document of an image (``docker image inspect``)."""
        config = doc.get("Config") or {}
        return cls(
            id=doc["Id"],
            tags=_real_names(doc.get("RepoTags"), "<none>:<none>"),
            digests=_real_names(doc.get("RepoDigests"), "<none>@<none>"),
            labels=_labels(config.get("Labels")),
            created=parse_engine_time(doc.get("Created")),
            size=_size(doc.get("Size")),
            parent=doc.get("Parent") or None,
            config=ImageConfig(
                user=config.get("User") or "",
                env=tuple(config.get("Env") or ()),
                working_dir=config.get("WorkingDir") or "",
                cmd=_strings(config.get("Cmd")),
                entrypoint=_strings(config.get("Entrypoint")),
                volumes=tuple(sorted(config.get("Volumes") or {})),
                shell=_strings(config.get("Shell")),
                on_build=_strings(config.get("OnBuild")),
                stop_signal=config.get("StopSignal") or "",
                healthcheck=dict(config.get("Healthcheck") or {}),
            ),
            layers=tuple((doc.get("RootFS") or {}).get("Layers") or ()),
        )


@dataclasses.dataclass(frozen=True)
class HistoryStep:
    """One step of an image's history (``docker history``)."""

    id: str | None  # None for a step whose image is not local (the engine's "<missing>")
    created_by: str
    size: int | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> HistoryStep:
        step_id = doc.get("Id")
        return cls(
            id=step_id if step_id and step_id != "<missing>" else None,
            created_by=doc.get("CreatedBy") or "",
            size=_size(doc.get("Size")),
        )


@dataclasses.dataclass(frozen=True)
class ContainerState:
    """What a container is doing or how it ended (the inspect document's ``State``)."""

    status: str  # created, running, paused, restarting, removing, exited, dead
    running: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None  # None: never started (the engine's zero time)
    finished_at: datetime | None = None  # None: not finished

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ContainerState:
        exit_code = doc.get("ExitCode")
        return cls(
            status=doc.get("Status") or "",
            running=bool(doc.get("Running")),
            exit_code=exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
            oom_killed=bool(doc.get("OOMKilled")),
            started_at=parse_engine_time(doc.get("StartedAt")),
            finished_at=parse_engine_time(doc.get("FinishedAt")),
        )


@dataclasses.dataclass(frozen=True)
class ContainerRecord:
    """A container, from a listing or an inspection. ``labels`` are all it carries, those it
    inherited from its image included. Only an inspection carries ``state``."""

    id: str
    name: str  # without the engine's leading "/"; the short ID when it has none
    image_id: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    status: str = ""  # created, running, exited, ... ("" when the engine did not say)
    created: datetime | None = None
    state: ContainerState | None = None

    @classmethod
    def from_summary(cls, doc: Mapping[str, Any]) -> ContainerRecord:
        """From an entry of the engine's container list (``docker ps -a``)."""
        names, state = doc.get("Names") or [], doc.get("State")
        return cls(
            id=doc["Id"],
            name=(names[0] if names else doc["Id"][:12]).lstrip("/"),
            image_id=doc.get("ImageID") or "",
            labels=_labels(doc.get("Labels")),
            status=state if isinstance(state, str) else "",
            created=parse_engine_time(doc.get("Created")),
        )

    @classmethod
    def from_inspect(cls, doc: Mapping[str, Any]) -> ContainerRecord:
        """From the engine's inspect document of a container."""
        state = ContainerState.from_doc(doc.get("State") or {})
        return cls(
            id=doc["Id"],
            name=(doc.get("Name") or doc["Id"][:12]).lstrip("/"),
            image_id=doc.get("Image") or "",
            labels=_labels((doc.get("Config") or {}).get("Labels")),
            status=state.status,
            created=parse_engine_time(doc.get("Created")),
            state=state,
        )


@dataclasses.dataclass(frozen=True)
class ImageUsage:
    """One image in the engine's disk accounting."""

    size: int | None
    shared_size: int | None  # bytes it shares with other images; None when the engine did not count

    @property
    def unique_size(self) -> int | None:
        """Bytes no other image shares: what removing only this image frees."""
        if self.size is None or self.shared_size is None:
            return None
        return self.size - self.shared_size


@dataclasses.dataclass(frozen=True)
class DiskUsage:
    """The engine's own accounting (``docker system df``)."""

    layers_size: int  # every image layer on the host, shared ones once
    images: Mapping[str, ImageUsage]  # by image ID
    containers: Mapping[str, int]  # writable-layer bytes by container ID

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> DiskUsage:
        return cls(
            layers_size=_size(doc.get("LayersSize")) or 0,
            images={i["Id"]: ImageUsage(_size(i.get("Size")), _size(i.get("SharedSize"))) for i in doc.get("Images") or []},
            containers={c["Id"]: _size(c.get("SizeRw")) or 0 for c in doc.get("Containers") or []},
        )


_ENGINE_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def parse_engine_time(value: object) -> datetime | None:
    """An engine time as an aware datetime: RFC 3339 with up to nanoseconds and ``Z`` (inspect
    documents; Python's parser takes at most microseconds) or epoch seconds (listings). None when
    missing, malformed, or the engine's zero time (``0001-01-01T00:00:00Z``: never happened)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    m = _ENGINE_TIME.fullmatch(value)
    if not m:
        return None
    fraction = f".{m.group(2)[:6]:0<6}" if m.group(2) else ""
    offset = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(m.group(1) + fraction + offset)
    except ValueError:  # matched the shape, not the calendar (month 13)
        return None


def _size(value: object) -> int | None:
    """A byte count; None for the engine's -1 (not computed) or anything that is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _labels(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _strings(value: object) -> tuple[str, ...]:
    # Cmd, Entrypoint, Shell and OnBuild are lists, or null when unset.
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _real_names(value: object, placeholder: str) -> tuple[str, ...]:
    return tuple(n for n in value if n != placeholder) if isinstance(value, list) else ()


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn SDK and transport errors into ours, with a message a person can act on."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise EnvironmentNotFoundError(f"{what}: image not found ({exc.explanation})") from None
    except docker.errors.NotFound as exc:
        raise EngineError(f"{what}: not found ({exc.explanation})") from None
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise ImageInUseError(f"{what}: {exc.explanation}") from None
        raise EngineError(f"{what}: the engine answered {exc.status_code}: {exc.explanation}") from None
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise EngineUnavailableError(
            f"{what}: the Docker engine does not answer ({exc}). Is dockerd running? `make engine` starts one on a fresh machine."
        ) from None


# The engine reports a registry's failures only as text (no code in the API, and docker-py turns a
# refused pull into a 404 like a missing image): these fragments of dockerd's and the registry's
# messages tell them apart. Order matters: a refused login mentions the URL it dialled too.
_REGISTRY_PROBLEMS: tuple[tuple[type[RegistryError], tuple[str, ...], str], ...] = (
    (
        RegistryAuthError,
        (
            "unauthorized",
            "authentication required",
            "no basic auth credentials",
            "may require 'docker login'",
            "denied: requested access",
        ),
        "the registry refused the credentials (check registry_username / registry_password_file, or the engine's `docker login`)",
    ),
    (
        RegistryTLSError,
        ("x509:", "certificate", "tls: "),
        "the registry's certificate is not trusted by this engine (put its CA in "
        "/etc/docker/certs.d/<host:port>/ca.crt on this host)",
    ),
    (
        RegistryUnavailableError,
        (
            "connection refused",
            "no such host",
            "i/o timeout",
            "no route to host",
            "network is unreachable",
            "connection reset",
            "dial tcp",
        ),
        "the registry does not answer",
    ),
)


def registry_problem(what: str, message: str) -> RegistryError | None:
    """The typed error for a registry failure the engine described in ``message``, or None."""
    low = message.lower()
    detail = message.removeprefix(f"{what}: ")
    for error, fragments, hint in _REGISTRY_PROBLEMS:
        if any(f in low for f in fragments):
            return error(f"{what}: {hint} ({detail})")
    return None


@contextlib.contextmanager
def _registry_errors(what: str) -> Iterator[None]:
    """translate_errors, then a registry failure named by its cause (auth, TLS, unreachable)."""
    try:
        with translate_errors(what):
            yield
    except (EngineError, EnvironmentNotFoundError) as exc:
        typed = registry_problem(what, str(exc))
        if typed is None:
            raise
        raise typed from None


def _auth(auth: Mapping[str, str] | None) -> dict[str, str] | None:
    # None lets docker-py use the engine client's own login (DOCKER_CONFIG or ~/.docker/config.json).
    return dict(auth) if auth else None


class Engine:
    """A connection to one Docker engine."""

    def __init__(self, *, timeout: int = 120, base_url: str | None = None) -> None:
        self._timeout = timeout
        self._base_url = base_url
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with translate_errors("connecting to the engine"):
                if self._base_url:
                    self._client = docker.DockerClient(base_url=self._base_url, timeout=self._timeout)
                else:
                    self._client = docker.from_env(timeout=self._timeout)
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def ping(self) -> None:
        with translate_errors("pinging the engine"):
            self.api.ping()

    # -- images -------------------------------------------------------------------------------

    def inspect_image(self, reference: str) -> ImageRecord | None:
        """An image with its configuration and layers, or None when it does not exist."""
        try:
            with translate_errors(f"inspecting {reference}"):
                return ImageRecord.from_inspect(self.api.inspect_image(reference))
        except EnvironmentNotFoundError:
            return None

    def list_images(
        self, labels: dict[str, str] | None = None, *, dangling: bool | None = None, intermediate: bool = False
    ) -> list[ImageRecord]:
        """Images (without their configuration) filtered by labels; one API call.
        ``intermediate`` adds the images that only exist as parents of others."""
        filters: dict[str, Any] = {}
        if labels:
            filters["label"] = [f"{k}={v}" for k, v in labels.items()]
        if dangling is not None:
            filters["dangling"] = dangling
        with translate_errors("listing images"):
            return [ImageRecord.from_summary(doc) for doc in self.api.images(all=intermediate, filters=filters or None)]

    def image_history(self, image_id: str) -> list[HistoryStep]:
        """The steps that made an image, newest first."""
        with translate_errors(f"reading the history of {image_id}"):
            return [HistoryStep.from_doc(doc) for doc in self.api.history(image_id)]

    def remove_image(self, reference: str, *, force: bool = False, noprune: bool = False) -> None:
        """Remove an image. Unforced, the engine refuses (ImageInUseError) while a container uses
        it; ``noprune`` keeps its untagged parents."""
        try:
            with translate_errors(f"removing {reference}"):
                self.api.remove_image(reference, force=force, noprune=noprune)
        except ImageInUseError as exc:
            # The engine's 409 has several causes; only some are a container. No type tells them
            # apart: the API has no cause code and docker-py raises one APIError for every 409, so
            # the engine's message is the only sign (tests/engine/test_prefix_scope.py meets two causes).
            text = str(exc)
            if "being used by" in text or "is using its referenced image" in text:
                raise
            if "referenced in multiple repositories" in text:
                raise ImageConflictError(
                    f"{text} (the image has other tags besides the one removed; no container uses it)"
                ) from None
            if "dependent child images" in text:
                raise ImageConflictError(f"{text} (other images are built on it)") from None
            raise ImageConflictError(text) from None

    def disk_usage(self) -> DiskUsage:
        """The engine's own accounting (``docker system df``)."""
        with translate_errors("reading the engine's disk usage"):
            return DiskUsage.from_doc(self.api.df())

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        with translate_errors(f"tagging {image_id} as {repository}:{tag}"):
            self.api.tag(image_id, repository, tag)

    def pull(self, reference: str, *, auth: Mapping[str, str] | None = None) -> None:
        """Pull an image, by tag (``repo:tag``) or by digest (``repo@sha256:...``, which the
        registry cannot answer with other content). Credentials: ``auth`` (username, password),
        else the engine client's own login (DOCKER_CONFIG, ~/.docker/config.json); never printed.
        A registry that refuses them, is not trusted or does not answer raises the RegistryError
        that says which."""
        if "@" in reference:
            repository, tag = reference.split("@", 1)
        else:
            repository, _, tag = reference.rpartition(":") if ":" in reference.split("/")[-1] else (reference, "", "latest")
        with _registry_errors(f"pulling {reference}"):
            for status in self.api.pull(repository, tag=tag or "latest", stream=True, decode=True, auth_config=_auth(auth)):
                if "error" in status:
                    raise EngineError(f"pulling {reference}: {status['error']}")

    def check_registry(self, registry: str, auth: Mapping[str, str]) -> None:
        """Have the engine log in to ``registry`` with ``auth`` (its /auth: TLS, reachability and the
        credentials, nothing pulled or stored on disk); raises the RegistryError that says which."""
        with _registry_errors(f"logging in to {registry}"):
            self.api.login(auth["username"], password=auth["password"], registry=registry, reauth=True)

    def push(self, reference: str, *, auth: Mapping[str, str] | None = None) -> str | None:
        """Push an image; return the manifest digest the registry stored it under (``sha256:...``).
        Credentials as for ``pull``, never printed."""
        repository, tag = reference.rsplit(":", 1)
        digest = None
        with _registry_errors(f"pushing {reference}"):
            for status in self.api.push(repository, tag=tag, stream=True, decode=True, auth_config=_auth(auth)):
                if "error" in status:
                    raise EngineError(f"pushing {reference}: {status['error']}")
                aux = status.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                    digest = aux["Digest"]
        return digest

    def in_registry(self, reference: str, *, auth: Mapping[str, str] | None = None) -> bool:
        """Whether the registry holds ``reference`` (a manifest look-up: nothing is pulled).

        Only the registry's "manifest unknown" (the engine's 404) means it does not; a registry
        that cannot be reached or refuses the credentials raises (a RegistryError, else
        EngineError), never passing for an absent image."""
        with _registry_errors(f"looking up {reference} in its registry"):
            try:
                self.api.inspect_distribution(reference, auth_config=_auth(auth))
            except docker.errors.NotFound as exc:
                if registry_problem(reference, str(exc.explanation or "")) is not None:
                    raise
                return False
        return True

    # -- builds -------------------------------------------------------------------------------

    def label(self, image_id: str, *, tag: str, labels: dict[str, str], timeout: float | None = None) -> str:
        """Tag a layer-less image on top of ``image_id`` that carries ``labels``; return its ID.

        A build of ``FROM <id>`` (the SDK's one-Dockerfile context): the engine tags only a
        finished build, so the tag never lands on an unlabelled image."""
        if not _IMAGE_ID.fullmatch(image_id):
            raise BuildError(f"unexpected image ID from the engine: {image_id!r}")
        context = docker.utils.mkbuildcontext(io.BytesIO(f"FROM {image_id}\n".encode()))
        try:
            return self.build(context, tag=tag, labels=labels, timeout=timeout)
        finally:
            context.close()

    def build(
        self,
        context: bytes | IO[bytes],
        *,
        tag: str | None = None,
        labels: dict[str, str] | None = None,
        memory: str | int | None = None,
        timeout: float | None = None,
        on_log: LogSink | None = None,
        network_mode: str | None = None,
        nocache: bool = False,
    ) -> str:
        """Build a tar context; return the image ID. Raise BuildError with the log's telling lines.

        Intermediate containers are removed whatever happens (``forcerm``); a tag is applied by the
        engine only when the build succeeded, so a failed build never leaves a tagged image.

        ``timeout`` is wall-clock seconds for the whole build (not a read timeout: a build that
        prints a line now and then is still stopped). At the deadline the stream is closed, which
        makes the engine cancel the build, and the step's container is removed if it is still there.
        """
        tail: collections.deque[str] = collections.deque(maxlen=400)
        image_id: str | None = None
        memory_bytes = parse_size(memory) if memory is not None else None  # binary units, as docker's
        started = time.monotonic()
        expired = threading.Event()
        running: list[str] = []  # the step container the engine reported last ("Running in ...")
        watchdog: threading.Timer | None = None
        try:
            with translate_errors("building an image"):
                stream = self.api.build(
                    fileobj=io.BytesIO(context) if isinstance(context, bytes) else context,
                    custom_context=True,
                    tag=tag,
                    labels=labels,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                    timeout=max(1, int(timeout)) + 5 if timeout else None,
                    container_limits={"memory": memory_bytes, "memswap": memory_bytes} if memory_bytes else None,
                    network_mode=network_mode,
                    nocache=nocache,
                )
                if timeout:
                    # The SDK's stream holds the HTTP response; shutting its socket down ends the
                    # read at once, and the engine cancels a build whose client went away.
                    def expire() -> None:
                        expired.set()
                        _close_response(stream, shutdown=True)

                    watchdog = threading.Timer(max(0.0, timeout - (time.monotonic() - started)), expire)
                    watchdog.daemon = True
                    watchdog.start()
                for chunk in stream:
                    if "stream" in chunk:
                        for line in chunk["stream"].splitlines():
                            tail.append(line)
                            if line.startswith(" ---> Running in "):
                                running[:] = [line.rsplit(" ", 1)[-1]]
                            if on_log is not None:
                                on_log(line)
                    elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                        image_id = chunk["aux"]["ID"]
                    elif "error" in chunk:
                        raise BuildError(f"the build failed: {chunk['error'].strip()}", telling_lines(list(tail)))
        except (requests.exceptions.RequestException, OSError, ValueError, AttributeError, urllib3.exceptions.HTTPError) as exc:
            if not expired.is_set():
                if isinstance(exc, (AttributeError, ValueError)):
                    raise  # only a closed stream explains these; anything else is a bug to see
                raise BuildError(
                    f"the connection to the engine broke during the build: {type(exc).__name__}", telling_lines(list(tail))
                ) from None
        except AttuneContainersError:
            if not expired.is_set():
                raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if expired.is_set():
            for container_id in running:
                self.remove_container(container_id, attempts=3)
            raise BuildError(
                f"the build took longer than {int(timeout or 0)} s (build_timeout) and was stopped", telling_lines(list(tail))
            )
        if image_id is None:
            raise BuildError("the build ended without an image", telling_lines(list(tail)))
        return image_id

    # -- containers ---------------------------------------------------------------------------

    def find_containers(self, *, ancestor: str | None = None, statuses: list[str] | None = None) -> list[ContainerRecord]:
        """Containers (without their state), running or not. ``ancestor``: only those whose image is that image
        or is built on it; ``statuses``: only those in one of these states (created, exited, ...)."""
        filters: dict[str, Any] = {}
        if ancestor:
            filters["ancestor"] = ancestor
        if statuses:
            filters["status"] = list(statuses)
        with translate_errors("listing containers"):
            return [ContainerRecord.from_summary(doc) for doc in self.api.containers(all=True, filters=filters or None)]

    def inspect_container(self, container_id: str) -> ContainerRecord | None:
        """A container with its state, or None when it does not exist."""
        with translate_errors(f"inspecting container {container_id[:12]}"):
            try:
                return ContainerRecord.from_inspect(self.api.inspect_container(container_id))
            except docker.errors.NotFound:
                return None

    def remove_stopped_container(self, container_id: str) -> bool:
        """Remove a container that is not running; never forced, so the engine refuses
        (ContainerInUseError) one that runs. False when it was already gone."""
        try:
            with translate_errors(f"removing container {container_id[:12]}"):
                try:
                    self.api.remove_container(container_id, force=False)
                except docker.errors.NotFound:
                    return False
        except ImageInUseError as exc:  # the engine's 409: it runs
            raise ContainerInUseError(str(exc)) from None
        return True

    def read_file(self, image: str, path: str, *, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        """A file's bytes from an image, without starting a container.

        What an image holds was written by code we do not trust: the size is checked before
        anything is read (the engine's stat, then the tar header, then the bytes themselves), and
        only a regular file is returned. Larger than ``max_bytes``: EngineError, nothing read.
        """
        too_large = f"{path} in {image} is larger than {max_bytes} bytes"
        with translate_errors(f"reading {path} from {image}"):
            container = self.api.create_container(
                image, command=["/nonexistent"], network_disabled=True, labels={L.HELPER: "read-file"}
            )
            try:
                stream, info = self.api.get_archive(container["Id"], path)
                try:
                    if int((info or {}).get("size") or 0) > max_bytes:
                        raise EngineError(too_large)
                    archive = io.BytesIO()
                    for chunk in stream:
                        archive.write(chunk)
                        if archive.tell() > max_bytes + 64 * 1024:  # the tar's own headers and padding
                            raise EngineError(too_large)
                    archive.seek(0)
                finally:
                    # An unread archive keeps the engine copying, and the removal below waits on it.
                    _close_response(stream)
            finally:
                self.api.remove_container(container["Id"], force=True)
        try:
            with tarfile.open(fileobj=archive) as tar:
                member = tar.next()
                if member is None or not member.isreg():
                    raise EngineError(f"{path} in {image} is not a regular file")
                if member.size > max_bytes:
                    raise EngineError(too_large)
                extracted = tar.extractfile(member)
                return extracted.read(max_bytes + 1) if extracted is not None else b""
        except tarfile.TarError as exc:
            raise EngineError(f"reading {path} from {image}: not a well-formed archive ({exc})") from None

    def run_once(self, image: str, command: list[str], *, timeout: int = 60) -> tuple[int, str]:
        """Run a short hardened command in ``image``; return (exit code, combined output).

        Used for checks (``validate``, base image versions), not for actions: the container is
        removed in every case.
        """
        with translate_errors(f"running a check in {image}"):
            container = self.client.containers.create(
                image,
                command=command,
                network_mode="none",
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit="256m",
                memswap_limit="256m",
                pids_limit=64,
                labels={L.HELPER: "check"},
            )
            try:
                container.start()
                status = container.wait(timeout=timeout)
                output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
                return int(status.get("StatusCode", -1)), output
            except requests.exceptions.ReadTimeout:
                return -1, f"timed out after {timeout} s"
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)

    # -- action containers --------------------------------------------------------------------

    def create_container(self, run: ContainerRun, *, auto_remove: bool = False) -> str:
        """Create (not start) a hardened container for one action; return its ID.

        ``auto_remove``: the engine removes it as soon as it exits, as ``docker run --rm`` does.
        """
        limits = run.limits
        memory = parse_size(limits.memory) if limits.memory else None
        host_config = self.api.create_host_config(
            mem_limit=memory,
            memswap_limit=memory,  # swap equal to memory: no swap
            nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
            pids_limit=limits.pids,
            ulimits=[docker.types.Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile)] if limits.nofile else None,
            network_mode=limits.network or "none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={parse_size(limits.tmp_size or '64m')},mode=1777"},
            cap_drop=["ALL"],
            cap_add=list(run.cap_add) or None,
            security_opt=["no-new-privileges"],
            init=True,  # tini as PID 1 reaps zombies, so a fork bomb cannot leave the pids slot full
            auto_remove=auto_remove,
            mounts=[docker.types.Mount(target=t, source=s, type="bind", read_only=ro) for s, t, ro in run.mounts],
        )
        with translate_errors(f"creating a container from {run.image}"):
            created = self.api.create_container(
                run.image,
                command=run.command,
                user=run.user,
                working_dir=run.working_dir,
                environment=run.environment,
                labels=run.labels,
                stdin_open=True,  # with detach=False the SDK also sets StdinOnce: EOF closes stdin
                host_config=host_config,
                network_disabled=(limits.network or "none") == "none",
                use_config_proxy=False,  # nothing of the host's client config enters the container
            )
        return created["Id"]

    def attach(self, container_id: str) -> AttachedStreams:
        """Attach stdin, stdout and stderr (before start, so no output is missed)."""
        with translate_errors(f"attaching to {container_id[:12]}"):
            sock = self.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        return AttachedStreams(getattr(sock, "_sock", sock), sock)

    def start(self, container_id: str) -> None:
        with translate_errors(f"starting {container_id[:12]}"):
            self.api.start(container_id)

    def run_attached(
        self, container_id: str, stdin: bytes, timeout: float, on_frame: Callable[[int, bytes], None]
    ) -> tuple[int | None, bool, float]:
        """Attach, start, write ``stdin`` then EOF, and pass output frames to ``on_frame`` until the
        container ends or ``timeout`` seconds pass (then it is killed).

        Returns (exit code, timed out, seconds from start to end). The container is not removed:
        the caller still reads its state (OOMKilled) and removes it.
        """
        streams = self.attach(container_id)
        timed_out = False
        try:
            self.start(container_id)
            started = time.monotonic()
            deadline = started + timeout
            streams.send_stdin(stdin)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    self.kill(container_id)
                    break
                frames = streams.read(min(remaining, 1.0))
                if frames is None:
                    break
                for stream, data in frames:
                    on_frame(stream, data)
        finally:
            streams.close()
        elapsed = time.monotonic() - started
        return self.wait(container_id, timeout=10), timed_out, elapsed

    def kill(self, container_id: str) -> None:
        try:
            with translate_errors(f"killing {container_id[:12]}"):
                self.api.kill(container_id)
        except (EngineError, ImageInUseError):
            pass  # already stopped: what we wanted

    def wait(self, container_id: str, timeout: float) -> int | None:
        """The exit code once the container has stopped, or None if it has not by ``timeout``."""
        try:
            with translate_errors(f"waiting for {container_id[:12]}"):
                # The stub says int; the SDK hands it to requests as a read timeout, where a float is fine.
                status = self.api.wait(container_id, timeout=timeout)  # type: ignore[arg-type]
                return int(status.get("StatusCode", -1))
        except EngineUnavailableError:
            raise
        except EngineError:
            return None
        except requests.exceptions.ReadTimeout:
            return None

    def saw_oom(self, container_id: str, since: float) -> bool:
        """Whether the engine reported an OOM kill in the container since ``since`` (epoch s).

        Read from the engine's event log, which keeps it after an auto-removed container is
        gone and reports it while a warm container still runs (OOMKilled is set only at exit).
        """
        with translate_errors("reading the engine's events"):
            # Fractional epoch seconds as text (the stub allows only int or datetime): the SDK passes
            # them on, and the engine takes them, so an event is not missed by rounding.
            events = self.api.events(
                since=f"{since - 1:.3f}",
                until=f"{time.time():.3f}",  # type: ignore[call-overload]
                filters={"container": container_id, "event": "oom"},
                decode=True,
            )
            try:
                return any(True for _ in events)
            finally:
                events.close()

    def container_state(self, container_id: str) -> ContainerState | None:
        """The container's state, or None when it is gone (or the engine failed to say)."""
        try:
            with translate_errors(f"inspecting {container_id[:12]}"):
                return ContainerState.from_doc(self.api.inspect_container(container_id).get("State") or {})
        except EngineError:
            return None

    def remove_container(self, container_id: str, *, attempts: int = 1, delay: float = 0.5) -> bool:
        """Force-remove a container; True once it is gone. Retries ride out an engine restart."""
        for attempt in range(attempts):
            try:
                with translate_errors(f"removing container {container_id[:12]}"):
                    try:
                        self.api.remove_container(container_id, force=True)
                    except docker.errors.NotFound:
                        pass  # gone already
                    except docker.errors.APIError as exc:
                        # A forced removal conflicts (409) only with one under way (auto-remove):
                        # either way it goes.
                        if exc.status_code != 409:
                            raise
                return True
            except (EngineError, EngineUnavailableError):
                pass  # the engine failed (or is restarting): try again
            if attempt + 1 < attempts:
                time.sleep(delay)
        return False

    def list_containers(self, labels: dict[str, str] | list[str], *, all: bool = True) -> list[ContainerRecord]:
        """Containers (without their state) filtered by labels (``{"k": "v"}`` or ``["k"]`` for
        presence)."""
        wanted = [f"{k}={v}" for k, v in labels.items()] if isinstance(labels, dict) else list(labels)
        with translate_errors("listing containers"):
            return [ContainerRecord.from_summary(doc) for doc in self.api.containers(all=all, filters={"label": wanted})]

    # -- one-container builds: a step run in a container, then committed (issue 11) ------------

    def create_step_container(
        self,
        image: str,
        command: list[str],
        *,
        mounts: list[tuple[str, str, bool]],
        name: str,
        memory: str | int | None = None,
        cap_add: tuple[str, ...] = (),
        tmp_size: str = "1g",
        read_only: bool = False,
    ) -> str:
        """Create (not start) a build step's container: no network, every capability dropped but
        ``cap_add``, no environment, labels or working directory of ours, since ``commit`` merges
        the container's own config into the image's. Bind mounts go under the ``/tmp`` tmpfs, so
        neither they nor their mount points are part of a commit. ``read_only``: a read-only root
        filesystem (the one-layer build keeps only what its bind-mounted folder holds)."""
        if isinstance(memory, str):
            memory = parse_size(memory)
        host_config = self.api.create_host_config(
            mem_limit=memory,
            memswap_limit=memory,
            pids_limit=1024,
            network_mode="none",
            tmpfs={path: f"rw,nosuid,nodev,size={parse_size(tmp_size)},mode=1777" for path in ("/tmp", "/var/tmp", "/dev/shm")},
            cap_drop=["ALL"],
            cap_add=list(cap_add) or None,
            security_opt=["no-new-privileges"],
            read_only=read_only,
            mounts=[docker.types.Mount(target=t, source=s, type="bind", read_only=ro) for s, t, ro in mounts],
        )
        with translate_errors(f"creating a build container from {image}"):
            created = self.api.create_container(
                image,
                command=command,
                user="0:0",
                name=name,
                host_config=host_config,
                network_disabled=True,
                use_config_proxy=False,
            )
        return created["Id"]

    def commit(self, container_id: str, config: dict[str, Any]) -> str:
        """Commit a stopped container as an untagged image with ``config`` (Env, User, Cmd,
        WorkingDir, Labels ...: a config object, never Dockerfile text); return its ID."""
        with translate_errors(f"committing {container_id[:12]}"):
            return self.api.commit(container_id, conf=config, pause=False)["Id"]

    def image_config_bytes(self, image_id: str, *, limit: int = 4 * 1024 * 1024) -> bytes:
        """An image's config document exactly as the engine stores it (its sha256 is the ID),
        read from ``docker save``'s stream, which is closed as soon as the config is read (this
        engine writes it first, before the layers). Checked against the ID."""
        if not _IMAGE_ID.fullmatch(image_id):
            raise EngineError(f"not an image ID: {image_id!r}")
        digest = image_id.removeprefix("sha256:")
        wanted = {f"{digest}.json", f"blobs/sha256/{digest}"}  # docker-archive; OCI layout (newer engines)
        found: bytes | None = None
        with translate_errors(f"reading the config of {image_id[:19]}"):
            stream = self.api.get_image(image_id, chunk_size=64 * 1024)
            try:
                with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as tar:
                    for member in tar:
                        if member.name in wanted and member.isreg() and member.size <= limit:
                            extracted = tar.extractfile(member)
                            found = extracted.read() if extracted is not None else None
                            break
            except tarfile.TarError as exc:
                raise EngineError(f"the save stream of {image_id[:19]} is not a tar ({exc})") from None
            finally:
                _close_response(stream)
        if found is None or "sha256:" + hashlib.sha256(found).hexdigest() != image_id:
            raise EngineError(f"the save stream of {image_id[:19]} does not hold that image's config")
        return found

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """``docker load`` a tar stream given in pieces (sent as it is made, never whole in
        memory); return what the engine says it loaded ("repo:tag" or image IDs)."""
        loaded: list[str] = []
        with translate_errors("loading an image"):
            for message in self.api.load_image(_coalesced(chunks), quiet=True) or ():
                if message.get("error") or message.get("errorDetail"):
                    detail = message.get("error") or (message.get("errorDetail") or {}).get("message")
                    raise BuildError(f"the engine refused the image: {detail}")
                text = str(message.get("stream") or "").strip()
                for prefix in ("Loaded image: ", "Loaded image ID: "):
                    if text.startswith(prefix):
                        loaded.append(text[len(prefix) :])
        return loaded

    def containers_named(self, prefix: str) -> list[ContainerRecord]:
        """Containers (any state) whose name starts with ``prefix``."""
        with translate_errors("listing containers"):
            found = self.api.containers(all=True, filters={"name": prefix})
        records = [ContainerRecord.from_summary(c) for c in found]
        return [c for c in records if c.name.startswith(prefix)]


@dataclasses.dataclass(frozen=True)
class ContainerRun:
    """Everything the engine needs to create one action container."""

    image: str
    command: list[str]
    limits: ResourceLimits
    environment: dict[str, str]
    labels: dict[str, str]
    mounts: list[tuple[str, str, bool]]  # (host source, container target, read only)
    user: str
    working_dir: str = "/tmp"
    # Capabilities kept on top of an empty set: the runner loop's supervisor needs SETUID, SETGID
    # and KILL to run each execution as another uid and end it; nothing else ever gets any.
    cap_add: tuple[str, ...] = ()


class AttachedStreams:
    """The attach connection of one container: write stdin once, then read demultiplexed output.

    Reads wait at most the timeout given, so the caller keeps control of the deadline.
    """

    def __init__(self, sock: socket.socket, owner: Any) -> None:
        self._sock = sock
        self._owner = owner  # keeps the SDK's response object (and so the socket) alive
        self._buffer = b""
        self.closed = False

    def send_stdin(self, data: bytes) -> None:
        """Write ``data`` to the container's stdin, then EOF."""
        self.send(data)
        try:
            self._sock.shutdown(socket.SHUT_WR)  # EOF on the container's stdin
        except OSError as exc:
            raise EngineError(f"closing the container's input failed: {exc}") from None

    def send(self, data: bytes) -> None:
        """Write ``data`` to the container's stdin and keep it open (warm containers)."""
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise EngineError(f"writing to the container failed: {exc}") from None

    def read(self, timeout: float) -> list[tuple[int, bytes]] | None:
        """Frames ``(1 stdout | 2 stderr, bytes)`` that arrived within ``timeout``; None at EOF."""
        if self.closed:
            return None
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not ready:
            return []
        try:
            chunk = self._sock.recv(65536)
        except OSError as exc:
            raise EngineUnavailableError(f"the connection to the container broke: {exc}") from None
        if not chunk:
            self.closed = True
            return None
        self._buffer += chunk
        frames = []
        while len(self._buffer) >= 8:
            stream, size = self._buffer[0], struct.unpack(">I", self._buffer[4:8])[0]
            if len(self._buffer) < 8 + size:
                break
            frames.append((stream, self._buffer[8 : 8 + size]))
            self._buffer = self._buffer[8 + size :]
        return frames

    def has_pending(self) -> bool:
        """Whether something (output, or EOF) waits to be read, without waiting for it."""
        if self.closed:
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(Exception):
            self._owner.close()
        self.closed = True


def _coalesced(chunks: Iterator[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """Pieces joined into blocks of about ``size``: each piece sent alone is a chunk of its own
    on the wire (a tar header is 512 bytes; a venv has thousands)."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's streamed responses)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _close_response(stream: Any, *, shutdown: bool = False) -> None:
    """Close the HTTP response behind one of the SDK's streaming generators (it keeps it as its
    ``response`` argument and offers no other handle). ``shutdown`` also ends a read blocked in
    another thread at once."""
    response = None
    with contextlib.suppress(Exception):
        response = stream.gi_frame.f_locals.get("response")
    if response is None:
        return
    if shutdown:
        with contextlib.suppress(Exception):
            response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def telling_lines(log: list[str], limit: int = 25) -> list[str]:
    """The lines of a build log that explain a failure: pip's ERROR lines, else the last lines."""
    errors = [line for line in log if line.lstrip().startswith(("ERROR", "error:", "×", "╰─>"))]
    picked = errors if errors else log
    return [line.rstrip() for line in picked[-limit:] if line.strip()]
