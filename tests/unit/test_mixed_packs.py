"""Packs with both Python and Node.js actions (issue 13): one spec, one image and one current
image per runtime; single-runtime packs exactly as before."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attune_containers import cli
from attune_containers.core.packs import load_pack, pack_from_api, scan_pack_tree
from attune_containers.core.prune_policy import PackImage, PrunePolicy, select_images
from attune_containers.core.render import BuildOptions
from attune_containers.core.spec import DependencySpec, RequirementPolicy, validate_spec
from attune_containers.core.versions import BaseImage
from attune_containers.errors import InvalidSpecError
from attune_containers.runtimes import get_runtime
from attune_containers.services.manifest import TrustedImage, TrustManifest
from attune_containers.services.prebuild import PackBuildReport, PrebuildReport, build_tasks, manifest_of, write_manifest

PY = BaseImage(minor="3.11", reference="attune-base/python:3.11", python_version="3.11.2", image_id="sha256:" + "a" * 64)
NODE = BaseImage(minor="20", reference="attune-base/node:20", python_version="20.19.2", image_id="sha256:" + "b" * 64)
PY_YAML = 'ref: {ref}\nmeta:\n  python_dependencies: ["requests==2.31.0", "six>=1.16"]\n'
NODE_YAML = 'ref: {ref}\nmeta:\n  nodejs_dependencies: ["lodash@4.17.21"]\n'
MIXED_YAML = (
    'ref: {ref}\nmeta:\n  python_dependencies: ["requests==2.31.0", "six>=1.16"]\n  nodejs_dependencies: ["lodash@4.17.21"]\n'
)


def write(root: Path, ref: str, pack_yaml: str, files: dict[str, str] | None = None) -> Path:
    folder = root / ref
    folder.mkdir(parents=True)
    (folder / "pack.yaml").write_text(pack_yaml.format(ref=ref))
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def action(runner: str | None, entry: str) -> dict[str, str]:
    runner_line = f"runner_type: {runner}\n" if runner else ""
    return {f"actions/{entry}.yaml": f"{runner_line}entry_point: {entry}\n", f"actions/{entry}": "\n"}


def plan(ref: str, spec: DependencySpec):
    runtime = get_runtime(spec.runtime)
    return runtime.plan(
        ref, runtime.validate(spec, RequirementPolicy()), PY if runtime.name == "python" else NODE, BuildOptions(), "attune-packs"
    )


# -- single-runtime packs: the same images as before ----------------------------------------------


def test_single_runtime_packs_keep_their_image_names_and_hashes_exactly(tmp_path):
    # Computed by main's own code (cf0235f, before packs could have several runtimes) for the same
    # packs, bases and options: a changed figure means every existing image would be rebuilt.
    # The Python figure moved once since, on purpose: templates/build/install.py (hashed: it builds
    # the image) changed for issue 11's one-layer load (branch speed); the Node.js one did not.
    py = load_pack(write(tmp_path, "pinned_py", PY_YAML))
    js = load_pack(write(tmp_path, "pinned_js", NODE_YAML))
    assert list(py.specs) == ["python"] and list(js.specs) == ["nodejs"]
    assert plan("pinned_py", py.spec).dependency_hash == "fae523972f224c0fab22c6a9aee89e0f39507529ae9d6faaacd9dfdcb0a96fba"
    assert plan("pinned_py", py.spec).image == "attune-packs/pinned_py:fae523972f224c0f"
    assert plan("pinned_js", js.spec).dependency_hash == "da789ff6546354375a9d52ac4a6b4d77151ff8ffb919c3d9b40f0a3e3554e07e"
    assert plan("pinned_js", js.spec).image == "attune-packs/pinned_js:da789ff654635437"


def test_a_mixed_packs_images_share_its_repository_and_each_has_the_hash_of_its_own_spec(tmp_path):
    mixed = load_pack(write(tmp_path, "pinned_py", MIXED_YAML))
    py, js = plan("pinned_py", mixed.specs["python"]), plan("pinned_py", mixed.specs["nodejs"])
    # Declaring Node.js beside Python changes nothing of the Python image (and the reverse).
    assert py.image == "attune-packs/pinned_py:fae523972f224c0f"
    assert js.dependency_hash == plan("pinned_py", load_pack(write(tmp_path / "n", "pinned_py", NODE_YAML)).spec).dependency_hash
    assert py.image.rsplit(":", 1)[0] == js.image.rsplit(":", 1)[0] and py.image != js.image
    assert (py.labels([], datetime.now(UTC))["io.attune.containers.runtime"], js.spec.runtime) == ("python", "nodejs")


# -- which runtimes a pack has ---------------------------------------------------------------------


def test_both_meta_keys_both_files_or_the_api_form_make_a_mixed_pack(tmp_path):
    by_keys = load_pack(write(tmp_path, "keys", MIXED_YAML))
    assert by_keys.runtimes == ("python", "nodejs")
    assert by_keys.specs["python"].dependencies == ["requests==2.31.0", "six>=1.16"]
    assert by_keys.specs["nodejs"] == DependencySpec(runtime="nodejs", dependencies=["lodash@4.17.21"])

    package = json.dumps({"dependencies": {"lodash": "4.17.21"}})
    by_files = load_pack(write(tmp_path, "files", "ref: files\n", {"requirements.txt": "six==1.17.0\n", "package.json": package}))
    assert by_files.runtimes == ("python", "nodejs")
    assert by_files.specs["python"].requirements_file_content == "six==1.17.0\n"
    assert by_files.specs["nodejs"].requirements_file_content == package

    api = pack_from_api(
        {"ref": "api", "meta": {"nodejs_dependencies": {"dependencies": ["lodash@4"]}, "python_dependencies": ["six"]}}
    )
    assert api.runtimes == ("python", "nodejs") and api.specs["nodejs"].dependencies == ["lodash@4"]
    # Each validates by its own runtime.
    assert validate_spec(api.specs["nodejs"]).runtime == "nodejs" and validate_spec(api.specs["python"]).runtime == "python"


def test_actions_add_the_runtimes_they_need_with_empty_specs(tmp_path):
    node_actions = load_pack(write(tmp_path, "n", PY_YAML, {**action("nodejs", "a.js"), **action("node", "b.mjs")}))
    assert node_actions.runtimes == ("python", "nodejs") and node_actions.specs["nodejs"] == DependencySpec(runtime="nodejs")
    # No runner_type is Python, as load_action has it.
    python_action = load_pack(write(tmp_path, "p", NODE_YAML, action(None, "x.py")))
    assert python_action.runtimes == ("python", "nodejs") and python_action.specs["python"] == DependencySpec()
    # No keys, no files: the actions decide; with no actions either, the pack is Python's (the seed's).
    assert load_pack(write(tmp_path, "only_node", "ref: only_node\n", action("nodejs", "a.js"))).runtimes == ("nodejs",)
    assert load_pack(write(tmp_path, "bare", "ref: bare\n")).specs == {"python": DependencySpec()}
    assert load_pack(write(tmp_path, "empty_actions", "ref: empty_actions\n", {"actions/.keep": ""})).runtimes == ("python",)


def test_action_files_that_do_not_load_name_no_runtime_and_do_not_break_the_pack(tmp_path):
    files = {
        **action("cobol", "c.cob"),  # no such runner: load_action refuses it when run
        "actions/broken.yaml": "runner_type: [unclosed\n",
        "actions/list.yaml": "- runner_type: nodejs\n",
        "actions/bomb.yaml": "a: &a [x]\nb: *a\nrunner_type: nodejs\n",  # aliases are refused
    }
    folder = write(tmp_path, "odd", "ref: odd\n", files)
    os.symlink("/etc/passwd", folder / "actions" / "link.yaml")
    assert load_pack(folder).runtimes == ("python",)
    # An actions folder that is a link is not read at all (load_action refuses it too).
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.yaml").write_text("runner_type: nodejs\nentry_point: a.js\n")
    linked = write(tmp_path, "linked", "ref: linked\n")
    os.symlink(tmp_path / "elsewhere", linked / "actions")
    assert load_pack(linked).runtimes == ("python",)


@pytest.mark.parametrize(
    ("meta", "field", "needle"),
    [
        # A key naming another runtime would give the pack two specs of one runtime.
        (
            {"python_dependencies": {"runtime": "nodejs", "dependencies": ["lodash"]}, "nodejs_dependencies": []},
            "meta.python_dependencies.runtime",
            "'nodejs' is not Python",
        ),
        ({"nodejs_dependencies": {"runtime": "python3"}}, "meta.nodejs_dependencies.runtime", "'python3' is not Node.js"),
        ({"python_dependencies": {"runtime": "cobol"}}, "meta.python_dependencies.runtime", "unknown runtime 'cobol'"),
        # A bad value of one key fails the whole pack, whatever the other key holds.
        ({"python_dependencies": ["six"], "nodejs_dependencies": 5}, "meta.nodejs_dependencies", "got int"),
        (
            {"python_dependencies": ["six"], "nodejs_dependencies": {"dependencies": "lodash"}},
            "meta.nodejs_dependencies.dependencies",
            "",
        ),
        ({"python_dependencies": "six", "nodejs_dependencies": ["lodash"]}, "meta.python_dependencies", "got str"),
        ({"python_dependencies": ["six"], "nodejs_dependencies": {"lock": "x"}}, "meta.nodejs_dependencies.lock", ""),
    ],
)
def test_hostile_combinations_are_refused_naming_the_field(meta, field, needle):
    with pytest.raises(InvalidSpecError) as exc:
        pack_from_api({"ref": "hostile", "meta": meta})
    assert exc.value.field == field and needle in str(exc.value)


def test_a_bad_dependency_of_one_runtime_is_refused_by_that_runtime(tmp_path):
    pack = pack_from_api(
        {"ref": "m", "meta": {"python_dependencies": ["six==1.17.0"], "nodejs_dependencies": ["git+https://evil/x.git"]}}
    )
    validate_spec(pack.specs["python"])
    with pytest.raises(InvalidSpecError):
        validate_spec(pack.specs["nodejs"])


def test_a_mixed_pack_has_no_single_spec_and_spec_for_names_the_runtime(tmp_path):
    pack = load_pack(write(tmp_path, "m", MIXED_YAML))
    with pytest.raises(InvalidSpecError, match="python and nodejs"):
        pack.spec  # noqa: B018 - the property raises
    assert pack.spec_for("node") is pack.specs["nodejs"] and pack.spec_for("python3") is pack.specs["python"]
    with pytest.raises(InvalidSpecError):
        pack.spec_for("cobol")


def test_a_packs_preload_list_must_suit_every_runtime_it_has(tmp_path):
    # '@scope/x' is an npm name but not a Python module: a mixed pack's warm containers of both
    # runtimes load the list, so both must accept it.
    yaml = MIXED_YAML + "  container_pool:\n    preload: ['@scope/x']\n"
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(write(tmp_path, "m", yaml))
    assert exc.value.field == "meta.container_pool.preload"


# -- the CLI: a bad runtime builds nothing ---------------------------------------------------------


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # asking it anything is exit 3
    monkeypatch.setenv("ATTUNE__CONTAINERS__STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_build_refuses_a_mixed_pack_with_one_bad_runtime_before_the_engine_is_asked(no_engine, capsys):
    yaml = 'ref: {ref}\nmeta:\n  python_dependencies: ["six==1.17.0"]\n  nodejs_dependencies: ["lodash@git+https://evil/x"]\n'
    folder = write(no_engine, "half_bad", yaml)
    assert cli.main(["build", str(folder)]) == 2  # 3 would mean the Python image was being made
    assert "lodash" in capsys.readouterr().err


def test_render_needs_runtime_for_a_mixed_pack_and_validate_checks_every_runtime(no_engine, capsys):
    folder = write(no_engine, "m", MIXED_YAML)
    assert cli.main(["render", str(folder)]) == 2
    assert "--runtime" in capsys.readouterr().err
    assert cli.main(["render", str(folder), "--runtime", "nodejs", "--requirements"]) == 0
    assert "lodash" in capsys.readouterr().out
    assert cli.main(["validate", str(folder), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [(r["runtime"], r["requirements"]) for r in reports] == [
        ("python", ["requests==2.31.0", "six>=1.16"]),
        ("nodejs", reports[1]["requirements"]),
    ] and reports[1]["requirements"]
    assert cli.main(["build", "--all", "--packs-dir", str(no_engine), "--runtime", "python"]) == 2


# -- keep-N, manifests and pre-builds per (pack, runtime) ------------------------------------------


def image(ref: str, tag: str, runtime: str, age_days: int) -> PackImage:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    return PackImage(
        id="sha256:" + tag * 16, reference=f"p/{ref}:{tag}", pack_ref=ref, created=now - timedelta(days=age_days), runtime=runtime
    )


def test_keep_n_counts_each_runtime_of_a_pack_apart_and_keeps_both_current_images():
    images = [
        image("m", "pyold", "python", 5),
        image("m", "pycur", "python", 3),  # current, though not the newest
        image("m", "pynew", "python", 1),
        image("m", "jsold", "nodejs", 4),
        image("m", "jsnew", "nodejs", 2),  # current and newest
    ]
    verdicts = select_images(
        images, PrunePolicy(keep=1), current={"m": {"p/m:pycur", "p/m:jsnew"}}, now=datetime(2026, 1, 10, tzinfo=UTC)
    )
    by = {v.image.reference: (v.action, v.reason) for v in verdicts}
    assert by["p/m:pycur"] == ("keep", "current image of its pack")
    assert by["p/m:jsnew"] == ("keep", "current image of its pack's nodejs images")
    # The current image took each runtime's one place: the others go, Python's newest included.
    assert by["p/m:pynew"] == ("remove", "beyond the newest 1 of its pack")
    assert by["p/m:pyold"][0] == "remove" and by["p/m:jsold"] == ("remove", "beyond the newest 1 of its pack's nodejs images")
    # Without current records, keep=1 keeps the newest of each runtime, not of the pack.
    kept = {
        v.image.reference
        for v in select_images(images, PrunePolicy(keep=1), current={}, now=datetime(2026, 1, 10, tzinfo=UTC))
        if v.action == "keep"
    }
    assert kept == {"p/m:pynew", "p/m:jsnew"}


def trusted(tag: str, runtime: str) -> TrustedImage:
    return TrustedImage(
        dependency_hash=tag * 64,
        image=f"p/m:{tag * 16}",
        reference=f"reg/p/m@sha256:{tag * 64}",
        image_id=f"sha256:{tag * 64}",
        runtime=runtime,
        runtime_version="1",
    )


def row(tag: str, runtime: str, ref: str = "m") -> PackBuildReport:
    t = trusted(tag, runtime)
    return PackBuildReport(
        pack_ref=ref,
        folder=ref,
        outcome="built",
        runtime=runtime,
        python="1",
        dependency_hash=t.dependency_hash,
        image=t.image,
        pushed_by_digest=t.reference,
        image_id=t.image_id,
    )


def test_manifests_carry_every_runtimes_image_and_workers_find_each_by_its_hash(tmp_path):
    manifest = manifest_of(PrebuildReport(packs=[row("a", "python"), row("b", "nodejs"), row("c", "python", "single")]))
    assert manifest.packs["m"].runtime == "python" and [i.runtime for i in manifest.other_runtimes["m"]] == ["nodejs"]
    assert "single" not in manifest.other_runtimes
    assert manifest.entry("m", "a" * 64).runtime == "python" and manifest.entry("m", "b" * 64).runtime == "nodejs"
    assert manifest.entry("m", "c" * 64) is None
    # Written and read back; a later run that finds the pack single-runtime drops its other image.
    path = tmp_path / "manifest.json"
    write_manifest(PrebuildReport(packs=[row("a", "python"), row("b", "nodejs"), row("d", "python", "kept")]), path)
    assert TrustManifest.load(path).entry("m", "b" * 64) is not None
    write_manifest(PrebuildReport(packs=[row("e", "python")]), path)
    again = TrustManifest.load(path)
    assert again.entry("m", "b" * 64) is None and again.entry("m", "e" * 64) is not None and again.entry("kept", "d" * 64)
    # A manifest written before other_runtimes existed still loads; one a worker of old reads
    # (ignoring the new key) still names the pack's first image.
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": 1, "packs": {"m": trusted("a", "python").model_dump()}}))
    assert TrustManifest.load(old).entry("m", "a" * 64) is not None
    old.write_text(json.dumps({"format": 1, "other_runtimes": {"../x": []}}))
    with pytest.raises(InvalidSpecError, match="not a valid pack ref"):
        TrustManifest.load(old)


def test_build_all_has_one_task_per_image(tmp_path):
    write(tmp_path, "a_mixed", MIXED_YAML)
    write(tmp_path, "b_single", PY_YAML)
    write(tmp_path, "c_broken", "ref: [\n")
    tasks = [(entry.pack_ref, runtime) for entry, runtime in build_tasks(scan_pack_tree(tmp_path))]
    assert tasks == [("a_mixed", "python"), ("a_mixed", "nodejs"), ("b_single", "python"), ("c_broken", None)]
