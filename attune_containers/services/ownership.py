"""Who owns a run container, provably: a lease per process, held with a kernel lock.

A sweeper may only remove a container whose owner it can prove dead. A host name and a pid prove
nothing: another PID namespace (a worker in a container with host networking) has the same host
name and its own pids, and a pid is reused. What the kernel vouches for is a lock: ``flock`` on a
file is held as long as its owner's open file description lives, in any PID namespace, and the
kernel drops it when the owner dies, however it dies (SIGKILL included).

So every process that runs actions holds a **lease** under ``state_dir/owners``:

- ``<id>.lock``: exclusively ``flock``-ed for the life of the process. ``id`` is a random 128-bit
  value, fresh for each process (and for each child after a ``fork``), never reused. The lease is
  made under a temporary name, locked, then renamed into place, so ``<id>.lock`` is never seen
  unlocked while its owner lives.
- ``<id>.json``: for humans (host name, pid, start time) and for the pruner: the images its
  runners use right now (the last one each runner resolved for each pack), rewritten atomically.

Containers carry the id in the ``io.attune.containers.lease`` label. A sweeper removes a container
only when ``<id>.lock`` exists in its own state directory and it can take the lock without
waiting: the owner is provably dead. A lease it cannot find (another state directory, another host
sharing the engine, a container of an older version labelled only ``host:pid``) is left alone.
The pruner protects every image named by a live lease (lock held), whatever the pack's "current"
record says.

A lease lasts as long as its process (runners withdraw their images when they close). At a normal
exit the lease files are deleted once the engine confirms that no container with the id is left;
otherwise they stay, unlocked, and the next sweep proves the owner dead and cleans up.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core import labels as L
from ..runtimes import DEFAULT_RUNTIME

log = logging.getLogger(__name__)

OWNERS = "owners"
LEASE_ID = re.compile(r"[0-9a-f]{32}")
# A lease record is a few hundred bytes per pack; more than this is not ours.
RECORD_LIMIT = 1024 * 1024
# A temporary lease file older than this whose lock is free was left by a process killed while
# taking its lease.
STALE_TEMP_SECONDS = 60.0

_lock = threading.Lock()
_process_id = uuid.uuid4().hex
_leases: dict[Path, Lease] = {}


def process_id() -> str:
    """This process's lease id (a fresh one in a child after fork)."""
    return _process_id


def owners_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / OWNERS


class Lease:
    """This process's lease in one state directory. Use ``acquire``; one per process and directory."""

    def __init__(self, state_dir: Path, lease_id: str, engine: Any = None) -> None:
        self.id = lease_id
        self.state_dir = state_dir
        self.directory = owners_dir(state_dir)
        self.engine = engine
        self.pid = os.getpid()
        self.started = datetime.now(UTC).replace(microsecond=0).isoformat()
        # holder -> (pack_ref, runtime) -> (image, image ID)
        self._uses: dict[int, dict[tuple[str, str], tuple[str, str]]] = {}
        self._uses_lock = threading.Lock()
        # Holders collected without close(): their finalizers only queue them here (see _collected).
        self._collected: list[int] = []
        self._fd: int | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_record()  # before the lock is visible: a live lease always has its record
        temporary = self.directory / f".tmp-{self.id}.lock"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            os.write(fd, f"{socket.gethostname()} {self.pid}\n".encode())
            os.rename(temporary, self.lock_path)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._fd = fd

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.id}.lock"

    @property
    def record_path(self) -> Path:
        return self.directory / f"{self.id}.json"

    def use(self, holder: object, pack_ref: str, image: str, image_id: str, runtime: str = DEFAULT_RUNTIME) -> None:
        """Record that ``holder`` (a runner) now uses ``image`` for ``pack_ref``'s ``runtime`` (a
        pack with Python and Node.js actions uses an image of each at once). Cheap when unchanged:
        the record is rewritten only when a runner's image for a pack and runtime changes."""
        if self.pid != os.getpid():
            # A runner inherited through fork: its containers carry the child's id, so its images
            # go in the child's own lease, never in the parent's record.
            acquire(self.state_dir, self.engine).use(holder, pack_ref, image, image_id, runtime)
            return
        key = id(holder)
        with self._uses_lock:
            dropped = self._drop_collected()
            uses = self._uses.get(key)
            if uses is None:
                uses = self._uses[key] = {}
                # A runner dropped without close() withdraws too (and its id can be reused).
                weakref.finalize(holder, self._collected_holder, key)
            if uses.get((pack_ref, runtime)) == (image, image_id):
                if dropped and self._fd is not None:
                    with contextlib.suppress(OSError):
                        self._write_record()
                return
            uses[(pack_ref, runtime)] = (image, image_id)
            try:
                self._write_record()
            except OSError as exc:
                # The run goes on; should the image be pruned meanwhile, the runner resolves it
                # again (it retries a vanished image once). The next change writes the record.
                uses.pop((pack_ref, runtime), None)
                log.warning("could not record image %s in lease %s: %s", image, self.id, exc)

    def uses(self, holder: object, pack_ref: str, image: str, image_id: str, runtime: str = DEFAULT_RUNTIME) -> bool:
        """Whether ``holder``'s record already names ``image`` for ``pack_ref``'s ``runtime`` (no
        lock taken for a read of one dictionary entry: the hot path of every run)."""
        if self.pid != os.getpid():
            return False
        return self._uses.get(id(holder), {}).get((pack_ref, runtime)) == (image, image_id)

    def withdraw(self, holder: object) -> None:
        """``holder`` closed: the images it used are no longer in use by it."""
        if self.pid != os.getpid():
            acquire(self.state_dir, self.engine).withdraw(holder)
            return
        self._withdraw(id(holder))

    def _withdraw(self, key: int) -> None:
        with self._uses_lock:
            dropped = self._drop_collected()
            if (self._uses.pop(key, None) is not None or dropped) and self._fd is not None:
                with contextlib.suppress(OSError):
                    self._write_record()

    def _collected_holder(self, key: int) -> None:
        """A holder was garbage-collected. Finalizers run wherever the collector happens to run,
        even inside this lease's own lock in this very thread (a deadlock seen in a test): so
        never wait for the lock here; queue the key, and withdraw now only if the lock is free."""
        self._collected.append(key)
        if self._uses_lock.acquire(blocking=False):
            try:
                if self._drop_collected() and self._fd is not None:
                    with contextlib.suppress(OSError):
                        self._write_record()
            finally:
                self._uses_lock.release()

    def _drop_collected(self) -> bool:
        """Withdraw the queued collected holders (the lock is held); whether anything went."""
        dropped = False
        while self._collected:
            dropped = self._uses.pop(self._collected.pop(), None) is not None or dropped
        return dropped

    def images(self) -> list[dict[str, str]]:
        with self._uses_lock:
            found = {
                (pack_ref, image, image_id) for uses in self._uses.values() for (pack_ref, _), (image, image_id) in uses.items()
            }
        return [{"pack_ref": p, "image": i, "id": d} for p, i, d in sorted(found)]

    def _write_record(self) -> None:
        found = {(pack_ref, image, image_id) for uses in self._uses.values() for (pack_ref, _), (image, image_id) in uses.items()}
        record = {
            "lease": self.id,
            "hostname": socket.gethostname(),
            "pid": self.pid,
            "started": self.started,
            "images": [{"pack_ref": p, "image": i, "id": d} for p, i, d in sorted(found)],
        }
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, self.record_path)  # readers see the old record or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def end(self) -> None:
        """At exit: delete the lease if no container carries its id any more, then let the lock
        go. With a container left (or the engine unreachable) the files stay for a sweeper."""
        if self._fd is None:
            return
        clean = False
        if self.engine is not None:
            try:
                clean = not self.engine.list_containers({L.LEASE: self.id})
            except Exception:  # noqa: BLE001 - at exit: leave it to the next sweep
                clean = False
        if clean:
            self.record_path.unlink(missing_ok=True)
            self.lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def acquire(state_dir: str | Path, engine: Any = None) -> Lease:
    """This process's lease in ``state_dir``, taken on first use and held until the process ends."""
    key = Path(state_dir).resolve()
    with _lock:
        lease = _leases.get(key)
        if lease is None:
            lease = _leases[key] = Lease(key, _process_id, engine)
        elif lease.engine is None:
            lease.engine = engine
        return lease


@atexit.register
def _end_all() -> None:
    # Registered when this module is imported, before the runner's own exit hook: atexit runs
    # hooks last-in first-out, so the runners have closed (and removed their containers) by now.
    with _lock:
        leases = list(_leases.values())
        _leases.clear()
    for lease in leases:
        with contextlib.suppress(Exception):
            lease.end()


def _after_fork_in_child() -> None:
    # The child is another owner: a fresh id, no leases. The inherited descriptors keep the
    # parent's locks held while the child lives (never wrongly "dead"); closing them here does not
    # release the parent's lock (only LOCK_UN or the last close does).
    global _process_id, _lock
    _process_id = uuid.uuid4().hex
    _lock = threading.Lock()
    for lease in _leases.values():
        if lease._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lease._fd)
            lease._fd = None
    _leases.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- what other processes hold -------------------------------------------------------------------


@contextlib.contextmanager
def dead_owner(state_dir: str | Path, lease_id: str) -> Iterator[bool]:
    """Whether the owner of ``lease_id`` is provably dead: its lease exists in this state
    directory and its lock is free. While the block runs the lock is held, so no other sweeper
    acts on it at the same time. An id that is malformed or has no lease here is not provably
    dead (False)."""
    if not isinstance(lease_id, str) or not LEASE_ID.fullmatch(lease_id):
        yield False
        return
    fd = _try_lock(owners_dir(state_dir) / f"{lease_id}.lock")
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


def owner_alive(state_dir: str | Path, lease_id: str | None) -> bool:
    """Whether the owner of ``lease_id`` is provably alive: its lease in this state directory is
    locked. False for no id, a malformed one, or one without a lease here."""
    if not isinstance(lease_id, str) or not LEASE_ID.fullmatch(lease_id):
        return False
    path = owners_dir(state_dir) / f"{lease_id}.lock"
    if not path.exists():
        return False
    fd = _try_lock(path)
    if fd is None:
        return path.exists()  # held (or deleted meanwhile by its owner's clean exit)
    os.close(fd)
    return False


def forget(state_dir: str | Path, lease_id: str) -> None:
    """Delete a dead owner's lease (call inside ``dead_owner`` once nothing of it is left)."""
    if LEASE_ID.fullmatch(lease_id):
        directory = owners_dir(state_dir)
        (directory / f"{lease_id}.json").unlink(missing_ok=True)
        (directory / f"{lease_id}.lock").unlink(missing_ok=True)


def collect(state_dir: str | Path, keep: Collection[str] = frozenset()) -> list[str]:
    """Delete the leases of dead owners that nothing refers to (``keep``: ids that still have
    containers), and temporary files of owners killed while taking their lease."""
    directory = owners_dir(state_dir)
    collected: list[str] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return collected
    for path in entries:
        name = path.name
        if name.startswith(".tmp-"):
            _collect_temporary(path)
            continue
        lease_id, dot, suffix = name.partition(".")
        if suffix != "lock" or not LEASE_ID.fullmatch(lease_id) or lease_id in keep:
            continue
        with dead_owner(state_dir, lease_id) as dead:
            if dead:
                forget(state_dir, lease_id)
                collected.append(lease_id)
    for path in entries:  # records whose lock is gone (deleted between the two unlinks)
        lease_id, _, suffix = path.name.partition(".")
        if suffix == "json" and LEASE_ID.fullmatch(lease_id) and not (directory / f"{lease_id}.lock").exists():
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
    return collected


def live_images(state_dir: str | Path) -> dict[str, list[str]]:
    """Image reference or ID -> who uses it ("host pid N"), over every live lease (lock held) in
    ``state_dir``. Dead leases are ignored. The pruner never removes an image named here."""
    directory = owners_dir(state_dir)
    found: dict[str, list[str]] = {}
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        lease_id, _, suffix = path.name.partition(".")
        if suffix != "lock" or not LEASE_ID.fullmatch(lease_id):
            continue
        fd = _try_lock(path)
        if fd is not None:
            os.close(fd)  # dead: its images are nobody's
            continue
        record = _read_record(directory / f"{lease_id}.json")
        if record is None:
            continue
        who = f"{record['hostname']} pid {record['pid']}"
        for use in record["images"]:
            for name in (use["image"], use["id"]):
                if who not in found.setdefault(name, []):
                    found[name].append(who)
    return found


def _try_lock(path: Path) -> int | None:
    """A descriptor holding ``path``'s lock when it is free, None when it is held or missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        return None
    return fd


def _collect_temporary(path: Path) -> None:
    try:
        if time.time() - path.lstat().st_mtime < STALE_TEMP_SECONDS:
            return
    except OSError:
        return
    if path.name.endswith(".lock"):
        fd = _try_lock(path)
        if fd is None:
            return
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    else:
        path.unlink(missing_ok=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    """A lease record, bounded and validated; None when it is missing or not of our shape."""
    try:
        with open(path, "rb") as f:
            data = f.read(RECORD_LIMIT + 1)
    except OSError:
        return None
    if len(data) > RECORD_LIMIT:
        return None
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None
    if not isinstance(record, dict) or not isinstance(record.get("images"), list):
        return None
    images = [
        u for u in record["images"] if isinstance(u, dict) and all(isinstance(u.get(k), str) for k in ("pack_ref", "image", "id"))
    ]
    return {"hostname": str(record.get("hostname", "?"))[:255], "pid": str(record.get("pid", "?"))[:20], "images": images}
