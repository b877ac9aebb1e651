"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import uuid

from attune_containers.core import labels as L
from attune_containers.engine import Engine, ImageRecord

RUN_ID = uuid.uuid4().hex[:8]
# Every image the tests build lives under this prefix and is removed at the end of the session.
TEST_PREFIX = f"attune-test-{RUN_ID}"


def unique_ref(stem: str = "t") -> str:
    """A pack_ref no other test (or earlier run) uses."""
    return f"{stem}{uuid.uuid4().hex[:8]}"


def images_of(engine: Engine, pack_ref: str) -> list[ImageRecord]:
    return engine.list_images({L.MANAGED: "true", L.PACK_REF: pack_ref})
