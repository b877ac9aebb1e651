"""Many hosts: CI on engine A builds once and pushes to a registry with TLS and credentials; a worker
on engine B (another dockerd, tests/engine/hosts.py) pulls by digest and never builds.

Everything here is real: two engines, Debian's docker-registry behind a CA made for the test and
htpasswd basic auth, the CLI as an operator runs it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.engine import Engine
from attune_containers.errors import RegistryAuthError
from attune_containers.services.manager import ContainerDependencyManager, UntrustedImageError
from attune_containers.services.manifest import TrustManifest
from attune_containers.services.prebuild import build_all

from ..support import TEST_PREFIX, unique_ref
from .conftest import FLEET_BASE
from .hosts import free_port, start_registry

ACTION = """import importlib.metadata
import platform


def run(name="six"):
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"python": platform.python_version(), name: version}
"""


def write_pack(tree: Path, pack_ref: str, dependencies: list[str]) -> Path:
    folder = tree / pack_ref
    (folder / "actions").mkdir(parents=True, exist_ok=True)
    (folder / "pack.yaml").write_text(
        yaml.safe_dump({"ref": pack_ref, "meta": {"python_dependencies": {"dependencies": dependencies, "min_version": "3.13"}}})
    )
    (folder / "actions" / "probe.yaml").write_text(
        yaml.safe_dump({"name": "probe", "runner_type": "python", "entry_point": "probe.py", "timeout": 60})
    )
    (folder / "actions" / "probe.py").write_text(ACTION)
    return folder


def cli(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def base_env(tmp_path: Path, name: str) -> dict[str, str]:
    # The test run's configuration file stays (the base images); every other setting is the host's own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k == "ATTUNE__CONTAINERS__CONFIG" or not k.startswith(("ATTUNE__CONTAINERS__", "DOCKER_"))
    }
    env.update(
        {
            "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX,
            "ATTUNE__CONTAINERS__STATE_DIR": str(tmp_path / name / "state"),
            "ATTUNE__CONTAINERS__CACHE_DIR": str(tmp_path / name / "cache"),
        }
    )
    return env


def ci_env(tmp_path: Path, registry) -> dict[str, str]:
    """CI on engine A: credentials from the settings (a user and a password file)."""
    return {
        **base_env(tmp_path, "ci"),
        "ATTUNE__CONTAINERS__REGISTRY": registry.address,
        "ATTUNE__CONTAINERS__REGISTRY_USERNAME": registry.user,
        "ATTUNE__CONTAINERS__REGISTRY_PASSWORD_FILE": str(registry.password_file),
    }


def worker_env(tmp_path: Path, registry, second_engine, *, address: str | None = None) -> dict[str, str]:
    """A worker on engine B: credentials from its engine's `docker login` (DOCKER_CONFIG), may not build."""
    return {
        **base_env(tmp_path, "worker"),
        "DOCKER_HOST": second_engine.url,
        "DOCKER_CONFIG": str(registry.docker_config),
        "ATTUNE__CONTAINERS__REGISTRY": address or registry.address,
        "ATTUNE__CONTAINERS__ALLOW_BUILD": "false",
    }


def pulls(engine: Engine, since: float) -> list[str]:
    """The images engine pulled since ``since`` (the engine's own event log: nothing can hide one)."""
    events = engine.api.events(
        since=int(since), until=int(time.time()) + 1, decode=True, filters={"type": "image", "event": "pull"}
    )
    return [e.get("id") or e.get("Actor", {}).get("ID", "") for e in events]


def test_the_second_engine_is_another_host(engine, second_engine):
    a, b = engine.api.info(), second_engine.engine.api.info()
    assert a["DockerRootDir"] != b["DockerRootDir"] and b["DockerRootDir"].startswith(str(second_engine.root))
    on_b = {tag for image in second_engine.engine.list_images() for tag in image.tags}
    assert on_b == {FLEET_BASE}  # none of A's images: only the base it was given
    code, output = second_engine.engine.run_once(FLEET_BASE, ["python3", "-c", "print(6 * 7)"])
    assert (code, output.strip()) == (0, "42")


def test_credentials_from_settings_or_docker_login_and_the_password_is_nowhere(
    settings, engine, second_engine, secure_registry, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)
    pack_ref = unique_ref("auth")
    tree = tmp_path / "packs"
    write_pack(tree, pack_ref, ["six==1.16.0"])
    registry = secure_registry.address

    # No credentials at all: the push is refused, and says it is the credentials.
    anonymous = ContainerDependencyManager(settings.model_copy(update={"registry": registry}), engine)
    (refused,) = build_all(anonymous, tree, push=True).packs
    assert refused.outcome == "failed" and "refused the credentials" in refused.error, refused

    # CI: a user and a password file in the settings.
    ci = ContainerDependencyManager(
        settings.model_copy(
            update={
                "registry": registry,
                "registry_username": secure_registry.user,
                "registry_password_file": secure_registry.password_file,
            }
        ),
        engine,
    )
    manifest_path = tmp_path / "trusted.json"
    (entry,) = build_all(ci, tree, push=True, manifest=manifest_path).packs
    assert entry.outcome in ("built", "reused") and entry.digest, entry
    trusted = TrustManifest.load(manifest_path).packs[pack_ref]
    assert (trusted.runtime, trusted.runtime_version) == ("python", entry.python) and entry.python.startswith("3.13")

    # The worker on B: its engine's `docker login` (DOCKER_CONFIG), read when its client is made.
    monkeypatch.setenv("DOCKER_CONFIG", str(secure_registry.docker_config))
    b = Engine(base_url=second_engine.url)
    worker = ContainerDependencyManager(
        settings.model_copy(
            update={
                "registry": registry,
                "allow_build": False,
                "trusted_manifest": manifest_path,
                "state_dir": tmp_path / "worker",
            }
        ),
        b,
    )
    ensured = worker.ensure(pack_ref, DependencySpec(dependencies=["six==1.16.0"], min_version="3.13"))
    assert ensured.outcome == "pulled" and ensured.info.id == entry.image_id

    # Without the login the same pull is refused as a credentials problem, not taken for a missing image.
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json either
    b.remove_image(ensured.info.image, force=True)
    stranger = ContainerDependencyManager(
        worker.settings.model_copy(update={"state_dir": tmp_path / "w2"}), Engine(base_url=second_engine.url)
    )
    with pytest.raises(RegistryAuthError, match="refused the credentials") as raised:
        stranger.ensure(pack_ref, DependencySpec(dependencies=["six==1.16.0"], min_version="3.13"))
    assert raised.value.exit_code == 4

    # The password is in no log line, label, image configuration, history, report or manifest.
    secret = secure_registry.password
    assert caplog.records, "the test must have captured the log it checks"
    assert secret not in caplog.text and secret not in str(raised.value)
    for host, image_id in ((engine, entry.image_id), (b, entry.image_id)):
        if host.inspect_image(image_id) is None:
            continue
        assert secret not in json.dumps(host.api.inspect_image(image_id))
        assert secret not in json.dumps(host.api.history(image_id))
    assert secret not in manifest_path.read_text() and secret not in entry.model_dump_json()


def test_wrong_password_unknown_ca_and_unreachable_registry_each_have_their_exit_code(
    engine, second_engine, secure_registry, tmp_path
):
    pack_ref = unique_ref("fail")
    tree = tmp_path / "packs"
    write_pack(tree, pack_ref, [])
    manifest = tmp_path / "trusted.json"
    result = cli(
        "build",
        "--all",
        "--packs-dir",
        str(tree),
        "--push",
        "--manifest",
        str(manifest),
        "--json",
        env=ci_env(tmp_path, secure_registry),
    )
    assert result.returncode == 0, result.stderr + result.stdout

    # CI with a wrong password in its settings: refused before any build, exit 4.
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-" + pack_ref)
    result = cli(
        "build",
        "--all",
        "--packs-dir",
        str(tree),
        "--push",
        "--json",
        env={**ci_env(tmp_path, secure_registry), "ATTUNE__CONTAINERS__REGISTRY_PASSWORD_FILE": str(wrong)},
    )
    assert result.returncode == 4, result.stderr + result.stdout
    assert json.loads(result.stdout)["exit_code"] == 4 and "refused the credentials" in result.stderr
    assert wrong.read_text() not in result.stdout + result.stderr
    # A wrong `docker login` instead: each push is refused alike, and the exit code still says so.
    login = tmp_path / "wrong-login"
    login.mkdir()
    (login / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    secure_registry.address: {
                        "auth": base64.b64encode(f"{secure_registry.user}:{wrong.read_text()}".encode()).decode()
                    }
                }
            }
        )
    )
    env = {k: v for k, v in ci_env(tmp_path, secure_registry).items() if "REGISTRY_" not in k}
    result = cli("build", "--all", "--packs-dir", str(tree), "--push", "--json", env={**env, "DOCKER_CONFIG": str(login)})
    assert result.returncode == 4, result.stderr + result.stdout
    (failed,) = json.loads(result.stdout)["packs"]
    assert failed["error_type"] == "RegistryAuthError" and "refused the credentials" in failed["error"]
    assert wrong.read_text() not in result.stdout + result.stderr

    def worker_run(env: dict[str, str], manifest_file: Path) -> subprocess.CompletedProcess:
        return cli("run", f"{pack_ref}.probe", "--packs-dir", str(tree), "--manifest", str(manifest_file), env=env)

    # A wrong password (settings), on a worker that may not build: exit 4, never a build.
    env = {
        **worker_env(tmp_path, secure_registry, second_engine),
        "ATTUNE__CONTAINERS__REGISTRY_USERNAME": secure_registry.user,
        "ATTUNE__CONTAINERS__REGISTRY_PASSWORD_FILE": str(wrong),
    }
    result = worker_run(env, manifest)
    assert result.returncode == 4, result.stderr
    assert "refused the credentials" in result.stderr and wrong.read_text() not in result.stderr + result.stdout

    # The same registry on another port whose CA no engine trusts (no certs.d entry for it): exit 5.
    host = secure_registry.address.rsplit(":", 1)[0]
    server = Path(secure_registry.ca).parent
    untrusted = start_registry(tmp_path / "untrusted", host, tls=(server / "server.crt", server / "server.key"))
    try:
        moved = tmp_path / "moved.json"
        moved.write_text(manifest.read_text().replace(secure_registry.address, untrusted.address))
        result = worker_run(worker_env(tmp_path, secure_registry, second_engine, address=untrusted.address), moved)
        assert result.returncode == 5, result.stderr
        assert "certificate is not trusted" in result.stderr and "x509" in result.stderr
    finally:
        untrusted.stop()

    # Nothing listening: exit 6.
    nowhere = f"{host}:{free_port(host)}"
    gone = tmp_path / "gone.json"
    gone.write_text(manifest.read_text().replace(secure_registry.address, nowhere))
    result = worker_run(worker_env(tmp_path, secure_registry, second_engine, address=nowhere), gone)
    assert result.returncode == 6, result.stderr
    assert "does not answer" in result.stderr

    # None of them built anything on B.
    assert [i for i in second_engine.engine.list_images({L.PACK_REF: pack_ref})] == []


def test_ci_builds_once_workers_on_another_engine_pull_by_digest_and_never_build(
    engine, second_engine, secure_registry, tmp_path
):
    """The issue's scenario: A builds and pushes; B (allow_build=false) runs every pack, pulling each
    image once; a changed pack is rebuilt on A and pushed, B takes the new image on its next run,
    and the old one is then prunable on B."""
    tree = tmp_path / "packs"
    packs = {
        unique_ref("fleet.a"): [],
        unique_ref("fleet.b"): ["six==1.16.0"],
        unique_ref("fleet.c"): ["six==1.16.0", "idna==3.7"],
    }
    for pack_ref, dependencies in packs.items():
        write_pack(tree, pack_ref, dependencies)
    manifest = tmp_path / "trusted.json"
    ci = ci_env(tmp_path, secure_registry)
    result = cli(
        "build", "--all", "--packs-dir", str(tree), "--jobs", "2", "--push", "--manifest", str(manifest), "--json", env=ci
    )
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert {p["pack_ref"]: p["outcome"] for p in report["packs"]} == dict.fromkeys(packs, "built")
    # --json prints the manifest --manifest saved: by digest, with the dependency hash and runtime version.
    assert report["manifest"] == json.loads(manifest.read_text())
    first = TrustManifest.load(manifest)
    for p in report["packs"]:
        trusted = first.packs[p["pack_ref"]]
        assert trusted.reference == p["pushed_by_digest"] and trusted.image_id == p["image_id"]
        assert (trusted.dependency_hash, trusted.runtime_version) == (p["dependency_hash"], p["python"])

    worker = worker_env(tmp_path, secure_registry, second_engine)
    b = second_engine.engine

    def run_all(which) -> dict[str, dict]:
        results = {}
        for pack_ref in which:
            done = cli("run", f"{pack_ref}.probe", "--packs-dir", str(tree), "--manifest", str(manifest), "--json", env=worker)
            assert done.returncode == 0, done.stderr + done.stdout
            results[pack_ref] = json.loads(done.stdout)
        return results

    since = time.time() - 1
    firsts = run_all(packs)
    again = run_all(packs)
    pulled = pulls(b, since)
    # Each image pulled once, by the digest the manifest names; the second run pulled nothing.
    assert sorted(pulled) == sorted(first.packs[r].reference for r in packs), pulled
    for pack_ref, dependencies in packs.items():
        assert firsts[pack_ref]["status"] == "succeeded", firsts[pack_ref]
        assert firsts[pack_ref]["result"]["six"] == ("1.16.0" if dependencies else None)
        assert again[pack_ref]["image"] == firsts[pack_ref]["image"] == first.packs[pack_ref].image
    # Never built on B: every pack image there is exactly what CI built (same image ID).
    on_b = {i.id for i in b.list_images({L.MANAGED: "true"}) if i.labels.get(L.PACK_REF) in packs}
    assert on_b == {first.packs[r].image_id for r in packs}

    # A pack changes: CI rebuilds it (the others are reused), pushes, the manifest follows.
    changed = next(iter(packs.keys() - {r for r, d in packs.items() if not d}))
    write_pack(tree, changed, ["six==1.17.0"])
    result = cli("build", "--all", "--packs-dir", str(tree), "--push", "--manifest", str(manifest), "--json", env=ci)
    assert result.returncode == 0, result.stderr + result.stdout
    outcomes = {p["pack_ref"]: p["outcome"] for p in json.loads(result.stdout)["packs"]}
    assert outcomes == {r: "built" if r == changed else "reused" for r in packs}
    second = TrustManifest.load(manifest)
    assert second.packs[changed].image_id != first.packs[changed].image_id
    assert all(second.packs[r] == first.packs[r] for r in packs if r != changed)

    # B's next run of that pack takes the new image (one pull); the others pull nothing.
    since = time.time() - 1
    latest = run_all(packs)
    assert pulls(b, since) == [second.packs[changed].reference]
    assert latest[changed]["result"]["six"] == "1.17.0"
    assert latest[changed]["image"] == second.packs[changed].image

    # The old image is now prunable on B (not current), the new one and the others stay.
    assert b.inspect_image(first.packs[changed].image_id) is not None  # still there until pruned
    result = cli("prune", "--keep", "1", "--packs-dir", str(tree), "--no-leftovers", "--json", env=worker)
    assert result.returncode == 0, result.stderr + result.stdout
    remaining = {i.id for i in b.list_images({L.MANAGED: "true"}) if i.labels.get(L.PACK_REF) in packs}
    assert remaining == {second.packs[r].image_id for r in packs}
    assert first.packs[changed].image_id not in remaining


def test_a_pulled_image_whose_runtime_version_is_not_the_manifests_is_refused(
    settings, engine, second_engine, secure_registry, tmp_path
):
    pack_ref = unique_ref("rtv")
    tree = tmp_path / "packs"
    write_pack(tree, pack_ref, [])
    ci = ContainerDependencyManager(
        settings.model_copy(
            update={
                "registry": secure_registry.address,
                "registry_username": secure_registry.user,
                "registry_password_file": secure_registry.password_file,
            }
        ),
        engine,
    )
    manifest_path = tmp_path / "trusted.json"
    (entry,) = build_all(ci, tree, push=True, manifest=manifest_path).packs
    document = json.loads(manifest_path.read_text())
    assert document["packs"][pack_ref]["runtime_version"] == entry.python
    document["packs"][pack_ref]["runtime_version"] = "3.13.0"  # not what the image holds
    manifest_path.write_text(json.dumps(document))
    worker = ContainerDependencyManager(
        settings.model_copy(
            update={
                "registry": secure_registry.address,
                "registry_username": secure_registry.user,
                "registry_password_file": secure_registry.password_file,
                "allow_build": False,
                "trusted_manifest": manifest_path,
                "state_dir": tmp_path / "worker",
            }
        ),
        second_engine.engine,
    )
    with pytest.raises(UntrustedImageError, match=f"its runtime is python {entry.python}, the manifest says python 3.13.0"):
        worker.ensure(pack_ref, DependencySpec(dependencies=[], min_version="3.13"))
    assert second_engine.engine.list_images({L.PACK_REF: pack_ref}) == []  # nothing of it stays on B
