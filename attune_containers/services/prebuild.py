"""Pre-building a whole packs tree (CI): every pack's image, in parallel, each at most once.

For each pack and each of its runtimes (a pack with Python and Node.js actions has an image of
each, and a report row for each): reuse the local image, else build it; then, with ``push``, push it and record the
digest the registry stored it under. CI never pulls: an image already under the tag in the
registry may be anyone's, so it is never adopted; the push replaces it with ours, and the trusted
manifest (``manifest``) names ours by digest for the workers. One pack failing never stops the others; an invalid pack is
reported as invalid, not as a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .. import errors
from ..core.packs import scan_pack_tree
from ..errors import AttuneContainersError, InvalidSpecError
from .manager import ContainerDependencyManager
from .manifest import TrustedImage, TrustManifest

Outcome = str  # built | reused | pulled | failed | invalid
EventSink = Callable[[str, str, str], None]  # (pack_ref, state, detail)


class PackBuildReport(BaseModel):
    pack_ref: str
    folder: str
    outcome: Outcome
    python: str | None = None  # the runtime's exact version (the name predates other runtimes)
    runtime: str | None = None
    dependency_hash: str | None = None
    image: str | None = None
    pushed: str | None = None
    digest: str | None = None
    pushed_by_digest: str | None = None
    image_id: str | None = None
    seconds: float = 0.0
    size_bytes: int | None = None
    error: str | None = None
    error_type: str | None = None  # our error's class name (RegistryAuthError, BuildError, ...)


class PrebuildReport(BaseModel):
    packs: list[PackBuildReport]

    @property
    def failed(self) -> list[PackBuildReport]:
        return [p for p in self.packs if p.outcome in ("failed", "invalid")]

    @property
    def ok(self) -> bool:
        return not self.failed

    def exit_code(self) -> int:
        """0; else 1, unless every failure is the same registry problem: then its own code (4
        credentials, 5 certificate, 6 unreachable), which CI can act on without reading a table."""
        if self.ok:
            return 0
        types = {p.error_type for p in self.failed}
        if len(types) == 1:
            (name,) = types
            error = getattr(errors, name or "", None)
            if isinstance(error, type) and issubclass(error, errors.RegistryError):
                return error.exit_code
        return 1


def build_all(
    manager: ContainerDependencyManager,
    packs_dir: str | Path,
    *,
    jobs: int = 2,
    push: bool = False,
    offline: bool | None = None,
    on_event: EventSink | None = None,
    manifest: str | Path | None = None,
) -> PrebuildReport:
    """Build every pack under ``packs_dir``; with ``push``, publish each, and with ``manifest``
    write the trusted manifest of what was pushed (merged into the file's earlier entries)."""
    entries = scan_pack_tree(packs_dir)
    if push and not manager.settings.registry:
        raise InvalidSpecError("--push needs a registry (ATTUNE__CONTAINERS__REGISTRY)", field="registry")
    if manifest is not None and not push:
        raise InvalidSpecError("--manifest records what --push pushed: give --push too", field="manifest")
    notify = on_event or (lambda pack_ref, state, detail: None)
    # Builds run in parallel, pushes one at a time: two concurrent pushes of images on the same base
    # both find its layers missing and both upload them (seen in benchmarks/fleet.py); one after
    # the other, the second finds them there (or mounts them) and sends only its own layers.
    push_lock = threading.Lock()

    def one(task: tuple[Any, str | None]) -> PackBuildReport:
        entry, runtime = task
        started = time.monotonic()
        base = PackBuildReport(pack_ref=entry.pack_ref, folder=str(entry.folder), outcome="invalid", runtime=runtime)
        if entry.pack is None or runtime is None:
            notify(entry.pack_ref, "invalid", entry.error or "")
            return base.model_copy(update={"error": entry.error})
        pack = entry.pack
        spec = pack.specs[runtime]
        # A mixed pack's images are told apart in the events (one progress line each).
        label = pack.pack_ref if len(pack.specs) == 1 else f"{pack.pack_ref} ({runtime})"
        try:
            plan = manager.plan(pack.pack_ref, spec)
        except InvalidSpecError as exc:
            notify(label, "invalid", str(exc))
            return base.model_copy(update={"error": str(exc)})
        except AttuneContainersError as exc:
            notify(label, "failed", str(exc))
            return base.model_copy(update={"outcome": "failed", "error": str(exc)})
        report = base.model_copy(
            update={
                "python": plan.base.python_version,
                "dependency_hash": plan.dependency_hash,
                "image": plan.image,
            }
        )
        notify(label, "started", plan.image)
        try:
            ensured = manager.ensure(
                pack.pack_ref,
                spec,
                offline=offline,
                pull=False,
                on_log=lambda line: notify(label, "log", line),
            )
            report = report.model_copy(
                update={"outcome": ensured.outcome, "size_bytes": ensured.info.size_bytes, "image_id": ensured.info.id}
            )
            if push:
                notify(label, "pushing", plan.image)
                with push_lock:
                    pushed = manager.publish(ensured.info)
                if pushed.digest is None:
                    raise AttuneContainersError(f"the registry did not say which digest it stored {pushed.reference} under")
                report = report.model_copy(
                    update={"pushed": pushed.reference, "digest": pushed.digest, "pushed_by_digest": pushed.by_digest}
                )
        except AttuneContainersError as exc:
            report = report.model_copy(update={"outcome": "failed", "error": str(exc), "error_type": type(exc).__name__})
        report = report.model_copy(update={"seconds": round(time.monotonic() - started, 2)})
        notify(label, report.outcome, report.error or report.image or "")
        return report

    def guarded(task: tuple[Any, str | None]) -> PackBuildReport:
        # An unexpected error in one pack is that pack's failure: the others still build and report.
        entry, runtime = task
        try:
            return one(task)
        except Exception as exc:  # noqa: BLE001
            notify(entry.pack_ref, "failed", f"{type(exc).__name__}: {exc}")
            return PackBuildReport(
                pack_ref=entry.pack_ref,
                folder=str(entry.folder),
                outcome="failed",
                runtime=runtime,
                error=f"{type(exc).__name__}: {exc}",
            )

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="prebuild") as pool:
        reports = list(pool.map(guarded, build_tasks(entries)))
    result = PrebuildReport(packs=reports)
    if manifest is not None:
        write_manifest(result, manifest)
    return result


def build_tasks(entries: list[Any]) -> list[tuple[Any, str | None]]:
    """One task per image: (entry, runtime) for each runtime of each pack, Python first; an
    entry that does not load is one task with no runtime (its ``invalid`` row)."""
    return [(e, runtime) for e in entries for runtime in (e.pack.specs if e.pack is not None else [None])]


def manifest_of(report: PrebuildReport) -> TrustManifest:
    """The trusted manifest of what this run pushed, by digest (what ``--push --json`` prints):
    each pack's first pushed image (Python's first) under ``packs``, its other runtimes' under
    ``other_runtimes``."""
    by_pack: dict[str, list[TrustedImage]] = {}
    for p in report.packs:
        if p.pushed_by_digest and p.image_id and p.dependency_hash and p.image:
            by_pack.setdefault(p.pack_ref, []).append(
                TrustedImage(
                    dependency_hash=p.dependency_hash,
                    image=p.image,
                    reference=p.pushed_by_digest,
                    image_id=p.image_id,
                    runtime=p.runtime,
                    runtime_version=p.python,
                )
            )
    return TrustManifest(
        packs={ref: images[0] for ref, images in by_pack.items()},
        other_runtimes={ref: images[1:] for ref, images in by_pack.items() if len(images) > 1},
    )


def write_manifest(report: PrebuildReport, path: str | Path) -> TrustManifest:
    """Record every pack this run pushed, by digest, into the trusted manifest at ``path``
    (entries of packs not in this run stay; a pack of this run is recorded as this run saw it)."""
    path = Path(path)
    existing = TrustManifest.load(path) if path.exists() else TrustManifest()
    new = manifest_of(report)
    others = {ref: images for ref, images in existing.other_runtimes.items() if ref not in new.packs}
    manifest = TrustManifest(packs={**existing.packs, **new.packs}, other_runtimes={**others, **new.other_runtimes})
    manifest.save(path)
    return manifest
