"""Work folders of builds, and the sweep of what dead builds left: one mechanism for every cache
whose fetch step runs a container (the wheel cache, the npm cache).

A sweeper may remove only what it can prove belongs to a dead build. A pid proves nothing (another
PID namespace, reuse); a kernel lock does: each build's work folder holds ``owner.lock``, flock-ed
for the life of the build, and the kernel drops the lock when the process dies, however it dies
(SIGKILL included). The principle of services/ownership.py's leases, per build.

- A cache folder has a random id (``<root>/id``); its fetch containers carry it
  (``io.attune.containers.cache``) and their work folder's name (``io.attune.containers.work``), so
  a sweep considers only its own cache's containers, and removes one only when its folder's lock is
  free or the folder is gone.
- Work folders are 0700 (the root 0711: nobody lists them); files for the container are 0400,
  owned by its user, in a 0500 folder: secrets (index credentials, the npm token) travel so, never
  in a container's environment, which docker inspect shows to anyone who asks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..core.labels import CACHE as CACHE_LABEL
from ..core.labels import HELPER as HELPER_LABEL
from ..core.labels import WORK as WORK_LABEL
from ..core.render import APP_UID
from ..engine import Engine
from ..errors import AttuneContainersError

WORK_NAME = re.compile(r"[0-9a-f]{32}")
# A temporary work folder (not yet locked) younger than this belongs to a build starting now.
STARTING_SECONDS = 120.0


def cache_id(root: Path) -> str:
    """The random id of the cache folder ``root``, made on first use."""
    path = root / "id"
    root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(uuid.uuid4().hex)
    except FileExistsError:
        pass
    text = ""
    for _ in range(50):  # another process may be writing it this very moment
        text = path.read_text()[:32]
        if WORK_NAME.fullmatch(text):
            break
        time.sleep(0.01)
    if not WORK_NAME.fullmatch(text):
        raise AttuneContainersError(f"{path} is not a cache id; remove it")
    return text


@contextmanager
def hold(work_root: Path, files: Mapping[str, str | bytes]) -> Iterator[Path]:
    """A work folder, 0700, held by this build: its ``owner.lock`` is flock-ed while it lives, and
    the kernel drops the lock when the process dies, however it dies. ``files`` go in its
    ``config`` folder, readable by the container's user only; the folder is removed afterwards."""
    name = uuid.uuid4().hex
    temporary = work_root / f".tmp-{name}"
    temporary.mkdir(mode=0o700)
    fd = os.open(temporary / "owner.lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    work = work_root / name
    try:
        os.rename(temporary, work)
        config = work / "config"
        config.mkdir(mode=0o700)
        for filename, content in files.items():
            # Secrets travel as files only the container's user can read (0400), never in the
            # environment: docker inspect shows a container's environment to anyone who asks.
            path = config / filename
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
            with os.fdopen(handle, "wb") as out:
                out.write(content.encode("utf-8") if isinstance(content, str) else content)
            os.chown(path, APP_UID, APP_UID)
        os.chown(config, APP_UID, APP_UID)
        os.chmod(config, 0o500)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(temporary, ignore_errors=True)
        os.close(fd)


def alive(folder: Path) -> bool:
    """Whether a live build holds ``folder`` (its owner.lock is locked)."""
    if folder.name.startswith(".tmp-"):
        with contextlib.suppress(OSError):
            if time.time() - folder.lstat().st_mtime < STARTING_SECONDS:
                return True
    try:
        fd = os.open(folder / "owner.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def sweep(engine: Engine, work_root: Path, cache: str, step_prefix: str | None = None) -> list[str]:
    """Remove what dead builds of the cache ``cache`` (its id) left: fetch containers (their
    network may still be on), containers named ``<step_prefix><work folder>`` and work folders
    (they may hold credentials). A build is dead when nobody holds its folder's lock; a container
    whose folder is gone belongs to no live build either. What is removed: ids and folder names."""
    swept: list[str] = []
    if not work_root.is_dir():
        return swept
    try:
        containers = engine.list_containers({HELPER_LABEL: "fetch", CACHE_LABEL: cache})
    except AttuneContainersError:
        containers = []
    for container in containers:
        owner = container.labels.get(WORK_LABEL, "")
        if WORK_NAME.fullmatch(owner) and not alive(work_root / owner):
            engine.remove_container(container.id, attempts=3)
            swept.append(container.id)
    if step_prefix is not None:
        try:
            steps = engine.containers_named(step_prefix)
        except AttuneContainersError:
            steps = []
        for container in steps:
            owner = container.name.rsplit("-", 1)[-1]
            if WORK_NAME.fullmatch(owner) and not alive(work_root / owner):
                engine.remove_container(container.id, attempts=3)
                swept.append(container.id)
    for folder in listing(work_root):
        if not alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.unlink()
            swept.append(folder.name)
    return swept


def listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []
