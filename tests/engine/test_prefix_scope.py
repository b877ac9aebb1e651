"""Two configurations on one engine never touch each other; only images we built are ours.

Two image prefixes with two state directories build the same pack on the same (private) base
images. Every read (ls, inspect, GET /v1/environments) and every removal (rm, DELETE, prune and
its build leftovers) of one must leave the other's images alone. An image built FROM a pack image
inherits all its labels: it is never listed, inspected or removed as ours. A 409 from the engine
is reported with its real cause.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest

from attune_containers.core import labels as L
from attune_containers.core.pack_ref import image_name_for
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import ImageConflictError, ImageInUseError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.pruner import PrunePolicy, Pruner
from attune_containers.settings import Settings

from ..support import TEST_PREFIX, unique_ref
from .test_prune import bases, builder_stage_of, quick, together  # noqa: F401 - bases is a fixture


def config(bases, tmp_path, name: str) -> Settings:  # noqa: F811
    prefix = f"{TEST_PREFIX}/scope-{name}-{uuid.uuid4().hex[:6]}"
    return Settings(image_prefix=prefix, state_dir=tmp_path / f"state-{name}").model_copy(update={"base_images": bases})


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": settings.image_prefix,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
        "ATTUNE__CONTAINERS__BASE_IMAGES": json.dumps(settings.base_images),
    }
    return subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_two_configurations_never_touch_each_other(bases, engine, tmp_path):  # noqa: F811
    a_settings, b_settings = config(bases, tmp_path, "a"), config(bases, tmp_path, "b")
    a, b = ContainerDependencyManager(a_settings, engine), ContainerDependencyManager(b_settings, engine)
    pack = unique_ref("shared")
    mine, theirs = together(lambda: a.ensure_environment(pack, quick(1)), lambda: b.ensure_environment(pack, quick(1)))
    # A build only B made (its own wheels, so its own build stage): B's leftover, never A's.
    log: list[str] = []
    # (Only the Dockerfile path leaves a builder stage: the build takes it where uv cannot be had,
    # as offline with a cache that has no uv: B's own, holding six and its record, nothing else.)
    b.ensure_environment(unique_ref("bwarm"), DependencySpec(dependencies=["six==1.16.0"], min_version="3.13"))
    b_cache = tmp_path / "b-cache"
    for folder in ("wheelhouse", "records/wheelhouse"):
        (b_cache / folder).mkdir(parents=True)
        for path in (b_settings.cache_dir / folder).glob("six-1.16.0-*.whl"):
            shutil.copyfile(path, b_cache / folder / path.name)
    b_dockerfile = ContainerDependencyManager(b_settings.model_copy(update={"offline": True, "cache_dir": b_cache}), engine)
    b_only = b_dockerfile.ensure_environment(
        unique_ref("bonly"), DependencySpec(dependencies=["six==1.16.0"], min_version="3.13"), on_log=log.append
    )
    b_stage = engine.inspect_image(builder_stage_of(log)).id
    assert mine.image.startswith(a_settings.image_prefix + "/") and theirs.image.startswith(b_settings.image_prefix + "/")

    # Reads: each configuration sees its own images only.
    assert {e.image for e in a.list_environments()} == {mine.image}
    assert {e.image for e in Pruner(a).images()} == {mine.image}
    assert a.get_environment(pack).image == mine.image
    listed = json.loads(cli(a_settings, "ls", "--json").stdout)
    assert [e["image"] for e in listed] == [mine.image]
    inspected = cli(a_settings, "inspect", pack, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["image"] == mine.image
    assert cli(a_settings, "inspect", b_only.pack_ref).returncode == 1  # B's pack is nothing to A

    # Prune everything A may prune, leftovers at once: nothing of B's is even counted.
    report = Pruner(a).prune(PrunePolicy(keep=0, include_current=True, leftovers=True, leftover_grace=timedelta(0)))
    seen = {i.id for i in report.removed + report.kept + report.skipped}
    assert mine.id in {i.id for i in report.removed}
    assert not seen & {theirs.id, b_only.id, b_stage}, report
    assert engine.inspect_image(theirs.image) and engine.inspect_image(b_only.image)
    assert engine.inspect_image(b_stage) is not None

    # rm of the same pack ref in A leaves B's image. (Fresh managers: the CLI removes behind
    # this process's back, and an unchanged spec is answered from memory.)
    mine = ContainerDependencyManager(a_settings, engine).ensure_environment(pack, quick(1))
    removed = cli(a_settings, "rm", pack, "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["removed"] == [mine.image]
    assert engine.inspect_image(mine.image) is None and engine.inspect_image(theirs.image) is not None

    # The service of configuration A: GET lists A's only, DELETE removes A's only.
    from fastapi.testclient import TestClient

    from attune_containers.http_api import create_app

    mine = ContainerDependencyManager(a_settings, engine).ensure_environment(pack, quick(1))
    packs = tmp_path / "packs"
    packs.mkdir()
    with TestClient(create_app(packs, ContainerDependencyManager(a_settings, engine))) as client:
        assert [e["image"] for e in client.get("/v1/environments").json()] == [mine.image]
        answer = client.delete(f"/v1/environments/{pack}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == [mine.image]
    assert engine.inspect_image(mine.image) is None
    assert engine.inspect_image(theirs.image) is not None and engine.inspect_image(b_only.image) is not None
    assert [e.image for e in b.list_environments(pack)] == [theirs.image]


def test_second_tag_container_and_dry_run_each_report_their_real_cause(bases, engine, tmp_path):  # noqa: F811
    settings = config(bases, tmp_path, "tags")
    manager = ContainerDependencyManager(settings, engine)
    pack = unique_ref("tags")
    old, new = manager.ensure_environment(pack, quick(3)), manager.ensure_environment(pack, quick(4))
    other = f"{TEST_PREFIX}-elsewhere/copy"
    engine.tag(old.id, other, "1")
    try:
        # Removing the image itself: the engine's 409 is about the other tag, not a container.
        with pytest.raises(ImageConflictError) as caught:
            engine.remove_image(old.id)
        assert "other tags" in str(caught.value) and "used by" not in str(caught.value)

        # --dry-run removes nothing and says what would go.
        dry = cli(settings, "rm", pack, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert sorted(json.loads(dry.stdout)["removed"]) == sorted([old.image, new.image])
        assert engine.inspect_image(old.image) and engine.inspect_image(new.image)

        # One image by its hash: our tag goes; the image stays for its other tag's owner.
        one = cli(settings, "rm", pack, "--image", old.dependency_hash[:12], "--json")
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["removed"] == [old.image]
        assert engine.inspect_image(old.image) is None and engine.inspect_image(f"{other}:1").id == old.id
        assert engine.inspect_image(new.image) is not None

        # A container on the other one: "used by a container", with the engine's words.
        container = engine.client.containers.create(new.image, ["/nonexistent"])
        try:
            with pytest.raises(ImageInUseError) as caught:
                manager.remove_environment(pack)
            assert not isinstance(caught.value, ImageConflictError)
            assert "used by a container" in str(caught.value) and container.id[:12] in str(caught.value)
            refused = cli(settings, "rm", pack, "--json")
            assert refused.returncode == 1 and new.image in json.loads(refused.stdout)["refused"]
        finally:
            container.remove(force=True)
        assert cli(settings, "rm", pack, "--json").returncode == 0
        assert engine.inspect_image(new.image) is None
    finally:
        engine.remove_image(f"{other}:1", force=True)


def test_images_built_from_ours_are_never_ours(bases, engine, tmp_path):  # noqa: F811
    settings = config(bases, tmp_path, "derived")
    manager = ContainerDependencyManager(settings, engine)
    pack = unique_ref("derived")
    info = manager.ensure_environment(pack, quick(5))
    # The user is restored: only the layer differs from ours.
    dashboard = (
        "USER root\nRUN mkdir -p /opt/attunement-dashboard && echo hi > /opt/attunement-dashboard/index.html\nUSER 65532:65532\n"
    )

    def build(dockerfile: str, tag: str | None = None) -> str:
        return engine.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False)[0].id

    # Built FROM our pack image: every label inherited, tagged under our prefix, and one dangling.
    derived_tag = f"{settings.image_prefix}/{image_name_for(pack)}:dashboard"
    derived = build(f"FROM {info.image}\n{dashboard}", derived_tag)
    dangling = build(f"FROM {info.image}\n{dashboard}RUN echo {uuid.uuid4().hex} > /tmp/x\n")
    # On our base image, a step that only contains "/opt/attune" as a substring.
    stranger = build(f"FROM {bases['3.13']}\n{dashboard}RUN echo {uuid.uuid4().hex} > /tmp/y\n")
    try:
        assert engine.inspect_image(derived).labels[L.PACK_REF] == pack  # looks like ours
        assert [e.id for e in manager.list_environments()] == [info.id]
        assert [e.id for e in Pruner(manager).images()] == [info.id]
        assert manager.get_environment(pack).id == info.id

        report = Pruner(manager).prune(PrunePolicy(keep=0, include_current=True, leftovers=True, leftover_grace=timedelta(0)))
        removed = {i.id for i in report.removed}
        assert info.id in removed
        assert not removed & {derived, dangling, stranger}, report
        for image_id in (derived, dangling, stranger):
            assert engine.inspect_image(image_id) is not None
        assert engine.inspect_image(derived_tag) is not None

        # The derived image moved onto our exact tag: it is not taken for the pack's image.
        plan = manager.plan(pack, quick(5))
        engine.tag(derived, *plan.image.rsplit(":", 1))
        assert manager.list_environments(pack) == []
        assert cli(settings, "inspect", pack).returncode == 1
        rebuilt = ContainerDependencyManager(settings, engine).ensure(pack, quick(5))
        assert rebuilt.outcome == "built" and rebuilt.info.id != derived
        assert L.is_built_by_us(engine.inspect_image(plan.image))
        assert cli(settings, "rm", pack).returncode == 0
        assert engine.inspect_image(derived) is not None and engine.inspect_image(derived_tag) is not None
    finally:
        for image_id in (dangling, stranger, derived):
            engine.remove_image(image_id, force=True)
