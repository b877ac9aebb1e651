"""What operators see of pack images (``ls``) and how old ones go (``prune``).

Pruning works in three passes, each safe to run while builds and actions run on the host:

1. Pack images (labelled ``managed`` and tagged under this configuration's ``image_prefix``) that
   the policy selects (``core/prune_policy.py``). Each is removed under its image lock, taken
   without waiting (a build or a starting action holds it: "busy"), after checking again that it
   is not current and that no container uses it, and never forced: should a container appear in
   between, the engine refuses and the image is reported as skipped.
2. Stopped containers of ours: a container whose own labels (not those inherited from its image)
   include an ``io.attune.containers.*`` key, i.e. our helper containers and the runner's, on an
   image of this configuration, stopped for longer than the grace period.
3. Dangling images of ours on this configuration's base images: untagged pack images, and build
   stages (their own history holds a step of our Dockerfile). A dangling image on our base without
   such a step is someone else's: reported, never removed.

Passes 2 and 3 run only while no build runs (the build gate); a build that starts meanwhile waits.
While a build runs, pack images are removed without their untagged parents, which a later prune
cleans as leftovers: a concurrent build may be reusing them from the layer cache.

``reclaimed_bytes`` is what the engine says: the drop in its ``LayersSize`` (``docker system df``)
across the removal, plus the writable layers of the containers removed. ``reclaimed_exact`` is
False when other images changed in between (another build), which the figure then includes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import filelock
from pydantic import BaseModel, Field

from ..core import labels as L
from ..core.pack_ref import image_name_for
from ..core.packs import scan_pack_tree
from ..core.plan import BuildPlan
from ..core.prune_policy import PackImage, PrunePolicy, Verdict, format_duration, select_images
from ..core.render import ATTUNE_DIR, BuildOptions, render_dockerfile
from ..core.spec import DependencySpec, EnvironmentInfo
from ..core.versions import BaseImage
from ..engine import ContainerRecord, DiskUsage, Engine
from ..errors import (
    AttuneContainersError,
    ContainerInUseError,
    EngineError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    ImageInUseError,
)
from ..runtimes import RUNTIMES
from ..settings import Settings
from .build_gate import BuildGate
from .ownership import live_images, owner_alive
from .provenance import BuildRecord
from .usage import UsageLog

__all__ = ["ImageEntry", "PackImages", "PruneItem", "PrunePolicy", "PruneReport", "Pruner"]

# Our Dockerfile template (templates/Dockerfile.j2) writes here; kept for callers of old.
OUR_BUILD_STEPS = ("/attune-build/", f" {ATTUNE_DIR}")
# States of a container that is not running.
STOPPED = ["created", "exited", "dead"]
DEFAULT_GRACE = timedelta(hours=1)


class ImageEntry(EnvironmentInfo):
    """A pack image as ``ls`` shows it."""

    last_used: datetime | None = Field(None, description="When the runner last used it (this host)")
    current: bool = Field(False, description="Whether its pack currently resolves to it")


class PruneItem(BaseModel):
    kind: Literal["image", "build-leftover", "container"]
    id: str
    reference: str = Field(description="Image reference, '<none>' for an untagged image, or container name")
    pack_ref: str | None = None
    reason: str
    size_bytes: int | None = Field(None, description="Image size, or a container's writable layer")
    unique_bytes: int | None = Field(None, description="Bytes no other image shares (engine's df)")


class PruneReport(BaseModel):
    dry_run: bool = False
    removed: list[PruneItem] = Field(default_factory=list, description="Removed (dry run: would be)")
    kept: list[PruneItem] = Field(default_factory=list, description="Not selected, with the reason")
    skipped: list[PruneItem] = Field(default_factory=list, description="Selected but not safe to remove")
    reclaimed_bytes: int = 0
    reclaimed_exact: bool = True
    estimated_bytes: int = Field(
        0,
        description="Sum of unique_bytes of what was (would be) removed: a lower bound, as layers "
        "shared only among removed images count in none of them",
    )
    notes: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list, description="Engine failures; their items are in skipped")


@dataclass
class _Packs:
    """What the packs say: their current images, which exist, which cannot be resolved."""

    current: dict[str, set[str]]
    existing: set[str] | None = None
    unresolved: dict[str, str] = field(default_factory=dict)


class PackImages(Protocol):
    """What the pruner needs of the dependency manager (``ContainerDependencyManager`` is one):
    its images, what is current, their locks. The manager's ``cleanup`` delegates to the pruner,
    so the pruner depends on this and never imports the manager."""

    engine: Engine
    settings: Settings
    builds: BuildRecord

    def plan(self, pack_ref: str, spec: DependencySpec, *, pull_base: bool = True) -> BuildPlan: ...

    def list_environments(self, pack_ref: str | None = None, runtime: str | None = None) -> list[EnvironmentInfo]: ...

    def current_images(self) -> dict[str, set[str]]: ...

    def forget_images(self, image_ids: set[str]) -> None: ...

    def image_lock(self, image: str, timeout: float | None = None) -> filelock.FileLock: ...


class Pruner:
    def __init__(self, manager: PackImages) -> None:
        self.manager = manager
        self.engine: Engine = manager.engine
        self.settings = manager.settings
        self.usage = UsageLog(self.settings.state_dir)
        self.gate = BuildGate(self.settings.state_dir)

    # -- listing ------------------------------------------------------------------------------

    def images(self, pack: str | None = None, packs_dir: Path | None = None) -> list[ImageEntry]:
        """Every pack image (of one pack), newest first, with its last use and whether it is
        current: by ``packs_dir`` when given, else by what ``ensure_environment`` resolved last."""
        current = self._packs(packs_dir).current
        return [
            ImageEntry(
                **info.model_dump(),
                last_used=self.usage.last_used(info.id),
                current=info.image in current.get(info.pack_ref, ()),
            )
            for info in self.manager.list_environments(pack)
        ]

    # -- pruning ------------------------------------------------------------------------------

    def prune(self, policy: PrunePolicy, *, now: datetime | None = None) -> PruneReport:
        """Apply ``policy``; ``now`` is the moment ages are measured from (default: now)."""
        now = now or datetime.now(UTC)
        report = PruneReport(dry_run=policy.dry_run)
        packs = self._packs(policy.packs_dir)
        prefix = self.settings.image_prefix + "/"
        facts = [
            PackImage(
                id=i.id,
                reference=i.image,
                pack_ref=i.pack_ref,
                created=i.created_at,
                last_used=self.usage.last_used(i.id),
                runtime=i.runtime,
            )
            for i in self.manager.list_environments(policy.pack)
            if i.image.startswith(prefix)  # another prefix is another configuration's
        ]
        verdicts = select_images(
            facts, policy, current=packs.current, now=now, existing_packs=packs.existing, unresolved=packs.unresolved
        )
        before = self.engine.disk_usage()
        run = _Run(policy, now, report, _sizes(before), dict(before.containers))
        for v in verdicts:
            if v.action == "keep":
                report.kept.append(run.image_item(v))
            elif v.action == "skip":
                report.skipped.append(run.image_item(v))

        gate = contextlib.nullcontext(self.gate.idle()) if policy.dry_run else self.gate.exclusive()
        with gate as alone:
            for v in verdicts:
                if v.action == "remove":
                    self._remove_image(v, run, alone)
            if not alone:
                report.notes.append(
                    "a build is running: build leftovers stay, and images removed now keep their "
                    "untagged parents (a build may be reusing them); a later prune cleans both"
                )
            if policy.leftovers and policy.pack is None and alone:
                lineage = _Lineage(
                    self.engine, [ref for runtime in RUNTIMES.values() for ref in runtime.base_images(self.settings).values()]
                )
                self._remove_containers(run, lineage)
                self._remove_dangling(run, lineage)
            elif policy.leftovers and policy.pack is not None:
                report.notes.append("build leftovers belong to no pack: not cleaned with a pack given")

        report.estimated_bytes = sum(i.unique_bytes or 0 for i in report.removed)
        if report.removed and not policy.dry_run:
            after = self.engine.disk_usage()
            layers = before.layers_size - after.layers_size
            containers = sum(i.size_bytes or 0 for i in report.removed if i.kind == "container")
            report.reclaimed_bytes = max(layers, 0) + containers
            expected = (set(before.images) - run.removed_images) | run.exposed
            report.reclaimed_exact = layers >= 0 and set(after.images) == expected
            if not report.reclaimed_exact:
                report.notes.append("other images changed during the prune: reclaimed_bytes includes their change")
        return report

    # -- pass 1: pack images ------------------------------------------------------------------

    def _remove_image(self, verdict: Verdict, run: _Run, alone: bool) -> None:
        image, policy = verdict.image, run.policy
        lock = self.manager.image_lock(image.reference, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            run.report.skipped.append(run.image_item(verdict, "busy: a build or an action start holds its lock"))
            return
        try:
            attrs = self.engine.inspect_image(image.reference)
            if attrs is None or attrs.id != image.id:
                run.report.skipped.append(run.image_item(verdict, "gone or replaced meanwhile"))
                return
            if (
                not policy.include_current
                and policy.packs_dir is None
                and image.reference in self.manager.current_images().get(image.pack_ref, ())
            ):
                run.report.kept.append(run.image_item(verdict, "became the current image of its pack meanwhile"))
                return
            # A live worker's image, whatever the pack's "current" record says (another worker with
            # another packs tree may have made another image current): its next run needs it.
            workers = live_images(self.settings.state_dir)
            holders = workers.get(image.reference) or workers.get(image.id)
            if holders:
                run.report.skipped.append(run.image_item(verdict, f"in use by a live worker ({', '.join(holders)})"))
                return
            users = self.engine.find_containers(ancestor=image.id)
            if users:
                run.report.skipped.append(run.image_item(verdict, f"in use by {_describe(users)}"))
                return
            if not policy.dry_run:
                try:
                    # Never forced: the engine itself refuses if a container appeared meanwhile.
                    # By reference: a second tag (another configuration's) keeps the image for it.
                    self.engine.remove_image(image.reference, noprune=not alone)
                except ImageInUseError as exc:
                    run.report.skipped.append(run.image_item(verdict, f"the engine refused: {exc}"))
                    return
                except EnvironmentNotFoundError:
                    run.report.skipped.append(run.image_item(verdict, "gone meanwhile"))
                    return
                except EngineError as exc:
                    run.fail(run.image_item(verdict), exc)
                    return
                run.removed_images.add(image.id)
                if not alone and attrs.parent:
                    run.exposed.add(attrs.parent)
                self.usage.forget(image.id)
                self.manager.forget_images({image.id})
            run.report.removed.append(run.image_item(verdict))
        finally:
            lock.release()

    # -- pass 2: stopped containers of ours ---------------------------------------------------

    def _remove_containers(self, run: _Run, lineage: _Lineage) -> None:
        ours = {i.id for i in self.manager.list_environments()}
        built = self.manager.builds.ids()
        for summary in self.engine.find_containers(statuses=STOPPED):
            image_id = summary.image_id
            image_labels = lineage.labels.get(image_id)
            # Only containers of this configuration's images: its pack images, or images its own
            # builds made. Base images are shared by every configuration: not a sign of ours.
            on_ours = image_id in ours or self.manager.builds.contains(image_id, built)
            if image_labels is None or not on_ours:
                continue  # another configuration's image, or one we cannot see
            # A container inherits its image's labels: only labels it was given itself make it ours.
            own = sorted(k for k, v in summary.labels.items() if k.startswith(L.PREFIX) and image_labels.get(k) != v)
            if not own:
                continue
            attrs = self.engine.inspect_container(summary.id)
            if attrs is None:
                continue
            finished = attrs.state.finished_at if attrs.state is not None else None
            age = run.now - (finished or attrs.created or run.now)
            item = PruneItem(
                kind="container",
                id=summary.id,
                reference=summary.name,
                pack_ref=summary.labels.get(L.PACK_REF),
                reason=f"{attrs.status or summary.status} container of ours ({', '.join(own)}), "
                f"stopped {format_duration(age)} ago",
                size_bytes=run.container_sizes.get(summary.id),
            )
            if owner_alive(self.settings.state_dir, summary.labels.get(L.LEASE)):
                # Stopped, but its owner lives (a container is `created` before it starts): the
                # owner removes it; whatever the grace period, it is not a leftover yet.
                run.report.kept.append(item.model_copy(update={"reason": item.reason + ", its owner is alive"}))
                continue
            if age < run.grace(self.settings):
                run.report.kept.append(
                    item.model_copy(
                        update={"reason": item.reason + f", within the {format_duration(run.grace(self.settings))} grace period"}
                    )
                )
                continue
            if not run.policy.dry_run:
                try:
                    if not self.engine.remove_stopped_container(summary.id):
                        continue  # removed by someone else meanwhile
                except ContainerInUseError as exc:
                    run.report.skipped.append(item.model_copy(update={"reason": f"the engine refused: {exc}"}))
                    continue
                except EngineError as exc:
                    run.fail(item, exc)
                    continue
            run.report.removed.append(item)

    # -- pass 3: dangling images of ours ------------------------------------------------------

    def _remove_dangling(self, run: _Run, lineage: _Lineage) -> None:
        grace = run.grace(self.settings)
        built = self.manager.builds.ids()
        for summary in self.engine.list_images(dangling=True):
            image_id = summary.id
            base = lineage.base_of(image_id)
            if base is None:
                continue  # not built on this configuration's base images: not ours to judge
            labels = summary.labels
            size, unique = run.sizes.get(image_id, (summary.size, None))
            item = PruneItem(
                kind="build-leftover",
                id=image_id,
                reference="<none>",
                pack_ref=labels.get(L.PACK_REF),
                reason="",
                size_bytes=size,
                unique_bytes=unique,
            )
            recorded = self.manager.builds.contains(image_id, built)
            if labels.get(L.MANAGED) == "true" and (recorded or self._built_here(image_id, labels)):
                what = f"untagged image of pack {labels.get(L.PACK_REF)!r}"
            elif labels.get(L.MANAGED) == "true" and labels.get(L.REPOSITORY) and self._built_by_us(image_id):
                continue  # a pack image of another configuration (another image_prefix): not ours
            elif labels.get(L.MANAGED) != "true" and lineage.has_our_steps(image_id, base):
                if not recorded:
                    continue  # a build stage of another configuration's build: not ours
                what = f"build stage on {base}"
            else:
                run.report.skipped.append(
                    item.model_copy(
                        update={
                            "reason": f"dangling image on {base} without a step of our Dockerfile: "
                            "not identifiably ours, left alone"
                        }
                    )
                )
                continue
            age = run.now - (summary.created or datetime.fromtimestamp(0, UTC))
            item = item.model_copy(update={"reason": f"{what}, created {format_duration(age)} ago"})
            if age < grace:
                run.report.kept.append(
                    item.model_copy(update={"reason": item.reason + f", within the {format_duration(grace)} grace period"})
                )
                continue
            users = self.engine.find_containers(ancestor=image_id)
            if users:
                run.report.skipped.append(item.model_copy(update={"reason": f"{what}, in use by {_describe(users)}"}))
                continue
            if not run.policy.dry_run:
                try:
                    self.engine.remove_image(image_id)
                except ImageInUseError as exc:
                    run.report.skipped.append(item.model_copy(update={"reason": f"the engine refused: {exc}"}))
                    continue
                except EnvironmentNotFoundError:
                    continue
                except EngineError as exc:
                    run.fail(item, exc)
                    continue
                run.removed_images.add(image_id)
            run.report.removed.append(item)

    def _built_by_us(self, image_id: str) -> bool:
        attrs = self.engine.inspect_image(image_id)
        return attrs is not None and L.is_built_by_us(attrs)

    def _built_here(self, image_id: str, labels: Mapping[str, str]) -> bool:
        """An untagged pack image of this configuration: its labels are its own (not inherited by
        an image built FROM a pack image) and name a repository under our image_prefix."""
        try:
            expected = f"{self.settings.image_prefix}/{image_name_for(labels.get(L.PACK_REF) or '')}"
        except (AttuneContainersError, ValueError):
            return False
        return labels.get(L.REPOSITORY) == expected and self._built_by_us(image_id)

    # -- the packs ----------------------------------------------------------------------------

    def _packs(self, packs_dir: Path | None) -> _Packs:
        if packs_dir is None:
            return _Packs(current=self.manager.current_images())
        existing: set[str] = set()
        packs = _Packs(current={}, existing=existing)
        for entry in scan_pack_tree(packs_dir):
            ref = entry.pack_ref
            existing.add(ref)
            if entry.pack is None:
                packs.unresolved[ref] = f"{entry.folder} does not load: {entry.error}"
                continue
            # Every runtime's image of the pack is current (a mixed pack has one per runtime); one
            # that cannot be told leaves the whole pack unresolved: its images are skipped.
            for spec in entry.pack.specs.values():
                try:
                    plan = self.manager.plan(ref, spec, pull_base=False)
                except EngineUnavailableError:
                    raise
                except AttuneContainersError as exc:
                    packs.unresolved[ref] = f"its spec does not resolve: {exc}"
                    break
                if not plan.base.python_version:
                    packs.unresolved[ref] = f"its base image {plan.base.reference} is not on this host"
                    break
                packs.current.setdefault(ref, set()).add(plan.image)
        return packs


@dataclass
class _Run:
    """The state of one prune: its policy and clock, the report, the engine's sizes."""

    policy: PrunePolicy
    now: datetime
    report: PruneReport
    sizes: dict[str, tuple[int | None, int | None]]
    container_sizes: dict[str, int] = field(default_factory=dict)
    removed_images: set[str] = field(default_factory=set)
    exposed: set[str] = field(default_factory=set)  # parents left top-level by a removal

    def fail(self, item: PruneItem, exc: Exception) -> None:
        # One failed removal does not stop the others; the report says what happened to each.
        self.report.errors.append(f"{item.reference if item.reference != '<none>' else item.id}: {exc}")
        self.report.skipped.append(item.model_copy(update={"reason": f"the engine failed: {exc}"}))

    def grace(self, settings: Any) -> timedelta:
        if self.policy.leftover_grace is not None:
            return self.policy.leftover_grace
        return max(DEFAULT_GRACE, timedelta(seconds=settings.build_timeout))

    def image_item(self, verdict: Verdict, reason: str | None = None) -> PruneItem:
        size, unique = self.sizes.get(verdict.image.id, (None, None))
        return PruneItem(
            kind="image",
            id=verdict.image.id,
            reference=verdict.image.reference,
            pack_ref=verdict.image.pack_ref,
            reason=reason or verdict.reason,
            size_bytes=size,
            unique_bytes=unique,
        )


class _Lineage:
    """Which configured base image an image is built on, from the engine's parent links."""

    def __init__(self, engine: Engine, base_references: Any) -> None:
        self.engine = engine
        summaries = engine.list_images(intermediate=True)
        self.parent = {s.id: s.parent for s in summaries}
        self.labels = {s.id: s.labels for s in summaries}
        self.tags = {s.id: list(s.tags) for s in summaries}
        self.bases: dict[str, str] = {}
        for reference in base_references:
            attrs = engine.inspect_image(reference)
            if attrs is not None:
                self.bases[attrs.id] = reference
        self._history_length: dict[str, int] = {}
        self._steps: dict[str, set[str]] = {}

    def base_of(self, image_id: str) -> str | None:
        seen: set[str] = set()
        current: str | None = image_id
        while current and current not in seen:
            if current in self.bases:
                return self.bases[current]
            seen.add(current)
            current = self.parent.get(current)
        return None

    def has_our_steps(self, image_id: str, base: str) -> bool:
        """Whether every step above ``base`` is exactly a step of our Dockerfile on that base
        (compared instruction by instruction, not by substring: ``/opt/attune`` is not
        ``/opt/attunement-dashboard``, and one foreign step makes the image someone else's)."""
        if base not in self._history_length:
            self._history_length[base] = len(self.engine.image_history(base))
            self._steps[base] = our_dockerfile_steps(base)
        history = self.engine.image_history(image_id)  # newest first; the base's steps are last
        own = history[: max(len(history) - self._history_length[base], 0)]
        return bool(own) and all(history_step(step.created_by) in self._steps[base] for step in own)


def our_dockerfile_steps(base_reference: str) -> set[str]:
    """Every instruction (normalized as ``history_step`` reads them back) that our Dockerfile
    template makes on ``base_reference``, with either installer; FROM lines make no step."""
    steps = set()
    for installer in ("pip", "uv"):
        text = render_dockerfile(BaseImage(minor="3.0", reference=base_reference), BuildOptions(installer=installer))
        for instruction in _instructions(text):
            keyword, _, rest = instruction.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                continue
            if keyword in ("COPY", "ADD"):
                rest = rest.split()[-1] if rest.split() else ""
            steps.add(f"{keyword} {' '.join(rest.split())}")
    return steps


def history_step(created_by: str) -> str:
    """A history entry's CreatedBy as an instruction: ``RUN <command>``, ``COPY <destination>``,
    ``ENV ...``, whitespace collapsed. Docker's classic builder writes ``/bin/sh -c #(nop) X`` for
    metadata steps, ``|N ARG=.. /bin/sh -c <command>`` for RUN, ``COPY dir:<sha> in <dest>``."""
    text = re.sub(r"^\|\d+ (?:\S+=\S* )*", "", created_by.strip())
    if text.startswith("/bin/sh -c #(nop) "):
        text = text[len("/bin/sh -c #(nop) ") :].strip()
        m = re.fullmatch(r"(COPY|ADD) (?:(?:dir|file|multi):[0-9a-f]+|\S+) in (\S+)", text)
        if m:
            return f"{m.group(1)} {m.group(2)}"
        keyword, _, rest = text.partition(" ")
        return f"{keyword} {' '.join(rest.split())}"
    if text.startswith("/bin/sh -c "):
        return "RUN " + " ".join(text[len("/bin/sh -c ") :].split())
    return "? " + text


def _instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found, current = [], ""
    for line in dockerfile.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        found.append((current + line).strip())
        current = ""
    if current.strip():
        found.append(current.strip())
    return found


def _sizes(usage: DiskUsage) -> dict[str, tuple[int | None, int | None]]:
    return {image_id: (image.size, image.unique_size) for image_id, image in usage.images.items()}


def _describe(containers: list[ContainerRecord]) -> str:
    names = [f"{c.name} ({c.status or '?'})" for c in containers]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return "container " + ", ".join(names[:3]) + more
