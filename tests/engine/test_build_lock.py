"""A complete hash-pinned lock (what ``inspect --lock`` prints) builds with no resolution (issue 11):
each file is taken from the shared cache by its sha256, with no index access at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from attune_containers.core import labels as L
from attune_containers.core.packs import load_pack
from attune_containers.errors import BuildError
from attune_containers.services.manager import ContainerDependencyManager

from ..support import TEST_PREFIX, unique_ref
from .test_cli import write_pack

DEPENDENCIES = {"dependencies": ["requests==2.32.3"], "min_version": "3.11", "max_version": "3.11"}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )


def lock_label(engine, image: str) -> list[dict]:
    return json.loads(engine.inspect_image(image).labels[L.LOCK])


@pytest.fixture(scope="module")
def locked_pack(tmp_path_factory, engine, settings):
    """A pack built by the CLI with a cache of its own, and the lock ``inspect --lock`` prints
    (one build for the module: the test that removes a cached file runs last)."""
    tmp_path = tmp_path_factory.mktemp("locksrc")
    cache = tmp_path / "cache"
    pack_ref = unique_ref("locksrc")
    env = {
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(tmp_path / "state"),
        "ATTUNE__CONTAINERS__CACHE_DIR": str(cache),
    }
    built = cli("build", str(write_pack(tmp_path, pack_ref, DEPENDENCIES)), "--json", env=env)
    assert built.returncode == 0, built.stderr
    image = json.loads(built.stdout)["image"]
    printed = cli("inspect", pack_ref, "--lock", env=env)
    assert printed.returncode == 0, printed.stderr
    lock = printed.stdout
    assert len(lock.splitlines()) == 5 and all("--hash=sha256:" in line for line in lock.splitlines())
    return cache, image, lock


@pytest.fixture
def fresh_prefix(engine):
    prefix = f"{TEST_PREFIX}-lock{uuid.uuid4().hex[:6]}"
    yield prefix
    for summary in engine.list_images({L.MANAGED: "true"}):
        if any(tag.startswith(prefix + "/") for tag in summary.tags):
            engine.remove_image(summary.id, force=True)


def test_a_complete_lock_builds_from_the_cache_alone_with_no_resolution(locked_pack, fresh_prefix, tmp_path, settings, engine):
    cache, image, lock = locked_pack
    pack_ref = unique_ref("locked")
    pack = load_pack(write_pack(tmp_path, pack_ref, {"min_version": "3.11", "max_version": "3.11"}, lock))
    manager = ContainerDependencyManager(settings.model_copy(update={"image_prefix": fresh_prefix, "cache_dir": cache}), engine)
    log: list[str] = []
    # Offline: the fetch step runs with networking off, so no index can have been asked anything.
    ensured = manager.ensure(pack_ref, pack.spec, on_log=log.append, offline=True, pull=False)
    assert ensured.outcome == "built"
    assert any(line.startswith("fetch: lock complete, no resolution") for line in log), log
    assert sum(line.startswith("fetch: cached ") for line in log) == 5
    assert not any("downloaded" in line or "resolving" in line for line in log)
    # The same distributions, file for file and hash for hash; the image is an ordinary pack image.
    assert lock_label(engine, ensured.info.image) == lock_label(engine, image)
    assert manager.lock_lines(ensured.info) == lock.splitlines()
    code, output = engine.run_once(
        ensured.info.image, [ensured.info.executable_path, "-c", "import os, requests; print(requests.__version__, os.getuid())"]
    )
    assert (code, output.split()) == (0, ["2.32.3", "65532"])


def test_an_incomplete_lock_is_resolved_not_trusted(locked_pack, fresh_prefix, tmp_path, settings, engine):
    cache, _, lock = locked_pack
    partial = "".join(line + "\n" for line in lock.splitlines() if not line.startswith("idna=="))
    manager = ContainerDependencyManager(settings.model_copy(update={"image_prefix": fresh_prefix, "cache_dir": cache}), engine)
    pack = load_pack(write_pack(tmp_path, unique_ref("partial"), {"min_version": "3.11", "max_version": "3.11"}, partial))
    log: list[str] = []
    # requests needs idna, which this lock leaves out: pip's hash-checking mode then refuses it.
    with pytest.raises(BuildError):
        manager.ensure(pack.pack_ref, pack.spec, on_log=log.append, offline=True, pull=False)
    assert any(line.startswith("fetch: lock not complete (requests 2.32.3 needs idna") for line in log), log
    assert not any("lock complete, no resolution" in line for line in log)


def test_a_lock_file_missing_from_the_cache_is_downloaded_by_its_name_and_hash(locked_pack, tmp_path, settings, engine):
    cache, image, lock = locked_pack
    [idna] = [p for p in (cache / "wheelhouse").iterdir() if p.name.startswith("idna-")]
    idna.unlink()
    manager = ContainerDependencyManager(settings.model_copy(update={"cache_dir": cache}), engine)
    pack = load_pack(write_pack(tmp_path, unique_ref("locked"), {"min_version": "3.11", "max_version": "3.11"}, lock))
    log: list[str] = []
    # The fetch step alone (no image is built): what it hands back, and what the cache then holds.
    with manager.wheels.fetch(manager.plan(pack.pack_ref, pack.spec), on_log=log.append) as fetched:
        assert [d.model_dump() for d in fetched.lock()] == lock_label(engine, image)
    assert any(line.startswith("fetch: lock complete, no resolution") for line in log), log
    # (The fetch container downloads pip for itself when the cache has none: the builds that
    # filled this cache ran on the host and needed no pip. Of the lock, only idna is downloaded.)
    assert [line for line in log if line.startswith("fetch: downloaded") and line != "fetch: downloaded pip"] == [
        f"fetch: downloaded {idna.name}"
    ]
    assert sum(line.startswith("fetch: cached ") for line in log) == 4
    assert idna.is_file()  # verified by the host and cached with its record, as any download


def test_a_lock_file_missing_from_the_cache_is_named_offline(locked_pack, fresh_prefix, tmp_path, settings, engine):
    cache, _, lock = locked_pack
    [idna] = [p for p in (cache / "wheelhouse").iterdir() if p.name.startswith("idna-")]
    idna.unlink()
    manager = ContainerDependencyManager(settings.model_copy(update={"image_prefix": fresh_prefix, "cache_dir": cache}), engine)
    pack = load_pack(write_pack(tmp_path, unique_ref("locked"), {"min_version": "3.11", "max_version": "3.11"}, lock))
    with pytest.raises(BuildError) as caught:
        manager.ensure(pack.pack_ref, pack.spec, offline=True, pull=False)
    message = str(caught.value)
    assert "the lock pins files the cache does not hold, and the fetch is offline" in message
    assert "idna==" in message
