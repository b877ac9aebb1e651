"""The dependency manager: the seed's ``DependencyManager`` API with images as environments.

``ensure_environment`` is the hot path. An unchanged spec is answered from memory (validation and
hashing are pure; base image facts and environment infos are cached), so a second call does not
touch the engine at all. A missing image is built under a per-image lock that holds across threads
and processes (``filelock``), so concurrent callers build it once and the others get the same image.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from filelock import FileLock
from pydantic import BaseModel

from ..core import labels as L
from ..core.pack_ref import image_name_for, validate_pack_ref
from ..core.plan import TAG_LENGTH, BuildPlan
from ..core.prune_policy import PrunePolicy
from ..core.render import ATTUNE_DIR, INSTALLED_RECORD, TEMPLATES_DIR, final_config
from ..core.spec import DependencySpec, EnvironmentInfo
from ..engine import Engine, LogSink, telling_lines
from ..errors import (
    AttuneContainersError,
    BuildError,
    EnvironmentNotFoundError,
    ImageConflictError,
    ImageInUseError,
    InvalidSpecError,
    RegistryAuthError,
    RegistryError,
)
from ..runtimes import RUNTIMES, get_runtime
from ..settings import Settings
from . import one_layer
from .base_images import BaseImageCatalog
from .build_gate import BuildGate
from .current import CurrentImages
from .manifest import TrustedImage, TrustManifest
from .provenance import BuildLogIds, BuildRecord
from .pruner import Pruner
from .wheels import (
    INSTALLED_RECORD_LIMIT,
    UV_VERSION,
    FetchedWheels,
    read_installed_record,
)

log = logging.getLogger(__name__)


class ExecutablePath(BaseModel):
    """Where a pack's interpreter is: inside which image, at which path."""

    image: str
    interpreter: str


class Pushed(BaseModel):
    """What ``publish`` put in the registry: by tag, and by the digest it stored it under."""

    reference: str
    digest: str | None
    image_id: str

    @property
    def by_digest(self) -> str | None:
        return f"{self.reference.rsplit(':', 1)[0]}@{self.digest}" if self.digest else None


class Removal(BaseModel):
    """``remove_environment``'s account: what went (or would go), and what the engine refused."""

    removed: list[str]
    refused: dict[str, str] = {}


class Ensured(BaseModel):
    """An environment and how ``ensure`` got it: reused (it existed), pulled or built."""

    info: EnvironmentInfo
    outcome: str


class ContainerDependencyManager:
    """One image per pack spec, for every registered runtime (each spec is planned by its own
    runtime, runtimes/; nothing here names one): plans, builds (or reuses, or pulls), lists and
    removes the images of one configuration (``Settings``, its ``image_prefix``). Safe to use from
    many threads."""

    # The seed's DependencyManager attribute: the default runtime, under which the seed's
    # DependencyManagerRegistry files this manager (it serves every runtime).
    runtime_type = get_runtime().name

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None) -> None:
        self.settings = settings or Settings()
        self.engine = engine or Engine(timeout=self.settings.engine_timeout)
        self.bases = BaseImageCatalog(self.settings, self.engine)
        self._cache: TTLCache[tuple[str, str], EnvironmentInfo] = TTLCache(maxsize=1024, ttl=self.settings.cache_ttl)
        self._cache_lock = threading.Lock()
        self._fetchers: dict[str, Any] = {}
        # Base image ID -> its config document as stored (the one-layer build's starting point).
        self._base_configs: dict[str, bytes] = {}
        # The default runtime's fetcher (the build path and `cache` use it); other runtimes' on demand.
        self.wheels = self.fetcher(self.runtime_type)
        # The image each pack resolved to last in this process, per runtime: its "current" environment.
        self._current: dict[tuple[str, str], str] = {}
        self._current_lock = threading.Lock()
        # The same across processes (the pruner reads it), and the gate builds hold shared.
        self._records = CurrentImages(self.settings.state_dir)
        self._gate = BuildGate(self.settings.state_dir)
        # The IDs this configuration's builds made: how its leftovers are told from others'.
        self.builds = BuildRecord(self.settings.state_dir)

    # -- planning (pure apart from base image facts) -------------------------------------------

    def plan(self, pack_ref: str, spec: DependencySpec, *, pull_base: bool = True) -> BuildPlan:
        """Validate ``spec``, choose its runtime's version and return the build plan; raises on bad input."""
        validate_pack_ref(pack_ref)
        runtime = get_runtime(spec.runtime)
        validated = runtime.validate(spec, self.settings.requirement_policy())
        base = runtime.choose_base(self.bases.available(runtime), validated)
        if pull_base:
            base = self.bases.ensure_present(base, runtime)
        return runtime.plan(pack_ref, validated, base, self.settings.build_options(), self.settings.image_prefix)

    def fetcher(self, runtime_type: str) -> Any:
        """The runtime's dependency fetcher and cache, one per runtime and manager."""
        runtime = get_runtime(runtime_type)
        with self._cache_lock:
            if runtime.name not in self._fetchers:
                self._fetchers[runtime.name] = runtime.fetcher(self.settings, self.engine)
            return self._fetchers[runtime.name]

    # -- the seed's API ---------------------------------------------------------------------

    def ensure_environment(self, pack_ref: str, spec: DependencySpec, *, on_log: LogSink | None = None) -> EnvironmentInfo:
        """The pack's image for ``spec``: local, else pulled from the registry, else built.
        Idempotent; an unchanged spec is answered from memory."""
        return self.ensure(pack_ref, spec, on_log=on_log).info

    def ensure(
        self,
        pack_ref: str,
        spec: DependencySpec,
        *,
        on_log: LogSink | None = None,
        offline: bool | None = None,
        pull: bool = True,
    ) -> Ensured:
        """``ensure_environment`` that also says how the image came to be (reused, pulled, built).

        ``pull=False`` never takes an image from the registry (CI: it only publishes what it built).
        """
        plan = self.plan(pack_ref, spec)
        key = (pack_ref, plan.dependency_hash)
        runtime = get_runtime(plan.spec.runtime).name  # a mixed pack's runtimes each have a current image
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
                        info, outcome = self._pull_or_build(plan, on_log, offline, pull)
                    # Recorded before the lock goes: a pruner that takes it next sees it is current.
                    self._make_current(pack_ref, runtime, info.image)
            self._remember(key, info)
        self._make_current(pack_ref, runtime, info.image)
        return Ensured(info=info, outcome=outcome)

    def push(self, info: EnvironmentInfo) -> str:
        """Push ``info``'s image to the registry; return its reference there (by tag)."""
        return self.publish(info).reference

    def publish(self, info: EnvironmentInfo) -> Pushed:
        """Push ``info``'s image (always: whatever the tag holds now is not trusted to be it) and
        return the reference and the digest the registry stored it under, for a trusted manifest."""
        registry = self.settings.registry
        if not registry:
            raise AttuneContainersError("no registry is configured (ATTUNE__CONTAINERS__REGISTRY)")
        attrs = self.engine.inspect_image(info.image)
        if attrs is None or attrs.id != info.id or not L.is_built_by_us(attrs):
            raise AttuneContainersError(f"{info.image} is not the image built for pack {info.pack_ref!r}; not pushed")
        remote = f"{registry}/{info.image}"
        repository, tag = remote.rsplit(":", 1)
        self.engine.tag(info.id, repository, tag)
        try:
            digest = self.engine.push(remote, auth=self.registry_auth())
        finally:
            # The registry-qualified tag was only a vehicle for the push.
            with contextlib.suppress(AttuneContainersError):
                self.engine.remove_image(remote)
        return Pushed(reference=remote, digest=digest, image_id=info.id)

    def registry_auth(self) -> dict[str, str] | None:
        """The registry credentials of the settings, or None (the engine's own `docker login`).
        The password file is read at each use: replacing it rotates the password with no restart."""
        user, path = self.settings.registry_username, self.settings.registry_password_file
        if user is None or path is None:
            return None
        try:
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise RegistryAuthError(f"cannot read registry_password_file {path}: {exc.strerror}") from None
        if not password:
            raise RegistryAuthError(f"registry_password_file {path} is empty")
        return {"username": user, "password": password}

    def check_registry(self) -> None:
        """Before a long run of builds to push: the registry answers, is trusted and takes the
        configured credentials (a RegistryError otherwise). With the engine's own login there is
        nothing to check here: each push says it."""
        auth = self.registry_auth()
        if self.settings.registry and auth is not None:
            self.engine.check_registry(self.settings.registry.split("/", 1)[0], auth)

    def lock_lines(self, info: EnvironmentInfo) -> list[str]:
        """The image's lock as a requirements file: every distribution pinned with its sha256."""
        attrs = self.engine.inspect_image(info.id)
        labels = attrs.labels if attrs is not None else {}
        try:
            # Each runtime's lock entries are its own (wheels for Python, npm integrities for Node).
            return get_runtime(info.runtime).lock_lines(json.loads(labels.get(L.LOCK, "[]")))
        except (ValueError, TypeError, KeyError) as exc:
            raise AttuneContainersError(f"{info.image} has no readable lock label: {exc}") from None

    def needs_update(self, pack_ref: str, spec: DependencySpec) -> bool:
        """True when no image exists for the pack's current spec."""
        plan = self.plan(pack_ref, spec)
        with self._cache_lock:
            if (pack_ref, plan.dependency_hash) in self._cache:
                return False
        return self._find(plan) is None

    def get_environment(self, pack_ref: str, runtime: str | None = None) -> EnvironmentInfo | None:
        """The pack's current image of this configuration for ``runtime`` (a name or alias): the
        one last ensured by this process, else by any process sharing ``state_dir``, else its
        newest. Without ``runtime``: the same among the images of every runtime of the pack (a
        mixed pack's newest current one; give ``runtime`` to choose)."""
        name = get_runtime(runtime).name if runtime is not None else None
        environments = self.list_environments(pack_ref, name)
        if not environments:
            return None
        names = [name] if name is not None else list(RUNTIMES)
        mine = {self._current.get((pack_ref, n)) for n in names} - {None}
        recorded = {self._records.get(pack_ref, n) for n in names} - {None}
        for current in (mine, recorded):
            for info in environments:
                if info.image in current:
                    return info
        return environments[0]

    def get_executable_path(self, pack_ref: str, runtime: str | None = None) -> ExecutablePath:
        info = self.get_environment(pack_ref, runtime)
        if info is None:
            raise EnvironmentNotFoundError(f"pack {pack_ref!r} has no environment; ensure it first")
        return ExecutablePath(image=info.image, interpreter=info.executable_path)

    def validate_environment(self, pack_ref: str, runtime: str | None = None) -> bool:
        """Whether the pack's image (of ``runtime``) exists and its interpreter runs and is the
        labelled version."""
        info = self.get_environment(pack_ref, runtime)
        if info is None or not info.is_valid:
            return False
        code, output = self.engine.run_once(info.id, get_runtime(info.runtime).version_command())
        return code == 0 and output.strip() == info.runtime_version

    def list_environments(self, pack_ref: str | None = None, runtime: str | None = None) -> list[EnvironmentInfo]:
        """Every pack image of this configuration (or of one pack, or of one runtime), newest first.
        A pack with actions of several runtimes has images of each, in the same repository.

        An image is one only when it is tagged exactly ``<image_prefix>/<name of its pack_ref>:
        <its dependency hash>`` and its labels are its own (``labels.is_built_by_us``): images of
        other prefixes, and images built FROM ours (they inherit our labels), are not listed.
        """
        wanted = get_runtime(runtime).name if runtime is not None else None  # an unknown one: exit 2, no engine asked
        labels = {L.MANAGED: "true"}
        if pack_ref is not None:
            labels[L.PACK_REF] = pack_ref
        found = []
        for summary in self.engine.list_images(labels):
            reference = self._our_reference(summary.tags, summary.labels)
            if reference is None:
                continue
            attrs = self.engine.inspect_image(summary.id)
            if attrs is None or not L.is_built_by_us(attrs):
                continue
            info = L.environment_from_image(summary.id, reference, summary.labels, summary.size)
            if info is not None and (pack_ref is None or info.pack_ref == pack_ref):
                if wanted is None or info.runtime == wanted:
                    found.append(info)
        return sorted(found, key=lambda i: (i.created_at, i.image), reverse=True)

    def expected_reference(self, labels: Mapping[str, str]) -> str | None:
        """The one reference a pack image with these labels has in this configuration."""
        pack_ref, dependency_hash = labels.get(L.PACK_REF), labels.get(L.DEPENDENCY_HASH) or ""
        if not pack_ref or not re.fullmatch(r"[0-9a-f]{64}", dependency_hash):
            return None
        try:
            name = image_name_for(pack_ref)
        except (AttuneContainersError, ValueError):
            return None
        return f"{self.settings.image_prefix}/{name}:{dependency_hash[:TAG_LENGTH]}"

    def _our_reference(self, tags: Sequence[str], labels: Mapping[str, str]) -> str | None:
        expected = self.expected_reference(labels)
        return expected if expected is not None and expected in tags else None

    def remove_environment(self, pack_ref: str) -> list[str]:
        """Remove every image of the pack in this configuration; return their references.

        Only this configuration's images (``list_environments``), each by its reference: a second
        tag elsewhere keeps the image for its other owner. Never forced: an image a container
        (running or stopped) still uses makes this fail with ImageInUseError, naming it and the
        engine's own cause, after the others were removed.
        """
        removal = self.remove_images(pack_ref)
        if removal.refused:
            causes = "; ".join(f"{ref}: {cause}" for ref, cause in removal.refused.items())
            error = ImageInUseError if all("used by" in c for c in removal.refused.values()) else ImageConflictError
            raise error(
                f"the engine refused to remove images of pack {pack_ref!r}: {causes} "
                f"(removed: {', '.join(removal.removed) or 'nothing'})"
            )
        return removal.removed

    def remove_images(self, pack_ref: str, *, image: str | None = None, dry_run: bool = False) -> Removal:
        """Remove the pack's images of this configuration (or only the one whose dependency hash,
        tag or image ID starts with ``image``); ``dry_run`` removes nothing and says what would go.
        Refusals are collected with the engine's own cause, never forced."""
        validate_pack_ref(pack_ref)
        environments = self.list_environments(pack_ref)
        if image is not None:
            wanted = image.removeprefix("sha256:").lower()
            if not re.fullmatch(r"[0-9a-f]{4,64}", wanted):
                raise InvalidSpecError("give a dependency hash, tag or image ID (at least 4 hex digits)", field="image")
            environments = [
                e for e in environments if e.dependency_hash.startswith(wanted) or e.id.removeprefix("sha256:").startswith(wanted)
            ]
            if not environments:
                raise EnvironmentNotFoundError(f"pack {pack_ref!r} has no image {image!r} under {self.settings.image_prefix}/")
        removed, refused = [], {}
        if dry_run:
            for info in environments:
                users = self.engine.find_containers(ancestor=info.id)
                if users:
                    refused[info.image] = "used by container " + ", ".join(c.name for c in users[:3])
                else:
                    removed.append(info.image)
            return Removal(removed=removed, refused=refused)
        try:
            for info in environments:
                try:
                    # By reference: only our tag goes; the image itself goes with its last tag.
                    self.engine.remove_image(info.image)
                    removed.append(info.image)
                except ImageConflictError as exc:
                    refused[info.image] = str(exc)
                except ImageInUseError as exc:
                    refused[info.image] = f"used by a container ({exc})"
                except EnvironmentNotFoundError:
                    pass  # gone meanwhile
        finally:
            self._forget(pack_ref)
        return Removal(removed=removed, refused=refused)

    def forget_image(self, image_id: str) -> None:
        """Drop what memory holds about one image (it was removed behind this manager's back)."""
        self.forget_images({image_id})

    def cleanup(self, keep_recent: int) -> list[str]:
        """Remove all but the newest ``keep_recent`` images of each pack; the current one is kept
        and takes one of the places. Build leftovers past their grace period go too.

        Returns the references removed. What a container uses, or a build or a starting action
        holds, is skipped, never forced (``Pruner`` has the report with the reasons).
        """
        if keep_recent < 0:
            raise ValueError("keep_recent must be >= 0")
        report = Pruner(self).prune(PrunePolicy(keep=keep_recent))
        return [item.reference for item in report.removed if item.kind == "image"]

    def current_images(self) -> dict[str, set[str]]:
        """pack_ref -> the images it currently resolves to, every runtime's: for each, the last
        one ``ensure_environment`` resolved on this host (any process), and the last one in this
        process if that differs."""
        current: dict[str, set[str]] = {}
        for (pack_ref, _runtime), image in [*self._records.all().items(), *self._current.items()]:
            current.setdefault(pack_ref, set()).add(image)
        return current

    def forget_images(self, image_ids: set[str]) -> None:
        """Drop what memory holds about images removed behind the manager's back (the pruner)."""
        with self._cache_lock:
            for key in [k for k, info in self._cache.items() if info.id in image_ids]:
                self._cache.pop(key, None)

    # -- internals ----------------------------------------------------------------------------

    def _find(self, plan: BuildPlan) -> EnvironmentInfo | None:
        """The local image under the plan's tag, when it is ours for this plan: built by us (its
        labels are its own, not inherited) and, when the trusted manifest names this pack and
        spec, exactly the image the manifest names. Anything else under the tag is not used (a
        build or a verified pull replaces the tag)."""
        attrs = self.engine.inspect_image(plan.image)
        if attrs is None:
            return None
        labels = attrs.labels
        if labels.get(L.PACK_REF) != plan.pack_ref or labels.get(L.DEPENDENCY_HASH) != plan.dependency_hash:
            raise AttuneContainersError(
                f"{plan.image} exists but belongs to pack {labels.get(L.PACK_REF)!r} with hash "
                f"{labels.get(L.DEPENDENCY_HASH)!r}, not {plan.pack_ref!r}; remove it"
            )
        if not L.is_built_by_us(attrs):
            return None
        trusted = self._trusted(plan)
        if trusted is not None and attrs.id != trusted.image_id:
            return None
        return L.environment_from_image(attrs.id, plan.image, labels, attrs.size)

    def _trusted(self, plan: BuildPlan) -> TrustedImage | None:
        if self.settings.trusted_manifest is None:
            return None
        return TrustManifest.load(self.settings.trusted_manifest).entry(plan.pack_ref, plan.dependency_hash)

    def _pull_or_build(
        self, plan: BuildPlan, on_log: LogSink | None, offline: bool | None, pull: bool = True
    ) -> tuple[EnvironmentInfo, str]:
        refused = None
        if self.settings.registry and pull:
            try:
                pulled = self._pull(plan)
            except UntrustedImageError as exc:
                pulled, refused = None, exc
            except RegistryError as exc:
                if not self.settings.allow_build:
                    raise  # never a silent build: the worker says the registry is why
                log.warning("%s; building pack %s here instead", exc, plan.pack_ref)
                pulled = None
            if pulled is not None:
                return pulled, "pulled"
        if not self.settings.allow_build:
            if refused is not None:
                raise UntrustedImageError(f"building is not allowed here (ATTUNE__CONTAINERS__ALLOW_BUILD=false), and {refused}")
            where = f"in the registry {self.settings.registry}" if self.settings.registry else "on this host"
            raise AttuneContainersError(
                f"{plan.image} for pack {plan.pack_ref!r} is not {where}, and building is not allowed "
                "here (ATTUNE__CONTAINERS__ALLOW_BUILD=false); pre-build it with `attune-containers build --all --push`"
            )
        return self._build(plan, on_log, self.settings.offline if offline is None else offline), "built"

    def _pull(self, plan: BuildPlan) -> EnvironmentInfo | None:
        """The plan's image from the registry, only as the operator trusts it.

        With a trusted manifest entry for this pack and spec: pulled by its digest (the registry
        cannot answer that with other content), then its ID and labels must be the recorded ones.
        Without one, a tag proves nothing: nothing is pulled (UntrustedImageError says why) unless
        ``trust_registry_tags`` (unsafe) is set. None: the registry does not have it.
        """
        trusted = self._trusted(plan)
        if trusted is not None:
            if trusted.image != plan.image:
                raise UntrustedImageError(
                    f"the trusted manifest names {trusted.image} for pack {plan.pack_ref!r}, not {plan.image}"
                )
            remote = trusted.reference
        elif self.settings.trust_registry_tags:
            remote = f"{self.settings.registry}/{plan.image}"
            if not self.engine.in_registry(remote, auth=self.registry_auth()):
                return None
        else:
            where = (
                f"the trusted manifest {self.settings.trusted_manifest} has no entry for pack "
                f"{plan.pack_ref!r} with dependency hash {plan.dependency_hash[:12]}"
                if self.settings.trusted_manifest
                else "no trusted manifest is configured"
            )
            raise UntrustedImageError(
                f"{plan.image} for pack {plan.pack_ref!r} was not pulled from {self.settings.registry}: {where}, "
                "and a tag in a registry proves nothing about who built the image. Give the manifest "
                "`attune-containers build --all --push --manifest FILE` wrote "
                "(ATTUNE__CONTAINERS__TRUSTED_MANIFEST=FILE), or set ATTUNE__CONTAINERS__TRUST_REGISTRY_TAGS=true "
                "(unsafe: whoever can push to the registry chooses the code that runs)"
            )
        try:
            self.engine.pull(remote, auth=self.registry_auth())
        except RegistryError:
            raise  # credentials, certificate or network: the operator's to fix, said as such
        except EnvironmentNotFoundError:
            if trusted is not None:
                raise UntrustedImageError(
                    f"{remote}, the trusted image of pack {plan.pack_ref!r}, is not in the "
                    "registry; nothing else is taken in its place"
                ) from None
            return None
        except AttuneContainersError as exc:
            if trusted is not None:
                raise UntrustedImageError(
                    f"pulling {remote}, the trusted image of pack {plan.pack_ref!r}, "
                    f"failed: {exc}; nothing else is taken in its place"
                ) from None
            raise
        try:
            attrs = self.engine.inspect_image(remote)
            if attrs is None:
                raise UntrustedImageError(f"{remote} was pulled but is not on this host")
            labels = attrs.labels
            problems = []
            if trusted is not None and attrs.id != trusted.image_id:
                problems.append(f"its ID is {attrs.id}, the manifest says {trusted.image_id}")
            if labels.get(L.PACK_REF) != plan.pack_ref or labels.get(L.DEPENDENCY_HASH) != plan.dependency_hash:
                problems.append(f"its labels name pack {labels.get(L.PACK_REF)!r} with hash {labels.get(L.DEPENDENCY_HASH)!r}")
            if not L.is_built_by_us(attrs):
                problems.append("its labels are not its own (not a pack image as our build makes it)")
            described = L.environment_from_image(attrs.id, plan.image, labels, attrs.size)
            if (
                trusted is not None
                and trusted.runtime_version is not None
                and (
                    described is None
                    or (described.runtime, described.runtime_version)
                    != (trusted.runtime or described.runtime, trusted.runtime_version)
                )
            ):
                problems.append(
                    f"its runtime is {described.runtime if described else None} "
                    f"{described.runtime_version if described else None}, the manifest says "
                    f"{trusted.runtime} {trusted.runtime_version}"
                )
            if problems:
                raise UntrustedImageError(f"refused {remote} for pack {plan.pack_ref!r}: {'; '.join(problems)}")
            repository, tag = plan.image.rsplit(":", 1)
            self.engine.tag(attrs.id, repository, tag)
        except BaseException:
            with contextlib.suppress(AttuneContainersError):
                self.engine.remove_image(remote)
            raise
        with contextlib.suppress(AttuneContainersError):
            self.engine.remove_image(remote)  # keep one name per image: the local one
        return self._find(plan)

    def _build(self, plan: BuildPlan, on_log: LogSink | None, offline: bool = False) -> EnvironmentInfo:
        # While a build runs, its intermediate images look like leftovers: the gate keeps the
        # pruner's leftover cleaning away until it is done.
        ids = BuildLogIds(on_log)
        try:
            with self._gate.shared():
                info = self._build_now(plan, ids, offline)
            ids.ids.append(info.id)
            return info
        finally:
            # This configuration's build identity: its leftovers are these, and no one else's.
            self.builds.add(ids.ids)

    def _build_now(self, plan: BuildPlan, on_log: LogSink | None, offline: bool) -> EnvironmentInfo:
        # build_timeout is wall-clock for the whole build: the fetch step, the install step and the label build.
        deadline = time.monotonic() + self.settings.build_timeout
        cleanup: list[threading.Thread] = []
        try:
            return self._build_steps(plan, on_log, offline, deadline, cleanup)
        finally:
            for thread in cleanup:
                thread.join()

    def _build_steps(
        self, plan: BuildPlan, on_log: LogSink | None, offline: bool, deadline: float, cleanup: list[threading.Thread]
    ) -> EnvironmentInfo:
        with self.fetcher(plan.spec.runtime).fetch(plan, offline=offline, on_log=on_log, deadline=deadline) as fetched:
            lock = fetched.lock()
            loaded: str | None = None
            if fetched.uv is not None:
                # One install container, then one `docker load` of the labelled, tagged image.
                loaded = self._install_and_load(plan, fetched, lock, on_log, deadline, cleanup)
            else:
                image_id = self._build_dockerfile(plan, fetched, on_log, deadline)
        if loaded is None:
            loaded = self._label_built(plan, image_id, lock, deadline)
        found = self._find(plan)
        if found is None or found.id != loaded:
            raise BuildError(f"{plan.image} was built but is not where it should be")
        return found

    def _labels(self, plan: BuildPlan, raw_record: bytes, lock: list[Any]) -> dict[str, str]:
        """Every label of ours but the content identity, from the installed record (written during
        the build by code from the pack's distributions: bounded by the caller, validated here)."""
        try:
            # A runtime's plan may read its own record (Node: name@version of npm packages).
            reader = getattr(plan, "read_installed", None)
            installed = (
                reader(raw_record)
                if reader is not None
                else [f"{d.name}=={d.version}" for d in read_installed_record(raw_record)]
            )
        except (AttuneContainersError, ValueError, KeyError) as exc:
            raise BuildError(f"the built image has no readable record of its distributions: {exc}") from None
        labels = plan.labels(installed, datetime.now(UTC).replace(microsecond=0))
        labels[L.LOCK] = json.dumps([d.model_dump() for d in lock], separators=(",", ":"))
        labels[L.REPOSITORY] = plan.repository
        return labels

    def _label_built(self, plan: BuildPlan, image_id: str, lock: list[Any], deadline: float) -> str:
        """The Dockerfile path's last step: a second, layer-less build adds the labels and the
        tag, so the tag only ever lands on a complete, labelled image."""
        try:
            try:
                raw = self.engine.read_file(image_id, INSTALLED_RECORD, max_bytes=INSTALLED_RECORD_LIMIT)
            except AttuneContainersError as exc:
                raise BuildError(f"the built image has no readable record of its distributions: {exc}") from None
            labels = self._labels(plan, raw, lock)
            # Build identity: bound to this image's own layers and config (not to a derived one's).
            labels[L.CONTENT] = L.content_identity(self.engine.inspect_image(image_id))
            return self.engine.label(
                image_id, tag=plan.image, labels=labels, timeout=_remaining(deadline, self.settings.build_timeout)
            )
        except (AttuneContainersError, ValueError) as exc:
            with contextlib.suppress(AttuneContainersError):
                self.engine.remove_image(image_id, force=True)
            if isinstance(exc, AttuneContainersError):
                raise
            raise BuildError(f"the built image has no content identity: {exc}") from None

    def _install_and_load(
        self,
        plan: BuildPlan,
        fetched: FetchedWheels,
        lock: list[Any],
        on_log: LogSink | None,
        deadline: float,
        cleanup: list[threading.Thread],
    ) -> str:
        """The install step as ONE container of the base image (no network, read-only root; the
        verified wheels, the uv binary and our build scripts mounted read-only), writing
        ``/opt/attune`` into a folder of the build's work folder. The host writes that folder as
        one layer, builds the config (the base's, ``final_config()``, every label, the content
        identity computed from the layer's diff ID) and loads both with the tag: the tag lands
        only on the complete, labelled image, and a failed or killed load leaves none.
        Returns the image's ID."""
        assert fetched.uv is not None and fetched.wheel_dir is not None and fetched.step_name is not None
        assert fetched.work is not None
        started = time.monotonic()
        tree = fetched.install_folder()
        tree.mkdir(mode=0o755)
        self._install(plan, fetched, tree, on_log, deadline, cleanup)
        installed_at = time.monotonic()
        try:
            raw = one_layer.read_bounded(tree / "installed.json", INSTALLED_RECORD_LIMIT)
        except (OSError, ValueError) as exc:
            raise BuildError(f"the built image has no readable record of its distributions: {exc}") from None
        labels = self._labels(plan, raw, lock)
        base_id, base_config = self._base_config(plan.base.reference)
        try:
            layer = one_layer.plan_layer(tree)
        except (OSError, ValueError) as exc:
            raise BuildError(f"reading the image's folder failed: {exc}") from None
        for path in layer.left_out[:20]:
            if on_log is not None:
                on_log(f"install: left out /{path}: not a folder, regular file or link")
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        made: list[bytes] = []

        def make_config(diff_id: str) -> bytes:
            document = one_layer.image_config(
                base_config, diff_id, final_config(), labels, created=created, created_by=_LAYER_STEP
            )
            # Build identity: the layers and run config this very document gives (labels aside).
            document["config"]["Labels"][L.CONTENT] = L.content_identity(one_layer.as_inspected(document))
            made.append(one_layer.config_bytes(document))
            return made[-1]

        planned_at = time.monotonic()
        _remaining(deadline, self.settings.build_timeout)
        try:
            # The layer streams from the folder into the engine as it is read: never whole in
            # memory, never written twice on this side.
            self.engine.load(one_layer.docker_archive(base_id, base_config, layer, make_config, plan.image))
        except (OSError, ValueError) as exc:
            raise BuildError(f"loading the image failed: {exc}") from None
        image_id = "sha256:" + hashlib.sha256(made[-1]).hexdigest() if made else ""
        attrs = self.engine.inspect_image(plan.image)
        if attrs is None or attrs.id != image_id:
            raise BuildError(f"{plan.image} is not the image that was loaded ({attrs.id if attrs else 'none'} != {image_id})")
        if on_log is not None:
            on_log(
                f"install: one layer of {layer.size / 1e6:.1f} MB loaded as {plan.image} (install "
                f"{installed_at - started:.1f} s, layer planned in {planned_at - installed_at:.1f} s, "
                f"streamed and loaded in {time.monotonic() - planned_at:.1f} s)"
            )
        return image_id

    def _base_config(self, reference: str) -> tuple[str, bytes]:
        """The base image's ID and config document as stored (its sha256 is the ID): from memory,
        else from ``state_dir`` (checked against the ID), else from the engine (then kept)."""
        attrs = self.engine.inspect_image(reference)
        if attrs is None:
            raise BuildError(f"the base image {reference} is gone")
        image_id = attrs.id
        with self._cache_lock:
            known = self._base_configs.get(image_id)
        if known is not None:
            return image_id, known
        folder = self.settings.state_dir / "base-configs"
        path = folder / image_id.removeprefix("sha256:")
        try:
            data = one_layer.read_bounded(path, 4 * 1024 * 1024)
        except (OSError, ValueError):
            data = b""
        if "sha256:" + hashlib.sha256(data).hexdigest() != image_id:
            data = self.engine.image_config_bytes(image_id)
            with contextlib.suppress(OSError):
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".tmp-{uuid.uuid4().hex}"
                tmp.write_bytes(data)
                os.replace(tmp, path)
                # Bounded: a config per base image ID, the least recently written go first.
                kept = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
                for old in kept[_BASE_CONFIGS_KEPT:]:
                    old.unlink()
        with self._cache_lock:
            self._base_configs[image_id] = data
        return image_id, data

    def _install(
        self,
        plan: BuildPlan,
        fetched: FetchedWheels,
        tree: Path,
        on_log: LogSink | None,
        deadline: float,
        cleanup: list[threading.Thread],
    ) -> None:
        """Run the install container to its end; the container is gone (or going, in a thread
        ``_build_now`` waits for) whatever happens."""
        assert fetched.uv is not None and fetched.wheel_dir is not None and fetched.step_name is not None
        container_id = self.engine.create_step_container(
            plan.base.reference,
            # Our own uid and gid (numbers of this process), so the host can read and remove the folder.
            ["python3", "-I", "-S", "/tmp/attune-build/bin/install.py", f"{os.getuid()}:{os.getgid()}"],
            mounts=[
                (str(fetched.uv), "/tmp/attune-build/uv", True),
                (str(fetched.wheel_dir), "/tmp/attune-build/wheels", True),
                (str(TEMPLATES_DIR / "build"), "/tmp/attune-build/bin", True),
                (str(tree), ATTUNE_DIR, False),
            ],
            name=fetched.step_name,
            memory=self.settings.build_memory,
            # Root gives the folder to the builder uid, then to the host's uid.
            cap_add=("CHOWN", "SETUID", "SETGID", "KILL", "DAC_OVERRIDE", "FOWNER"),
            read_only=True,
        )
        log: collections.deque[str] = collections.deque(maxlen=400)
        partial = {1: b"", 2: b""}

        def collect(kind: int, data: bytes) -> None:
            *lines, partial[kind] = (partial.get(kind, b"") + data).split(b"\n")
            for raw in lines:
                line = raw[:4096].decode("utf-8", "replace").rstrip()
                log.append(line)
                if on_log is not None and line.strip():
                    on_log(line)

        try:
            code, timed_out, _ = self.engine.run_attached(
                container_id, b"", _remaining(deadline, self.settings.build_timeout), collect
            )
            if timed_out:
                raise BuildError(
                    f"the build took longer than {self.settings.build_timeout} s (build_timeout) and was stopped",
                    telling_lines(list(log)),
                )
            if code != 0:
                raise BuildError(f"installing the wheels failed (exit {code})", telling_lines(list(log)))
        except BaseException:
            self.engine.kill(container_id)
            self.engine.remove_container(container_id, attempts=10)
            raise
        # Nothing of the stopped container is kept: its removal runs while the layer is written.
        remover = threading.Thread(
            target=self.engine.remove_container, args=(container_id,), kwargs={"attempts": 10}, daemon=True
        )
        remover.start()
        cleanup.append(remover)

    def _build_dockerfile(self, plan: BuildPlan, fetched: FetchedWheels, on_log: LogSink | None, deadline: float) -> str:
        """The fallback where uv cannot be had: the multi-stage Dockerfile ``render`` prints."""
        if plan.options.installer == "uv":
            raise BuildError(
                f"uv {UV_VERSION} is not in the wheel cache and could not be downloaded (offline?); build once online first"
            )
        try:
            return self.engine.build(
                plan.context(fetched.wheels, fetched.tools),
                memory=self.settings.build_memory,
                timeout=_remaining(deadline, self.settings.build_timeout),
                on_log=on_log,
                network_mode="none",  # everything it installs is in the context
                nocache=self.settings.build_no_cache,
            )
        except BuildError as exc:
            if time.monotonic() < deadline:
                raise
            raise BuildError(
                f"the build took longer than {self.settings.build_timeout} s (build_timeout) and was stopped", exc.log_tail
            ) from None

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

    def _make_current(self, pack_ref: str, runtime: str, image: str) -> None:
        # Only a change touches the disk: the cache-hit path stays free of writes. The check, the
        # record and the memory change together: two threads interleaving them could leave the
        # record naming one image while memory names the other, and the memory then hides it.
        key = (pack_ref, runtime)
        if self._current.get(key) == image:
            return
        with self._current_lock:
            if self._current.get(key) != image:
                self._records.set(pack_ref, image, runtime)
                self._current[key] = image

    def _remember(self, key: tuple[str, str], info: EnvironmentInfo) -> None:
        with self._cache_lock:
            self._cache[key] = info

    def _forget(self, pack_ref: str) -> None:
        with self._cache_lock:
            for key in [k for k in self._cache if k[0] == pack_ref]:
                self._cache.pop(key, None)
        with self._current_lock:
            for current in [k for k in self._current if k[0] == pack_ref]:
                self._current.pop(current, None)


# The history entry of the one layer (no pack data: it names our step, not the pack).
_LAYER_STEP = "attune-containers: /opt/attune (uv venv + pip install --offline, one layer)"
# Base image configs kept in state_dir (one per base image ID; each is a few kilobytes).
_BASE_CONFIGS_KEPT = 32


def _remaining(deadline: float, total: int) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BuildError(f"the build took longer than {total} s (build_timeout) and was stopped")
    return left


class UntrustedImageError(AttuneContainersError):
    """An image in the registry was not taken: nothing the operator trusts vouches for it."""


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
        try:
            return get_runtime(runtime).name
        except InvalidSpecError:
            return runtime  # get() then names what is registered
