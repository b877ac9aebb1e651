"""Listing and pruning against the real engine: every policy, every safety rule, the engine's bytes.

The module builds on private base images (the local ones plus a label, tagged under this run's
prefix), so every build leftover it makes is recognisably its own: pruning leftovers here can never
touch another build on the host. Each test has its own image prefix and state directory.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
import yaml

from attune_containers import cli as attune_cli
from attune_containers.core import labels as L
from attune_containers.core.render import INTERPRETER
from attune_containers.core.spec import DependencySpec, EnvironmentInfo
from attune_containers.engine import Engine
from attune_containers.errors import AttuneContainersError, ImageInUseError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.pruner import PrunePolicy, Pruner, PruneReport
from attune_containers.services.usage import UsageLog
from attune_containers.settings import Settings

from ..support import RUN_ID, TEST_PREFIX, unique_ref

LOCAL_BASES = {"3.11": "attune-base/python:3.11", "3.13": "attune-base/python:3.13"}
SIX_OLD = DependencySpec(dependencies=["six==1.16.0"], max_version="3.11")
SIX_NEW = DependencySpec(dependencies=["six==1.17.0"], max_version="3.11")


def quick(n: int) -> DependencySpec:
    """A spec of its own hash that installs nothing (its marker is false), so it builds in seconds."""
    return DependencySpec(dependencies=[f"attune-prune-probe{n}==1.0; python_version < '3'"], min_version="3.13")


@pytest.fixture(scope="module")
def bases(engine: Engine):
    client = engine.client
    made = {}
    for minor, local in LOCAL_BASES.items():
        if engine.inspect_image(local) is None:
            pytest.fail(f"{local} is missing; `make test` bootstraps it")
        dockerfile = f"FROM {local}\nLABEL attune.test.run={RUN_ID}\n".encode()
        reference = f"{TEST_PREFIX}-base/python:{minor}"
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=reference, rm=True, pull=False)
        made[minor] = reference
    yield made
    purge_descendants(engine, [engine.inspect_image(r).id for r in made.values()])
    for reference in made.values():
        engine.remove_image(reference)


def purge_descendants(engine: Engine, base_ids: list[str]) -> None:
    """Remove every image built on these (private) bases, leaves first."""
    for _ in range(50):
        summaries = engine.list_images(intermediate=True)
        parent = {s.id: s.parent for s in summaries}
        children = {p for p in parent.values() if p}

        def on_base(image_id: str) -> bool:
            while image_id:
                image_id = parent.get(image_id)
                if image_id in base_ids:
                    return True
            return False

        leaves = [i for i in parent if i not in base_ids and i not in children and on_base(i)]
        if not leaves:
            return
        for image_id in leaves:
            for c in engine.find_containers(ancestor=image_id):
                engine.client.api.remove_container(c.id, force=True)
            try:
                engine.remove_image(image_id, force=True)
            except AttuneContainersError:
                pass


@dataclass
class Env:
    settings: Settings
    engine: Engine

    def manager(self) -> ContainerDependencyManager:
        return ContainerDependencyManager(self.settings, self.engine)

    def pruner(self) -> Pruner:
        # A fresh manager each time: what is current must come from the host, not this process.
        return Pruner(self.manager())

    def prune(self, **policy) -> PruneReport:
        policy.setdefault("leftovers", False)
        return self.pruner().prune(PrunePolicy(**policy))

    def exists(self, image: str) -> bool:
        return self.engine.inspect_image(image) is not None


@pytest.fixture
def env(bases, engine, tmp_path) -> Env:
    prefix = f"{TEST_PREFIX}/prune-{uuid.uuid4().hex[:6]}"
    # Set after construction: settings sources merge dictionaries, so base_images given as an
    # argument would keep the config file's other entries, and with them bases others build on.
    settings = Settings(image_prefix=prefix, state_dir=tmp_path / "state").model_copy(update={"base_images": bases})
    assert settings.base_images == bases
    return Env(settings, engine)


def ensure_in_order(manager: ContainerDependencyManager, pack_ref: str, specs) -> list[EnvironmentInfo]:
    """Build one image per spec, one after the other: each is newer than the one before."""
    infos = []
    for spec in specs:
        infos.append(manager.ensure_environment(pack_ref, spec))
        if len(infos) > 1 and infos[-1].created_at <= infos[-2].created_at:
            time.sleep(1.05 - time.time() % 1)  # creation times have second resolution
            manager.remove_environment(pack_ref)
            return ensure_in_order(manager, pack_ref, specs)
    return infos


def together(*calls: Callable[[], EnvironmentInfo]) -> list[EnvironmentInfo]:
    """Run builds whose order does not matter in parallel (a build mostly waits on its fetch step)."""
    results: dict[int, EnvironmentInfo | BaseException] = {}

    def run(n: int) -> None:
        try:
            results[n] = calls[n]()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test's thread
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
    return [results[n] for n in range(len(calls))]


def ensure_together(manager: ContainerDependencyManager, *wanted: tuple[str, DependencySpec]) -> list[EnvironmentInfo]:
    return together(*(lambda w=w: manager.ensure_environment(*w) for w in wanted))


def refs(items) -> set[str]:
    return {i.reference for i in items}


def images(items) -> list:
    """Pack images only: build leftovers on the shared test bases (another test's) are not the subject."""
    return [i for i in items if i.kind == "image"]


def reason(report: PruneReport, reference: str) -> str:
    for item in report.removed + report.kept + report.skipped:
        if item.reference == reference or item.id == reference:
            return item.reason
    raise AssertionError(f"{reference} is not in the report")


# -- each policy ---------------------------------------------------------------------------------


def test_keep_keeps_the_newest_and_the_current_image_unless_asked(env):
    manager = env.manager()
    pack = unique_ref("keep")
    i1, i2, i3 = ensure_in_order(manager, pack, [quick(1), quick(2), quick(3)])
    manager.ensure_environment(pack, quick(1))  # the oldest is current again
    report = env.prune(keep=2)
    assert refs(report.removed) == {i2.image}
    assert reason(report, i1.image) == "current image of its pack"
    assert reason(report, i3.image) == "among the newest 2 of its pack"
    assert reason(report, i2.image) == "beyond the newest 2 of its pack"
    assert env.exists(i1.image) and env.exists(i3.image) and not env.exists(i2.image)

    # The seed's cleanup() applies the same policy, and forgets what it removed.
    assert manager.cleanup(keep_recent=0) == [i3.image]
    assert env.exists(i1.image) and not env.exists(i3.image)
    assert manager.needs_update(pack, quick(3)) and not manager.needs_update(pack, quick(1))
    report = env.prune(keep=0, include_current=True)
    assert refs(report.removed) == {i1.image} and not env.exists(i1.image)


def test_orphans_broken_packs_and_current_images_by_the_packs_tree(env, tmp_path):
    manager = env.manager()
    here, broken, gone = unique_ref("here"), unique_ref("broken"), unique_ref("gone")
    tree = tmp_path / "packs"
    (tree / here).mkdir(parents=True)
    (tree / here / "pack.yaml").write_text(yaml.safe_dump({"ref": here, "meta": {"python_dependencies": quick(1).model_dump()}}))
    (tree / broken).mkdir()
    (tree / broken / "pack.yaml").write_text("ref: [this does not parse\n")
    by_tree, by_record, broken_image, gone_image = ensure_together(
        manager, (here, quick(1)), (here, quick(2)), (broken, quick(3)), (gone, quick(4))
    )
    manager.ensure_environment(here, quick(2))  # the host's record says quick(2); pack.yaml says quick(1)

    report = env.prune(orphans=True, packs_dir=tree)
    assert refs(report.removed) == {gone_image.image}
    assert reason(report, broken_image.image) == "its pack exists in the packs tree"
    assert not env.exists(gone_image.image)

    # With a packs tree, a pack's current image is what its pack.yaml resolves to now.
    listed = {e.image: e.current for e in env.pruner().images(here, packs_dir=tree)}
    assert listed == {by_tree.image: True, by_record.image: False}
    report = env.prune(keep=0, packs_dir=tree)
    assert refs(report.removed) == {by_record.image}
    assert reason(report, by_tree.image) == "current image of its pack"
    assert refs(report.skipped) == {broken_image.image}
    assert "does not load" in reason(report, broken_image.image)
    assert env.exists(by_tree.image) and env.exists(broken_image.image)


def test_older_than_counts_the_runners_last_use_alone_and_combined(env):
    manager = env.manager()
    a, b = unique_ref("a"), unique_ref("b")
    a1, a2, a3, b1, b2 = ensure_together(manager, (a, quick(1)), (a, quick(2)), (a, quick(3)), (b, quick(1)), (b, quick(2)))
    ensure_together(manager, (a, quick(3)), (b, quick(2)))  # a3 and b2 are current
    time.sleep(2)
    UsageLog(env.settings.state_dir).touch(a1.id)  # as the runner does on every run
    # Pack a only, beyond its newest 1 (the current a3) AND unused for 2 s: a1 was just used.
    report = env.prune(pack=a, keep=1, older_than=timedelta(seconds=2))
    assert refs(report.removed) == {a2.image}
    assert refs(report.kept) == {a1.image, a3.image}
    assert reason(report, a1.image).startswith("beyond") is False and "used within 2s" in reason(report, a1.image)
    assert all(i.pack_ref == a for i in report.removed + report.kept + report.skipped)
    assert env.exists(b1.image) and env.exists(a1.image) and not env.exists(a2.image)
    # Alone, across packs: b1 was never used; a1 was, and a3 and b2 are current. (a1 is used
    # again now: the prune above may itself have taken longer than the 2 s window.)
    UsageLog(env.settings.state_dir).touch(a1.id)
    report = env.prune(older_than=timedelta(seconds=2))
    assert refs(report.removed) == {b1.image}
    assert reason(report, a1.image).startswith("used within 2s")
    assert reason(report, b2.image).startswith("current image of its pack")
    assert reason(report, b1.image) == "not used or created within 2s"


# -- what protects an image ----------------------------------------------------------------------


def test_containers_and_locks_protect_an_image(env):
    manager = env.manager()
    old = manager.ensure_environment(unique_ref("inuse"), quick(1))
    # A user's container: it inherits the image's labels but has none of its own.
    container = env.engine.client.containers.run(
        old.image, [INTERPRETER, "-c", "import time; time.sleep(60)"], detach=True, network_mode="none"
    )
    try:
        policy = dict(keep=0, include_current=True, leftovers=True, leftover_grace=timedelta(0))
        report = env.prune(**policy)
        assert refs(images(report.skipped)) == {old.image}
        assert not refs(report.removed) & {old.image, container.name}
        assert f"{container.name} (running)" in reason(report, old.image)
        container.kill()
        container.wait(timeout=30)
        report = env.prune(**policy)
        assert refs(images(report.skipped)) == {old.image}
        assert f"{container.name} (exited)" in reason(report, old.image)
        assert env.exists(old.image)
        container.reload()  # not taken for a leftover of ours: it is only labelled by inheritance
        assert container.status == "exited"
        # Unforced removal is refused by the engine itself: what the pruner relies on in a race.
        with pytest.raises(ImageInUseError):
            env.engine.remove_image(old.id)
    finally:
        container.remove(force=True)
    with manager.image_lock(old.image):  # what a build of it, or the runner starting it, holds
        report = env.prune(keep=0, include_current=True)
        assert refs(images(report.skipped)) == {old.image} and reason(report, old.image).startswith("busy")
        assert env.exists(old.image)
    report = env.prune(keep=0, include_current=True)
    assert refs(report.removed) == {old.image} and not env.exists(old.image)


def test_images_of_other_prefixes_and_foreign_images_stay(env, bases, engine):
    pack = unique_ref("mine")
    other = Env(env.settings.model_copy(update={"image_prefix": env.settings.image_prefix + "-other"}), engine)
    # The same pack under another configuration's prefix.
    mine, theirs = together(
        lambda: env.manager().ensure_environment(pack, quick(1)), lambda: other.manager().ensure_environment(pack, quick(1))
    )
    base_id = engine.inspect_image(bases["3.13"]).id
    impostor = f"{env.settings.image_prefix}/impostor"
    engine.tag(base_id, impostor, "1")  # under our prefix, but not built by us: no labels
    # Someone's dangling image on our base image, carrying its inherited labels.
    dockerfile = f"FROM {bases['3.13']}\nRUN echo not-ours > /not-ours\n".encode()
    stranger = engine.client.images.build(fileobj=io.BytesIO(dockerfile), rm=True, pull=False)[0].id
    try:
        assert engine.inspect_image(stranger).labels[L.BASE_MARKER] == "true"  # looks like ours
        report = env.prune(keep=0, include_current=True, leftovers=True, leftover_grace=timedelta(0))
        assert refs(report.removed) >= {mine.image}
        assert theirs.image not in refs(report.removed + report.kept + report.skipped)
        assert env.exists(theirs.image) and env.exists(f"{impostor}:1")
        assert reason(report, stranger).endswith("not identifiably ours, left alone")
        assert env.exists(stranger)
    finally:
        engine.remove_image(f"{impostor}:1")
        engine.remove_image(stranger, force=True)


# -- build leftovers -----------------------------------------------------------------------------


def builder_stage_of(log: list[str]) -> str:
    """The builder stage's image ID, read from the build log: the last step before the second FROM."""
    froms = [n for n, line in enumerate(log) if re.match(r"Step \d+/\d+ : FROM ", line)]
    assert len(froms) >= 2, log  # builder stage, final stage (then the label build's own FROM)
    ids = [m.group(1) for line in log[: froms[1]] if (m := re.fullmatch(r" ---> ([0-9a-f]{12})", line.rstrip()))]
    return ids[-1]


def test_leftovers_of_ours_go_after_their_grace(env, engine, tmp_path):
    # Only the Dockerfile path leaves a builder stage (the one-container build leaves nothing): the
    # build falls back to it where uv cannot be had, as offline with an empty cache.
    manager = ContainerDependencyManager(
        env.settings.model_copy(update={"offline": True, "cache_dir": tmp_path / "cache"}), engine
    )
    log: list[str] = []
    info = manager.ensure_environment(unique_ref("leftover"), quick(1), on_log=log.append)
    stage = engine.inspect_image(builder_stage_of(log)).id
    assert stage in {s.id for s in engine.list_images(dangling=True)}
    # What a crash leaves: a helper container never started, a runner container that exited.
    helper = engine.client.containers.create(info.image, ["/nonexistent"], labels={L.HELPER: "read-file"})
    action = engine.client.containers.run(
        info.image, [INTERPRETER, "-c", "pass"], detach=True, network_mode="none", labels={L.EXECUTION_ID: uuid.uuid4().hex}
    )
    action.wait(timeout=30)
    try:
        young = env.prune(leftovers=True)  # the default grace period: an hour
        assert not young.removed
        assert {helper.name, action.name, stage} <= refs(young.kept) | {i.id for i in young.kept}
        assert "grace period" in reason(young, helper.name)

        report = env.prune(leftovers=True, leftover_grace=timedelta(0))
        removed = {(i.kind, i.reference if i.kind == "container" else i.id) for i in report.removed}
        assert {("container", helper.name), ("container", action.name), ("build-leftover", stage)} <= removed
        assert L.HELPER in reason(report, helper.name) and L.EXECUTION_ID in reason(report, action.name)
        assert "build stage on" in reason(report, stage)
        assert not env.exists(stage) and env.exists(info.image)
        assert engine.inspect_container(helper.id) is None and engine.inspect_container(action.id) is None
    finally:
        for c in (helper, action):
            if engine.inspect_container(c.id) is not None:
                c.remove(force=True)


# -- the bytes -----------------------------------------------------------------------------------


def test_reclaimed_bytes_are_the_engines_figure(env, engine):
    manager = env.manager()
    # Other builds on the host change the engine's totals too; a measurement they spoil is retried.
    for attempt in range(3):
        pack = unique_ref("bytes")
        old, _ = ensure_together(manager, (pack, SIX_OLD), (pack, SIX_NEW))
        manager.ensure_environment(pack, SIX_NEW)  # current
        before = engine.disk_usage()
        report = env.prune(pack=pack, keep=0)
        after = engine.disk_usage()
        assert refs(report.removed) == {old.image} and not env.exists(old.image)
        [item] = report.removed
        # Only the old image's own layers (its six 1.16 venv) go: what df said was unique to it.
        df_old = before.images[old.id]
        assert item.unique_bytes == df_old.size - df_old.shared_size > 0
        quiet = set(after.images) == set(before.images) - {old.id}
        if quiet and report.reclaimed_exact:
            break
    else:
        pytest.fail("the host never stayed quiet for the length of one prune")
    assert report.reclaimed_bytes == before.layers_size - after.layers_size == item.unique_bytes


# -- concurrency ---------------------------------------------------------------------------------


def test_prune_racing_a_build_leaves_the_build_intact(env, engine):
    pack = unique_ref("race")
    old = env.manager().ensure_environment(pack, quick(1))
    result: dict = {}

    def build():
        # Its builder stage comes from the layer cache: an old dangling image, exactly what the
        # leftover pass removes when no build runs.
        try:
            result["info"] = env.manager().ensure_environment(pack, quick(2))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=build)
    thread.start()
    aggressive = dict(keep=0, older_than=timedelta(0), leftovers=True, leftover_grace=timedelta(0))
    reports = []
    while thread.is_alive():
        reports.append(env.prune(**aggressive))
    thread.join()
    assert "error" not in result, result.get("error")
    info = result["info"]
    labels = engine.inspect_image(info.image).labels
    assert labels[L.PACK_REF] == pack and labels[L.DEPENDENCY_HASH] == info.dependency_hash
    assert engine.run_once(info.image, [INTERPRETER, "-c", "import sys; print(sys.prefix)"]) == (0, "/opt/attune/venv\n")
    assert len(reports) >= 2 and any("a build is running" in n for r in reports for n in r.notes)
    # Once built, the new image is current and stays; the old one goes.
    final = env.prune(**aggressive)
    assert env.exists(info.image) and reason(final, info.image) == "current image of its pack"
    assert not env.exists(old.image)


# -- the seed's API and the command line ---------------------------------------------------------


@pytest.fixture
def cli(env, monkeypatch, capsys):
    """The real command (``cli.main``) in this process, configured for ``env`` by a file of its own:
    environment variables would be merged with ./attune-containers.toml."""
    config = env.settings.state_dir.parent / "config.toml"
    config.write_text(
        "".join(
            f'{k} = "{v}"\n'
            for k, v in (
                ("image_prefix", env.settings.image_prefix),
                ("state_dir", env.settings.state_dir),
                ("ca_bundle", env.settings.ca_bundle or ""),
            )
            if v
        )
        + "[base_images]\n"
        + "".join(f'"{k}" = "{v}"\n' for k, v in env.settings.base_images.items())
    )
    for name in [n for n in os.environ if n.startswith("ATTUNE__CONTAINERS__")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ATTUNE__CONTAINERS__CONFIG", str(config))

    def run(*args: str) -> tuple[int, str, str]:
        code = attune_cli.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_ls_and_prune(env, cli, engine):
    manager = env.manager()
    pack = unique_ref("cli")
    old, new = ensure_together(manager, (pack, quick(1)), (pack, quick(2)))
    manager.ensure_environment(pack, quick(2))
    UsageLog(env.settings.state_dir).touch(old.id)  # as the runner does on every run
    code, out, err = cli("base", "ls", "--json")
    python_bases = {b["reference"] for b in json.loads(out) if b["runtime"] == "python"}
    assert python_bases == set(env.settings.base_images.values()), err

    code, out, err = cli("ls", "--pack", pack, "--json")
    assert code == 0, err
    entries = {e["image"]: e for e in json.loads(out)}
    assert {i: (e["current"], e["last_used"] is not None) for i, e in entries.items()} == {
        new.image: (True, False),
        old.image: (False, True),
    }
    assert entries[old.image]["size_bytes"] > 0 and entries[old.image]["dependency_hash"] == old.dependency_hash
    code, out, err = cli("ls", "--pack", pack)
    assert code == 0 and "last used" in out and old.image in out

    # A dry run removes nothing, and says what the real run then does.
    aggressive = ["--keep", "0", "--include-current", "--older-than", "0s", "--leftover-grace", "0s"]
    before = {s.id for s in engine.list_images(intermediate=True)}
    code, out, err = cli("prune", *aggressive, "--dry-run", "--json")
    assert code == 0, err
    dry = json.loads(out)
    assert dry["dry_run"] and dry["reclaimed_bytes"] == 0
    assert {i["reference"] for i in dry["removed"] if i["kind"] == "image"} == {old.image, new.image}
    assert {s.id for s in engine.list_images(intermediate=True)} >= before
    assert env.exists(old.image) and env.exists(new.image)
    code, out, err = cli("prune", *aggressive, "--dry-run")
    assert code == 0 and "would remove" in out and "dry run, nothing removed" in out

    code, out, err = cli("prune", "--pack", pack, "--keep", "0", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) >= {"removed", "kept", "skipped", "reclaimed_bytes"}
    assert [i["reference"] for i in report["removed"]] == [old.image]
    assert [i["reference"] for i in report["kept"]] == [new.image]
    assert not env.exists(old.image) and env.exists(new.image)
    code, out, err = cli("prune", *aggressive, "--json")
    real = json.loads(out)
    assert {(i["kind"], i["id"]) for i in real["removed"]} <= {(i["kind"], i["id"]) for i in dry["removed"]}
    assert {i["reference"] for i in real["removed"] if i["kind"] == "image"} == {new.image}

    code, out, err = cli("prune", "--orphans")
    assert code == 2 and "packs_dir" in err
