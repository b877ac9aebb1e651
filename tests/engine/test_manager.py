"""The seed's 15 dependency-isolation scenarios, ported to images and run with real builds."""

from __future__ import annotations

import json

import pytest

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.engine import Engine
from attune_containers.errors import AttuneContainersError, InvalidSpecError
from attune_containers.services.manager import ContainerDependencyManager, DependencyManagerRegistry

from ..support import images_of, unique_ref

SIX_OLD = DependencySpec(dependencies=["six==1.16.0"], max_version="3.11")
SIX_NEW = DependencySpec(dependencies=["six==1.17.0"], max_version="3.11")


class CountingEngine(Engine):
    """The real engine, counting the calls the manager makes (a spy, not a mock)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def build(self, *a, **k):
        self.calls.append("build")
        return super().build(*a, **k)

    def inspect_image(self, *a, **k):
        self.calls.append("inspect_image")
        return super().inspect_image(*a, **k)

    def list_images(self, *a, **k):
        self.calls.append("list_images")
        return super().list_images(*a, **k)


def run_python(engine: Engine, image: str, code: str) -> str:
    exit_code, output = engine.run_once(image, ["/opt/attune/venv/bin/python", "-c", code])
    assert exit_code == 0, output
    return output.strip()


@pytest.fixture(scope="module")
def six_old(settings, engine):
    """One pack built once and shared by the read-only scenarios below."""
    manager = ContainerDependencyManager(settings, engine)
    pack_ref = unique_ref("six.old")
    return pack_ref, manager.ensure_environment(pack_ref, SIX_OLD)


def test_creation_builds_a_labelled_image(six_old, engine):
    pack_ref, info = six_old
    attrs = engine.inspect_image(info.image)
    labels = attrs.labels
    assert labels[L.PACK_REF] == pack_ref
    assert labels[L.DEPENDENCY_HASH] == info.dependency_hash
    assert labels[L.PYTHON_VERSION] == info.runtime_version
    assert json.loads(labels[L.REQUIREMENTS]) == ["six==1.16.0"]
    assert "six==1.16.0" in json.loads(labels[L.INSTALLED])
    for key in (L.OCI_CREATED, L.OCI_TITLE, L.TOOL_VERSION, L.CREATED, L.OCI_BASE_NAME):
        assert labels.get(key), key
    assert attrs.config.user not in ("", "0", "root", "0:0")
    assert run_python(engine, info.image, "import six; print(six.__version__)") == "1.16.0"


def test_idempotency_reuses_the_image_without_building(six_old, settings):
    pack_ref, info = six_old
    spy = CountingEngine()
    again = ContainerDependencyManager(settings, spy).ensure_environment(pack_ref, SIX_OLD)
    assert again.id == info.id
    assert "build" not in spy.calls


def test_caching_answers_a_repeat_from_memory(six_old, settings):
    pack_ref, info = six_old
    spy = CountingEngine()
    manager = ContainerDependencyManager(settings, spy)
    manager.ensure_environment(pack_ref, SIX_OLD)
    calls_after_first = len(spy.calls)
    reformatted = DependencySpec(dependencies=["SIX == 1.16.0  # same thing"], max_version="3.11")
    assert manager.ensure_environment(pack_ref, reformatted).id == info.id
    assert len(spy.calls) == calls_after_first, spy.calls[calls_after_first:]


def test_change_detection_and_needs_update(settings, engine):
    manager = ContainerDependencyManager(settings, engine)
    pack_ref = unique_ref("change")
    assert manager.needs_update(pack_ref, SIX_OLD)
    old = manager.ensure_environment(pack_ref, SIX_OLD)
    assert not manager.needs_update(pack_ref, SIX_OLD)
    assert manager.needs_update(pack_ref, SIX_NEW)
    new = manager.ensure_environment(pack_ref, SIX_NEW)
    assert new.dependency_hash != old.dependency_hash and new.id != old.id
    assert not manager.needs_update(pack_ref, SIX_NEW)
    assert run_python(engine, new.image, "import six; print(six.__version__)") == "1.17.0"
    # The current environment is the one ensured last, and a fresh manager agrees (newest).
    assert manager.get_environment(pack_ref).id == new.id
    assert ContainerDependencyManager(settings, engine).get_environment(pack_ref).id == new.id


def test_multi_pack_isolation(six_old, settings, engine):
    pack_a, info_a = six_old
    manager = ContainerDependencyManager(settings, engine)
    pack_b = unique_ref("six.new")
    info_b = manager.ensure_environment(pack_b, SIX_NEW)
    assert run_python(engine, info_a.image, "import six; print(six.__version__)") == "1.16.0"
    assert run_python(engine, info_b.image, "import six; print(six.__version__)") == "1.17.0"
    assert info_a.image.split(":")[0] != info_b.image.split(":")[0]


def test_executable_path_runs_in_its_image(six_old, manager, engine):
    pack_ref, info = six_old
    path = manager.get_executable_path(pack_ref)
    assert path.image == info.image
    exit_code, output = engine.run_once(path.image, [path.interpreter, "-c", "import sys; print(sys.prefix)"])
    assert exit_code == 0 and output.strip() == "/opt/attune/venv"


def test_validate_environment(six_old, manager):
    pack_ref, _ = six_old
    assert manager.validate_environment(pack_ref) is True
    assert manager.validate_environment(unique_ref("absent")) is False


def test_list_environments(six_old, manager):
    pack_ref, info = six_old
    listed = manager.list_environments()
    assert info.id in {e.id for e in listed}
    assert [e.id for e in manager.list_environments(pack_ref)] == [info.id]


def test_remove_environment(settings, engine):
    manager = ContainerDependencyManager(settings, engine)
    pack_ref = unique_ref("remove")
    info = manager.ensure_environment(pack_ref, SIX_OLD)
    assert manager.remove_environment(pack_ref) == [info.image]
    assert manager.get_environment(pack_ref) is None
    assert images_of(engine, pack_ref) == []
    assert manager.needs_update(pack_ref, SIX_OLD)


def test_registry_routes_by_runtime(manager):
    registry = DependencyManagerRegistry()
    registry.register(manager)
    assert registry.has_runtime("python") and registry.has_runtime("python3")
    assert registry.get("python3") is manager
    with pytest.raises(AttuneContainersError, match="nodejs"):
        registry.get("nodejs")


def test_spec_builder_matches_the_plain_spec(six_old, manager):
    pack_ref, info = six_old
    built = DependencySpec.new("python").with_dependency("six==1.16.0").with_version_range(None, "3.11")
    assert manager.plan(pack_ref, built).dependency_hash == info.dependency_hash


def test_requirements_file_content_installs(settings, engine):
    manager = ContainerDependencyManager(settings, engine)
    spec = DependencySpec(requirements_file_content="# pinned\nsix==1.17.0\n\n", max_version="3.11")
    info = manager.ensure_environment(unique_ref("reqfile"), spec)
    assert "six==1.17.0" in info.installed_dependencies


def test_sanitisation_never_confuses_refs(settings, engine):
    manager = ContainerDependencyManager(settings, engine)
    stem = unique_ref("s")
    dotted, underscored, upper = f"{stem}.b", f"{stem}_b", f"{stem.upper()}.b"
    infos = {ref: manager.ensure_environment(ref, SIX_OLD) for ref in (dotted, underscored, upper)}
    assert len({i.image for i in infos.values()}) == 3
    for ref in infos:
        assert [e.pack_ref for e in manager.list_environments(ref)] == [ref]
    with pytest.raises(InvalidSpecError):
        manager.ensure_environment("../etc", SIX_OLD)


def test_empty_dependencies_build_a_bare_venv(settings, engine):
    manager = ContainerDependencyManager(settings, engine)
    info = manager.ensure_environment(unique_ref("empty"), DependencySpec(min_version="3.13"))
    assert info.runtime_version.startswith("3.13.")
    assert not any(d.startswith("six==") for d in info.installed_dependencies)
    assert run_python(engine, info.image, "import sys; print(sys.prefix)") == "/opt/attune/venv"
