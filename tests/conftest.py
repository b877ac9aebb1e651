"""Shared fixtures. Engine tests run against the real Docker engine that `make test` starts."""

from __future__ import annotations

import pytest

from attune_containers.core import labels as L
from attune_containers.engine import Engine
from attune_containers.errors import AttuneContainersError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings

from .support import TEST_PREFIX


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``restarts_engine`` run after every other, in their order: they stop dockerd,
    which a test still to come would meet as an engine gone (or one that lost its containers)."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_engine") is not None)


@pytest.fixture(scope="session")
def engine() -> Engine:
    engine = Engine()
    try:
        engine.ping()
    except AttuneContainersError as exc:
        pytest.fail(f"engine tests need a running Docker engine (run `make test`): {exc}")
    return engine


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Settings:
    settings = Settings(image_prefix=TEST_PREFIX, state_dir=tmp_path_factory.mktemp("state"))
    configured = [
        *settings.base_images.values(),
        *(ref for images in settings.runtime_base_images.values() for ref in images.values()),
    ]
    missing = [ref for ref in configured if engine.inspect_image(ref) is None]
    if missing:
        pytest.fail(f"base images missing: {missing}; `make test` bootstraps them")
    return settings


@pytest.fixture(scope="session", autouse=True)
def _remove_test_images():
    yield
    engine = Engine()
    try:
        summaries = engine.list_images({L.MANAGED: "true"})
    except AttuneContainersError:
        return
    for summary in summaries:
        if any(tag.startswith(TEST_PREFIX + "/") for tag in summary.tags):
            try:
                engine.remove_image(summary.id, force=True)
            except AttuneContainersError:
                pass


@pytest.fixture
def manager(settings: Settings, engine: Engine) -> ContainerDependencyManager:
    return ContainerDependencyManager(settings, engine)
