"""Node.js packs against the real engine, beyond the runtime contract (test_runtime_contract.py):
two packs pinning different versions of one library each get their own, a rebuild works offline
from the shared npm cache with the same hash, the lock label, and the final image's shape; the
base-independent ones also on bases with no python at all, where the action cannot reach the
supervisor's own interpreter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from attune_containers.core.execution import ExecutionStatus
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import BuildError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner

from ..support import unique_ref

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "packs"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-packs")
    for name in ("old_lodash", "new_lodash"):
        shutil.copytree(EXAMPLES / name, root / name)
    return root


@pytest.fixture(params=["bootstrapped", "nopython"])
def any_base_manager(request, settings, engine):
    """The manager on our bootstrapped Node bases, then on the same bases with no python at all
    (as the official node:<major>-slim images): what must not depend on a python in the image."""
    if request.param == "nopython":
        settings = settings.model_copy(update={"runtime_base_images": {"nodejs": request.getfixturevalue("nopython_node_bases")}})
    return ContainerDependencyManager(settings, engine)


def test_two_packs_with_conflicting_pins_each_get_their_own_version(tree, any_base_manager):
    manager = any_base_manager
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


def test_the_final_image_is_non_root_with_only_node_modules_and_no_npm_cache(any_base_manager):
    manager = any_base_manager
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


def test_a_packs_own_package_json_and_lock_decide_what_is_installed(tmp_path, any_base_manager):
    manager = any_base_manager
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


# What an action (uid 65532) tries against the supervisor's interpreter and the supervisor itself.
INTERPRETER_ATTACKS = r"""
const fs = require("fs");
const root = "/opt/attune/python";
const attempts = {
  create: () => fs.writeFileSync(root + "/evil", "x"),
  replace_loader: () => fs.renameSync(root + "/ld.so", root + "/ld.old"),
  remove_python: () => fs.unlinkSync(root + "/bin/python3"),
  chmod_libc: () => fs.chmodSync(root + "/lib/libc.so.6", 0o777),
  append_libc: () => fs.appendFileSync(root + "/lib/libc.so.6", "x"),
  mkdir: () => fs.mkdirSync(root + "/lib/x"),
  symlink_over: () => fs.symlinkSync("/tmp", root + "/lib/python3"),
  supervisor_mem: () => fs.openSync(`/proc/${process.ppid}/mem`, "r+"),
  supervisor_environ: () => fs.readFileSync(`/proc/${process.ppid}/environ`),
  signal_supervisor: () => process.kill(process.ppid, 0),
};
exports.run = () => {
  const succeeded = [];
  for (const [name, attempt] of Object.entries(attempts)) {
    try { attempt(); succeeded.push(name); } catch (e) { /* refused, as it must be */ }
  }
  const files = ["", "/ld.so", "/bin/python3", "/lib", "/lib/libc.so.6"].map((p) => fs.statSync(root + p));
  const mount = fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n").map((l) => l.split(" ")).filter((f) => f[4] === root);
  return {
    uid: process.getuid(),
    succeeded,
    owners: [...new Set(files.map((s) => s.uid))],
    writable_by_others: files.filter((s) => s.mode & 0o022).length,
    mount_options: mount.map((f) => f[5]),
    ld_variables: Object.keys(process.env).filter((k) => k.startsWith("LD_")),
    node_maps_the_copy: fs.readFileSync("/proc/self/maps", "utf8").includes(root),
    supervisor: fs.readFileSync(`/proc/${process.ppid}/cmdline`, "utf8").split("\0").slice(0, 4),
  };
};
"""


@pytest.mark.parametrize("warm", [False, True])
def test_the_supervisors_own_interpreter_is_out_of_the_actions_reach(tmp_path, settings, engine, nopython_node_bases, warm):
    """On a base with no python: the supervisor runs on the mounted copy of the host's interpreter,
    which the action can neither change nor swap (read-only mount, not its files), and node runs
    on the image's own loader with no LD_* variable."""
    settings = settings.model_copy(update={"runtime_base_images": {"nodejs": nopython_node_bases}})
    ref = unique_ref("nopyattack")
    pack = tmp_path / ref
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(f"ref: {ref}\nversion: 1.0.0\nmeta:\n  nodejs_dependencies: []\n")
    (pack / "actions" / "attack.yaml").write_text("name: attack\nrunner_type: nodejs\nentry_point: attack.js\n")
    (pack / "actions" / "attack.js").write_text(INTERPRETER_ATTACKS)
    runner = ActionRunner(tmp_path, ContainerDependencyManager(settings, engine))
    try:
        result = runner.run(f"{ref}.attack", warm=warm)
        again = runner.run(f"{ref}.attack", warm=warm)  # and the container still serves the next one
    finally:
        runner.close()
    assert result.status is ExecutionStatus.succeeded, (result.error, result.stderr[-500:])
    found = result.result
    assert found["uid"] == 65532 and found["succeeded"] == []
    assert found["owners"] == [os.getuid()] and found["owners"] != [65532] and found["writable_by_others"] == 0
    assert found["mount_options"] and all(options.split(",")[0] == "ro" for options in found["mount_options"])
    assert found["ld_variables"] == [] and found["node_maps_the_copy"] is False
    assert found["supervisor"] == [
        "/opt/attune/python/ld.so",
        "--library-path",
        "/opt/attune/python/lib",
        "/opt/attune/python/bin/python3",
    ]
    assert again.status is ExecutionStatus.succeeded and again.result == found
