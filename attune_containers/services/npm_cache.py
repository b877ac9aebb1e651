"""The shared npm cache of Node.js pack builds: tarballs shared by every Node pack on this host.

The same division of trust as the wheel cache (services/wheels.py): the host owns the cache; the
fetch container is not trusted with it.

- A fetch container (the pack's own Node base image, an unprivileged user, read-only root, the
  network, no writable mount) gets our ``package.json`` (and a known lock), makes the lock when
  there is none (``npm install --package-lock-only --ignore-scripts``), downloads what it names
  (``npm ci --ignore-scripts``) and hands back one tar on stdout, bounded by ``fetch_max_bytes``.
- The host takes only regular files of known shapes from it, checks the lock (every package from
  an https URL with a sha512 integrity; no git, no links, no local paths) and keeps a tarball only
  when its sha512 is the one the lock names; it enters the cache as ``content/<sha512 hex>.tgz``.
- The cache is the folder ``<cache_dir>-npm`` (beside the wheel cache, which owns ``cache_dir``).
- The lock is kept per (package.json, Node major) in ``locks/``: the next build of the same
  dependencies reuses it, so it installs the same versions, and needs no container (nor network)
  when every tarball is cached. Offline builds work from the cache alone, else fail naming what
  is missing.
- Each cached tarball is hashed again when a build takes it, so what is verified is what is built.
- Work folders are held by their build and swept as the wheel cache's are
  (services/work_folders.py): a build killed outright leaves a fetch container (with the network)
  and a folder (perhaps with the registry token); the next fetch of any build removes both once
  the kernel says the owner is dead, never a live build's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, Field

from ..core.execution import ResourceLimits
from ..core.labels import CACHE as CACHE_LABEL
from ..core.labels import HELPER as HELPER_LABEL
from ..core.labels import WORK as WORK_LABEL
from ..core.render import APP_UID, TEMPLATES_DIR
from ..engine import ContainerRun, Engine, LogSink, telling_lines
from ..errors import BuildError
from ..runtimes.nodejs.lock import LockedPackage, LockError, parse_lock
from ..settings import Settings
from . import work_folders
from .fetch_output import FetchOutput, run_fetch_container
from .wheels import CacheStats

FETCH_SCRIPT = TEMPLATES_DIR / "build" / "node-fetch.sh"
LOCK_LIMIT = 16 * 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{128}")
_CONTENT = re.compile(r"c/_cacache/content-v2/sha512/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{124})")
_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]{0,213}")
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,100}")
# npm's own default: a token configured without a registry is for this one.
DEFAULT_REGISTRY = "https://registry.npmjs.org/"


class FetchedPackages(BaseModel):
    # ``wheels``: what the plan's context takes (the lock, then the tarballs); named as the wheel
    # cache's result is, so the manager builds both runtimes alike.
    wheels: list[Path]
    tools: list[Path] = Field(default_factory=list)
    locked: list[LockedPackage] = Field(default_factory=list)
    # No install step of Python's uv path: Node images are always built from their Dockerfile.
    uv: Path | None = None

    def lock(self) -> list[LockedPackage]:
        return sorted(self.locked, key=lambda p: (p.name, p.version))


def read_lock(data: bytes) -> list[LockedPackage]:
    """The packages of the fetch step's lock, or BuildError: it came out of a container that ran
    npm against the network, so it is checked like pack input (runtimes/nodejs/lock.py)."""
    try:
        return parse_lock(data)
    except LockError as exc:
        raise BuildError(f"the fetch step's {exc}") from None


class NpmCache:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        # Beside the wheel cache, not in it: the wheel cache's prune removes whatever in its root
        # is not its own.
        self.root = settings.cache_dir.with_name(settings.cache_dir.name + "-npm")
        self.content = self.root / "content"
        self.locks = self.root / "locks"
        self.work_root = self.root / "work"
        self._cache_id: str | None = None

    def _prepare(self) -> None:
        for folder in (self.root, self.content, self.locks, self.work_root):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work_root, 0o711)

    @property
    def cache_id(self) -> str:
        """This cache folder's id: its fetch containers carry it, so a sweep considers only them."""
        if self._cache_id is None:
            self._cache_id = work_folders.cache_id(self.root)
        return self._cache_id

    def sweep(self) -> list[str]:
        """Remove what dead builds left, as the wheel cache does (services/work_folders.py): fetch
        containers whose build's work folder is no longer held (their network may still be on),
        and those work folders (the npm config in them may hold the registry token)."""
        self._prepare()
        return work_folders.sweep(self.engine, self.work_root, self.cache_id)

    def _lock_file(self) -> FileLock:
        return FileLock(str(self.root / ".lock"))

    @staticmethod
    def lock_key(plan: Any) -> str:
        document = {"package.json": plan.package_json(), "node": plan.base.minor, "lock": plan.spec.lock}
        if plan.options.npm_registry:
            # A lock resolved against one registry names its tarballs: another registry's build
            # resolves again (only when set, so the default's known locks keep their keys).
            document["registry"] = plan.options.npm_registry
        text = json.dumps(document, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @contextmanager
    def fetch(
        self, plan: Any, *, offline: bool = False, on_log: LogSink | None = None, deadline: float | None = None
    ) -> Iterator[FetchedPackages]:
        """The verified lock and tarballs of ``plan``, in a work folder removed after the block."""
        deadline = time.monotonic() + self.settings.build_timeout if deadline is None else deadline
        self.sweep()
        key = self.lock_key(plan)
        known = self.locks / f"{key}.json"
        stack = contextlib.ExitStack()
        try:
            # The pack's own lock when it brings one; else the one an earlier fetch made, if any.
            lock_data = plan.spec.lock.encode() if plan.spec.lock is not None else known.read_bytes() if known.is_file() else None
            packages = read_lock(lock_data) if lock_data is not None else None
            missing = [p for p in packages or () if not (self.content / f"{p.sha512_hex}.tgz").is_file()]
            if packages is None or missing:
                if offline:
                    what = (
                        "no lock is known"
                        if packages is None
                        else "not cached: " + ", ".join(f"{p.name}@{p.version}" for p in missing[:10])
                    )
                    raise BuildError(f"an offline Node.js build needs every package in the npm cache; {what}")
                lock_data = self._run(plan, lock_data, on_log, deadline)
                packages = read_lock(lock_data)
                with self._lock_file():
                    _write_atomic(known, lock_data)
            assert lock_data is not None and packages is not None
            work = stack.enter_context(work_folders.hold(self.work_root, {}))
            ctx = work / "ctx"
            ctx.mkdir()
            (ctx / "package-lock.json").write_bytes(lock_data)
            files = [ctx / "package-lock.json"]
            for package in packages:
                name = f"{package.sha512_hex}.tgz"
                target = ctx / name
                if target.exists():
                    continue
                with self._lock_file():
                    shutil.copyfile(self.content / name, target)
                if hashlib.sha512(target.read_bytes()).hexdigest() != package.sha512_hex:
                    (self.content / name).unlink(missing_ok=True)  # altered: never used again
                    raise BuildError(
                        f"the cached tarball of {package.name}@{package.version} does not match "
                        "its integrity; it was removed, build again to fetch it"
                    )
                files.append(target)
            yield FetchedPackages(wheels=files, locked=packages)
        finally:
            stack.close()
            self.prune(self.settings.cache_max_bytes)

    def _run(self, plan: Any, lock_data: bytes | None, on_log: LogSink | None, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuildError(f"the build took longer than {self.settings.build_timeout} s (build_timeout) and was stopped")
        files: dict[str, str | bytes] = {"package.json": plan.package_json()}
        if lock_data is not None:
            files["package-lock.json"] = lock_data
        environment = {"HOME": "/tmp", "NPM_CONFIG_UPDATE_NOTIFIER": "false"}
        if plan.options.ca_bundle:
            files["extra-ca.pem"] = plan.options.ca_bundle
            environment["NODE_EXTRA_CA_CERTS"] = "/attune-build/config/extra-ca.pem"
        token = self.settings.npm_token()  # read at each fetch: replacing the file rotates it
        text = npmrc(plan.options.npm_registry, token)
        if text:
            # The registry and its token reach npm as its user config, a file only the container's
            # user can read (work_folders.hold), never the environment (docker inspect shows that
            # to anyone), an image, a label or the hash. Named explicitly: HOME's would do too.
            files["npmrc"] = text
            environment["NPM_CONFIG_USERCONFIG"] = "/attune-build/config/npmrc"
        with work_folders.hold(self.work_root, files) as work:
            return self._run_in(plan, work, environment, token, on_log, remaining)

    def _run_in(
        self, plan: Any, work: Path, environment: dict[str, str], token: str | None, on_log: LogSink | None, remaining: float
    ) -> bytes:
        config = work / "config"
        run = ContainerRun(
            image=plan.base.reference,
            command=["/bin/sh", "/attune-fetch/node-fetch.sh"],
            limits=ResourceLimits(
                memory=self.settings.build_memory,
                cpus=None,
                pids=512,
                nofile=4096,
                timeout=self.settings.build_timeout,
                network="bridge",
                tmp_size="2g",
            ),
            environment=environment,
            # The cache's id and the build's work folder: a sweep removes it once that folder's
            # owner is dead (a build killed outright), never while it lives.
            labels={HELPER_LABEL: "fetch", CACHE_LABEL: self.cache_id, WORK_LABEL: work.name},
            mounts=[(str(FETCH_SCRIPT.parent), "/attune-fetch", True), (str(config), "/attune-build/config", True)],
            user=f"{APP_UID}:{APP_UID}",
        )
        with tempfile.TemporaryFile(dir=work) as stream:
            # npm masks tokens in what it prints; this is in case it does not.
            output = FetchOutput(stream, self.settings.fetch_max_bytes, on_log, scrub=_scrubber(token))
            exit_code = run_fetch_container(self.engine, run, output, remaining, self.settings.build_timeout, "the npm packages")
            if exit_code not in (0, None):
                raise BuildError("fetching the npm packages failed", telling_lines(list(output.log)))
            stream.seek(0)
            return self._take(stream)

    def _take(self, stream: Any) -> bytes:
        """The lock from the container's tar; every tarball it names stored, verified, in the cache."""
        lock_data: bytes | None = None
        blobs: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isreg():
                        continue  # folders, links, devices: never created, never followed
                    if member.name == "p/package-lock.json" and member.size <= LOCK_LIMIT:
                        lock_data = _read(tar, member)
                    elif (match := _CONTENT.fullmatch(member.name)) is not None:
                        blobs["".join(match.groups())] = _read(tar, member)
        except tarfile.TarError as exc:
            raise BuildError(f"the fetch step handed back no readable tar: {exc}") from None
        if lock_data is None:
            raise BuildError("the fetch step handed back no package-lock.json")
        for package in read_lock(lock_data):
            hex_digest = package.sha512_hex
            data = blobs.get(hex_digest)
            if data is None or hashlib.sha512(data).hexdigest() != hex_digest:
                raise BuildError(f"the fetch step handed back no verified tarball of {package.name}@{package.version}")
            with self._lock_file():
                _write_atomic(self.content / f"{hex_digest}.tgz", data)
        return lock_data

    def _files(self) -> list[Path]:
        return [
            p
            for folder in (self.content, self.locks)
            if folder.is_dir()
            for p in folder.iterdir()
            if p.is_file() and not p.is_symlink()
        ]

    def stats(self) -> CacheStats:
        files = self._files()
        return CacheStats(
            directory=self.root,
            files=len(files),
            bytes=sum(p.stat().st_size for p in files),
            max_bytes=self.settings.cache_max_bytes,
        )

    def prune(self, max_bytes: int = 0) -> list[str]:
        """Least recently written tarballs and locks first, until the cache holds at most
        ``max_bytes`` (the wheel cache's bound, ``cache_max_bytes``, applies to each cache)."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        with self._lock_file():
            files = sorted(self._files(), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for path in files:
                if total <= max_bytes:
                    break
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed


def npmrc(registry: str | None, token: str | None) -> str:
    """The fetch step's npm user config: the registry, and the token for that registry only
    (npm sends it to URLs under the registry's path, nowhere else). Both are checked by the
    settings (an https URL with no credentials; a token of token characters only), so neither can
    add a line. Empty when neither is configured."""
    target = registry or DEFAULT_REGISTRY
    lines = [f"registry={target}"] if registry else []
    if token is not None:
        parts = urllib.parse.urlsplit(target)
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        lines.append(f"//{parts.netloc}{path}:_authToken={token}")
    return "".join(line + "\n" for line in lines)


def _scrubber(token: str | None) -> Callable[[str], str]:
    if not token:
        return lambda line: line
    return lambda line: line.replace(token, "****")


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""


def _write_atomic(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


__all__ = ["FetchedPackages", "LockedPackage", "NpmCache", "npmrc", "read_lock"]
