"""The Node.js runtime's pure parts: its spec (npm names and semver ranges, hostile input refused),
its version choice (majors inside [min, max]), its plan (hash, Dockerfile, context, labels) and
its lock file checks. The engine side is tests/engine/test_runtime_contract.py and test_nodejs.py."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from datetime import UTC, datetime

import pytest

from attune_containers.core import labels as L
from attune_containers.core.render import BuildOptions
from attune_containers.core.spec import DependencySpec, RequirementPolicy, validate_spec
from attune_containers.core.versions import BaseImage
from attune_containers.errors import BuildError, InvalidSpecError, PythonVersionUnavailableError
from attune_containers.runtimes import get_runtime, runner_types
from attune_containers.runtimes.nodejs.runtime import NODEJS, NodePlan
from attune_containers.runtimes.nodejs.spec import package_json
from attune_containers.runtimes.python import PYTHON
from attune_containers.services.npm_cache import read_lock

STRICT = RequirementPolicy(strict=True)
URLS = RequirementPolicy(allow_direct_urls=True)


def node(*deps: str, policy: RequirementPolicy | None = None, **fields):
    return validate_spec(DependencySpec(runtime="nodejs", dependencies=list(deps), **fields), policy)


def test_the_runtime_is_registered_by_name_alias_and_runner_types():
    assert get_runtime("nodejs") is NODEJS and get_runtime("node") is NODEJS
    assert runner_types()["nodejs"] is NODEJS
    assert NODEJS.version_label == L.NODEJS_VERSION == "io.attune.containers.nodejs.version"


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("lodash@4.17.21", "lodash@4.17.21"),
        ("lodash", "lodash@*"),
        ("lodash@latest", "lodash@*"),
        ("@types/node@^20.1.0", "@types/node@^20.1.0"),
        ("semver@>=7.0.0   <8", "semver@>=7.0.0 <8"),
        ("a-b.c_d@~1.2", "a-b.c_d@~1.2"),
        ("x@1.2.3 - 2.x || 3.0.0-beta.1", "x@1.2.3 - 2.x || 3.0.0-beta.1"),
    ],
)
def test_registry_names_and_semver_ranges_pass_in_canonical_form(given, canonical):
    assert [r.canonical() for r in node(given).requirements] == [canonical]


@pytest.mark.parametrize(
    "given",
    [
        "lodash@git+https://github.com/lodash/lodash.git",
        "lodash@github:lodash/lodash",
        "lodash@lodash/lodash",
        "lodash@file:../lodash",
        "lodash@link:/etc",
        "lodash@./lodash",
        "lodash@/abs",
        "lodash@npm:other@1",
        "lodash@https://example.com/lodash.tgz",
        "lodash@$(touch /x)",
        "lodash@1.0.0; rm -rf /",
        "lodash@`id`",
        "Lodash@1.0.0",
        "../x@1",
        "lodash@1.0.0\nRUN id",
        "attune_action@1.0.0",
        ".hidden@1",
        "lodash@1 && 2",
    ],
)
def test_anything_but_a_registry_name_and_a_semver_range_is_refused(given):
    with pytest.raises(InvalidSpecError):
        node(given)


def test_https_tarballs_pass_only_when_the_operator_allows_urls_and_git_never():
    url = "https://registry.example.com/lodash/-/lodash-4.17.21.tgz"
    with pytest.raises(InvalidSpecError, match="allow_direct_urls"):
        node(f"lodash@{url}")
    assert node(f"lodash@{url}", policy=URLS).requirements[0].url == url
    for refused in ("git+https://github.com/a/b.git", "file:../x", "http://plain.example.com/x.tgz"):
        with pytest.raises(InvalidSpecError):
            node(f"lodash@{refused}", policy=URLS)


def test_strict_mode_accepts_exact_versions_only():
    assert node("lodash@4.17.21", policy=STRICT).requirements[0].canonical() == "lodash@4.17.21"
    for loose in ("lodash@^4.17.21", "lodash", "lodash@4.x", "lodash@latest"):
        with pytest.raises(InvalidSpecError, match="strict"):
            node(loose, policy=STRICT)


def test_package_json_gives_only_its_dependencies_and_the_build_writes_its_own():
    text = json.dumps(
        {"name": "evil", "scripts": {"postinstall": "curl x | sh"}, "dependencies": {"lodash": "4.17.21", "@scope/pkg": "^1.0.0"}}
    )
    spec = validate_spec(DependencySpec(runtime="nodejs", requirements_file_content=text))
    written = json.loads(package_json(spec))
    assert written["dependencies"] == {"@scope/pkg": "^1.0.0", "lodash": "4.17.21"}
    assert "scripts" not in written and written["name"] == "attune-pack" and written["private"] is True
    with pytest.raises(InvalidSpecError, match="twice"):
        validate_spec(DependencySpec(runtime="nodejs", dependencies=["lodash@4.17.20"], requirements_file_content=text))


@pytest.mark.parametrize(
    ("low", "high", "bounds"),
    [
        ("18", "20", ("18", "20")),
        (">=18", None, ("18", None)),
        (None, "<21", (None, "20")),
        (None, "20.x", (None, "20")),
        ("18.19.0", "<=20", ("18", "20")),
    ],
)
def test_node_bounds_are_inclusive_majors(low, high, bounds):
    spec = node(min_version=low, max_version=high)
    assert (spec.min_version, spec.max_version) == bounds


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_version", "<=20"),
        ("max_version", ">=18"),
        ("min_version", "eighteen"),
        ("max_version", "20; rm"),
    ],
)
def test_bounds_that_are_not_majors_are_refused(field, value):
    with pytest.raises(InvalidSpecError) as exc:
        node(**{field: value})
    assert exc.value.field == field
    with pytest.raises(InvalidSpecError, match="empty"):
        node(min_version="20", max_version="18")


BASES = [
    BaseImage(minor="18", reference="attune-base/node:18", python_version="18.20.4", present=True),
    BaseImage(minor="20", reference="attune-base/node:20", python_version="20.19.2", present=True),
]


@pytest.mark.parametrize(
    ("low", "high", "chosen"),
    [
        (None, None, "20"),
        (None, "18", "18"),
        ("18", "19", "18"),
        ("19", None, "20"),
        (">=20", "<=20", "20"),
    ],
)
def test_the_newest_major_inside_the_range_is_chosen(low, high, chosen):
    assert NODEJS.choose_base(BASES, node(min_version=low, max_version=high)).minor == chosen


def test_no_major_inside_the_range_is_a_loud_error_naming_both():
    with pytest.raises(PythonVersionUnavailableError, match=r"\[22, any\].*18\.20\.4, 20\.19\.2"):
        NODEJS.choose_base(BASES, node(min_version="22"))


def test_base_versions_come_from_our_label_or_the_official_images_env():
    assert NODEJS.base_version({L.NODEJS_VERSION: "18.20.4"}, {}) == "18.20.4"
    assert NODEJS.base_version({}, {"NODE_VERSION": "22.11.0"}) == "22.11.0"
    assert NODEJS.base_version({}, {"NODE_VERSION": "22; rm -rf"}) is None


def plan(*deps: str, base: BaseImage = BASES[1]) -> NodePlan:
    return NODEJS.plan("demo", node(*deps), base, BuildOptions(), "attune-packs")


def test_the_hash_is_stable_and_changes_with_dependencies_node_and_base():
    a = plan("lodash@4.17.21", "semver@^7")
    assert a.dependency_hash == plan("semver@^7", "lodash@4.17.21").dependency_hash
    assert a.dependency_hash != plan("lodash@4.17.20", "semver@^7").dependency_hash
    assert a.dependency_hash != plan("lodash@4.17.21", "semver@^7", base=BASES[0]).dependency_hash
    changed = BASES[1].model_copy(update={"identity": "sha256:other"})
    assert a.dependency_hash != plan("lodash@4.17.21", "semver@^7", base=changed).dependency_hash
    assert a.image == f"attune-packs/demo:{a.dependency_hash[:16]}"


def test_nothing_from_the_pack_reaches_the_dockerfile_and_the_image_is_non_root_without_npm_cache():
    dockerfile = plan("lodash@4.17.21").dockerfile()
    assert "lodash" not in dockerfile and dockerfile == plan("semver@7.0.0").dockerfile()
    assert "npm ci --offline --ignore-scripts" in dockerfile
    final = dockerfile.rsplit("FROM ", 1)[1]
    assert "USER 65532:65532" in final and "npm-cache" not in final and "tarballs" not in final


def test_the_context_holds_our_package_json_the_lock_and_the_tarballs(tmp_path):
    lock = tmp_path / "package-lock.json"
    lock.write_text("{}")
    tarball = tmp_path / ("ab" * 64 + ".tgz")
    tarball.write_bytes(b"tgz")
    with tarfile.open(fileobj=plan("lodash@4.17.21").context([lock, tarball]), mode="r") as tar:
        names = set(tar.getnames())
        written = json.loads(tar.extractfile("attune-build/package.json").read())
    assert {
        "Dockerfile",
        "attune-build/package.json",
        "attune-build/package-lock.json",
        f"attune-build/tarballs/{tarball.name}",
        "attune-build/prepare.js",
    } <= names
    assert written["dependencies"] == {"lodash": "4.17.21"}


def test_labels_carry_nodes_version_not_pythons_and_the_installed_record_is_checked():
    p = plan("lodash@4.17.21")
    labels = p.labels(["lodash@4.17.21"], datetime(2026, 1, 1, tzinfo=UTC))
    assert labels[L.NODEJS_VERSION] == "20.19.2" and L.PYTHON_VERSION not in labels
    assert labels[L.RUNTIME] == "nodejs" and labels[L.INSTALLER] == "npm"
    record = json.dumps([{"name": "@scope/x", "version": "1.0.0"}, {"name": "lodash", "version": "4.17.21"}])
    assert p.read_installed(record.encode()) == ["@scope/x@1.0.0", "lodash@4.17.21"]
    for bad in ([{"name": "x; rm", "version": "1"}], {"name": "x"}, [{"name": "x", "version": "1 2"}]):
        with pytest.raises(ValueError):
            p.read_installed(json.dumps(bad).encode())


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def lock(**packages) -> bytes:
    return json.dumps({"lockfileVersion": 3, "packages": {"": {"name": "attune-pack"}, **packages}}).encode()


def test_a_lock_from_the_fetch_step_is_checked_like_pack_input():
    good = {
        "version": "4.17.21",
        "resolved": "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz",
        "integrity": integrity(b"lodash"),
    }
    [entry] = read_lock(lock(**{"node_modules/lodash": good}))
    assert (entry.name, entry.version, entry.sha512_hex) == ("lodash", "4.17.21", hashlib.sha512(b"lodash").hexdigest())
    assert NODEJS.lock_lines([entry.model_dump()]) == [f"lodash@4.17.21 {good['integrity']}"]
    for bad in (
        {**good, "resolved": "git+ssh://git@github.com/x/y.git"},
        {**good, "integrity": "sha1-abc="},
        {**good, "link": True},
        {k: v for k, v in good.items() if k != "integrity"},
        {**good, "version": "1.0.0 ; id"},
    ):
        with pytest.raises(BuildError):
            read_lock(lock(**{"node_modules/lodash": bad}))
    with pytest.raises(BuildError):
        read_lock(lock(**{"../etc/passwd": good}))
    with pytest.raises(BuildError):
        read_lock(b"not json")


def test_the_loop_is_the_python_supervisor_exec_ing_node_as_argv():
    argv = NODEJS.loop_command(65532, None, ())
    # The supervisor on its own interpreter (mounted by host_mounts), never the image's python3.
    assert argv[:8] == [
        "/opt/attune/python/ld.so",
        "--library-path",
        "/opt/attune/python/lib",
        "/opt/attune/python/bin/python3",
        "-I",
        "-S",
        "-B",
        "/opt/attune/supervisor/attune_wrapper.py",
    ]
    assert argv[8:10] == ["65532", "--exec"]
    assert PYTHON.host_mounts(None) == ()  # Python's supervisor keeps the image's own python3
    assert argv[-3:] == ["/usr/bin/env", "node", "/opt/attune/runtime/attune_runner.js"]
    with pytest.raises(InvalidSpecError):
        NODEJS.check_preload(["lodash"])


def test_the_helper_module_and_runner_are_in_the_loop_folder():
    assert (NODEJS.loop_dir / "attune_runner.js").is_file()
    assert (NODEJS.loop_dir / "attune_action" / "index.js").is_file()


def test_a_pack_folder_with_package_json_is_a_node_pack_and_its_lock_is_checked(tmp_path):
    from attune_containers.core.packs import load_pack

    (tmp_path / "pack.yaml").write_text("ref: folder\nversion: 1.0.0\n")
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"lodash": "4.17.21"}}))
    pack = load_pack(tmp_path)
    assert pack.spec.runtime == "nodejs" and pack.spec.requirements_file_content is not None
    good = {"version": "4.17.21", "integrity": integrity(b"x")}
    (tmp_path / "package-lock.json").write_bytes(lock(**{"node_modules/lodash": good}))
    validated = validate_spec(load_pack(tmp_path).spec)
    assert validated.lock is not None
    locked_hash = NODEJS.plan("folder", validated, BASES[1], BuildOptions(), "p").dependency_hash
    assert (
        locked_hash
        != NODEJS.plan("folder", validated.model_copy(update={"lock": None}), BASES[1], BuildOptions(), "p").dependency_hash
    )
    (tmp_path / "package-lock.json").write_bytes(lock(**{"node_modules/lodash": {**good, "resolved": "git://x"}}))
    with pytest.raises(InvalidSpecError) as exc:
        validate_spec(load_pack(tmp_path).spec)
    assert exc.value.field == "package-lock.json"


def test_node_files_beside_a_python_pack_make_its_node_spec_and_never_leak_into_the_python_one(tmp_path):
    from attune_containers.core.packs import load_pack

    (tmp_path / "pack.yaml").write_text("ref: py\nmeta:\n  python_dependencies: [six]\n")
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "requirements.txt").write_text("requests\n")
    specs = load_pack(tmp_path).specs  # a package.json declares Node.js: the pack has both (issue 13)
    assert list(specs) == ["python", "nodejs"]
    python = specs["python"]
    assert python.runtime == "python" and python.requirements_file_content == "requests\n"
    assert python.dependencies == ["six"] and python.metadata == {}
    assert specs["nodejs"].requirements_file_content == "{}" and specs["nodejs"].dependencies == []


def test_npm_scripts_stay_off_unless_the_operator_allows_them_and_the_choice_is_hashed():
    spec = node("lodash@4.17.21")
    off = NODEJS.plan("demo", spec, BASES[1], BuildOptions(), "p")
    on = NODEJS.plan("demo", spec, BASES[1], BuildOptions(npm_scripts=True), "p")
    assert "npm ci --offline --ignore-scripts" in off.dockerfile()
    assert "--ignore-scripts" not in on.dockerfile() and "npm ci --offline --omit=dev" in on.dockerfile()
    assert on.dependency_hash != off.dependency_hash


def test_the_npm_cache_is_bounded_oldest_first_and_lives_beside_the_wheel_cache(tmp_path):
    import os

    from attune_containers.services.npm_cache import NpmCache
    from attune_containers.settings import Settings

    cache = NpmCache(Settings(cache_dir=tmp_path / "wheels", state_dir=tmp_path / "state"), engine=None)
    assert cache.root == tmp_path / "wheels-npm"
    cache._prepare()
    for age, name in enumerate(("new", "mid", "old")):
        path = cache.content / f"{name}.tgz"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 - age, 1000 - age))
    assert cache.stats().files == 3 and cache.stats().bytes == 300
    assert cache.prune(150) == ["old.tgz", "mid.tgz"]
    assert [p.name for p in cache.content.iterdir()] == ["new.tgz"]
    assert cache.prune(0) == ["new.tgz"] and cache.stats().files == 0


def test_the_npm_registry_is_hashed_when_set_and_its_token_never_is():
    from attune_containers.runtimes.nodejs.runtime import hash_document

    spec = node("lodash@4.17.21")
    default = NODEJS.plan("demo", spec, BASES[1], BuildOptions(), "p")
    mirror = NODEJS.plan("demo", spec, BASES[1], BuildOptions(npm_registry="https://npm.corp.example/repo/"), "p")
    # Unset: the document is what it was before the setting existed (no Node image is rebuilt).
    assert "npm_registry" not in hash_document(spec, BASES[1], BuildOptions())
    assert mirror.dependency_hash != default.dependency_hash
    assert hash_document(spec, BASES[1], mirror.options)["npm_registry"] == "https://npm.corp.example/repo/"
    # The token is no build option at all: nothing of it can reach a plan, a hash or a label.
    assert not any("token" in field for field in BuildOptions.model_fields)


def test_the_npmrc_names_the_registry_and_gives_its_token_to_that_registry_only():
    from attune_containers.services.npm_cache import npmrc

    assert npmrc(None, None) == ""
    assert npmrc("https://npm.corp.example/repo/", None) == "registry=https://npm.corp.example/repo/\n"
    assert npmrc("https://npm.corp.example:8443/repo/", "npm_abc.DEF-1/+=") == (
        "registry=https://npm.corp.example:8443/repo/\n//npm.corp.example:8443/repo/:_authToken=npm_abc.DEF-1/+=\n"
    )
    # A token without a registry is for npm's default one, which then stays npm's own choice.
    assert npmrc(None, "npm_abc") == "//registry.npmjs.org/:_authToken=npm_abc\n"


def test_a_lock_made_against_one_registry_is_not_reused_for_another():
    from attune_containers.services.npm_cache import NpmCache

    spec = node("lodash@4.17.21")
    keys = {
        NpmCache.lock_key(NODEJS.plan("demo", spec, BASES[1], BuildOptions(npm_registry=registry), "p"))
        for registry in (None, "https://a.example/", "https://b.example/")
    }
    assert len(keys) == 3
