"""Work folders of fetch steps (services/work_folders.py), shared by the wheel and npm caches: a
folder is alive exactly while its build's process holds it, however that process dies; a sweep
removes only what dead builds of its own cache left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from attune_containers.core import labels as L
from attune_containers.core.render import APP_UID
from attune_containers.engine import ContainerRecord
from attune_containers.errors import AttuneContainersError
from attune_containers.services import work_folders

HOLDER = """
import sys, time
from pathlib import Path
from attune_containers.services import work_folders
with work_folders.hold(Path(sys.argv[1]), {"secret": "s3cr3t"}) as work:
    print(work.name, flush=True)
    time.sleep(300)
"""


class Engine:
    """Only what a sweep asks of the engine: a listing by labels, and removal."""

    def __init__(self, containers: list[ContainerRecord]) -> None:
        self.containers = containers
        self.removed: list[str] = []

    def list_containers(self, labels):
        return [c for c in self.containers if all(c.labels.get(k) == v for k, v in labels.items())]

    def containers_named(self, prefix):
        return [c for c in self.containers if c.name.startswith(prefix)]

    def remove_container(self, container_id, attempts=1):
        self.removed.append(container_id)


def fetch(container_id: str, cache: str, work: str) -> ContainerRecord:
    return ContainerRecord(container_id, container_id, "img", {L.HELPER: "fetch", L.CACHE: cache, L.WORK: work})


@pytest.mark.skipif(os.geteuid() != 0, reason="files are given to the container's user (root only)")
def test_a_folder_is_alive_while_held_and_swept_with_its_container_once_its_owner_is_killed(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    cache = "a" * 32
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        folder = root / name
        secret = folder / "config" / "secret"
        assert (secret.stat().st_mode & 0o777, secret.stat().st_uid) == (0o400, APP_UID)
        assert folder.stat().st_mode & 0o077 == 0
        engine = Engine([fetch("ours", cache, name), fetch("other-cache", "b" * 32, name), fetch("gone", cache, "c" * 32)])
        # Alive: its container and folder stay; a container whose folder is gone goes.
        assert work_folders.alive(folder)
        assert work_folders.sweep(engine, root, cache) == ["gone"] and folder.is_dir()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert not work_folders.alive(folder)
        engine = Engine([fetch("ours", cache, name), fetch("other-cache", "b" * 32, name)])
        assert sorted(work_folders.sweep(engine, root, cache)) == sorted(["ours", name])
        assert engine.removed == ["ours"]  # never another cache's container
        assert list(root.iterdir()) == []
    finally:
        child.kill()
        child.wait()


def test_a_folder_being_made_is_alive_only_while_young(tmp_path):
    starting = tmp_path / (".tmp-" + "d" * 32)
    starting.mkdir()
    assert work_folders.alive(starting)
    old = time.time() - work_folders.STARTING_SECONDS - 10
    os.utime(starting, (old, old))
    assert not work_folders.alive(starting)
    assert not work_folders.alive(tmp_path / ("e" * 32))  # no owner.lock: nobody holds it


def test_the_cache_id_is_made_once_and_kept(tmp_path):
    first = work_folders.cache_id(tmp_path / "cache")
    assert work_folders.WORK_NAME.fullmatch(first) and work_folders.cache_id(tmp_path / "cache") == first
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "id").write_text("not an id")
    with pytest.raises(AttuneContainersError, match="is not a cache id"):
        work_folders.cache_id(tmp_path / "other")
