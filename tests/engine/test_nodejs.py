"""Node.js packs against the real engine, beyond the runtime contract (test_runtime_contract.py):
two packs pinning different versions of one library each get their own, a rebuild works offline
from the shared npm cache with the same hash, the lock label, and the final image's shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from attune_containers.core.execution import ExecutionStatus
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import BuildError
from attune_containers.services.runner import ActionRunner

from ..support import unique_ref

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "packs"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-packs")
    for name in ("old_lodash", "new_lodash"):
        shutil.copytree(EXAMPLES / name, root / name)
    return root


def test_two_packs_with_conflicting_pins_each_get_their_own_version(tree, manager):
    runner = ActionRunner(tree, manager)
    try:
        old = runner.run("old_lodash.versions", {"greeting": "hi"})
        new = runner.run("new_lodash.versions", {"greeting": "hi"}, {"token": "t"})
    finally:
        runner.close()
    assert old.status is ExecutionStatus.succeeded, (old.error, old.stderr[-500:])
    assert new.status is ExecutionStatus.succeeded, (new.error, new.stderr[-500:])
    assert old.result == {"greeting": "Hi", "node": old.result["node"], "lodash": "4.17.20"}
    assert old.result["node"].startswith("18.")
    assert new.result["lodash"] == "4.17.21" and new.result["node"].startswith("20.")
    assert new.result["node_is_20_or_later"] is True and new.result["has_token"] is True


def test_the_lock_label_pins_every_package_with_its_integrity(tree, manager):
    info = manager.ensure_environment(
        "old_lodash", DependencySpec(runtime="nodejs", dependencies=["lodash@4.17.20"], max_version="18")
    )
    assert info.runtime == "nodejs" and info.runtime_version.startswith("18.")
    assert info.installed_dependencies == ["lodash@4.17.20"]
    [line] = manager.lock_lines(info)
    assert line.startswith("lodash@4.17.20 sha512-")


def test_the_final_image_is_non_root_with_only_node_modules_and_no_npm_cache(manager):
    info = manager.ensure_environment(unique_ref("nodeshape"), DependencySpec(runtime="nodejs", dependencies=["lodash@4.17.21"]))
    code, output = manager.engine.run_once(
        info.image,
        [
            "/bin/sh",
            "-c",
            "id -u; echo --; ls -A /opt/attune; echo --; ls -A /opt/attune/node_modules; "
            "echo --; ls -d /tmp/.npm /attune-build 2>&1 | grep -c 'No such'",
        ],
    )
    assert code == 0, output
    uid, attune, modules, missing = (part.split() for part in output.split("--"))
    assert uid == ["65532"]
    # Only the pack's node_modules and what describes it: no npm cache, no tarballs, no build files.
    assert sorted(attune) == ["installed.json", "node_modules", "package-lock.json", "package.json"]
    assert "lodash" in modules and "attune_action" in modules
    assert missing == ["2"]


def test_a_rebuild_works_offline_from_the_cache_and_keeps_the_hash(manager):
    ref = unique_ref("nodeoffline")
    spec = DependencySpec(runtime="nodejs", dependencies=["lodash@4.17.21"])
    first = manager.ensure_environment(ref, spec)
    manager.remove_environment(ref)
    again = manager.ensure(ref, spec, offline=True).info
    assert again.dependency_hash == first.dependency_hash and again.installed_dependencies == ["lodash@4.17.21"]


def test_offline_without_the_packages_cached_fails_naming_why(manager):
    spec = DependencySpec(runtime="nodejs", dependencies=["is-number@7.0.0", "left-pad@1.3.0"])
    with pytest.raises(BuildError, match="offline"):
        manager.ensure(unique_ref("nodemiss"), spec, offline=True)


LOCK_4_17_20 = {
    "name": "locked",
    "version": "1.0.0",
    "lockfileVersion": 3,
    "requires": True,
    "packages": {
        "": {"name": "locked", "version": "1.0.0", "dependencies": {"lodash": "^4.17.0"}},
        "node_modules/lodash": {
            "version": "4.17.20",
            "resolved": "https://registry.npmjs.org/lodash/-/lodash-4.17.20.tgz",
            "integrity": "sha512-PlhdFcillOINfeV7Ni6oF1TAEayyZBoZ8bcshTHqOYJYlrqzRK5hagpagky5o4HfCzzd1TRkXPMFq6cKk9rGmA==",
        },
    },
}


def test_a_packs_own_package_json_and_lock_decide_what_is_installed(tmp_path, manager):
    import json

    ref = unique_ref("nodelocked")
    pack = tmp_path / ref
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(f"ref: {ref}\nversion: 1.0.0\n")
    # The range admits 4.17.21; the lock says 4.17.20. Its scripts never run (npm ci --ignore-scripts,
    # and the build writes its own package.json).
    (pack / "package.json").write_text(
        json.dumps({"name": "locked", "scripts": {"postinstall": "exit 1"}, "dependencies": {"lodash": "^4.17.0"}})
    )
    (pack / "package-lock.json").write_text(json.dumps(LOCK_4_17_20))
    (pack / "actions" / "v.yaml").write_text("name: v\nrunner_type: nodejs\nentry_point: v.js\n")
    (pack / "actions" / "v.js").write_text('exports.run = () => require("lodash").VERSION;\n')
    runner = ActionRunner(tmp_path, manager)
    try:
        result = runner.run(f"{ref}.v")
    finally:
        runner.close()
    assert result.status is ExecutionStatus.succeeded, (result.error, result.stderr[-500:])
    assert result.result == "4.17.20"


def test_a_node_base_without_python_fails_the_build_saying_why(settings, engine):
    import io
    import tarfile

    from attune_containers.services.manager import ContainerDependencyManager

    from ..support import TEST_PREFIX

    # Like the official node:<major>-slim images: node, but no python3 for the supervisor.
    dockerfile = b"FROM attune-base/node:18\nRUN rm -f /usr/bin/python3 /usr/bin/python3.*\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    base = f"{TEST_PREFIX}-base/nopython:18"
    engine.build(context.getvalue(), tag=base, network_mode="none")
    try:
        manager = ContainerDependencyManager(
            settings.model_copy(update={"runtime_base_images": {"nodejs": {"18": base}}}), engine
        )
        with pytest.raises(BuildError) as exc:
            manager.ensure_environment(unique_ref("nopython"), DependencySpec(runtime="nodejs"))
        assert "no /usr/bin/python3" in str(exc.value) + "\n".join(exc.value.log_tail or [])
    finally:
        engine.remove_image(base, force=True)
