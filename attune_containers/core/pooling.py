"""How a pack's warm containers are kept: the pool policy (settings default < pack's own)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .layering import Layered


class PoolSettings(Layered):
    """All fields optional so a pack can override single ones (``meta.container_pool``)."""

    reuse: bool | None = Field(None, description="Serve executions from warm containers (false: always cold)")
    min_idle: int | None = Field(None, ge=0, le=64, description="Idle containers kept ready")
    max_size: int | None = Field(None, ge=1, le=256, description="Containers of one pool at most")
    idle_timeout: float | None = Field(None, gt=0, description="Seconds an idle container (above min_idle) lives")
    max_executions: int | None = Field(None, ge=1, description="Executions one container serves before replacement")
    prewarm: bool | None = Field(None, description="Start min_idle containers when the environment is ensured")
    preload: list[str] | None = Field(
        None,
        description="Libraries warm containers import before the first request (default: what the "
        "pack's action files import at module level; [] turns it off)",
    )

    @field_validator("preload")
    @classmethod
    def _preload(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        # The policy is runtime-neutral: a list some runtime accepts passes here, and the pack's
        # own runtime checks it again when the pack is loaded (core/packs.py).
        from ..runtimes import RUNTIMES  # packs.py -> pooling.py: imported here to keep that order

        errors = []
        for runtime in RUNTIMES.values():
            try:
                return list(runtime.check_preload(v))
            except Exception as exc:  # noqa: BLE001 - reported as a field error by pydantic
                errors.append(str(exc))
        raise ValueError("; ".join(errors))


DEFAULT_POOL = PoolSettings(reuse=True, min_idle=0, max_size=4, idle_timeout=300, max_executions=200, prewarm=False)
