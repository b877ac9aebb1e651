"""Leases without the engine: what proves an owner alive or dead, and what the pruner reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from attune_containers.services import ownership

HOLD = (
    "import sys; from attune_containers.services import ownership as o; "
    "lease = o.acquire(sys.argv[1]); "
    "[lease.use(o, p, i, d) for p, i, d in (a.split(',') for a in sys.argv[2:])]; "
    "print(o.process_id(), flush=True); sys.stdin.read()"
)


def holder(state_dir, *uses: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state_dir), *uses], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return process, process.stdout.readline().strip()


class Holder:
    """Stands for a runner: the lease tracks each one's images apart."""


def dead(state_dir, lease_id: str) -> bool:
    with ownership.dead_owner(state_dir, lease_id) as is_dead:
        return is_dead


def test_a_live_owner_is_never_dead_and_a_killed_one_is(tmp_path):
    process, lease = holder(tmp_path, "p,img:1,sha256:aa")
    try:
        assert ownership.LEASE_ID.fullmatch(lease)
        assert not dead(tmp_path, lease) and ownership.owner_alive(tmp_path, lease)
        assert ownership.live_images(tmp_path) == {
            "img:1": [f"{os.uname().nodename} pid {process.pid}"],
            "sha256:aa": [f"{os.uname().nodename} pid {process.pid}"],
        }
        assert ownership.collect(tmp_path) == []  # a live lease is never collected
    finally:
        process.kill()
        process.wait()
    assert dead(tmp_path, lease) and not ownership.owner_alive(tmp_path, lease)
    assert ownership.live_images(tmp_path) == {}  # a dead owner's images protect nothing
    assert ownership.collect(tmp_path, keep={lease}) == []  # still has containers: kept
    assert ownership.collect(tmp_path) == [lease]
    assert not list(ownership.owners_dir(tmp_path).iterdir())


def test_unknown_and_malformed_ids_are_never_dead(tmp_path):
    ownership.owners_dir(tmp_path).mkdir(parents=True)
    outside = tmp_path / "x.lock"
    outside.write_text("")
    for lease_id in ("0" * 32, "../x", "../../x", str(outside.with_suffix("")), "", None, "A" * 32):
        assert not dead(tmp_path, lease_id)
        assert not ownership.owner_alive(tmp_path, lease_id)


def test_in_this_process_the_lease_is_alive_and_runners_withdraw(tmp_path):
    lease = ownership.acquire(tmp_path)
    assert ownership.acquire(tmp_path) is lease and lease.id == ownership.process_id()
    assert not dead(tmp_path, lease.id)  # another descriptor of this process cannot take it either
    a, b = Holder(), Holder()
    lease.use(a, "p", "img:a", "sha256:a")
    lease.use(b, "p", "img:b", "sha256:b")
    assert set(ownership.live_images(tmp_path)) == {"img:a", "sha256:a", "img:b", "sha256:b"}
    lease.withdraw(a)
    assert set(ownership.live_images(tmp_path)) == {"img:b", "sha256:b"}
    lease.use(b, "p", "img:c", "sha256:c")  # the pack resolved to another image: the old one is free
    assert set(ownership.live_images(tmp_path)) == {"img:c", "sha256:c"}
    lease.withdraw(b)
    assert ownership.live_images(tmp_path) == {}


def test_a_runner_uses_an_image_per_runtime_of_a_mixed_pack_at_once(tmp_path):
    lease = ownership.acquire(tmp_path)
    runner = Holder()
    lease.use(runner, "m", "img:py", "sha256:py")
    lease.use(runner, "m", "img:js", "sha256:js", "nodejs")  # the Node action of the same pack
    assert set(ownership.live_images(tmp_path)) == {"img:py", "sha256:py", "img:js", "sha256:js"}
    assert lease.uses(runner, "m", "img:py", "sha256:py") and lease.uses(runner, "m", "img:js", "sha256:js", "nodejs")
    assert not lease.uses(runner, "m", "img:js", "sha256:js")  # not Python's
    lease.use(runner, "m", "img:js2", "sha256:js2", "nodejs")  # Node's changed: Python's stays in use
    assert set(ownership.live_images(tmp_path)) == {"img:py", "sha256:py", "img:js2", "sha256:js2"}
    lease.withdraw(runner)
    assert ownership.live_images(tmp_path) == {}


def test_a_forked_child_is_another_owner(tmp_path):
    lease = ownership.acquire(tmp_path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            answer = {"id": ownership.process_id(), "parent_dead": dead(tmp_path, lease.id)}
            os.write(write, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = json.loads(os.read(read, 4096))
    os.waitpid(pid, 0)
    os.close(read)
    assert answer["id"] != lease.id and answer["parent_dead"] is False
    assert not dead(tmp_path, lease.id)  # the child's exit did not release the parent's lock


def test_records_are_bounded_and_validated(tmp_path):
    process, lease = holder(tmp_path)
    try:
        record = ownership.owners_dir(tmp_path) / f"{lease}.json"
        record.write_text(
            json.dumps({"images": [{"pack_ref": 1, "image": [], "id": None}, "x"], "hostname": "h" * 10_000, "pid": "p"})
        )
        assert ownership.live_images(tmp_path) == {}
        record.write_text("[" * 100_000)
        assert ownership.live_images(tmp_path) == {}
        record.write_bytes(b" " * (ownership.RECORD_LIMIT + 10))
        assert ownership.live_images(tmp_path) == {}
    finally:
        process.kill()
        process.wait()


def test_a_lease_is_never_visible_unlocked(tmp_path):
    """Leases appear by rename after they are locked: a sweeper polling the directory while owners
    start never finds one it can take."""
    processes = [
        subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while len(seen) < len(processes) and time.monotonic() < deadline:
            directory = ownership.owners_dir(tmp_path)
            for path in directory.glob("*.lock") if directory.is_dir() else ():
                assert not dead(tmp_path, path.stem), "a starting owner's lease was free"
                seen.add(path.stem)
        assert len(seen) == len(processes)
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_runner_collected_while_its_lease_is_busy_never_deadlocks(tmp_path):
    # The garbage collector runs finalizers wherever it happens to run: even while this thread
    # holds the lease's lock, writing a record (seen in a warm-pool test, which then hung).
    lease = ownership.acquire(tmp_path)
    first, second = Holder(), Holder()
    lease.use(first, "a", "img:a", "sha256:aa")
    lease.use(second, "b", "img:b", "sha256:bb")
    key = id(first)
    with lease._uses_lock:
        lease._collected_holder(key)  # must return at once, not wait for the lock it is inside
    assert "img:a" in json.dumps(lease.images())  # queued, not yet withdrawn
    lease.use(second, "b", "img:b", "sha256:bb")  # the next use takes the queue in
    assert [i["image"] for i in lease.images()] == ["img:b"]
    assert set(ownership.live_images(tmp_path)) == {"img:b", "sha256:bb"}  # and the record says so
    lease.withdraw(second)
