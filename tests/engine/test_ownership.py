"""Whose a container or an image is, against the real engine: a sweeper removes only what a
provably dead owner left (its lease lock is free), and the pruner never removes an image a live
worker uses. The other workers here are real processes: killed with SIGKILL, started side by
side, serving the same pack from another packs tree."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from attune_containers.core import labels as L
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.errors import EngineError
from attune_containers.services import ownership
from attune_containers.services.build_gate import BuildGate
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.pruner import PrunePolicy, Pruner
from attune_containers.services.runner import ActionRunner, _container_run

from ..support import unique_ref

PACKS = Path(__file__).resolve().parent.parent / "packs"
ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "attune-containers"

# A worker in its own process, driven by lines on stdin: each command answers one JSON line.
WORKER = r"""
import json, sys
from pathlib import Path
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.services import ownership
from attune_containers.services.build_gate import BuildGate
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner, _container_run
from attune_containers.settings import Settings

settings = Settings()
settings = settings.model_copy(update={"pool": DEFAULT_POOL.merged(PoolSettings(reuse=False))})
runner = ActionRunner(sys.argv[1], ContainerDependencyManager(settings), sweep=False)
print(json.dumps({"lease": ownership.process_id()}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "create":  # a container held in `created`, as each one starts
        pack = runner._pack_at(command["pack"], Path(sys.argv[1]) / command["pack"])
        info = runner.ensure_pack(command["pack"])
        run = _container_run(pack.pack_ref, Path(sys.argv[1]) / pack.pack_ref, info.id,
                             settings.limits.merged(pack.limits), {})
        answer = {"container": runner.engine.create_container(run)}
    elif command["do"] == "prewarm":  # a live warm pool
        answer = {"started": runner.prewarm(command["pack"], 1)}
    elif command["do"] == "run":
        result = runner.run(command["action"], command.get("parameters") or {})
        answer = {"status": result.status.value, "image": result.image, "result": result.result,
                  "error": result.error.message if result.error else None}
    elif command["do"] == "close":
        runner.close()
        answer = {"closed": True}
    print(json.dumps(answer), flush=True)
"""


class Worker:
    """Another worker on this host: its own process, the same state directory."""

    def __init__(self, settings, packs_dir: Path, prefix: tuple[str, ...] = ()) -> None:
        env = {
            **os.environ,
            "ATTUNE__CONTAINERS__IMAGE_PREFIX": settings.image_prefix,
            "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
        }
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-c", WORKER, str(packs_dir)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lease = self._answer()["lease"]

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the worker ended (exit code {self.process.wait()})")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no handler, no atexit; only the kernel releases its lock
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def prune(settings, engine, policy: PrunePolicy):
    """A prune as the CLI makes it, with a fresh manager. The engine runs one disk-usage query at a
    time and others may share it: such a refusal is retried."""
    for attempt in range(20):
        try:
            return Pruner(ContainerDependencyManager(settings, engine)).prune(policy)
        except EngineError as exc:
            if "already running" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.5)


def containers_of_lease(engine, lease: str) -> dict[str, str]:
    return {c.id: c.status for c in engine.list_containers({L.RUN: "true", L.LEASE: lease})}


def sweeper(settings, engine) -> ActionRunner:
    return ActionRunner(PACKS, ContainerDependencyManager(settings, engine), sweep=False)


def sweep_until_gone(settings, engine, container_id: str, attempts: int = 3) -> list[str]:
    """What start-up sweeps remove, until ``container_id`` is among it: an engine slowed by other
    work may fail a listing or a removal (each sweep then leaves it for the next)."""
    swept: list[str] = []
    for _ in range(attempts):
        swept += sweeper(settings, engine).sweep_leftovers()
        if container_id in swept:
            break
        time.sleep(1)
    return swept


def dead_pid() -> int:
    """A pid that no process of this namespace has (a process that ran and was reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def lease_of_a_killed_process(settings) -> str:
    env = {**os.environ, "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir)}
    code = (
        "import sys; from attune_containers.services import ownership; "
        "ownership.acquire(sys.argv[1]); print(ownership.process_id(), flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(settings.state_dir)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    lease = process.stdout.readline().strip()
    process.kill()
    process.wait(timeout=30)
    assert ownership.LEASE_ID.fullmatch(lease)
    return lease


@pytest.fixture
def made(engine):
    """Containers the test makes itself, removed whatever happens."""
    ids: list[str] = []
    yield ids
    for container_id in ids:
        engine.remove_container(container_id, attempts=3)


def labelled_container(engine, settings, labels: dict[str, str]) -> str:
    """A run container of a live-looking owner, never started (`created`), with the labels given."""
    run = _container_run("probe", PACKS / "probe", settings.base_images["3.13"], settings.limits, {})
    own = {k: v for k, v in run.labels.items() if k not in (L.OWNER, L.LEASE)}
    return engine.create_container(dataclasses.replace(run, labels={**own, **labels}))


# -- the sweep ------------------------------------------------------------------------------------


def test_a_live_workers_created_and_warm_containers_survive_sweeps_until_it_is_killed(settings, engine):
    worker = Worker(settings, PACKS)
    try:
        created = worker.ask(do="create", pack="probe")["container"]
        assert worker.ask(do="prewarm", pack="probe")["started"] == 1
        mine = containers_of_lease(engine, worker.lease)
        assert mine[created] == "created" and sorted(mine.values()) == ["created", "running"]

        # New runners start up beside it (each sweeps, as every `run` and the service do): the
        # container still `created` by a live process and its running pool container both stay.
        for _ in range(3):
            assert set(sweeper(settings, engine).sweep_leftovers()).isdisjoint(mine)
        ActionRunner(PACKS, ContainerDependencyManager(settings, engine))  # sweep=True, as in `run`
        assert containers_of_lease(engine, worker.lease) == mine, "a sweep touched a live worker's container"
        # Nor does prune take the stopped one for a leftover, whatever the grace period (leftovers
        # are judged only while no build runs: wait for the gate).
        gate = BuildGate(settings.state_dir)
        deadline = time.monotonic() + 60
        while not gate.idle() and time.monotonic() < deadline:
            time.sleep(0.2)
        report = prune(settings, engine, PrunePolicy(dry_run=True, leftover_grace=timedelta(0)))
        assert created not in {i.id for i in report.removed}, report
        assert any(i.id == created and "owner is alive" in i.reason for i in report.kept), report

        worker.kill()
        swept = sweep_until_gone(settings, engine, created)
        assert created in swept, swept  # provably dead now: its lock is free
        deadline = time.monotonic() + 10
        while containers_of_lease(engine, worker.lease) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert containers_of_lease(engine, worker.lease) == {}
        # Its lease goes with its last container.
        assert not (ownership.owners_dir(settings.state_dir) / f"{worker.lease}.lock").exists()
    finally:
        worker.kill()
        for container_id in containers_of_lease(engine, worker.lease):
            engine.remove_container(container_id, attempts=3)


def wait_until_dead(settings, lease: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ownership.dead_owner(settings.state_dir, lease) as dead:
            if dead:
                return
        time.sleep(0.1)
    raise AssertionError(f"lease {lease} still held")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_worker_in_another_pid_namespace_keeps_its_containers_until_it_dies(settings, engine):
    """A real worker in its own PID namespace (as in a container with host networking): the same
    host name, and it is pid 1 there, a pid that is alive here whether or not it is."""
    worker = Worker(settings, PACKS, prefix=("unshare", "--pid", "--fork", "--kill-child"))
    try:
        created = worker.ask(do="create", pack="probe")["container"]
        assert worker.ask(do="prewarm", pack="probe")["started"] == 1
        mine = containers_of_lease(engine, worker.lease)
        labels = engine.inspect_container(created).labels
        assert labels[L.OWNER] == f"{socket.gethostname()}:1"  # its pid, in its namespace
        assert sorted(mine.values()) == ["created", "running"]

        ActionRunner(PACKS, ContainerDependencyManager(settings, engine))  # sweeps as it starts
        assert containers_of_lease(engine, worker.lease) == mine

        worker.kill()  # unshare dies, and with it (--kill-child) the worker
        wait_until_dead(settings, worker.lease)
        swept = sweep_until_gone(settings, engine, created)
        assert created in swept, swept
        deadline = time.monotonic() + 10
        while containers_of_lease(engine, worker.lease) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert containers_of_lease(engine, worker.lease) == {}
    finally:
        worker.kill()
        for container_id in containers_of_lease(engine, worker.lease):
            engine.remove_container(container_id, attempts=3)


def test_ownership_is_the_lease_never_the_host_and_pid(settings, engine, made):
    """A worker in another PID namespace with the same host name (host networking) labels its
    containers host:pid with pids that mean nothing here: neither a dead nor a live local pid
    may decide what a sweep removes."""
    host = socket.gethostname()
    other_namespace = Worker(settings, PACKS)  # alive; its container claims a pid dead here
    try:
        alive_elsewhere = labelled_container(engine, settings, {L.OWNER: f"{host}:{dead_pid()}", L.LEASE: other_namespace.lease})
        made.append(alive_elsewhere)
        # Dead owner, but the host:pid label names a live local process (this one).
        dead_here = labelled_container(
            engine, settings, {L.OWNER: f"{host}:{os.getpid()}", L.LEASE: lease_of_a_killed_process(settings)}
        )
        made.append(dead_here)
        # Left by an older version (host:pid only, the pid dead here): nothing proves its owner dead.
        legacy = labelled_container(engine, settings, {L.OWNER: f"{host}:{dead_pid()}"})
        made.append(legacy)
        # A lease id that is not one (a path out of the owners directory), and one unknown here
        # (another state directory: another configuration, another host on this engine).
        hostile = labelled_container(engine, settings, {L.LEASE: "../../../../tmp/x"})
        unknown = labelled_container(engine, settings, {L.LEASE: "0" * 32})
        made.extend([hostile, unknown])

        swept = sweeper(settings, engine).sweep_leftovers()

        assert dead_here in swept and engine.inspect_container(dead_here) is None
        for kept in (alive_elsewhere, legacy, hostile, unknown):
            assert kept not in swept
            kept_record = engine.inspect_container(kept)
            assert kept_record is not None and kept_record.status == "created"
    finally:
        other_namespace.stop()


def test_many_concurrent_cli_runs_all_succeed(settings, engine):
    """Every `run` sweeps as it starts; none may remove another's container (it is `created`
    between create and start, and running after)."""
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": settings.image_prefix,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
    }
    command = [str(CLI), "run", "probe.sleep", "--packs-dir", str(PACKS), "--json"]
    first = subprocess.run([*command, "--params", '{"seconds": 0}'], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr  # the image exists before the crowd arrives
    failures = []
    for round_ in range(3):
        processes = [
            subprocess.Popen(
                [*command, "--params", '{"seconds": 1}'], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(8)
        ]
        for n, process in enumerate(processes):
            out, err = process.communicate(timeout=180)
            status = json.loads(out)["status"] if out.strip().startswith("{") else None
            if process.returncode != 0 or status != "succeeded":
                failures.append(f"round {round_} run {n}: exit {process.returncode}, {status}: {out[-500:]} {err[-500:]}")
    assert failures == []
    # Each exited cleanly: no lease of theirs is left behind, nor any container.
    leases = [p for p in ownership.owners_dir(settings.state_dir).glob("*.lock") if p.stem != ownership.process_id()]
    assert all(not containers_of_lease(engine, p.stem) for p in leases)


# -- the pruner -----------------------------------------------------------------------------------


def pack_tree(root: Path, pack_ref: str, python: str) -> Path:
    """A packs tree with ``pack_ref`` pinned to one Python: the same ref, another spec."""
    folder = root / pack_ref
    (folder / "actions").mkdir(parents=True)
    (folder / "pack.yaml").write_text(
        yaml.safe_dump(
            {
                "ref": pack_ref,
                "version": "1.0.0",
                "meta": {"python_dependencies": {"dependencies": [], "min_version": python, "max_version": python}},
            }
        )
    )
    for name in ("echo.py", "echo.yaml"):
        shutil.copy(PACKS / "probe" / "actions" / name, folder / "actions" / name)
    return root


def test_an_image_a_live_worker_uses_is_never_pruned(settings, engine, tmp_path):
    """Two workers serve one pack ref from two packs trees: the "current" record flips to the
    last one; `prune --keep 1` still never removes the image the other live worker uses."""
    pack_ref = unique_ref("own")
    tree_a = pack_tree(tmp_path / "a", pack_ref, "3.13")
    tree_b = pack_tree(tmp_path / "b", pack_ref, "3.11")
    cold = settings.model_copy(update={"pool": DEFAULT_POOL.merged(PoolSettings(reuse=False))})
    manager = ContainerDependencyManager(cold, engine)
    policy = PrunePolicy(keep=1, pack=pack_ref, leftovers=False)

    worker_a = Worker(settings, tree_a)
    try:
        first = worker_a.ask(do="run", action=f"{pack_ref}.echo", parameters={"n": 1})
        assert first["status"] == "succeeded", first
        image_a = first["image"]
        id_a = engine.inspect_image(image_a).id

        runner_b = ActionRunner(tree_b, manager)
        second = runner_b.run(f"{pack_ref}.echo", {"n": 2})
        assert second.status.value == "succeeded", second.error
        image_b = second.image
        assert image_b != image_a
        assert manager.current_images()[pack_ref] >= {image_b}  # B wrote the pack's record last

        report = prune(settings, engine, policy)
        assert engine.inspect_image(image_a) is not None, report
        assert image_a not in {i.reference for i in report.removed}
        assert any(i.reference == image_a and "live worker" in i.reason for i in report.skipped), report
        assert engine.inspect_image(image_b) is not None

        again = worker_a.ask(do="run", action=f"{pack_ref}.echo", parameters={"n": 3})
        assert again["status"] == "succeeded" and again["image"] == image_a, again
        assert engine.inspect_image(image_a).id == id_a  # the same image, not a rebuild

        # Closed, A uses nothing: its image is an old one like any other.
        assert worker_a.ask(do="close") == {"closed": True}
        report = prune(settings, engine, policy)
        assert image_a in {i.reference for i in report.removed}, report
        assert engine.inspect_image(image_a) is None

        # The same in one process: B's image is protected while B lives (even against
        # include_current), prunable once B has closed.
        everything = PrunePolicy(keep=0, pack=pack_ref, leftovers=False, include_current=True)
        report = prune(settings, engine, everything)
        assert engine.inspect_image(image_b) is not None, report
        runner_b.close()
        report = prune(settings, engine, everything)
        assert engine.inspect_image(image_b) is None, report
    finally:
        worker_a.kill()


def test_a_dead_workers_images_are_not_protected(settings, engine, tmp_path):
    """A lease whose owner was killed protects nothing: the pruner ignores it, a sweep deletes it."""
    pack_ref = unique_ref("own")
    tree = pack_tree(tmp_path / "a", pack_ref, "3.13")
    worker = Worker(settings, tree)
    try:
        ran = worker.ask(do="run", action=f"{pack_ref}.echo", parameters={})
        assert ran["status"] == "succeeded", ran
        assert ran["image"] in ownership.live_images(settings.state_dir)
    finally:
        worker.kill()
    assert ran["image"] not in ownership.live_images(settings.state_dir)
    lease = ownership.owners_dir(settings.state_dir) / f"{worker.lease}.lock"
    assert lease.exists()  # killed: nothing deleted it...
    sweeper(settings, engine).sweep_leftovers()
    assert not lease.exists()  # ...until a sweep proved it dead
    policy = PrunePolicy(keep=0, pack=pack_ref, leftovers=False, include_current=True)
    report = prune(settings, engine, policy)
    assert ran["image"] in {i.reference for i in report.removed}, report
