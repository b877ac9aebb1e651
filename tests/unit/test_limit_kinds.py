"""Every limit is of one kind: container-level (fixed when a container is created, so it keys warm
pools) or per-execution (applied to each execution, so executions that differ in it share warm
containers). A new ResourceLimits field that is neither fails here, before it silently shares pools.
And the limits of a run always carry every field: no caller needs a fallback of its own."""

from __future__ import annotations

import pytest

from attune_containers.core.execution import DEFAULT_LIMITS, ResourceLimits
from attune_containers.settings import Settings


def test_every_limit_is_container_level_or_per_execution_and_never_both():
    container, execution = set(ResourceLimits.CONTAINER_FIELDS), set(ResourceLimits.EXECUTION_FIELDS)
    unclassified = set(ResourceLimits.model_fields) - container - execution
    assert not unclassified, f"add {sorted(unclassified)} to ResourceLimits.CONTAINER_FIELDS or EXECUTION_FIELDS"
    assert not container & execution
    assert container | execution == set(ResourceLimits.model_fields)  # no stale names either
    assert len(ResourceLimits.CONTAINER_FIELDS) == len(container)


def test_container_level_values_follow_the_declared_order():
    assert DEFAULT_LIMITS.container_level() == tuple(getattr(DEFAULT_LIMITS, n) for n in ResourceLimits.CONTAINER_FIELDS)


def test_the_defaults_set_every_limit():
    assert all(value is not None for value in DEFAULT_LIMITS.model_dump().values())


@pytest.fixture
def settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no attune-containers.toml of the repository
    for name in ("CONFIG", "LIMITS", "MAX_LIMITS", "ALLOWED_NETWORKS"):
        monkeypatch.delenv(f"ATTUNE__CONTAINERS__{name}", raising=False)
    return Settings(limits=ResourceLimits(timeout=None, memory="128m"))


@pytest.mark.parametrize(
    ("layers", "timeout"),
    [
        ({}, DEFAULT_LIMITS.timeout),
        (
            {"pack": ResourceLimits(timeout=None), "action": ResourceLimits(timeout=None), "request": ResourceLimits()},
            DEFAULT_LIMITS.timeout,
        ),
        ({"pack": ResourceLimits(cpus=0.5), "action": ResourceLimits(timeout=30), "request": ResourceLimits(stdout_limit=1)}, 30),
    ],
)
def test_the_limits_of_a_run_carry_every_field(settings, layers, timeout):
    """What the runner relies on when it uses ``limits.timeout`` with no fallback of its own."""
    limits = settings.run_limits(**layers)
    assert all(value is not None for value in limits.model_dump().values()), limits
    assert limits.memory == "128m" and limits.timeout == timeout
