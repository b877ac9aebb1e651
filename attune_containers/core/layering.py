"""Settings that come in layers (defaults < pack < action < run): every field optional, so a layer
sets only what it means to change, and a pack's layer is validated like any hostile input."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidSpecError

T = TypeVar("T", bound="Layered")


class Layered(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def merged(self: T, *overrides: T | None) -> T:
        """These values with each override's set fields on top, in order."""
        data = self.model_dump()
        for override in overrides:
            if override is not None:
                data.update(override.model_dump(exclude_none=True))
        return type(self)(**data)

    @classmethod
    def from_pack(cls: type[T], value: Any, where: str) -> T | None:
        """A pack's layer from its YAML, or a clear error naming the offending field."""
        if value is None:
            return None
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise InvalidSpecError(first["msg"], field=f"{where}.{loc}" if loc else where) from None
