"""The shared wheel cache: downloads shared by every pack build on this host.

The classic builder the SDK drives has no cache mounts, so the download step happens outside the
Dockerfile: a throwaway container of the pack's own base image (its Python, its platform) runs
``templates/build/fetch.py`` with the cache mounted, as an unprivileged user with a read-only
root. It resolves online (or, offline, from the cache alone), takes each distribution from the cache
when the file is there with the index's hash and downloads only what is missing. The wheels it
leaves for this build go into the build context; the builder stage installs exactly those files
with no network at all. The cache is bounded (least recently used files go first) and prunable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from ..core.execution import ResourceLimits
from ..core.plan import BuildPlan
from ..core.render import APP_UID, TEMPLATES_DIR, fetch_env_script, template_source
from ..engine import ContainerRun, Engine, LogSink, telling_lines
from ..errors import BuildError
from ..settings import Settings

FETCH_SCRIPT = TEMPLATES_DIR / "build" / "fetch.py"


class LockedDistribution(BaseModel):
    """One distribution an image was built from: what a lock file pins."""

    name: str
    version: str
    filename: str
    sha256: str

    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


class FetchedWheels(BaseModel):
    wheels: list[Path]
    tools: list[Path]

    def lock(self) -> list[LockedDistribution]:
        return sorted((_locked(path) for path in self.wheels), key=lambda d: d.name)


class CacheStats(BaseModel):
    directory: Path
    files: int
    bytes: int
    max_bytes: int


class WheelCache:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.root = settings.cache_dir
        self.wheelhouse = self.root / "wheelhouse"
        self.tools = self.root / "tools"

    @contextmanager
    def fetch(self, plan: BuildPlan, *, offline: bool = False, on_log: LogSink | None = None) -> Iterator[FetchedWheels]:
        """The wheels of ``plan``'s requirements, in a work folder removed after the block."""
        self._prepare()
        work = self.root / "work" / uuid.uuid4().hex
        config = work / "config"
        for folder in (work / "wheels", work / "tools", config):
            folder.mkdir(parents=True)
        (work / "requirements.txt").write_text("".join(line + "\n" for line in plan.spec.requirement_lines()))
        (config / "env.sh").write_text(fetch_env_script(plan.options))
        if plan.options.ca_bundle:
            (config / "extra-ca.pem").write_text(plan.options.ca_bundle)
        for path in (work, work / "wheels", work / "tools"):
            os.chown(path, APP_UID, APP_UID)
        try:
            self._run(plan, work, offline, on_log)
            fetched = FetchedWheels(
                wheels=sorted((work / "wheels").glob("*.whl")),
                tools=sorted((work / "tools").glob("*.whl")),
            )
            for path in [*fetched.wheels, *fetched.tools]:
                _touch(self.wheelhouse / path.name)
                _touch(self.tools / path.name)
            yield fetched
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self.prune(self.settings.cache_max_bytes)

    def stats(self) -> CacheStats:
        files = [p for p in self._files()]
        return CacheStats(directory=self.root, files=len(files), bytes=sum(p.stat().st_size for p in files),
                          max_bytes=self.settings.cache_max_bytes)

    def prune(self, max_bytes: int = 0) -> list[str]:
        """Remove least recently used files until the cache holds at most ``max_bytes``."""
        files = sorted(self._files(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        removed = []
        for path in files:
            if total <= max_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def _files(self) -> list[Path]:
        return [p for d in (self.wheelhouse, self.tools) if d.is_dir() for p in d.iterdir()
                if p.is_file() and ".part-" not in p.name]

    def _prepare(self) -> None:
        for folder in (self.wheelhouse, self.tools, self.root / "work"):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.wheelhouse, self.tools):
            if folder.stat().st_uid != APP_UID:
                os.chown(folder, APP_UID, APP_UID)

    def _run(self, plan: BuildPlan, work: Path, offline: bool, on_log: LogSink | None) -> str:
        tools = UV_REQUIREMENT if plan.options.installer == "uv" else ""
        run = ContainerRun(
            image=plan.base.reference,
            # env.sh carries the CA bundle and index settings (every value quoted by
            # fetch_env_script; nothing from the pack is in it), so it is sourced by a shell.
            command=["/bin/sh", "-c", ". /attune-build/config/env.sh && exec python3 -I /attune-fetch/fetch.py"],
            limits=ResourceLimits(
                memory=self.settings.build_memory, cpus=None, pids=512, nofile=4096,
                timeout=self.settings.build_timeout, network="none" if offline else "bridge", tmp_size="2g",
            ),
            environment={
                "ATTUNE_FETCH_OFFLINE": "1" if offline else "0",
                "ATTUNE_FETCH_TOOLS": tools,
                "HOME": "/tmp",
            },
            labels={"io.attune.containers.helper": "fetch"},
            mounts=[
                (str(FETCH_SCRIPT.parent), "/attune-fetch", True),
                (str(work / "config"), "/attune-build/config", True),
                (str(work), "/out", False),
                (str(self.wheelhouse), "/cache/wheelhouse", False),
                (str(self.tools), "/cache/tools", False),
            ],
            user=f"{APP_UID}:{APP_UID}",
        )
        output: list[str] = []

        def collect(stream: int, data: bytes) -> None:
            for line in data.decode("utf-8", "replace").splitlines():
                output.append(line)
                if on_log is not None and line.strip():
                    on_log(line)

        container_id = self.engine.create_container(run)
        try:
            exit_code, timed_out, _ = self.engine.run_attached(container_id, b"", self.settings.build_timeout, collect)
        finally:
            self.engine.remove_container(container_id, attempts=10)
        if timed_out:
            raise BuildError(f"fetching the wheels took longer than {self.settings.build_timeout} s")
        if exit_code != 0:
            raise BuildError("fetching the wheels failed" + (" (offline)" if offline else ""), telling_lines(output))
        return "\n".join(output)


# The uv release builds install with (a template build file, so it is part of the content hash).
UV_REQUIREMENT = template_source("build/uv-bootstrap.txt").strip()


def _locked(path: Path) -> LockedDistribution:
    stem = path.name[: -len(".whl")]
    name, version = stem.split("-")[:2]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LockedDistribution(name=name.replace("_", "-").lower(), version=version, filename=path.name, sha256=digest)


def _touch(path: Path) -> None:
    if path.exists():
        os.utime(path)
