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
from collections.abc import Callable
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


class ExecutablePath(BaseModel):
    """Where a pack's interpreter is: inside which image, at which path."""

    image: str
    interpreter: str


class ContainerDependencyManager:
    runtime_type = "python"

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None) -> None:
        self.settings = settings or Settings()
        self.engine = engine or Engine(timeout=self.settings.engine_timeout)
        self.bases = BaseImageCatalog(self.settings, self.engine)
        self._cache: TTLCache[tuple[str, str], EnvironmentInfo] = TTLCache(
            maxsize=1024, ttl=self.settings.cache_ttl
        )
        self._cache_lock = threading.Lock()
        # The image each pack resolved to last in this process: its "current" environment.
        self._current: dict[str, str] = {}

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
        """The pack's image for ``spec``, built if it does not exist yet. Idempotent."""
        plan = self.plan(pack_ref, spec)
        key = (pack_ref, plan.dependency_hash)
        with self._cache_lock:
            info = self._cache.get(key)
        if info is None:
            info = self._find(plan)
            if info is None:
                with self._build_lock(plan):
                    # Another thread or process may have built it while we waited.
                    info = self._find(plan) or self._build(plan, on_log)
            self._remember(key, info)
        self._current[pack_ref] = info.image
        return info

    def needs_update(self, pack_ref: str, spec: DependencySpec) -> bool:
        """True when no image exists for the pack's current spec."""
        plan = self.plan(pack_ref, spec)
        with self._cache_lock:
            if (pack_ref, plan.dependency_hash) in self._cache:
                return False
        return self._find(plan) is None

    def get_environment(self, pack_ref: str) -> EnvironmentInfo | None:
        """The pack's current image: the one last ensured here, else its newest."""
        environments = self._environments_of(pack_ref)
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
        """Remove every image of the pack; return their references. Images in use stay (error)."""
        validate_pack_ref(pack_ref)
        removed = []
        for info in self._environments_of(pack_ref):
            self.engine.remove_image(info.id, force=True)
            removed.append(info.image)
        self._forget(pack_ref)
        return removed

    def cleanup(self, keep_recent: int) -> list[str]:
        """Remove all but the newest ``keep_recent`` images of each pack (the current one is kept).

        Returns the references removed. An image a container still uses is skipped, not forced.
        """
        if keep_recent < 0:
            raise ValueError("keep_recent must be >= 0")
        by_pack: dict[str, list[EnvironmentInfo]] = {}
        for info in self.list_environments():
            by_pack.setdefault(info.pack_ref, []).append(info)
        removed = []
        for pack_ref, environments in by_pack.items():
            current = self._current.get(pack_ref)
            kept = 0
            for info in environments:  # newest first
                if info.image == current or kept < keep_recent:
                    kept += 1
                    continue
                with contextlib.suppress(ImageInUseError):
                    self.engine.remove_image(info.id)
                    removed.append(info.image)
            self._forget(pack_ref)
        return removed

    # -- internals ----------------------------------------------------------------------------

    def _environments_of(self, pack_ref: str) -> list[EnvironmentInfo]:
        return self.list_environments(pack_ref)

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

    def _build(self, plan: BuildPlan, on_log: LogSink | None) -> EnvironmentInfo:
        image_id = self.engine.build(
            plan.context(),
            memory=self.settings.build_memory,
            timeout=self.settings.build_timeout,
            on_log=on_log,
        )
        try:
            record = json.loads(self.engine.read_file(image_id, INSTALLED_RECORD))
            installed = [f"{d['name']}=={d['version']}" for d in record]
            labels = plan.labels(installed, datetime.now(timezone.utc).replace(microsecond=0))
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
