"""The dependency manager: the seed's ``DependencyManager`` API with images as environments.

``ensure_environment`` is the hot path. An unchanged spec is answered from memory (validation and
hashing are pure; base image facts and environment infos are cached), so a second call does not
touch the engine at all. A missing image is built under a per-image lock that holds across threads
and processes (``filelock``), so concurrent callers build it once and the others get the same image.
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import datetime, timezone
from typing import Any

from cachetools import TTLCache
from filelock import FileLock
from pydantic import BaseModel

from ..core import labels as L
from ..core.pack_ref import validate_pack_ref
from ..core.plan import BuildPlan, make_plan
from ..core.render import INSTALLED_RECORD, INTERPRETER
from ..core.spec import DependencySpec, EnvironmentInfo, validate_spec
from ..core.versions import choose_python
from ..engine import Engine, LogSink
from ..errors import AttuneContainersError, BuildError, EnvironmentNotFoundError, ImageInUseError
from ..settings import Settings
from .base_images import BaseImageCatalog
from .wheels import LockedDistribution, WheelCache
from .build_gate import BuildGate
from .current import CurrentImages


class ExecutablePath(BaseModel):
    """Where a pack's interpreter is: inside which image, at which path."""

    image: str
    interpreter: str


class Ensured(BaseModel):
    """An environment and how ``ensure`` got it: reused (it existed), pulled or built."""

    info: EnvironmentInfo
    outcome: str


class ContainerDependencyManager:
    runtime_type = "python"

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None) -> None:
        self.settings = settings or Settings()
        self.engine = engine or Engine(timeout=self.settings.engine_timeout)
        self.bases = BaseImageCatalog(self.settings, self.engine)
        self.wheels = WheelCache(self.settings, self.engine)
        self._cache: TTLCache[tuple[str, str], EnvironmentInfo] = TTLCache(
            maxsize=1024, ttl=self.settings.cache_ttl
        )
        self._cache_lock = threading.Lock()
        # The image each pack resolved to last in this process: its "current" environment.
        self._current: dict[str, str] = {}
        self._current_lock = threading.Lock()
        # The same across processes (the pruner reads it), and the gate builds hold shared.
        self._records = CurrentImages(self.settings.state_dir)
        self._gate = BuildGate(self.settings.state_dir)

    # -- planning (pure apart from base image facts) -------------------------------------------

    def plan(self, pack_ref: str, spec: DependencySpec, *, pull_base: bool = True) -> BuildPlan:
        """Validate ``spec``, choose its Python and return the build plan; raises on bad input."""
        validate_pack_ref(pack_ref)
        validated = validate_spec(spec, self.settings.requirement_policy())
        base = choose_python(self.bases.available(), validated.min_version, validated.max_version)
        if pull_base:
            base = self.bases.ensure_present(base)
        return make_plan(pack_ref, validated, base, self.settings.build_options(), self.settings.image_prefix)

    # -- the seed's API ---------------------------------------------------------------------

    def ensure_environment(
        self, pack_ref: str, spec: DependencySpec, *, on_log: LogSink | None = None
    ) -> EnvironmentInfo:
        """The pack's image for ``spec``: local, else pulled from the registry, else built.
        Idempotent; an unchanged spec is answered from memory."""
        return self.ensure(pack_ref, spec, on_log=on_log).info

    def ensure(
        self, pack_ref: str, spec: DependencySpec, *, on_log: LogSink | None = None, offline: bool | None = None
    ) -> Ensured:
        """``ensure_environment`` that also says how the image came to be (reused, pulled, built)."""
        plan = self.plan(pack_ref, spec)
        key = (pack_ref, plan.dependency_hash)
        with self._cache_lock:
            info = self._cache.get(key)
        outcome = "reused"
        if info is None:
            info = self._find(plan)
            if info is None:
                with self._build_lock(plan):
                    # Another thread or process may have made it while we waited.
                    info = self._find(plan)
                    if info is None:
                        info, outcome = self._pull_or_build(plan, on_log, offline)
                    # Recorded before the lock goes: a pruner that takes it next sees it is current.
                    self._make_current(pack_ref, info.image)
            self._remember(key, info)
        self._make_current(pack_ref, info.image)
        return Ensured(info=info, outcome=outcome)

    def push(self, info: EnvironmentInfo) -> str:
        """Make sure the registry holds ``info``'s image; return its reference there."""
        registry = self.settings.registry
        if not registry:
            raise AttuneContainersError("no registry is configured (ATTUNE__CONTAINERS__REGISTRY)")
        remote = f"{registry}/{info.image}"
        if not self.engine.in_registry(remote):
            repository, tag = remote.rsplit(":", 1)
            self.engine.tag(info.id, repository, tag)
            try:
                self.engine.push(remote)
            finally:
                # The registry-qualified tag was only a vehicle for the push.
                with contextlib.suppress(AttuneContainersError):
                    self.engine.remove_image(remote)
        return remote

    def lock_lines(self, info: EnvironmentInfo) -> list[str]:
        """The image's lock as a requirements file: every distribution pinned with its sha256."""
        attrs = self.engine.inspect_image(info.id) or {}
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        try:
            lock = [LockedDistribution(**d) for d in json.loads(labels.get(L.LOCK, "[]"))]
        except (ValueError, TypeError) as exc:
            raise AttuneContainersError(f"{info.image} has no readable lock label: {exc}") from None
        return [d.requirement() for d in lock]

    def needs_update(self, pack_ref: str, spec: DependencySpec) -> bool:
        """True when no image exists for the pack's current spec."""
        plan = self.plan(pack_ref, spec)
        with self._cache_lock:
            if (pack_ref, plan.dependency_hash) in self._cache:
                return False
        return self._find(plan) is None

    def get_environment(self, pack_ref: str) -> EnvironmentInfo | None:
        """The pack's current image: the one last ensured here, else its newest."""
        environments = self.list_environments(pack_ref)
        if not environments:
            return None
        current = self._current.get(pack_ref)
        for info in environments:
            if info.image == current:
                return info
        return environments[0]

    def get_executable_path(self, pack_ref: str) -> ExecutablePath:
        info = self.get_environment(pack_ref)
        if info is None:
            raise EnvironmentNotFoundError(f"pack {pack_ref!r} has no environment; ensure it first")
        return ExecutablePath(image=info.image, interpreter=info.executable_path)

    def validate_environment(self, pack_ref: str) -> bool:
        """Whether the pack's image exists and its interpreter runs and is the labelled version."""
        info = self.get_environment(pack_ref)
        if info is None or not info.is_valid:
            return False
        code, output = self.engine.run_once(
            info.id, [INTERPRETER, "-c", "import platform; print(platform.python_version())"]
        )
        return code == 0 and output.strip() == info.runtime_version

    def list_environments(self, pack_ref: str | None = None) -> list[EnvironmentInfo]:
        """Every pack image of ours (or of one pack), newest first."""
        labels = {L.MANAGED: "true"}
        if pack_ref is not None:
            labels[L.PACK_REF] = pack_ref
        found = []
        for summary in self.engine.list_images(labels):
            info = _info_from_summary(summary, self.settings.image_prefix)
            if info is not None and (pack_ref is None or info.pack_ref == pack_ref):
                found.append(info)
        return sorted(found, key=lambda i: (i.created_at, i.image), reverse=True)

    def remove_environment(self, pack_ref: str) -> list[str]:
        """Remove every image of the pack; return their references.

        Never forced: an image a container (running or stopped) still uses makes this fail with
        ImageInUseError, naming it, after the others were removed.
        """
        validate_pack_ref(pack_ref)
        removed, in_use = [], []
        try:
            for info in self.list_environments(pack_ref):
                try:
                    self.engine.remove_image(info.id)
                    removed.append(info.image)
                except ImageInUseError:
                    in_use.append(info.image)
        finally:
            self._forget(pack_ref)
        if in_use:
            raise ImageInUseError(
                f"{', '.join(in_use)} of pack {pack_ref!r} is used by a container; stop it first "
                f"(removed: {', '.join(removed) or 'nothing'})"
            )
        return removed

    def forget_image(self, image_id: str) -> None:
        """Drop what memory holds about one image (it was removed behind this manager's back)."""
        self.forget_images({image_id})

    def cleanup(self, keep_recent: int) -> list[str]:
        """Remove all but the newest ``keep_recent`` images of each pack; the current one is kept
        and takes one of the places. Build leftovers past their grace period go too.

        Returns the references removed. What a container uses, or a build or a starting action
        holds, is skipped, never forced (``Pruner`` has the report with the reasons).
        """
        from .pruner import PrunePolicy, Pruner

        if keep_recent < 0:
            raise ValueError("keep_recent must be >= 0")
        report = Pruner(self).prune(PrunePolicy(keep=keep_recent))
        return [item.reference for item in report.removed if item.kind == "image"]

    def current_images(self) -> dict[str, set[str]]:
        """pack_ref -> the images it currently resolves to: the last one ``ensure_environment``
        resolved on this host (any process), and the last one in this process if that differs."""
        current: dict[str, set[str]] = {}
        for pack_ref, image in [*self._records.all().items(), *self._current.items()]:
            current.setdefault(pack_ref, set()).add(image)
        return current

    def forget_images(self, image_ids: set[str]) -> None:
        """Drop what memory holds about images removed behind the manager's back (the pruner)."""
        with self._cache_lock:
            for key in [k for k, info in self._cache.items() if info.id in image_ids]:
                self._cache.pop(key, None)

    # -- internals ----------------------------------------------------------------------------

    def _find(self, plan: BuildPlan) -> EnvironmentInfo | None:
        attrs = self.engine.inspect_image(plan.image)
        if attrs is None:
            return None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(L.PACK_REF) != plan.pack_ref or labels.get(L.DEPENDENCY_HASH) != plan.dependency_hash:
            raise AttuneContainersError(
                f"{plan.image} exists but belongs to pack {labels.get(L.PACK_REF)!r} with hash "
                f"{labels.get(L.DEPENDENCY_HASH)!r}, not {plan.pack_ref!r}; remove it"
            )
        return L.environment_from_image(attrs["Id"], plan.image, labels, attrs.get("Size"))

    def _pull_or_build(self, plan: BuildPlan, on_log: LogSink | None, offline: bool | None) -> tuple[EnvironmentInfo, str]:
        if self.settings.registry:
            pulled = self._pull(plan)
            if pulled is not None:
                return pulled, "pulled"
        if not self.settings.allow_build:
            where = f"in the registry {self.settings.registry}" if self.settings.registry else "on this host"
            raise AttuneContainersError(
                f"{plan.image} for pack {plan.pack_ref!r} is not {where}, and building is not allowed "
                "here (ATTUNE__CONTAINERS__ALLOW_BUILD=false); pre-build it with `attune-containers build --all --push`"
            )
        return self._build(plan, on_log, self.settings.offline if offline is None else offline), "built"

    def _pull(self, plan: BuildPlan) -> EnvironmentInfo | None:
        remote = f"{self.settings.registry}/{plan.image}"
        if not self.engine.in_registry(remote):
            return None
        self.engine.pull(remote)
        repository, tag = plan.image.rsplit(":", 1)
        self.engine.tag(remote, repository, tag)
        with contextlib.suppress(AttuneContainersError):
            self.engine.remove_image(remote)  # keep one name per image: the local one
        return self._find(plan)  # refuses an image whose labels do not match the plan

    def _build(self, plan: BuildPlan, on_log: LogSink | None, offline: bool = False) -> EnvironmentInfo:
        # While a build runs, its intermediate images look like leftovers: the gate keeps the
        # pruner's leftover cleaning away until it is done.
        with self._gate.shared():
            return self._build_now(plan, on_log, offline)

    def _build_now(self, plan: BuildPlan, on_log: LogSink | None, offline: bool) -> EnvironmentInfo:
        with self.wheels.fetch(plan, offline=offline, on_log=on_log) as fetched:
            context = plan.context(fetched.wheels, fetched.tools)
            lock = fetched.lock()
            image_id = self.engine.build(
                context,
                memory=self.settings.build_memory,
                timeout=self.settings.build_timeout,
                on_log=on_log,
                network_mode="none",  # everything it installs is in the context
                nocache=self.settings.build_no_cache,
            )
        try:
            record = json.loads(self.engine.read_file(image_id, INSTALLED_RECORD))
            installed = [f"{d['name']}=={d['version']}" for d in record]
            labels = plan.labels(installed, datetime.now(timezone.utc).replace(microsecond=0))
            labels[L.LOCK] = json.dumps([d.model_dump() for d in lock], separators=(",", ":"))
            # A second, layer-less build adds the labels and the tag: the tag only ever lands on a
            # complete, labelled image.
            labelled = self.engine.build(
                _label_context(image_id), tag=plan.image, labels=labels, timeout=self.settings.build_timeout
            )
        except (AttuneContainersError, ValueError, KeyError) as exc:
            with contextlib.suppress(AttuneContainersError):
                self.engine.remove_image(image_id, force=True)
            if isinstance(exc, AttuneContainersError):
                raise
            raise BuildError(f"the built image has no readable record of its distributions: {exc}") from None
        found = self._find(plan)
        if found is None or found.id != labelled:
            raise BuildError(f"{plan.image} was built but is not where it should be")
        return found

    def _build_lock(self, plan: BuildPlan) -> FileLock:
        return self.image_lock(plan.image)

    def image_lock(self, image: str, timeout: float | None = None) -> FileLock:
        """The cross-process lock of one image reference (``repo:tag``).

        Held while the image is built, and by the runner from resolving the image until its
        container exists; the pruner takes it (without waiting) before removing an image, so it
        never removes one out from under a build or a starting action.
        """
        directory = self.settings.state_dir / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        name = image.replace("/", "_").replace(":", "-")
        return FileLock(
            str(directory / f"{name}.lock"),
            timeout=self.settings.build_timeout if timeout is None else timeout,
        )

    def _make_current(self, pack_ref: str, image: str) -> None:
        # Only a change touches the disk: the cache-hit path stays free of writes. The check, the
        # record and the memory change together: two threads interleaving them could leave the
        # record naming one image while memory names the other, and the memory then hides it.
        if self._current.get(pack_ref) == image:
            return
        with self._current_lock:
            if self._current.get(pack_ref) != image:
                self._records.set(pack_ref, image)
                self._current[pack_ref] = image

    def _remember(self, key: tuple[str, str], info: EnvironmentInfo) -> None:
        with self._cache_lock:
            self._cache[key] = info

    def _forget(self, pack_ref: str) -> None:
        with self._cache_lock:
            for key in [k for k in self._cache if k[0] == pack_ref]:
                self._cache.pop(key, None)
        self._current.pop(pack_ref, None)


def _label_context(image_id: str) -> bytes:
    import io
    import tarfile

    if not image_id.startswith("sha256:") or not all(c in "0123456789abcdef" for c in image_id[7:]):
        raise BuildError(f"unexpected image ID from the engine: {image_id!r}")
    data = f"FROM {image_id}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _info_from_summary(summary: dict[str, Any], prefix: str) -> EnvironmentInfo | None:
    tags = [t for t in summary.get("RepoTags") or [] if t != "<none>:<none>"]
    ours = [t for t in tags if t.startswith(prefix + "/")]
    reference = (ours or tags or [summary["Id"]])[0]
    return L.environment_from_image(summary["Id"], reference, summary.get("Labels") or {}, summary.get("Size"))


class DependencyManagerRegistry:
    """Routes packs to the dependency manager of their runtime."""

    def __init__(self) -> None:
        self._managers: dict[str, ContainerDependencyManager] = {}

    def register(self, manager: ContainerDependencyManager) -> None:
        self._managers[manager.runtime_type] = manager

    def has_runtime(self, runtime: str) -> bool:
        return self._normalize(runtime) in self._managers

    def get(self, runtime: str) -> ContainerDependencyManager:
        manager = self._managers.get(self._normalize(runtime))
        if manager is None:
            raise AttuneContainersError(
                f"no dependency manager for runtime {runtime!r}; registered: {', '.join(sorted(self._managers)) or 'none'}"
            )
        return manager

    def ensure_environment(self, pack_ref: str, spec: DependencySpec, **kwargs: Any) -> EnvironmentInfo:
        return self.get(spec.runtime).ensure_environment(pack_ref, spec, **kwargs)

    @staticmethod
    def _normalize(runtime: str) -> str:
        from ..core.spec import SUPPORTED_RUNTIMES

        return SUPPORTED_RUNTIMES.get(runtime, runtime)
