"""Builds as the engine decides them: failures, version choice, build-only settings, concurrency."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import BuildError, EngineError, PythonVersionUnavailableError
from attune_containers.services.manager import ContainerDependencyManager

from ..support import images_of, unique_ref


def test_failed_pip_install_surfaces_pips_error_and_leaves_no_tagged_image(manager, engine):
    pack_ref = unique_ref("broken")
    spec = DependencySpec(dependencies=["attune-containers-no-such-dist-xyz==9.9.9"])
    with pytest.raises(BuildError) as caught:
        manager.ensure_environment(pack_ref, spec)
    message = str(caught.value)
    assert "ERROR: Could not find a version that satisfies the requirement" in message
    assert "attune-containers-no-such-dist-xyz" in message
    assert images_of(engine, pack_ref) == []
    assert engine.inspect_image(manager.plan(pack_ref, spec).image) is None


@pytest.mark.parametrize(
    ("min_version", "max_version", "expected_minor"),
    [("3.9", "3.11", "3.11"), ("3.12", None, "3.13"), (None, "3.10", "3.9")],
)
def test_the_newest_python_inside_the_range_is_built(manager, engine, min_version, max_version, expected_minor):
    spec = DependencySpec(min_version=min_version, max_version=max_version)
    info = manager.ensure_environment(unique_ref("range"), spec)
    code, output = engine.run_once(info.image, [info.executable_path, "-c", "import platform; print(platform.python_version())"])
    assert code == 0
    assert output.strip() == info.runtime_version
    assert output.strip().startswith(expected_minor + ".")


def test_a_range_nothing_fits_builds_nothing(manager, engine):
    pack_ref = unique_ref("norange")
    with pytest.raises(PythonVersionUnavailableError, match=r"\[3\.14, any\].*3\.9\.2.*3\.11\.2.*3\.13\.5"):
        manager.ensure_environment(pack_ref, DependencySpec(min_version="3.14"))
    assert images_of(engine, pack_ref) == []


def test_build_only_settings_never_reach_the_final_image(settings, engine, tmp_path):
    # A CA bundle (with a marker line) and index credentials: both are needed to build here, and
    # neither may be visible in the final image's files, config, history or labels.
    marker = "ATTUNE-TEST-CA-MARKER"
    bundle = tmp_path / "ca.pem"
    bundle.write_text(f"# {marker}\n" + open(settings.ca_bundle).read())
    secret = "s3cr3t-token"
    build_settings = settings.model_copy(
        update={
            "ca_bundle": bundle,
            "pip_index_url": f"https://attune:{secret}@pypi.org/simple/",
        }
    )
    manager = ContainerDependencyManager(build_settings, engine)
    info = manager.ensure_environment(unique_ref("secrets"), DependencySpec(dependencies=["six==1.17.0"]))
    attrs = engine.api.inspect_image(info.id)  # the engine's whole document, not our record of it
    history = engine.api.history(info.id)
    visible = json.dumps(attrs) + json.dumps(history)
    assert marker not in visible and secret not in visible
    assert "attune:" not in json.dumps(attrs["Config"]["Labels"])
    with pytest.raises(EngineError, match="Could not find the file"):
        # The builder's files are not in the final image at all.
        engine.read_file(info.id, "/attune-build/config/env.sh")
    container = engine.api.create_container(info.id, command=["true"])["Id"]
    try:
        exported = b"".join(engine.api.export(container))
    finally:
        engine.api.remove_container(container, force=True)
    assert marker.encode() not in exported and secret.encode() not in exported


def test_concurrent_threads_build_once(settings, engine):
    pack_ref = unique_ref("threads")
    spec = DependencySpec(dependencies=["six==1.16.0"], min_version="3.13")
    builds: list[str] = []
    results: list[str] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        first_line = []
        try:
            info = ContainerDependencyManager(settings, engine).ensure_environment(
                pack_ref, spec, on_log=lambda line: first_line or first_line.append(line)
            )
            results.append(info.id)
            if first_line:
                builds.append(info.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(results)) == 1 and len(results) == 4
    assert len(builds) == 1
    assert len(images_of(engine, pack_ref)) == 1


CHILD = """
import json, sys
from attune_containers.core.spec import DependencySpec
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
built = []
info = ContainerDependencyManager(settings).ensure_environment(
    sys.argv[2], DependencySpec(dependencies=["six==1.17.0"], min_version="3.13"), on_log=built.append)
print(json.dumps({"id": info.id, "built": bool(built)}))
"""


def test_concurrent_processes_build_once(settings, engine):
    pack_ref = unique_ref("procs")
    args = [sys.executable, "-c", CHILD, settings.model_dump_json(), pack_ref]
    children = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert len({o["id"] for o in outputs}) == 1
    assert sum(o["built"] for o in outputs) == 1
    assert len(images_of(engine, pack_ref)) == 1


def test_labels_identify_the_image_not_its_name(manager, engine):
    # A foreign image under our tag name, without our labels, is never taken for the pack's.
    pack_ref = unique_ref("impostor")
    spec = DependencySpec(min_version="3.13")
    plan = manager.plan(pack_ref, spec)
    base_id = engine.inspect_image(plan.base.reference).id
    repository, tag = plan.image.rsplit(":", 1)
    engine.tag(base_id, repository, tag)
    try:
        with pytest.raises(Exception, match="belongs to pack"):
            manager.ensure_environment(pack_ref, spec)
    finally:
        engine.remove_image(plan.image)
    assert L.PACK_REF not in engine.inspect_image(base_id).labels
