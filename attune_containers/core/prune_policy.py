"""Prune policies and the decision they make about each pack image, as pure functions.

A policy's criteria combine as AND: an image goes only if every criterion given selects it.

- ``keep=N``: not among the newest N images of its pack and runtime (a pack with Python and
  Node.js actions keeps N of each). The pack's current image of that runtime (unless
  ``include_current``) is always kept and takes one of the N places.
- ``older_than=D``: neither created nor used (the runner's usage record) within D.
- ``orphans``: its pack no longer exists in ``packs_dir``. A pack folder that does not load still
  exists, under its folder name.
- ``pack``: only this pack's images are considered at all.

Without ``keep``, ``older_than`` or ``orphans`` no pack image is selected: pruning never removes
every image by default. Whether a selected image can really go (a container uses it, a build holds
its lock) is for the engine and the locks to say, in ``services/pruner.py``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InvalidPolicyError
from ..runtimes import DEFAULT_RUNTIME
from .pack_ref import validate_pack_ref

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+[smhdw])+")
# About 100 years: more is a typo, and timedelta overflows not far above.
_MAX_SECONDS = 100 * 365 * 86400


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``90m``, ``30s``, ``2w`` or a sum like ``1d12h``; anything else is refused."""
    value = text.strip() if isinstance(text, str) else ""
    if not _DURATION.fullmatch(value):
        raise InvalidPolicyError(
            f"{text!r} is not a duration: use a number and a unit (s, m, h, d, w) like '7d', '12h' or '1d12h'"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))
    if seconds > _MAX_SECONDS:
        raise InvalidPolicyError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """An exact form ``parse_duration`` reads back, in days at most (``36h`` is ``1d12h``)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


class PrunePolicy(BaseModel):
    """What ``prune`` may remove. Invalid values raise InvalidPolicyError (exit code 2)."""

    model_config = ConfigDict(frozen=True)

    keep: int | None = Field(None, ge=0, description="Keep the newest N images of each pack")
    older_than: timedelta | None = Field(None, description="Only images not used or created within this")
    orphans: bool = Field(False, description="Only images of packs missing from packs_dir")
    packs_dir: Path | None = Field(None, description="A directory of pack folders (pack.yaml each)")
    pack: str | None = Field(None, description="Only this pack's images")
    include_current: bool = Field(False, description="Current images may go too")
    dry_run: bool = False
    leftovers: bool = Field(True, description="Also clean build leftovers (not with `pack`)")
    leftover_grace: timedelta | None = Field(
        None, description="Leftovers younger than this stay; None: an hour, or build_timeout if longer"
    )

    def __init__(self, **data: Any) -> None:
        # One error type for every bad policy, whatever pydantic thinks of it.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first.get("ctx", {}).get("error") or first["msg"])
            raise InvalidPolicyError(f"{where}: {message}" if where else message) from None

    @field_validator("older_than", "leftover_grace")
    @classmethod
    def _not_negative(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    @field_validator("pack")
    @classmethod
    def _pack_ref(cls, v: str | None) -> str | None:
        return validate_pack_ref(v) if v is not None else None

    @model_validator(mode="after")
    def _combination(self) -> PrunePolicy:
        if self.orphans and self.packs_dir is None:
            raise ValueError("orphans needs packs_dir: the packs tree that says which packs exist")
        if self.packs_dir is not None and not self.packs_dir.is_dir():
            raise ValueError(f"packs_dir {str(self.packs_dir)!r} is not a directory")
        return self

    @property
    def selects_images(self) -> bool:
        return self.keep is not None or self.older_than is not None or self.orphans


class PackImage(BaseModel):
    """The facts about one pack image that a policy decides on."""

    model_config = ConfigDict(frozen=True)

    id: str
    reference: str
    pack_ref: str
    created: datetime
    last_used: datetime | None = None
    # Whose image it is: keep=N counts each runtime of a pack apart (images before the label: Python's).
    runtime: str = DEFAULT_RUNTIME

    @property
    def last_activity(self) -> datetime:
        return max(self.created, self.last_used) if self.last_used else self.created


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    image: PackImage
    action: Literal["remove", "keep", "skip"]
    reason: str


def select_images(
    images: list[PackImage],
    policy: PrunePolicy,
    *,
    current: Mapping[str, Collection[str]],
    now: datetime,
    existing_packs: Collection[str] | None = None,
    unresolved: Mapping[str, str] | None = None,
) -> list[Verdict]:
    """One verdict per image (of ``policy.pack`` only, if set), newest first within each pack.

    ``current``: pack_ref -> the image references it currently resolves to. ``existing_packs``:
    the packs the packs tree holds (needed for ``orphans``). ``unresolved``: packs that exist but
    whose current image cannot be told (reason): their images are skipped rather than risk it.
    """
    if policy.orphans and existing_packs is None:
        raise InvalidPolicyError("orphans needs the packs that exist")
    unresolved = unresolved or {}
    by_pack: dict[tuple[str, str], list[PackImage]] = {}
    for image in images:
        if policy.pack is None or image.pack_ref == policy.pack:
            by_pack.setdefault((image.pack_ref, image.runtime), []).append(image)

    verdicts: list[Verdict] = []
    for pack_ref, runtime in sorted(by_pack):
        group = sorted(by_pack[(pack_ref, runtime)], key=lambda i: (i.created, i.reference), reverse=True)
        # current names every runtime's current image of the pack; only this group's take places.
        protected = set() if policy.include_current else set(current.get(pack_ref, ()))
        places = None
        if policy.keep is not None:
            places = policy.keep - sum(1 for i in group if i.reference in protected)
        scope = _scope(runtime)
        for image in group:
            reasons = []
            if image.reference in protected:
                reasons.append(f"current image of {scope}")
            elif places is not None and places > 0:
                places -= 1
                reasons.append(f"among the newest {policy.keep} of {scope}")
            if policy.older_than is not None and image.last_activity > now - policy.older_than:
                what = "used" if image.last_used and image.last_used >= image.created else "created"
                reasons.append(f"{what} within {format_duration(policy.older_than)} ({image.last_activity.isoformat()})")
            if policy.orphans and existing_packs is not None and pack_ref in existing_packs:
                reasons.append("its pack exists in the packs tree")
            if not policy.selects_images:
                reasons.append("no removal policy given (--keep, --older-than, --orphans)")
            if reasons:
                verdicts.append(Verdict(image=image, action="keep", reason="; ".join(reasons)))
            elif pack_ref in unresolved and not policy.include_current:
                verdicts.append(
                    Verdict(image=image, action="skip", reason=f"the pack's current image is unknown: {unresolved[pack_ref]}")
                )
            else:
                verdicts.append(Verdict(image=image, action="remove", reason=_why(policy, scope)))
    return verdicts


def _scope(runtime: str) -> str:
    # The default runtime's images read as before; another's say whose they are.
    return "its pack" if runtime == DEFAULT_RUNTIME else f"its pack's {runtime} images"


def _why(policy: PrunePolicy, scope: str) -> str:
    parts = []
    if policy.keep is not None:
        parts.append(f"beyond the newest {policy.keep} of {scope}")
    if policy.older_than is not None:
        parts.append(f"not used or created within {format_duration(policy.older_than)}")
    if policy.orphans:
        parts.append("its pack is gone from the packs tree")
    return "; ".join(parts)
