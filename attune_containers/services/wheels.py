"""The shared wheel cache: downloads shared by every pack build on this host.

The classic builder the SDK drives has no cache mounts, so the download step happens outside the
Dockerfile: a throwaway container of the pack's own base image (its Python, its platform) runs
``templates/build/fetch.py`` as an unprivileged user with a read-only root. The builder stage then
installs exactly the wheels handed back, with no network at all.

Who may write what (issue 9, 16): the host, which is trusted, owns the cache; the fetch container
is not trusted with it.

- The container gets the cache **read-only** and no writable mount at all (only a size-bounded
  tmpfs ``/tmp``). It hands back one tar stream on stdout: a manifest and the files it downloaded
  or built. The host reads at most ``fetch_max_bytes`` of it into the build's own work folder,
  refuses any member that is not a regular file with a wheel's name (links and special files are
  never followed, never even created on the host), and checks each file's sha256.
- A file enters the cache only from a run in which no distribution's code ran (wheels only, the
  default), only with the sha256 the index reported, and it **replaces** whatever was there under
  that name. Its hash is recorded beside the cache (``records/``, never mounted).
- Every cached file is verified against its record each time a build uses it (hard-linked into the
  work folder first, so what is verified is what is built). A file that does not match is removed
  and the fetch runs again, once; offline, the build then fails.
- Sdists run their build backend. They are refused unless the operator sets ``allow_sdist_builds``;
  then they are built in the same read-only container, and nothing that run hands back is cached:
  its wheels reach only this build, and a wheel built from an sdist must have the sdist's name and
  version.
- Credentials (an index URL with a password) and the CA bundle reach the container as files in a
  read-only mount, 0400 and owned by the container's user, inside a work folder that is 0700:
  never in its environment, labels or command line (``docker inspect`` shows those). The work folder
  is removed on every exit path; a build killed outright leaves it locked by nobody, and the next
  fetch, ``cache ls`` or ``cache prune`` removes it, with the dead build's fetch container.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import ssl
import stat
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from filelock import FileLock
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..core.execution import ResourceLimits
from ..core.labels import BASE_SUITE as BASE_SUITE_LABEL
from ..core.labels import CACHE as CACHE_LABEL
from ..core.labels import HELPER as HELPER_LABEL
from ..core.labels import WORK as WORK_LABEL
from ..core.plan import BuildPlan
from ..core.render import APP_UID, TEMPLATES_DIR, fetch_env_script, template_source
from ..engine import ContainerRun, Engine, LogSink, telling_lines
from ..errors import BuildError
from ..runtimes.python.lock import LockedDistribution
from ..settings import Settings
from . import work_folders
from .fetch_output import FetchOutput, run_fetch_container

try:  # tomllib (3.11+) reads uv's resolution; without it the fetch container does the work
    from . import host_resolve
except ImportError:  # pragma: no cover
    host_resolve = None  # type: ignore[assignment]

FETCH_SCRIPT = TEMPLATES_DIR / "build" / "fetch.py"
# Folders of the cache root (``wheelhouse`` and ``tools`` are what fetch containers see).
KINDS = {"wheels": "wheelhouse", "tools": "tools", "bootstrap": "tools"}
_WHEEL_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+!-]{0,250}\.whl")
_MANIFEST_LIMIT = 4 * 1024 * 1024
_RESOLUTION_FILE = re.compile(r"[0-9a-f]{64}\.toml")
# Kept resolutions at most (each a few kilobytes): the newest go on living.
_RESOLUTIONS_KEPT = 256


class FetchedWheels(BaseModel):
    wheels: list[Path]
    tools: list[Path]
    locked: list[LockedDistribution] = Field(default_factory=list)
    # The folder holding exactly ``wheels`` (mounted read-only into the install step).
    wheel_dir: Path | None = None
    # The verified uv binary for the install step, when it could be had (else the Dockerfile path).
    uv: Path | None = None
    # A name for the install step's container: this cache's id and the build's work folder, so a
    # sweep removes only a dead build's container of its own cache.
    step_name: str | None = None
    # The build's work folder (0700, removed after the build).
    work: Path | None = None
    # A folder in memory (tmpfs) for the install step's tree when it fits, removed with the
    # work folder; None: the tree goes in the work folder.
    scratch: Path | None = None

    def install_folder(self) -> Path:
        """Where the install step's ``/opt/attune`` is written (a fresh, empty folder)."""
        assert self.work is not None
        return (self.scratch or self.work) / "image"

    def lock(self) -> list[LockedDistribution]:
        return sorted(self.locked, key=lambda d: d.name)


class CacheStats(BaseModel):
    directory: Path
    files: int
    bytes: int
    max_bytes: int


# installed.json of a big environment is tens of kB; anything near this is not ours.
INSTALLED_RECORD_LIMIT = 4 * 1024 * 1024


class InstalledDistribution(BaseModel):
    """One line of ``installed.json``, which freeze.py writes in the build, where code of the
    pack's distributions runs (.pth files): read back like pack input."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
    version: str = Field(pattern=r"^[A-Za-z0-9.!+_-]{1,100}$")


_INSTALLED_RECORD = TypeAdapter(Annotated[list[InstalledDistribution], Field(max_length=20000)])


def read_installed_record(data: bytes) -> list[InstalledDistribution]:
    """The validated record; ValueError (with the first problem) for anything else."""
    if len(data) > INSTALLED_RECORD_LIMIT:
        raise ValueError(f"installed.json is larger than {INSTALLED_RECORD_LIMIT} bytes")
    try:
        return _INSTALLED_RECORD.validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"installed.json is not a list of {{name, version}}: {_first_error(exc)}") from None


class _Entry(BaseModel):
    """One file of the fetch container's manifest: data from a container, validated as such.
    (Pydantic searches a pattern rather than matching it whole: hence the anchors.)"""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["wheels", "tools", "bootstrap"]
    filename: str = Field(pattern=f"^{_WHEEL_FILE.pattern}$", max_length=255)
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,200}$")
    version: str = Field(pattern=r"^[A-Za-z0-9.!+_-]{1,100}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: Literal["cache", "download", "build"]
    sdist: str | None = Field(None, max_length=255)


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[_Entry] = Field(max_length=5000)


class _Tampered(BuildError):
    """A cached file did not match its record (it was removed); the fetch runs again, once."""

    def __init__(self, filenames: list[str]) -> None:
        super().__init__("cached files did not match their recorded sha256 and were removed: " + ", ".join(filenames[:20]))


class WheelCache:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.root = settings.cache_dir
        self.wheelhouse = self.root / "wheelhouse"
        self.tools = self.root / "tools"
        self.records = self.root / "records"
        self.work_root = self.root / "work"
        # Host resolutions kept for reuse (resolution_max_age): the host's only, never mounted.
        self.resolutions = self.root / "resolutions"
        # uv's own cache of index pages and metadata for host resolutions (--no-build: nothing of a
        # pack runs to fill it). Beside the shared cache, not in it: the host's only, never
        # mounted, and dropped first when the caches are over their bound.
        self.index_cache = self.root.with_name(self.root.name + "-index")
        self._cache_id: str | None = None

    # -- the fetch step -----------------------------------------------------------------------

    @contextmanager
    def fetch(
        self,
        plan: BuildPlan,
        *,
        offline: bool = False,
        on_log: LogSink | None = None,
        deadline: float | None = None,
    ) -> Iterator[FetchedWheels]:
        """The verified wheels of ``plan``'s requirements, in a work folder removed after the block.

        ``deadline`` (``time.monotonic()``) bounds the whole step, container included.
        """
        deadline = time.monotonic() + self.settings.build_timeout if deadline is None else deadline
        self._prepare()
        self.sweep()
        files = {
            "env.sh": fetch_env_script(plan.options),
            "requirements.txt": "".join(line + "\n" for line in plan.spec.requirement_lines()),
        }
        if plan.options.ca_bundle:
            files["extra-ca.pem"] = plan.options.ca_bundle
        with self._work(files) as work:
            scratch: Path | None = None
            try:
                # uv resolves on the host where that is possible; else it is fetched only once
                # the fetch container succeeded (a failed build downloads nothing more).
                capable = self._host_capable(plan)
                uv = self.uv_binary(work, plan, offline=offline, on_log=on_log) if capable else None
                fetched = self._host_fetch(plan, work, uv, offline, on_log, deadline) if uv is not None or offline else None
                if fetched is None:
                    for folder in ("ctx", "in"):
                        shutil.rmtree(work / folder, ignore_errors=True)
                    try:
                        fetched = self._fetch_once(plan, work, offline, on_log, deadline)
                    except _Tampered:
                        # The altered files are gone from the cache: the second run downloads them
                        # (or, offline, fails naming what is missing).
                        for folder in ("ctx", "in"):
                            shutil.rmtree(work / folder, ignore_errors=True)
                        fetched = self._fetch_once(plan, work, offline, on_log, deadline)
                fetched.wheel_dir = work / "ctx" / "wheels"
                if uv is None and not capable:
                    uv = self.uv_binary(work, plan, offline=offline, on_log=on_log)
                fetched.uv = uv
                fetched.step_name = f"{STEP_PREFIX}{self.cache_id}-{work.name}"
                fetched.work = work
                scratch = self._scratch(work, sum(p.stat().st_size for p in fetched.wheels)) if uv is not None else None
                fetched.scratch = scratch
                yield fetched
            finally:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        scratch.parent.rmdir()  # only when no other build of this cache uses it
                self.prune(self.settings.cache_max_bytes)

    def _fetch_once(self, plan: BuildPlan, work: Path, offline: bool, on_log: LogSink | None, deadline: float) -> FetchedWheels:
        sdists = self.settings.allow_sdist_builds and not offline
        stream = work / "out.tar"
        with contextlib.suppress(FileNotFoundError):
            stream.unlink()
        self._run(plan, work, offline, sdists, on_log, deadline, stream)
        return self._take(work, stream, trusted=not sdists, on_log=on_log)

    def _run(
        self, plan: BuildPlan, work: Path, offline: bool, sdists: bool, on_log: LogSink | None, deadline: float, stream: Path
    ) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuildError(f"the build took longer than {self.settings.build_timeout} s (build_timeout) and was stopped")
        # uv for the install step comes from the host (uv_binary): the fetch container needs no
        # venv and pip of its own for it.
        tools = ""
        run = ContainerRun(
            image=plan.base.reference,
            # env.sh carries the CA bundle and index settings (every value quoted by
            # fetch_env_script; nothing from the pack is in it), so it is sourced by a shell.
            command=["/bin/sh", "-c", ". /attune-build/config/env.sh && exec python3 -I /attune-fetch/fetch.py"],
            limits=ResourceLimits(
                memory=self.settings.build_memory,
                cpus=None,
                pids=512,
                nofile=4096,
                timeout=self.settings.build_timeout,
                network="none" if offline else "bridge",
                tmp_size="2g",
            ),
            environment={
                "ATTUNE_FETCH_OFFLINE": "1" if offline else "0",
                "ATTUNE_FETCH_SDISTS": "1" if sdists else "0",
                "ATTUNE_FETCH_TOOLS": tools,
                # The step's own deadline: it ends even if the process that started it is killed.
                "ATTUNE_FETCH_DEADLINE": str(int(remaining) + 1),
                "HOME": "/tmp",
            },
            labels={HELPER_LABEL: "fetch", CACHE_LABEL: self.cache_id, WORK_LABEL: work.name},
            # Nothing writable: the container's only output is its stdout, which we bound.
            mounts=[
                (str(FETCH_SCRIPT.parent), "/attune-fetch", True),
                (str(work / "config"), "/attune-build/config", True),
                (str(self.wheelhouse), "/cache/wheelhouse", True),
                (str(self.tools), "/cache/tools", True),
            ],
            user=f"{APP_UID}:{APP_UID}",
        )
        fd = os.open(stream, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            output = FetchOutput(out, self.settings.fetch_max_bytes, on_log, _scrubber(plan))
            exit_code = run_fetch_container(self.engine, run, output, remaining, self.settings.build_timeout, "the wheels")
        if exit_code not in (0, None) or stream.stat().st_size == 0:
            log = output.log
            lines = telling_lines(list(log))
            message = "fetching the wheels failed" + (" (offline)" if offline else "")
            if (
                not sdists
                and not offline
                and any("No matching distribution" in line or "sdist builds are off" in line for line in log)
            ):
                message += (
                    " (only wheels are used: a distribution without a wheel for this Python needs "
                    "its sdist built, which the operator must allow with allow_sdist_builds)"
                )
            raise BuildError(message, lines)

    def _take(self, work: Path, stream: Path, *, trusted: bool, on_log: LogSink | None) -> FetchedWheels:
        """Check what the container handed back and verify every file the build will use."""
        incoming = work / "in"
        context = work / "ctx"
        for folder in (incoming, context / "wheels", context / "tools"):
            folder.mkdir(parents=True, exist_ok=True)
        manifest, received = self._unpack(stream, incoming)
        stream.unlink()
        wheels: list[Path] = []
        tools: list[Path] = []
        locked: list[LockedDistribution] = []
        projects: set[tuple[str, str]] = set()
        altered: list[str] = []
        for entry in manifest.entries:
            if not _WHEEL_FILE.fullmatch(entry.filename):  # it becomes a path under the cache
                raise BuildError(f"the fetch step named a file {entry.filename[:200]!r}")
            if (entry.kind, entry.name) in projects:
                raise BuildError(f"the fetch step handed back {entry.name} twice")
            projects.add((entry.kind, entry.name))
            name, version = _identity(entry.filename)
            if (name, version) != (entry.name, _normal_version(entry.version)):
                raise BuildError(
                    f"{entry.filename} is not {entry.name} {entry.version}"
                    + (
                        f", the sdist {entry.sdist} it was built from: not the sdist's own wheel"
                        if entry.source == "build"
                        else ""
                    )
                )
            target = context / ("tools" if entry.kind == "tools" else "wheels") / entry.filename
            if entry.source == "cache":
                digest = self._use_cached(KINDS[entry.kind], entry.filename, target, entry.sha256 if trusted else None)
                if digest is None:
                    altered.append(entry.filename)
                    continue
            else:
                got = received.get((entry.kind, entry.filename))
                if got is None:
                    raise BuildError(f"the fetch step named {entry.filename} but did not hand it back")
                path, digest = got
                if trusted and entry.source == "build":
                    raise BuildError(f"{entry.filename} was built from an sdist, but sdist builds are off")
                if digest != entry.sha256:
                    raise BuildError(f"{entry.filename} does not have the sha256 the index gave")
                os.link(path, target)
                if trusted:
                    # Only a run in which no distribution's code ran may add to the shared cache.
                    self._put(KINDS[entry.kind], entry.filename, path, digest)
            if entry.kind == "bootstrap":
                target.unlink()  # pip for the fetch step only: cached, never installed
                continue
            (tools if entry.kind == "tools" else wheels).append(target)
            if entry.kind == "wheels":
                locked.append(LockedDistribution(name=name, version=entry.version, filename=entry.filename, sha256=digest))
        if altered:
            for filename in altered:
                if on_log is not None:
                    on_log(
                        f"fetch: cached {filename} was altered (its sha256 is not the one recorded); removed it, fetching again"
                    )
            raise _Tampered(altered)
        return FetchedWheels(wheels=sorted(wheels), tools=sorted(tools), locked=locked)

    def _unpack(self, stream: Path, incoming: Path) -> tuple[_Manifest, dict[tuple[str, str], tuple[Path, str]]]:
        """The container's tar: regular files with wheel names only, hashed as they are written."""
        manifest: _Manifest | None = None
        received: dict[tuple[str, str], tuple[Path, str]] = {}
        try:
            with tarfile.open(stream, mode="r:") as tar:
                for member in tar:
                    if not member.isreg():
                        raise BuildError(
                            f"the fetch step handed back {member.name!r}, which is not a regular "
                            "file; links and special files are never followed"
                        )
                    if member.name == "manifest.json" and manifest is None:
                        if member.size > _MANIFEST_LIMIT:
                            raise BuildError(f"the fetch step's manifest is larger than {_MANIFEST_LIMIT} bytes")
                        data = tar.extractfile(member).read(_MANIFEST_LIMIT + 1)  # type: ignore[union-attr]
                        manifest = _Manifest.model_validate_json(data)
                        continue
                    kind, _, filename = member.name.partition("/")
                    if kind not in KINDS or not _WHEEL_FILE.fullmatch(filename) or (kind, filename) in received:
                        raise BuildError(f"the fetch step handed back an unexpected file {member.name[:200]!r}")
                    folder = incoming / kind
                    folder.mkdir(exist_ok=True)
                    path = folder / filename
                    digest = hashlib.sha256()
                    source = tar.extractfile(member)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                    with os.fdopen(fd, "wb") as out:
                        for block in iter(functools.partial(source.read, 1 << 20), b""):  # type: ignore[union-attr]
                            digest.update(block)
                            out.write(block)
                    received[(kind, filename)] = (path, digest.hexdigest())
        except (tarfile.TarError, EOFError) as exc:
            raise BuildError(f"the fetch step's output is not a well-formed archive: {exc}") from None
        except ValidationError as exc:
            raise BuildError(f"the fetch step's manifest is not valid: {_first_error(exc)}") from None
        if manifest is None:
            raise BuildError("the fetch step handed back no manifest")
        return manifest, received

    # -- uv for the install step ---------------------------------------------------------------

    def uv_binary(self, work: Path, plan: BuildPlan, *, offline: bool = False, on_log: LogSink | None = None) -> Path | None:
        """The static uv binary for the install step, from the uv wheel of the tools cache
        (verified against its record, like every cached file), downloaded once by the host's own
        pip when the cache lacks it (no code of it runs on the host). None when it cannot be had
        (offline with an empty cache, another machine type): the build then uses the Dockerfile."""
        machine = platform.machine()
        folder = work / "uv-wheel"
        folder.mkdir(exist_ok=True)
        wheel = None
        for path in _listing(self.tools):
            name = path.name
            if name.startswith(f"uv-{UV_VERSION}-") and machine in name and _WHEEL_FILE.fullmatch(name):
                if self._use_cached("tools", name, folder / name, None) is not None:
                    wheel = folder / name
                    break
        if wheel is None and not offline:
            wheel = self._download_uv(work, plan, on_log)
        if wheel is None:
            if on_log is not None:
                on_log(
                    f"install: uv {UV_VERSION} is not in the cache{' and the build is offline' if offline else ''}; "
                    "installing with the Dockerfile"
                )
            return None
        target = work / "uv"
        member = f"uv-{UV_VERSION}.data/scripts/uv"
        try:
            with zipfile.ZipFile(wheel) as archive:
                info = archive.getinfo(member)
                if info.file_size > _UV_BINARY_LIMIT:
                    raise BuildError(f"{wheel.name}: {member} is larger than {_UV_BINARY_LIMIT} bytes")
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
                with os.fdopen(fd, "wb") as out, archive.open(info) as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            if on_log is not None:
                on_log(f"install: no uv binary in {wheel.name} ({exc}); installing with the Dockerfile")
            return None
        finally:
            wheel.unlink()
        return target

    def _download_uv(self, work: Path, plan: BuildPlan, on_log: LogSink | None) -> Path | None:
        """uv's wheel, by the host's pip: a pinned release, cached with its sha256 on first use."""
        folder = work / "uv-download"
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        options = plan.options
        if options.ca_bundle:
            # An extra bundle adds to the system's roots, as in the fetch step.
            bundle = work / "uv-ca.pem"
            system = _SYSTEM_CA.read_text(encoding="utf-8", errors="replace") if _SYSTEM_CA.is_file() else ""
            bundle.write_text(system + "\n" + options.ca_bundle, encoding="utf-8")
            os.chmod(bundle, 0o600)
            env["PIP_CERT"] = str(bundle)
        if options.index_url:
            env["PIP_INDEX_URL"] = options.index_url
        if options.extra_index_urls:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(options.extra_index_urls)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--dest",
                str(folder),
                UV_REQUIREMENT,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
        found = [p for p in _listing(folder) if p.name.startswith(f"uv-{UV_VERSION}-") and _WHEEL_FILE.fullmatch(p.name)]
        if result.returncode != 0 or len(found) != 1:
            if on_log is not None:
                on_log(f"install: downloading uv {UV_VERSION} failed: {_scrubber(plan)(result.stdout[-500:].strip())}")
            return None
        path = found[0]
        digest = _hash_regular(path)
        if digest is None:
            return None
        target = work / "uv-wheel" / path.name
        os.link(path, target)
        self._put("tools", path.name, path, digest)
        if on_log is not None:
            on_log(f"install: downloaded {path.name}")
        return target

    # -- the fetch step on the host (issue 11) -------------------------------------------------

    def _host_fetch(
        self, plan: BuildPlan, work: Path, uv: Path | None, offline: bool, on_log: LogSink | None, deadline: float
    ) -> FetchedWheels | None:
        """The fetch step without a container, where no code of a distribution can run: wheels
        only (sdist builds off), a base whose platform we know, no pip options. A complete lock
        is taken from the cache by sha256 (no resolver, no index); anything else is resolved by
        uv on the host (``--no-build``: metadata only), and each wheel is taken from the cache
        by its sha256 or downloaded here, verified, then cached. None: use the fetch container
        (it also gives the resolver's own error message when this resolution fails)."""
        if not self._host_capable(plan):
            return None
        arch = host_resolve.machine()
        glibc = self._glibc(plan)
        if glibc is None or host_resolve.uv_platform(glibc, arch) is None:
            return None
        context = work / "ctx" / "wheels"
        context.mkdir(parents=True, exist_ok=True)
        lines = plan.spec.requirement_lines()
        lock = host_resolve.read_lock(lines)
        if lock is not None:
            # A lock the cache cannot serve whole, or that is not complete: the fetch container
            # downloads a missing file by its exact name and hash (offline: names it), or resolves.
            return self._host_lock(lock, context, plan, arch, on_log)
        if offline or uv is None:
            return None
        pinned = self._resolve(plan, work, uv, glibc, arch, on_log, deadline)
        if pinned is None:
            return None
        wheels, locked, download = [], [], []
        for item in pinned:
            target = context / item.filename
            if _WHEEL_FILE.fullmatch(item.filename) is None or _identity(item.filename) != (
                item.name,
                _normal_version(item.version),
            ):
                return None
            present = os.path.lexists(self.wheelhouse / item.filename)
            if self._use_cached("wheelhouse", item.filename, target, item.sha256) is not None:
                if on_log is not None:
                    on_log(f"fetch: cached {item.filename}")
            else:
                if present and on_log is not None:
                    on_log(
                        f"fetch: cached {item.filename} was altered (its sha256 is not the one recorded, or "
                        "not the index's); removed it, fetching again"
                    )
                download.append(item)
            wheels.append(target)
            locked.append(LockedDistribution(name=item.name, version=item.version, filename=item.filename, sha256=item.sha256))
        if download and not self._download(download, work, context, plan, on_log, deadline):
            return None
        return FetchedWheels(wheels=sorted(wheels), tools=[], locked=locked)

    def _host_capable(self, plan: BuildPlan) -> bool:
        """Whether the fetch step can run on the host: nothing of a distribution would run."""
        return (
            not self.settings.allow_sdist_builds
            and not plan.spec.pip_options
            and host_resolve is not None
            and bool(plan.base.python_version)
            and self._glibc(plan) is not None
        )

    def _host_lock(
        self, lock: list[tuple[str, str, set[str]]], context: Path, plan: BuildPlan, arch: str, on_log: LogSink | None
    ) -> FetchedWheels | None:
        """A complete lock from the cache alone (every file verified), or None."""
        by_name: dict[str, list[str]] = {}
        for path in _listing(self.wheelhouse):
            if _WHEEL_FILE.fullmatch(path.name) and path.name.count("-") >= 4:
                by_name.setdefault(_identity(path.name)[0], []).append(path.name)
        found: dict[str, tuple[str, Path]] = {}
        locked = []
        for name, version, hashes in lock:
            for filename in sorted(by_name.get(name, [])):
                if _identity(filename)[1] != _normal_version(version) or self._record("wheelhouse", filename) not in hashes:
                    continue
                target = context / filename
                digest = self._use_cached("wheelhouse", filename, target, None)
                if digest is not None and digest in hashes:
                    found[name] = (version, target)
                    locked.append(LockedDistribution(name=name, version=version, filename=filename, sha256=digest))
                    break
                if digest is None and on_log is not None:
                    on_log(f"fetch: cached {filename} was altered (its sha256 is not the one recorded); removed it")
            if name not in found:
                break
        problem = None if len(found) == len(lock) else "a file the cache lacks"
        if problem is None:
            problem = host_resolve.incomplete(found, host_resolve.marker_environment(plan.base.python_version or "", arch))
        if problem is not None:
            for _, path in found.values():
                path.unlink()
            return None
        if on_log is not None:
            on_log(f"fetch: lock complete, no resolution: {len(found)} distributions taken by their sha256")
            for item in locked:
                on_log(f"fetch: cached {item.filename}")
        return FetchedWheels(wheels=sorted(p for _, p in found.values()), tools=[], locked=locked)

    def _glibc(self, plan: BuildPlan) -> int | None:
        """The glibc minor of the base, from our bootstrap's suite label; None when unknown."""
        attrs = self.engine.inspect_image(plan.base.reference)
        suite = attrs.labels.get(BASE_SUITE_LABEL, "") if attrs is not None else ""
        return host_resolve.SUITE_GLIBC.get(suite) if host_resolve is not None else None

    def _host_env(self, plan: BuildPlan, work: Path) -> dict[str, str]:
        """The resolver's environment: the CA bundle and index settings, nothing else of ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "SSL_CERT", "REQUESTS_CA"))}
        if plan.options.ca_bundle:
            bundle = work / "host-ca.pem"
            if not bundle.exists():
                system = _SYSTEM_CA.read_text(encoding="utf-8", errors="replace") if _SYSTEM_CA.is_file() else ""
                bundle.write_text(system + "\n" + plan.options.ca_bundle, encoding="utf-8")
                os.chmod(bundle, 0o600)
            env["SSL_CERT_FILE"] = str(bundle)
        if plan.options.index_url:
            env["UV_INDEX_URL"] = plan.options.index_url
        if plan.options.extra_index_urls:
            env["UV_EXTRA_INDEX_URL"] = " ".join(plan.options.extra_index_urls)
        env.update(
            {
                "UV_NO_CONFIG": "1",
                "UV_PYTHON_DOWNLOADS": "never",
                "UV_CACHE_DIR": str(self.index_cache),
                # pip's rule across indexes (the best version of any), not uv's first-index rule.
                "UV_INDEX_STRATEGY": "unsafe-best-match",
            }
        )
        return env

    def _resolution_key(self, plan: BuildPlan, glibc: int, arch: str) -> str:
        """What decides a host resolution, hashed: the requirements (stripped, sorted: a plain
        requirements file's order does not change what uv picks), the exact Python, the platform
        uv resolves for, the indexes (credentials included: another user may see other files),
        uv's version and the options we give it."""
        document = {
            "requirements": sorted(line.strip() for line in plan.spec.requirement_lines() if line.strip()),
            "python": plan.base.python_version,
            "platform": host_resolve.uv_platform(glibc, arch),
            "index_url": plan.options.index_url,
            "extra_index_urls": list(plan.options.extra_index_urls),
            "uv": UV_VERSION,
            "options": ["--no-build", "--generate-hashes", "unsafe-best-match", "pylock.toml"],
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    def _reused_resolution(self, key: str, on_log: LogSink | None, priority: dict[Tag, int]) -> list[host_resolve.Pinned] | None:
        """The pins of a resolution of the same inputs younger than ``resolution_max_age``, or None."""
        max_age = self.settings.resolution_max_age
        path = self.resolutions / f"{key}.toml"
        if max_age <= 0:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            age = time.time() - info.st_mtime
            if not stat.S_ISREG(info.st_mode) or not 0 <= age < max_age or info.st_size > _MANIFEST_LIMIT:
                return None
            pinned = host_resolve.parse_pylock(handle.read(_MANIFEST_LIMIT).decode("utf-8", "replace"), priority)
        if isinstance(pinned, str):
            return None
        if on_log is not None:
            on_log(
                f"fetch: resolution reused from {age:.0f} s ago ({len(pinned)} distributions resolved on the host; "
                f"resolution_max_age={max_age})"
            )
        return pinned

    def _keep_resolution(self, key: str, output: Path, fetched: float | None = None) -> None:
        """Keep a fresh resolution for reuse: written whole then renamed into place (readers see
        the old file or the new one), bounded under the cache's lock."""
        if self.settings.resolution_max_age <= 0:
            return
        with contextlib.suppress(OSError):
            self.resolutions.mkdir(mode=0o700, exist_ok=True)
            tmp = self.resolutions / f".tmp-{uuid.uuid4().hex}"
            shutil.copyfile(output, tmp)
            os.chmod(tmp, 0o600)
            if fetched is not None:
                os.utime(tmp, (fetched, fetched))
            os.replace(tmp, self.resolutions / f"{key}.toml")
            with self._lock():
                self._bound_resolutions(keep_fresh=True)

    def _bound_resolutions(self, *, keep_fresh: bool) -> None:
        """Expired, stray and surplus (beyond the newest ``_RESOLUTIONS_KEPT``) resolutions go;
        everything goes unless ``keep_fresh``. The caller holds the cache's lock."""
        entries = []
        for path in _listing(self.resolutions):
            with contextlib.suppress(OSError):
                info = path.lstat()
                age = time.time() - info.st_mtime
                if not keep_fresh:
                    _remove(path)
                elif (
                    stat.S_ISREG(info.st_mode)
                    and _RESOLUTION_FILE.fullmatch(path.name)
                    and age < self.settings.resolution_max_age
                ):
                    entries.append((info.st_mtime, path))
                elif not path.name.startswith(".tmp-") or age > work_folders.STARTING_SECONDS:  # a write under way stays
                    _remove(path)
        for _, path in sorted(entries, reverse=True)[_RESOLUTIONS_KEPT:]:
            _remove(path)

    def _resolve(
        self, plan: BuildPlan, work: Path, uv: Path, glibc: int, arch: str, on_log: LogSink | None, deadline: float
    ) -> list[host_resolve.Pinned] | None:
        output = work / "pylock.toml"
        started = time.monotonic()
        key = self._resolution_key(plan, glibc, arch)
        priority = host_resolve.tag_priority(plan.base.python_version or "", glibc, arch)
        reused = self._reused_resolution(key, on_log, priority)
        if reused is not None:
            return reused
        fresh = self._resolve_from_fresh_pages(plan, work, uv, glibc, arch, priority, deadline)
        if fresh is not None:
            pinned, age = fresh
            # Kept as old as its oldest page: reuse must not stretch the window.
            self._keep_resolution(key, output, fetched=time.time() - age)
            if on_log is not None:
                on_log(
                    f"fetch: resolved {len(pinned)} distributions on the host from index pages fetched within "
                    f"resolution_max_age={self.settings.resolution_max_age} s, with no index access "
                    f"in {time.monotonic() - started:.1f} s"
                )
            return pinned
        try:
            result = self._compile(plan, work, uv, glibc, arch, deadline, offline=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            if on_log is not None:
                on_log(f"fetch: resolving on the host failed ({type(exc).__name__}); using the fetch container")
            return None
        if result.returncode != 0:
            if on_log is not None:
                said = [line for line in result.stdout.splitlines() if line.strip()][:1]
                on_log(
                    "fetch: resolving on the host failed"
                    + (f" ({_scrubber(plan)(said[0][:300])})" if said else "")
                    + "; using the fetch container"
                )
            return None
        found = host_resolve.read_pylock(output, priority)
        if isinstance(found, str):
            if on_log is not None:
                on_log(f"fetch: {found}; using the fetch container")
            return None
        self._keep_resolution(key, output)
        if on_log is not None:
            on_log(
                f"fetch: resolved {len(found)} distributions on the host with uv (wheels only) "
                f"in {time.monotonic() - started:.1f} s"
            )
        return found

    def _resolve_from_fresh_pages(
        self, plan: BuildPlan, work: Path, uv: Path, glibc: int, arch: str, priority: dict[Tag, int], deadline: float
    ) -> tuple[list[host_resolve.Pinned], float] | None:
        """A new requirement set whose projects' index pages uv fetched within
        ``resolution_max_age`` is resolved from uv's cache alone (``--offline``, a fraction of a
        second): the same staleness an index's own ``max-age`` allows, which this answer keeps
        even where a proxy strips the index's caching headers. Any page older than that, or
        missing, and it is None: the caller resolves against the index. Only with one index:
        with several, a page absent from the cache could hide a better version elsewhere."""
        if self.settings.resolution_max_age <= 0 or plan.options.extra_index_urls or not self.index_cache.is_dir():
            return None
        try:
            result = self._compile(plan, work, uv, glibc, arch, deadline, offline=True)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode != 0:
            return None
        pinned = host_resolve.read_pylock(work / "pylock.toml", priority)
        if isinstance(pinned, str) or not pinned:
            return None
        age = host_resolve.oldest_page_age(self.index_cache, [p.name for p in pinned], time.time())
        if age is None or age >= self.settings.resolution_max_age:
            return None
        return pinned, age

    def _compile(
        self, plan: BuildPlan, work: Path, uv: Path, glibc: int, arch: str, deadline: float, *, offline: bool
    ) -> subprocess.CompletedProcess[str]:
        """``uv pip compile`` of the pack's requirements into ``work/pylock.toml``: wheels only
        (no pack code runs on the host), hashes, for the base's exact Python and platform."""
        self.index_cache.mkdir(mode=0o700, exist_ok=True)
        return subprocess.run(
            [
                str(uv),
                "pip",
                "compile",
                "--quiet",
                *(["--offline"] if offline else []),
                "--no-build",
                "--generate-hashes",
                "--no-header",
                "--python-version",
                plan.base.python_version or "",
                "--python-platform",
                host_resolve.uv_platform(glibc, arch) or "",
                "--format",
                "pylock.toml",
                "--output-file",
                str(work / "pylock.toml"),
                str(work / "config" / "requirements.txt"),
            ],
            env=self._host_env(plan, work),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=max(1.0, min(300.0, deadline - time.monotonic())),
            check=False,
        )

    def _download(
        self,
        items: list[host_resolve.Pinned],
        work: Path,
        context: Path,
        plan: BuildPlan,
        on_log: LogSink | None,
        deadline: float,
    ) -> bool:
        """Download wheels in parallel, each verified against the resolver's sha256 before it is
        cached and linked for the build. False: any failure (the fetch container then runs)."""
        incoming = work / "in" / "wheels"
        incoming.mkdir(parents=True, exist_ok=True)
        env = self._host_env(plan, work)
        ssl_context = ssl.create_default_context(cafile=env.get("SSL_CERT_FILE"))
        credentials = {}
        for url in (plan.options.index_url, *plan.options.extra_index_urls):
            parts = urllib.parse.urlsplit(url or "")
            if parts.username is not None and parts.hostname:
                credentials[parts.hostname] = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        budget = [self.settings.fetch_max_bytes]
        budget_lock = threading.Lock()

        def one(item: host_resolve.Pinned) -> tuple[host_resolve.Pinned, Path, str]:
            request = urllib.request.Request(item.url, headers={"User-Agent": "attune-containers"})
            host = urllib.parse.urlsplit(item.url).hostname or ""
            if host in credentials:
                token = base64.b64encode(":".join(credentials[host]).encode()).decode()
                request.add_header("Authorization", f"Basic {token}")
            path = incoming / item.filename
            digest = hashlib.sha256()
            timeout = max(1.0, deadline - time.monotonic())
            with urllib.request.urlopen(request, timeout=min(timeout, 120), context=ssl_context) as response:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        with budget_lock:
                            budget[0] -= len(block)
                            if budget[0] < 0:
                                raise BuildError("the downloads are larger than fetch_max_bytes")
                        digest.update(block)
                        out.write(block)
                        if time.monotonic() > deadline:
                            raise BuildError(
                                f"the build took longer than {self.settings.build_timeout} s (build_timeout) while downloading"
                            )
            return item, path, digest.hexdigest()

        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(one, items))
        except BuildError:
            raise
        except (OSError, ValueError, urllib.error.URLError) as exc:
            if on_log is not None:
                on_log(f"fetch: downloading on the host failed ({_scrubber(plan)(str(exc))[:300]}); using the fetch container")
            return False
        for item, path, digest in results:
            if digest != item.sha256:
                raise BuildError(f"{item.filename} does not have the sha256 the index gave")
            os.link(path, context / item.filename)
            self._put("wheelhouse", item.filename, path, digest)
            if on_log is not None:
                on_log(f"fetch: downloaded {item.filename}")
        return True

    # -- the cache itself ---------------------------------------------------------------------

    def _use_cached(self, folder: str, filename: str, target: Path, expected: str | None) -> str | None:
        """Link a cached file to ``target`` and verify it against its record (and ``expected``).
        Its sha256, or None when it was altered, unrecorded or missing (it is then removed)."""
        source = self.root / folder / filename
        recorded = self._record(folder, filename)
        try:
            os.link(source, target, follow_symlinks=False)
        except FileNotFoundError:
            return None
        # What is hashed is the linked inode, the file the build will read: the cache may change
        # meanwhile (writes there always replace, never rewrite in place).
        digest = _hash_regular(target)
        if digest is None or recorded is None or digest != recorded or (expected and digest != expected):
            target.unlink()
            self._evict(folder, filename, digest)
            return None
        with contextlib.suppress(OSError):
            os.utime(source, follow_symlinks=False)  # least recently used goes first
        return digest

    def _put(self, folder: str, filename: str, path: Path, digest: str) -> None:
        """Move a verified file into the cache, replacing whatever had its name."""
        with self._lock():
            record = self.records / folder / filename
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f".tmp-{uuid.uuid4().hex}")
            tmp.write_text(digest)
            # The record first: a file is never in the cache without one.
            os.replace(tmp, record)
            os.chmod(path, 0o644)
            os.replace(path, self.root / folder / filename)

    def _evict(self, folder: str, filename: str, digest: str | None) -> None:
        with self._lock():
            # Re-checked under the lock: a concurrent put may have just replaced both.
            current = _hash_regular(self.root / folder / filename)
            if current is not None and current == self._record(folder, filename) and current != digest:
                return
            _remove(self.root / folder / filename)
            _remove(self.records / folder / filename)

    def _record(self, folder: str, filename: str) -> str | None:
        try:
            fd = os.open(self.records / folder / filename, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(65).decode("ascii", "replace")
        return text if re.fullmatch(r"[0-9a-f]{64}", text) else None

    def stats(self) -> CacheStats:
        """Everything under the cache root counts: entries, records, stray files, work folders."""
        self.sweep()
        files = list(self._everything())
        return CacheStats(
            directory=self.root, files=len(files), bytes=sum(size for _, size in files), max_bytes=self.settings.cache_max_bytes
        )

    def prune(self, max_bytes: int = 0) -> list[str]:
        """Remove stray files (anything that is not a recorded cache entry), then least recently
        used entries until the cache holds at most ``max_bytes``; the folders of live builds stay."""
        self.sweep()
        removed: list[str] = []
        with self._lock():
            entries: list[tuple[float, int, str, str]] = []
            for folder in ("wheelhouse", "tools"):
                for path in _listing(self.root / folder):
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode) and self._record(folder, path.name) is not None:
                        entries.append((info.st_mtime, info.st_size, folder, path.name))
                    else:
                        _remove(path)
                        removed.append(path.name)
                for record in _listing(self.records / folder):
                    if not (self.root / folder / record.name).is_file() or not record.is_file():
                        _remove(record)
            for path in _listing(self.root):
                if path.name not in ("wheelhouse", "tools", "records", "work", "resolutions", ".lock", "id"):
                    _remove(path)
                    removed.append(path.name)
            for path in _listing(self.records):
                if path.name not in ("wheelhouse", "tools"):
                    _remove(path)
            # Emptying the cache (max_bytes 0) forgets every resolution too.
            self._bound_resolutions(keep_fresh=max_bytes > 0)
            total = sum(size for _, size in self._everything())
            index_bytes = _tree_bytes(self.index_cache)
            if index_bytes and total + index_bytes > max_bytes:
                # uv's index pages go first: the next resolution fetches them again, nothing more.
                shutil.rmtree(self.index_cache, ignore_errors=True)
                removed.append(self.index_cache.name)
            for _, size, folder, name in sorted(entries):
                if total <= max_bytes:
                    break
                _remove(self.root / folder / name)
                _remove(self.records / folder / name)
                total -= size + 64
                removed.append(name)
        return removed

    def _everything(self) -> Iterator[tuple[Path, int]]:
        for top, dirs, files in os.walk(self.root):  # never follows links
            for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                path = Path(top) / name
                if Path(top) == self.root and name in (".lock", "id"):
                    continue
                with contextlib.suppress(OSError):
                    yield path, path.lstat().st_size

    def _lock(self) -> FileLock:
        return FileLock(str(self.root / ".lock"), timeout=120)

    @property
    def cache_id(self) -> str:
        """A random id of this cache folder: fetch containers carry it, so a sweep only ever
        considers the containers of its own cache (another configuration has its own)."""
        if self._cache_id is None:
            self._cache_id = work_folders.cache_id(self.root)
        return self._cache_id

    def _prepare(self) -> None:
        for folder in (self.wheelhouse, self.tools, self.records, self.work_root):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.wheelhouse, self.tools, self.records):
            info = folder.lstat()
            # The host owns the cache (an older version gave it to the container's user).
            if info.st_uid != os.geteuid():
                os.chown(folder, os.geteuid(), os.getegid(), follow_symlinks=False)
            if stat.S_IMODE(info.st_mode) & 0o022:
                os.chmod(folder, 0o755)
        os.chmod(self.work_root, 0o711)
        with self._lock():
            for kind in ("wheelhouse", "tools"):
                for path in _listing(self.root / kind):
                    # Unrecorded (an older version's, or someone's plant): never used, removed now.
                    if self._record(kind, path.name) is None or not stat.S_ISREG(path.lstat().st_mode):
                        _remove(path)
        # pip for the fetch step comes from here and runs in the container before anything is
        # checked: so the tools are verified before every fetch (a few MB).
        for path in _listing(self.tools):
            if _hash_regular(path) != self._record("tools", path.name):
                self._evict("tools", path.name, None)

    # -- work folders, and what dead builds left ---------------------------------------------

    def _work(self, files: dict[str, str]) -> contextlib.AbstractContextManager[Path]:
        return work_folders.hold(self.work_root, files)

    def _scratch_root(self) -> Path:
        return _SCRATCH_BASE / f"attune-containers-{os.getuid()}-{self.cache_id}"

    def _scratch(self, work: Path, wheel_bytes: int) -> Path | None:
        """A 0700 folder on the host's tmpfs (``/dev/shm``) named as the work folder, for the
        install step's tree, when the tree fits easily: its estimate (the wheels unpacked, their
        bytecode, uv's unpacked copies) at most ``_SCRATCH_MAX`` and a quarter of what is free.
        A tree on disk is written, flushed and unlinked for nothing (it becomes a layer the
        engine writes itself): in memory the install step is several times faster here. None
        when there is no such tmpfs, it is short, or its folder is not safely ours (the place is
        world-writable: a folder another user made, or a link, is never used)."""
        estimate = 4 * wheel_bytes + (64 << 20)
        try:
            space = os.statvfs(_SCRATCH_BASE)
        except OSError:
            return None
        if estimate > min(_SCRATCH_MAX, space.f_bavail * space.f_frsize // 4):
            return None
        if space.f_flag & (os.ST_NOEXEC | os.ST_RDONLY):
            return None  # a venv's extension modules must load from it as from the image
        root = self._scratch_root()
        with contextlib.suppress(FileExistsError, OSError):
            os.mkdir(root, 0o700)
        try:
            info = os.lstat(root)
        except OSError:
            return None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        scratch = root / work.name
        try:
            os.mkdir(scratch, 0o700)
        except OSError:
            return None
        return scratch

    def sweep(self) -> list[str]:
        """Remove what dead builds of this cache left: fetch containers, install steps and work
        folders (services/work_folders.py), and their install trees in memory (``_scratch``)."""
        swept = work_folders.sweep(self.engine, self.work_root, self.cache_id, f"{STEP_PREFIX}{self.cache_id}-")
        # A dead build's tree in memory: its work folder is gone or not held any more.
        for folder in _listing(self._scratch_root()) if self.work_root.is_dir() and _SCRATCH_BASE.is_dir() else []:
            if not work_folders.alive(self.work_root / folder.name):
                shutil.rmtree(folder, ignore_errors=True)
                swept.append(folder.name)
        if self.work_root.is_dir():
            with contextlib.suppress(OSError):
                self._scratch_root().rmdir()  # only when empty
        return swept


_listing = work_folders.listing


def _tree_bytes(root: Path) -> int:
    """What the files under ``root`` take (links not followed; 0 when it is absent)."""
    total = 0
    for top, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _hash_regular(path: Path) -> str | None:
    """The sha256 of a regular file, never following a link; None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(filename: str) -> tuple[str, str]:
    """(name, version) a wheel's filename claims, normalized; ("", "") for a name that is no wheel's,
    which matches no distribution."""
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return "", ""
    return name, str(version)


def _normal_version(version: str) -> str:
    try:
        return str(Version(version.replace("_", "-")))
    except InvalidVersion:
        return version.replace("-", "_").lower()


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', '')}"[:300]


def _scrubber(plan: BuildPlan):
    """Log lines never carry index credentials (pip masks them; this is in case it does not)."""
    secrets = []
    for url in (plan.options.index_url, *plan.options.extra_index_urls):
        if url and "@" in url.split("/")[2]:
            userinfo = url.split("/")[2].rsplit("@", 1)[0]
            secrets += [userinfo, *userinfo.split(":", 1)[1:]]
    secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(line: str) -> str:
        for secret in secrets:
            line = line.replace(secret, "****")
        return line

    return scrub


# The uv release builds install with (a template build file, so it is part of the content hash).
UV_REQUIREMENT = template_source("build/uv-bootstrap.txt").strip()
UV_VERSION = UV_REQUIREMENT.partition("==")[2]
# The install step's container: its name, then this cache's id and the build's work folder.
STEP_PREFIX = "attune-install-"
_UV_BINARY_LIMIT = 256 * 1024 * 1024
_SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# The host's memory-backed folder (a tmpfs on Linux), and the largest install tree put there.
_SCRATCH_BASE = Path("/dev/shm")
_SCRATCH_MAX = 1 << 30
