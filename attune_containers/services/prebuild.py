"""Pre-building a whole packs tree (CI): every pack's image, in parallel, each at most once.

For each pack: reuse the local image, else pull it from the registry, else build it; then, with
``push``, make sure the registry has it. One pack failing never stops the others; an invalid pack is
reported as invalid, not as a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from ..core.packs import scan_pack_tree
from ..errors import AttuneContainersError, InvalidSpecError
from .manager import ContainerDependencyManager

Outcome = str  # built | reused | pulled | failed | invalid
EventSink = Callable[[str, str, str], None]  # (pack_ref, state, detail)


class PackBuildReport(BaseModel):
    pack_ref: str
    folder: str
    outcome: Outcome
    python: str | None = None
    dependency_hash: str | None = None
    image: str | None = None
    pushed: str | None = None
    seconds: float = 0.0
    size_bytes: int | None = None
    error: str | None = None


class PrebuildReport(BaseModel):
    packs: list[PackBuildReport]

    @property
    def failed(self) -> list[PackBuildReport]:
        return [p for p in self.packs if p.outcome in ("failed", "invalid")]

    @property
    def ok(self) -> bool:
        return not self.failed


def build_all(
    manager: ContainerDependencyManager,
    packs_dir: str | Path,
    *,
    jobs: int = 2,
    push: bool = False,
    offline: bool | None = None,
    on_event: EventSink | None = None,
) -> PrebuildReport:
    entries = scan_pack_tree(packs_dir)
    if push and not manager.settings.registry:
        raise InvalidSpecError("--push needs a registry (ATTUNE__CONTAINERS__REGISTRY)", field="registry")
    notify = on_event or (lambda pack_ref, state, detail: None)

    def one(entry) -> PackBuildReport:
        started = time.monotonic()
        base = PackBuildReport(pack_ref=entry.pack_ref, folder=str(entry.folder), outcome="invalid")
        if entry.pack is None:
            notify(entry.pack_ref, "invalid", entry.error or "")
            return base.model_copy(update={"error": entry.error})
        pack = entry.pack
        try:
            plan = manager.plan(pack.pack_ref, pack.spec)
        except InvalidSpecError as exc:
            notify(pack.pack_ref, "invalid", str(exc))
            return base.model_copy(update={"error": str(exc)})
        except AttuneContainersError as exc:
            notify(pack.pack_ref, "failed", str(exc))
            return base.model_copy(update={"outcome": "failed", "error": str(exc)})
        report = base.model_copy(update={
            "python": plan.base.python_version, "dependency_hash": plan.dependency_hash, "image": plan.image})
        notify(pack.pack_ref, "started", plan.image)
        try:
            ensured = manager.ensure(
                pack.pack_ref, pack.spec, offline=offline,
                on_log=lambda line: notify(pack.pack_ref, "log", line),
            )
            report = report.model_copy(update={"outcome": ensured.outcome, "size_bytes": ensured.info.size_bytes})
            if push:
                notify(pack.pack_ref, "pushing", plan.image)
                report = report.model_copy(update={"pushed": manager.push(ensured.info)})
        except AttuneContainersError as exc:
            report = report.model_copy(update={"outcome": "failed", "error": str(exc)})
        report = report.model_copy(update={"seconds": round(time.monotonic() - started, 2)})
        notify(pack.pack_ref, report.outcome, report.error or report.image or "")
        return report

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="prebuild") as pool:
        reports = list(pool.map(one, entries))
    return PrebuildReport(packs=reports)
