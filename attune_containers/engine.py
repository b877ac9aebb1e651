"""The engine layer: the one module that talks to the Docker SDK.

It speaks in plain values (image IDs, references, label dicts, bytes) and raises only this
package's errors. Streaming builds use the SDK's low-level ``APIClient`` (the models' ``build``
hides the log until the end); everything else uses whichever side of the SDK is simpler.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import select
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

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
)

LogSink = Callable[[str], None]

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
            f"{what}: the Docker engine does not answer ({exc}). Is dockerd running? "
            "`make engine` starts one on a fresh machine."
        ) from None


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

    def inspect_image(self, reference: str) -> dict[str, Any] | None:
        """The engine's inspect document of an image, or None when it does not exist."""
        try:
            with translate_errors(f"inspecting {reference}"):
                return self.api.inspect_image(reference)
        except EnvironmentNotFoundError:
            return None

    def list_images(
        self, labels: dict[str, str] | None = None, *, dangling: bool | None = None, intermediate: bool = False
    ) -> list[dict[str, Any]]:
        """Image summaries (Id, ParentId, RepoTags, Labels, Created, Size) filtered by labels; one
        API call. ``intermediate`` adds the images that only exist as parents of others."""
        filters: dict[str, Any] = {}
        if labels:
            filters["label"] = [f"{k}={v}" for k, v in labels.items()]
        if dangling is not None:
            filters["dangling"] = dangling
        with translate_errors("listing images"):
            return self.api.images(all=intermediate, filters=filters or None)

    def image_history(self, image_id: str) -> list[dict[str, Any]]:
        """The steps that made an image, newest first (CreatedBy, Size, Id)."""
        with translate_errors(f"reading the history of {image_id}"):
            return self.api.history(image_id)

    def remove_image(self, reference: str, *, force: bool = False, noprune: bool = False) -> None:
        """Remove an image. Unforced, the engine refuses (ImageInUseError) while a container uses
        it; ``noprune`` keeps its untagged parents."""
        try:
            with translate_errors(f"removing {reference}"):
                self.api.remove_image(reference, force=force, noprune=noprune)
        except ImageInUseError as exc:
            # The engine's 409 has several causes; only some are a container.
            text = str(exc)
            if "being used by" in text or "is using its referenced image" in text:
                raise
            if "referenced in multiple repositories" in text:
                raise ImageConflictError(f"{text} (the image has other tags besides the one removed; "
                                         "no container uses it)") from None
            if "dependent child images" in text:
                raise ImageConflictError(f"{text} (other images are built on it)") from None
            raise ImageConflictError(text) from None

    def disk_usage(self) -> dict[str, Any]:
        """The engine's own accounting (``docker system df``): LayersSize, Images[].Size and
        SharedSize, Containers[].SizeRw."""
        with translate_errors("reading the engine's disk usage"):
            return self.api.df()

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        with translate_errors(f"tagging {image_id} as {repository}:{tag}"):
            self.api.tag(image_id, repository, tag)

    def pull(self, reference: str) -> None:
        """Pull an image, by tag (``repo:tag``) or by digest (``repo@sha256:...``, which the
        registry cannot answer with other content); credentials come from the engine's own login
        (~/.docker/config.json)."""
        if "@" in reference:
            repository, tag = reference.split("@", 1)
        else:
            repository, _, tag = reference.rpartition(":") if ":" in reference.split("/")[-1] else (reference, "", "latest")
        with translate_errors(f"pulling {reference}"):
            for status in self.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if "error" in status:
                    raise EngineError(f"pulling {reference}: {status['error']}")

    def push(self, reference: str) -> str | None:
        """Push an image; return the manifest digest the registry stored it under (``sha256:...``).
        Credentials come from the engine's own login, never printed."""
        repository, tag = reference.rsplit(":", 1)
        digest = None
        with translate_errors(f"pushing {reference}"):
            for status in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in status:
                    raise EngineError(f"pushing {reference}: {status['error']}")
                aux = status.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                    digest = aux["Digest"]
        return digest

    def in_registry(self, reference: str) -> bool:
        """Whether the registry holds ``reference`` (a manifest look-up: nothing is pulled).

        Only the registry's "manifest unknown" (the engine's 404) means it does not; a registry
        that cannot be reached or refuses the credentials raises (EngineError), never passing for
        an absent image."""
        with translate_errors(f"looking up {reference} in its registry"):
            try:
                self.api.inspect_distribution(reference)
            except docker.errors.NotFound:
                return False
        return True

    # -- builds -------------------------------------------------------------------------------

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
        if isinstance(memory, str):
            memory = docker.utils.parse_bytes(memory)
        limits = {"memory": memory, "memswap": memory} if memory else None
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
                    container_limits=limits,
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
        except (requests.exceptions.RequestException, OSError, ValueError, AttributeError,
                urllib3.exceptions.HTTPError) as exc:
            if not expired.is_set():
                if isinstance(exc, (AttributeError, ValueError)):
                    raise  # only a closed stream explains these; anything else is a bug to see
                raise BuildError(f"the connection to the engine broke during the build: {type(exc).__name__}",
                                 telling_lines(list(tail))) from None
        except AttuneContainersError:
            if not expired.is_set():
                raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if expired.is_set():
            for container_id in running:
                self.remove_container(container_id, attempts=3)
            raise BuildError(f"the build took longer than {int(timeout or 0)} s (build_timeout) and was stopped",
                             telling_lines(list(tail)))
        if image_id is None:
            raise BuildError("the build ended without an image", telling_lines(list(tail)))
        return image_id

    # -- containers ---------------------------------------------------------------------------

    def find_containers(
        self, *, ancestor: str | None = None, statuses: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Container summaries, running or not. ``ancestor``: only those whose image is that image
        or is built on it; ``statuses``: only those in one of these states (created, exited, ...)."""
        filters: dict[str, Any] = {}
        if ancestor:
            filters["ancestor"] = ancestor
        if statuses:
            filters["status"] = list(statuses)
        with translate_errors("listing containers"):
            return self.api.containers(all=True, filters=filters or None)

    def inspect_container(self, container_id: str) -> dict[str, Any] | None:
        """The engine's inspect document of a container, or None when it does not exist."""
        with translate_errors(f"inspecting container {container_id[:12]}"):
            try:
                return self.api.inspect_container(container_id)
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
                return int(self.api.wait(container_id, timeout=timeout).get("StatusCode", -1))
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
            events = self.api.events(since=f"{since - 1:.3f}", until=f"{time.time():.3f}",
                                     filters={"container": container_id, "event": "oom"}, decode=True)
            try:
                return any(True for _ in events)
            finally:
                events.close()

    def container_state(self, container_id: str) -> dict[str, Any] | None:
        try:
            with translate_errors(f"inspecting {container_id[:12]}"):
                return self.api.inspect_container(container_id).get("State") or {}
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

    def list_containers(self, labels: dict[str, str] | list[str], *, all: bool = True) -> list[dict[str, Any]]:
        """Container summaries filtered by labels (``{"k": "v"}`` or ``["k"]`` for presence)."""
        wanted = [f"{k}={v}" for k, v in labels.items()] if isinstance(labels, dict) else list(labels)
        with translate_errors("listing containers"):
            return self.api.containers(all=all, filters={"label": wanted})

    # -- one-container builds: a step run in a container, then committed (issue 11) ------------

    def create_step_container(
        self, image: str, command: list[str], *, mounts: list[tuple[str, str, bool]], name: str,
        memory: str | int | None = None, cap_add: tuple[str, ...] = (), tmp_size: str = "1g",
    ) -> str:
        """Create (not start) a build step's container: no network, every capability dropped but
        ``cap_add``, no environment, labels or working directory of ours, since ``commit`` merges
        the container's own config into the image's. Bind mounts go under the ``/tmp`` tmpfs, so
        neither they nor their mount points are part of a commit."""
        if isinstance(memory, str):
            memory = parse_size(memory)
        host_config = self.api.create_host_config(
            mem_limit=memory,
            memswap_limit=memory,
            pids_limit=1024,
            network_mode="none",
            tmpfs={path: f"rw,nosuid,nodev,size={parse_size(tmp_size)},mode=1777"
                   for path in ("/tmp", "/var/tmp", "/dev/shm")},
            cap_drop=["ALL"],
            cap_add=list(cap_add) or None,
            security_opt=["no-new-privileges"],
            mounts=[docker.types.Mount(target=t, source=s, type="bind", read_only=ro) for s, t, ro in mounts],
        )
        with translate_errors(f"creating a build container from {image}"):
            created = self.api.create_container(
                image, command=command, user="0:0", name=name, host_config=host_config,
                network_disabled=True, use_config_proxy=False,
            )
        return created["Id"]

    def commit(self, container_id: str, config: dict[str, Any]) -> str:
        """Commit a stopped container as an untagged image with ``config`` (Env, User, Cmd,
        WorkingDir, Labels ...: a config object, never Dockerfile text); return its ID."""
        with translate_errors(f"committing {container_id[:12]}"):
            return self.api.commit(container_id, conf=config, pause=False)["Id"]

    def containers_named(self, prefix: str) -> list[dict[str, Any]]:
        """Container summaries (any state) whose name starts with ``prefix``."""
        with translate_errors("listing containers"):
            found = self.api.containers(all=True, filters={"name": prefix})
        return [c for c in found if any(n.lstrip("/").startswith(prefix) for n in c.get("Names") or [])]


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
            frames.append((stream, self._buffer[8:8 + size]))
            self._buffer = self._buffer[8 + size:]
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
