"""Issue 11: the fast build (host fetch with uv, one install container committed as one layer)
against what must still hold: render's Dockerfile gives the same venv, the image is one layer on
the base and no larger, a killed build's install container is swept, and two processes building
overlapping packs share one cache safely. (No network in the install step, and what its code may
write: test_hostile_builds.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

from attune_containers.core import labels as L
from attune_containers.core.render import INSTALLED_RECORD
from attune_containers.core.spec import DependencySpec
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.wheels import STEP_PREFIX, WheelCache, read_installed_record

from ..support import images_of, unique_ref

SPEC = DependencySpec(dependencies=["requests==2.32.3"], min_version="3.11", max_version="3.11")


def records(engine, image: str) -> list[tuple[str, str]]:
    return [(d.name, d.version) for d in read_installed_record(engine.read_file(image, INSTALLED_RECORD))]


def test_render_dockerfile_built_by_plain_docker_build_gives_the_same_venv(settings, engine, tmp_path):
    own = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    manager = ContainerDependencyManager(own, engine)
    pack_ref = unique_ref("fast")
    log: list[str] = []
    info = manager.ensure(pack_ref, SPEC, on_log=log.append).info
    # The fast path ran: host resolution and the install container, no Dockerfile steps.
    assert any(line.startswith("fetch: resolved") and "on the host" in line for line in log), log
    assert not any(line.startswith("Step ") for line in log), log

    # The Dockerfile `render` prints, built by a plain `docker build` of the same wheels.
    plan = manager.plan(pack_ref, SPEC)
    with manager.wheels.fetch(plan) as fetched:
        by_dockerfile = engine.build(plan.context(fetched.wheels, fetched.tools), network_mode="none")
    try:
        fast = records(engine, info.id)
        assert {"requests", "urllib3", "idna", "certifi", "charset-normalizer"} <= {n for n, _ in fast}
        assert records(engine, by_dockerfile) == fast  # same distributions, same versions, no pip
        fast_attrs, plain_attrs = engine.api.inspect_image(info.id), engine.api.inspect_image(by_dockerfile)
        # Same run configuration (the content identity's config part), one layer on the base.
        for key in ("Env", "User", "WorkingDir", "Cmd", "Entrypoint"):
            assert fast_attrs["Config"][key] == plain_attrs["Config"][key] or (
                key == "Env" and sorted(fast_attrs["Config"][key]) == sorted(plain_attrs["Config"][key])
            ), key
        base_layers = engine.api.inspect_image(plan.base.reference)["RootFS"]["Layers"]
        assert fast_attrs["RootFS"]["Layers"][:-1] == base_layers
        # As large as what the Dockerfile makes, give or take uv's own small files (RECORD lines,
        # .gitignore, CACHEDIR.TAG: kilobytes); before issue 11 the venv also had pip and
        # setuptools, about 20 MB more, which neither has now.
        assert fast_attrs["Size"] <= plain_attrs["Size"] + (256 << 10), (fast_attrs["Size"], plain_attrs["Size"])
        assert not any(n in ("pip", "setuptools") for n, _ in fast)
        code, output = engine.run_once(
            info.image, [info.executable_path, "-c", "import requests, os; print(requests.__version__, os.getuid())"]
        )
        assert (code, output.strip()) == (0, "2.32.3 65532")
    finally:
        engine.remove_image(by_dockerfile, force=True)
    assert L.is_built_by_us(engine.inspect_image(info.id))


def test_a_killed_install_steps_container_is_swept(settings, engine, tmp_path):
    own = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    manager = ContainerDependencyManager(own, engine)
    plan = manager.plan(unique_ref("sweep"), SPEC)
    with manager.wheels.fetch(plan) as fetched:
        name = fetched.step_name
        assert name and name.startswith(STEP_PREFIX)
        container = engine.create_step_container(plan.base.reference, ["true"], mounts=[], name=name)
        manager.wheels.sweep()  # its build is alive: kept
        assert engine.inspect_container(container) is not None
    # The work folder is gone (as after a build killed outright): the next sweep removes it.
    manager.wheels.sweep()
    assert engine.inspect_container(container) is None


CHILD = """
import json, sys
from attune_containers.core.spec import DependencySpec
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
info = ContainerDependencyManager(settings).ensure_environment(
    sys.argv[2], DependencySpec(dependencies=json.loads(sys.argv[3]), min_version="3.11", max_version="3.11"))
print(json.dumps({"id": info.id, "installed": info.installed_dependencies}))
"""


def test_two_processes_building_overlapping_packs_share_one_cache(settings, engine, tmp_path):
    own = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    packs = {unique_ref("olap"): ["requests==2.32.3"], unique_ref("olap"): ["urllib3==2.2.3", "idna==3.10"]}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, own.model_dump_json(), ref, json.dumps(deps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ref, deps in packs.items()
    ]
    outputs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert "idna==3.10" in outputs[1]["installed"] and "urllib3==2.2.3" in outputs[1]["installed"]
    assert any(d.startswith("requests==2.32.3") for d in outputs[0]["installed"])
    for ref in packs:
        assert len(images_of(engine, ref)) == 1
    # Every cached file matches its record: nothing half-written, nothing unrecorded.
    manager = ContainerDependencyManager(own, engine)
    cached = sorted((own.cache_dir / "wheelhouse").iterdir())
    assert cached
    for path in cached:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == (own.cache_dir / "records" / "wheelhouse" / path.name).read_text()
    assert list((own.cache_dir / "work").iterdir()) == []
    assert manager.wheels.stats().files >= len(cached)


def test_the_tree_in_memory_and_on_disk_give_the_same_venv(settings, engine, tmp_path, monkeypatch):
    from attune_containers.services import wheels

    own = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    spec = DependencySpec(dependencies=["six==1.17.0"], min_version="3.11", max_version="3.11")
    in_memory = ContainerDependencyManager(own, engine).ensure(unique_ref("mem"), spec).info
    monkeypatch.setattr(wheels, "_SCRATCH_MAX", 0)  # nothing fits in memory: the work folder on disk
    on_disk = ContainerDependencyManager(own, engine).ensure(unique_ref("disk"), spec).info
    assert records(engine, in_memory.id) == records(engine, on_disk.id) == [("six", "1.17.0")]
    listing = ["find", "/opt/attune", "-printf", "%P %U %m %y\\n"]
    assert engine.run_once(in_memory.image, listing) == engine.run_once(on_disk.image, listing)
    assert L.is_built_by_us(engine.inspect_image(on_disk.id))
    # Neither leaves a tree behind, in memory or in the work folder.
    assert list((own.cache_dir / "work").iterdir()) == []
    scratch_root = wheels.WheelCache(own, engine)._scratch_root()
    assert not scratch_root.exists() or list(scratch_root.iterdir()) == []


def test_a_new_requirement_set_resolves_from_fresh_cached_pages_and_only_then(settings, engine, tmp_path):
    """A new pack whose projects' index pages were fetched within resolution_max_age resolves from
    uv's cache with no index access, to what the index itself gives; stale pages, or the setting at
    0, and it asks the index again."""
    own = settings.model_copy(update={"cache_dir": tmp_path / "cache", "resolution_max_age": 600})

    def build(settings_, *deps: str) -> tuple[list[str], list[tuple[str, str]]]:
        log: list[str] = []
        spec = DependencySpec(dependencies=list(deps), min_version="3.11", max_version="3.11")
        info = ContainerDependencyManager(settings_, engine).ensure(unique_ref("pages"), spec, on_log=log.append).info
        return log, records(engine, info.id)

    def said(log: list[str], what: str) -> bool:
        return any(line.startswith("fetch: resolved") and what in line for line in log)

    log, _ = build(own, "requests==2.32.3")
    assert said(log, "with uv"), log  # the first resolution asks the index
    # A different requirement set over the same projects: no index access, the same answer.
    log, from_pages = build(own, "requests==2.32.3", "idna")
    assert said(log, "with no index access"), log
    log, from_index = build(own.model_copy(update={"resolution_max_age": 0}), "idna", "requests==2.32.3")
    assert said(log, "with uv"), log
    assert from_pages == from_index
    # Pages older than the window are not used: the index is asked, and the pages are fetched anew.
    for page in (tmp_path / "cache-index").glob("simple-v*/*/*.rkyv"):
        os.utime(page, (time.time() - 700, time.time() - 700))
    log, _ = build(own, "requests==2.32.3", "certifi")
    assert said(log, "with uv") and not said(log, "no index access"), log
    # The pages live beside the shared cache (never mounted) and go when the cache is emptied.
    index = tmp_path / "cache-index"
    assert any(index.glob("simple-v*/*/requests.rkyv"))
    WheelCache(own, engine).prune(0)
    assert not index.exists()
