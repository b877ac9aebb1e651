"""CI pre-building, the shared wheel cache, offline builds, lock files and a real registry."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import AttuneContainersError, BuildError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.prebuild import build_all

from ..support import TEST_PREFIX, images_of, unique_ref


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry (the reference registry) on loopback, for this module only."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=open(root / "registry.log", "wb")
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the registry did not start: " + (root / "registry.log").read_text())
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def write_pack(root: Path, pack_ref: str, python_dependencies) -> Path:
    folder = root / pack_ref
    folder.mkdir(parents=True)
    (folder / "pack.yaml").write_text(yaml.safe_dump({"ref": pack_ref, "meta": {"python_dependencies": python_dependencies}}))
    return folder


@pytest.fixture
def own_cache(settings, tmp_path):
    """Settings with a wheel cache of this test's own, so what it downloads is its own doing."""
    return settings.model_copy(update={"cache_dir": tmp_path / "cache"})


def test_build_all_builds_each_once_reports_failures_and_reuses(own_cache, engine, tmp_path):
    manager = ContainerDependencyManager(own_cache, engine)
    tree = tmp_path / "packs"
    good_a, good_b = unique_ref("all.a"), unique_ref("all.b")
    write_pack(tree, good_a, {"dependencies": ["six==1.16.0"], "max_version": "3.11"})
    write_pack(tree, good_b, {"dependencies": ["six==1.17.0", "idna==3.7"], "min_version": "3.12"})
    write_pack(tree, unique_ref("all.bad"), ["requests\nRUN evil"])
    write_pack(tree, unique_ref("all.fail"), ["attune-containers-no-such-dist-xyz==1.0"])
    (tree / "not-a-pack").mkdir()

    first = build_all(manager, tree, jobs=2)
    outcomes = {p.pack_ref: p.outcome for p in first.packs}
    assert outcomes[good_a] == "built" and outcomes[good_b] == "built"
    assert sorted(o for r, o in outcomes.items() if r not in (good_a, good_b)) == ["failed", "invalid", "invalid"]
    assert not first.ok
    failed = next(p for p in first.packs if p.outcome == "failed")
    assert "no-such-dist" in failed.error
    for ref in (good_a, good_b):
        assert len(images_of(engine, ref)) == 1

    second = build_all(ContainerDependencyManager(own_cache, engine), tree, jobs=2)
    assert {p.pack_ref: p.outcome for p in second.packs if p.pack_ref in (good_a, good_b)} == {good_a: "reused", good_b: "reused"}
    for ref in (good_a, good_b):
        assert len(images_of(engine, ref)) == 1


def test_cli_build_all_json_and_exit_code(tmp_path, settings):
    tree = tmp_path / "packs"
    ok_ref = unique_ref("cli.ok")
    write_pack(tree, ok_ref, {"dependencies": [], "min_version": "3.13"})
    env = {
        **os.environ,
        "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
        "ATTUNE__CONTAINERS__STATE_DIR": str(settings.state_dir),
    }
    result = subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", "build", "--all", str(tree), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(p["pack_ref"], p["outcome"]) for p in report["packs"]] == [(ok_ref, "built")]
    write_pack(tree, unique_ref("cli.bad"), {"min_version": "3.99"})
    result = subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", "build", "--all", str(tree), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 1
    outcomes = sorted(p["outcome"] for p in json.loads(result.stdout)["packs"])
    assert outcomes == ["invalid", "reused"]


def test_overlapping_packs_share_downloads(own_cache, engine):
    manager = ContainerDependencyManager(own_cache, engine)
    logs_a: list[str] = []
    logs_b: list[str] = []
    manager.ensure_environment(
        unique_ref("share.a"), DependencySpec(dependencies=["six==1.16.0", "idna==3.7"]), on_log=logs_a.append
    )
    assert any(line.startswith("fetch: downloaded six-1.16.0") for line in logs_a), logs_a
    manager.ensure_environment(
        unique_ref("share.b"), DependencySpec(dependencies=["six==1.16.0", "attrs==23.2.0"]), on_log=logs_b.append
    )
    assert any(line.startswith("fetch: cached six-1.16.0") for line in logs_b), logs_b
    assert not any(line.startswith("fetch: downloaded six") for line in logs_b), logs_b
    assert any(line.startswith("fetch: downloaded attrs-23.2.0") for line in logs_b), logs_b


def test_cached_dependencies_build_with_networking_off(own_cache, engine):
    online = ContainerDependencyManager(own_cache, engine)
    online.ensure_environment(unique_ref("warm"), DependencySpec(dependencies=["six==1.16.0"], max_version="3.11"))
    offline = ContainerDependencyManager(own_cache.model_copy(update={"offline": True}), engine)
    info = offline.ensure_environment(unique_ref("offline"), DependencySpec(dependencies=["six==1.16.0"], max_version="3.11"))
    assert "six==1.16.0" in info.installed_dependencies
    pack_ref = unique_ref("offline.missing")
    with pytest.raises(BuildError, match="offline"):
        offline.ensure_environment(pack_ref, DependencySpec(dependencies=["six==1.16.0", "idna==3.6"], max_version="3.11"))
    assert images_of(engine, pack_ref) == []


def test_the_cache_is_bounded_and_prunable(own_cache, engine):
    from attune_containers.services.wheels import WheelCache

    manager = ContainerDependencyManager(own_cache, engine)
    manager.ensure_environment(unique_ref("bound"), DependencySpec(dependencies=["six==1.16.0", "idna==3.7"]))
    cache = WheelCache(own_cache, engine)
    before = cache.stats()
    assert before.files >= 2 and before.bytes > 0
    removed = cache.prune(max_bytes=before.bytes // 2)
    after = cache.stats()
    assert removed and after.bytes <= before.bytes // 2
    cache.prune(0)
    assert cache.stats().files == 0


def test_lock_records_exact_distributions_and_rebuilds_the_same_content(own_cache, engine):
    manager = ContainerDependencyManager(own_cache, engine)
    info = manager.ensure_environment(unique_ref("lock"), DependencySpec(dependencies=["requests==2.31.0"], max_version="3.11"))
    attrs = engine.inspect_image(info.id)
    lock = json.loads(attrs.labels[L.LOCK])
    by_name = {d["name"]: d for d in lock}
    assert by_name["requests"]["version"] == "2.31.0"
    assert {"requests", "urllib3", "idna", "certifi", "charset-normalizer"} <= set(by_name)
    assert all(len(d["sha256"]) == 64 for d in lock)
    lines = manager.lock_lines(info)
    rebuilt = manager.ensure_environment(
        unique_ref("relock"), DependencySpec(requirements_file_content="\n".join(lines), max_version="3.11")
    )
    strip = lambda deps: sorted(d for d in deps if not d.startswith(("pip==", "setuptools==")))  # noqa: E731
    assert strip(rebuilt.installed_dependencies) == strip(info.installed_dependencies)


def test_uv_installer_builds_an_equivalent_image(own_cache, engine):
    pip_manager = ContainerDependencyManager(own_cache, engine)
    uv_manager = ContainerDependencyManager(own_cache.model_copy(update={"installer": "uv"}), engine)
    spec = DependencySpec(dependencies=["six==1.17.0", "idna==3.7"], min_version="3.13")
    by_pip = pip_manager.ensure_environment(unique_ref("pip"), spec)
    by_uv = uv_manager.ensure_environment(unique_ref("uv"), spec)
    assert by_pip.dependency_hash != by_uv.dependency_hash
    assert {"six==1.17.0", "idna==3.7"} <= set(by_uv.installed_dependencies)
    assert not any(d.startswith("pip==") for d in by_uv.installed_dependencies)
    code, output = engine.run_once(by_uv.image, [by_uv.executable_path, "-c", "import six, idna; print(six.__version__)"])
    assert (code, output.strip()) == (0, "1.17.0")


def test_pushed_images_are_pulled_not_built(own_cache, engine, registry, tmp_path):
    with_registry = own_cache.model_copy(update={"registry": registry})
    tree = tmp_path / "packs"
    pack_ref = unique_ref("reg")
    write_pack(tree, pack_ref, {"dependencies": ["six==1.16.0"], "max_version": "3.11"})
    manifest = tmp_path / "trusted.json"
    report = build_all(ContainerDependencyManager(with_registry, engine), tree, push=True, manifest=manifest)
    (entry,) = report.packs
    assert entry.outcome == "built" and entry.pushed == f"{registry}/{entry.image}"
    assert entry.digest and entry.pushed_by_digest.endswith("@" + entry.digest)

    # A second engine state: the local images gone, as on a fresh worker host.
    for summary in images_of(engine, pack_ref):
        engine.remove_image(summary.id, force=True)
    builds: list[str] = []
    # The worker trusts what CI's manifest names (by digest), not the tag.
    worker = ContainerDependencyManager(
        with_registry.model_copy(update={"allow_build": False, "trusted_manifest": manifest}), engine
    )
    ensured = worker.ensure(pack_ref, DependencySpec(dependencies=["six==1.16.0"], max_version="3.11"), on_log=builds.append)
    assert ensured.outcome == "pulled" and builds == []
    assert ensured.info.image == entry.image
    assert engine.inspect_image(entry.image).labels[L.PACK_REF] == pack_ref

    again = build_all(ContainerDependencyManager(with_registry, engine), tree, push=True)
    assert again.packs[0].outcome == "reused"


def test_a_worker_forbidden_to_build_fails_clearly(own_cache, engine, registry):
    worker = ContainerDependencyManager(own_cache.model_copy(update={"registry": registry, "allow_build": False}), engine)
    pack_ref = unique_ref("nobuild")
    with pytest.raises(AttuneContainersError, match="building is not allowed"):
        worker.ensure_environment(pack_ref, DependencySpec(dependencies=["six==1.16.0"], min_version="3.13"))
    assert images_of(engine, pack_ref) == []
