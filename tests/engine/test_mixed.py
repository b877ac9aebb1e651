"""A pack with a Python action and a Node.js action (issue 13), against the real engine: one image
per runtime in the pack's repository, built, listed, inspected and run through the CLI; keep-N
per (pack, runtime) keeps both current images; warm containers of both runtimes side by side;
CI pushes both images and a worker that may not build pulls both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from attune_containers.core import labels as L
from attune_containers.core.execution import ExecutionStatus
from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.prebuild import build_all
from attune_containers.services.runner import ActionRunner, owner_id

from ..support import images_of, unique_ref
from .test_cli import cli
from .test_prebuild import registry  # noqa: F401 - the module's registry fixture, reused here

MIXED = Path(__file__).resolve().parent.parent / "packs" / "mixed"


def mixed_tree(root: Path, python_dependencies: list[str] | None = None, nodejs_dependencies: list[str] | None = None):
    """tests/packs/mixed under a ref of its own (so no other test shares its images)."""
    pack_ref = unique_ref("mixed")
    shutil.copytree(MIXED, root / pack_ref)
    set_dependencies(root / pack_ref, pack_ref, python_dependencies, nodejs_dependencies)
    return pack_ref, root / pack_ref


def set_dependencies(folder: Path, pack_ref: str, python_dependencies=None, nodejs_dependencies=None) -> None:
    document = yaml.safe_load((MIXED / "pack.yaml").read_text())
    document["ref"] = pack_ref
    if python_dependencies is not None:
        document["meta"]["python_dependencies"] = python_dependencies
    if nodejs_dependencies is not None:
        document["meta"]["nodejs_dependencies"] = nodejs_dependencies
    (folder / "pack.yaml").write_text(yaml.safe_dump(document))


def test_a_mixed_pack_builds_lists_inspects_runs_and_prunes_per_runtime_through_the_cli(tmp_path, engine):
    tree = tmp_path / "packs"
    pack_ref, folder = mixed_tree(tree)
    state = tmp_path / "state"
    try:
        built = cli("build", str(folder), "--json", state_dir=state)
        assert built.returncode == 0, built.stderr
        py, js = json.loads(built.stdout)  # one document per runtime, Python first
        assert (py["runtime"], js["runtime"]) == ("python", "nodejs")
        assert py["outcome"] == js["outcome"] == "built"
        assert "six==1.17.0" in py["installed_dependencies"] and js["installed_dependencies"] == ["lodash@4.17.21"]
        # One repository, a tag per runtime's own hash.
        assert py["image"].rsplit(":", 1)[0] == js["image"].rsplit(":", 1)[0] and py["image"] != js["image"]
        assert {engine.inspect_image(i["image"]).labels[L.RUNTIME] for i in (py, js)} == {"python", "nodejs"}

        listed = json.loads(cli("ls", "--pack", pack_ref, "--json", state_dir=state).stdout)
        assert {(e["runtime"], e["image"], e["current"]) for e in listed} == {
            (py["runtime"], py["image"], True),
            (js["runtime"], js["image"], True),
        }
        table = cli("ls", "--pack", pack_ref, state_dir=state).stdout.splitlines()
        assert table[0].split("\t")[-1] == "runtime" and sorted(r.split("\t")[-1] for r in table[1:]) == ["nodejs", "python"]

        inspected = json.loads(cli("inspect", pack_ref, "--json", state_dir=state).stdout)
        assert [(i["runtime"], i["id"]) for i in inspected] == [("python", py["id"]), ("nodejs", js["id"])]
        node_only = json.loads(cli("inspect", pack_ref, "--runtime", "node", "--json", state_dir=state).stdout)
        assert node_only["id"] == js["id"]
        lock = cli("inspect", pack_ref, "--runtime", "nodejs", "--lock", state_dir=state)
        assert lock.returncode == 0 and lock.stdout.startswith("lodash@4.17.21 sha512-"), lock.stderr
        both_locks = cli("inspect", pack_ref, "--lock", state_dir=state)
        assert both_locks.returncode == 2 and "--runtime" in both_locks.stderr

        # Each action runs in its own runtime's image, importing its own dependency.
        ran_py = cli("run", f"{pack_ref}.six_version", "--packs-dir", str(tree), "--json", state_dir=state)
        ran_js = cli("run", f"{pack_ref}.lodash_version", "--packs-dir", str(tree), "--json", state_dir=state)
        assert ran_py.returncode == 0 and ran_js.returncode == 0, (ran_py.stdout[-800:], ran_js.stdout[-800:])
        result_py, result_js = json.loads(ran_py.stdout), json.loads(ran_js.stdout)
        assert result_py["image"] == py["image"] and result_py["result"]["six"] == "1.17.0"
        assert result_py["result"]["has_node"] is False
        assert result_js["image"] == js["image"] and result_js["result"]["lodash"] == "4.17.21"
        assert result_js["result"]["has_venv"] is False

        # New pins for both runtimes: a second image of each, both current now.
        set_dependencies(folder, pack_ref, ["six==1.16.0"], ["lodash@4.17.20"])
        second = cli("build", str(folder), "--json", state_dir=state)
        assert second.returncode == 0, second.stderr
        py2, js2 = json.loads(second.stdout)
        # Back to the first Python pins only: its first image is Python's current again (reused),
        # and Node's current stays its second image, which a per-pack record would have lost.
        set_dependencies(folder, pack_ref, ["six==1.17.0"], ["lodash@4.17.20"])
        third = cli("build", str(folder), "--runtime", "python", "--json", state_dir=state)
        assert third.returncode == 0 and json.loads(third.stdout)["outcome"] == "reused", third.stderr
        assert len(images_of(engine, pack_ref)) == 4

        pruned = cli("prune", "--keep", "1", "--pack", pack_ref, "--json", state_dir=state)
        assert pruned.returncode == 0, pruned.stderr
        report = json.loads(pruned.stdout)
        assert {i["reference"] for i in report["removed"] if i["kind"] == "image"} == {py2["image"], js["image"]}
        reasons = {i["reference"]: i["reason"] for i in report["kept"]}
        assert reasons == {py["image"]: "current image of its pack", js2["image"]: "current image of its pack's nodejs images"}
        assert {s.id for s in images_of(engine, pack_ref)} == {py["id"], js2["id"]}
        again = cli("run", f"{pack_ref}.lodash_version", "--packs-dir", str(tree), "--json", state_dir=state)
        assert json.loads(again.stdout)["result"]["lodash"] == "4.17.20", again.stdout[-800:]
    finally:
        cli("rm", pack_ref, state_dir=state)
    assert images_of(engine, pack_ref) == []


def test_warm_containers_of_both_runtimes_of_one_pack_live_side_by_side(settings, engine, tmp_path):
    tree = tmp_path / "packs"
    pack_ref, _ = mixed_tree(tree)
    pool = DEFAULT_POOL.merged(PoolSettings(reuse=True))
    runner = ActionRunner(tree, ContainerDependencyManager(settings.model_copy(update={"pool": pool}), engine))
    try:
        first_py = runner.run(f"{pack_ref}.six_version", warm=True)
        first_js = runner.run(f"{pack_ref}.lodash_version", warm=True)
        again_py = runner.run(f"{pack_ref}.six_version", warm=True)
        again_js = runner.run(f"{pack_ref}.lodash_version", warm=True)
        for result in (first_py, first_js, again_py, again_js):
            assert result.status is ExecutionStatus.succeeded and result.warm, (result.error, result.stderr[-500:])
        assert again_py.result == first_py.result and again_js.result["lodash"] == "4.17.21"
        # One pool per image: each runtime's container served its own second run.
        pools = [p for p in runner.pool_stats() if p["pack_ref"] == pack_ref]
        assert sorted(p["image"] for p in pools) == sorted({first_py.image_id, first_js.image_id})
        assert all(p["created"] == 1 and p["idle"] == 1 for p in pools)
        running = engine.list_containers({L.RUN: "true", L.POOL: "true", L.OWNER: owner_id(), L.PACK_REF: pack_ref})
        assert len(running) == 2
        # Prewarming a mixed pack fills both pools.
        assert runner.prewarm(pack_ref, 2) == 2
        assert sorted(p["idle"] for p in runner.pool_stats() if p["pack_ref"] == pack_ref) == [2, 2]
    finally:
        runner.close()
        runner.manager.remove_environment(pack_ref)


def test_ci_pushes_both_images_and_a_worker_that_may_not_build_pulls_both(settings, engine, registry, tmp_path):  # noqa: F811
    with_registry = settings.model_copy(update={"registry": registry})
    tree = tmp_path / "packs"
    pack_ref, _ = mixed_tree(tree)
    manifest = tmp_path / "trusted.json"
    try:
        report = build_all(ContainerDependencyManager(with_registry, engine), tree, push=True, manifest=manifest)
        assert [(p.runtime, p.outcome) for p in report.packs] == [("python", "built"), ("nodejs", "built")], report
        written = json.loads(manifest.read_text())
        assert written["packs"][pack_ref]["runtime"] == "python"
        assert [i["runtime"] for i in written["other_runtimes"][pack_ref]] == ["nodejs"]
        for summary in images_of(engine, pack_ref):  # a fresh worker host
            engine.remove_image(summary.id, force=True)
        worker = with_registry.model_copy(update={"allow_build": False, "trusted_manifest": manifest})
        runner = ActionRunner(tree, ContainerDependencyManager(worker, engine))
        try:
            infos = runner.ensure_pack_all(pack_ref)
            assert [(i.runtime, i.image) for i in infos] == [(p.runtime, p.image) for p in report.packs]
            assert {i.id for i in infos} == {p.image_id for p in report.packs}  # the digests CI pushed
            ran = runner.run(f"{pack_ref}.lodash_version", warm=False)
            assert ran.status is ExecutionStatus.succeeded and ran.result["lodash"] == "4.17.21", ran.error
        finally:
            runner.close()
    finally:
        for summary in images_of(engine, pack_ref):
            engine.remove_image(summary.id, force=True)


@pytest.fixture(autouse=True)
def _no_leftover_warm_containers(engine):
    yield
    assert engine.list_containers({L.RUN: "true", L.POOL: "true", L.OWNER: owner_id()}) == []
