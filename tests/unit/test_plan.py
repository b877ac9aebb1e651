"""The build plan: content hash (what it covers and what it must not), tag, image name, labels."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.plan import TAG_LENGTH, dependency_hash, hash_document, make_plan
from attune_containers.core.render import BuildOptions
from attune_containers.core.spec import DependencySpec, RequirementPolicy, validate_spec
from attune_containers.core.versions import BaseImage
from attune_containers.errors import InvalidSpecError

REPO = Path(__file__).resolve().parents[2]
BASE = BaseImage(minor="3.11", reference="python:3.11-slim", python_version="3.11.2", image_id="sha256:aaa", present=True)
CA = "-----BEGIN CERTIFICATE-----\nMIIBzzCA-UNIT-TEST-MARKER\n-----END CERTIFICATE-----\n"


def spec(*deps: str, content: str | None = None, policy: RequirementPolicy | None = None):
    return validate_spec(DependencySpec(dependencies=list(deps), requirements_file_content=content), policy)


def h(s=None, base=BASE, options=BuildOptions()) -> str:
    return dependency_hash(s if s is not None else spec("requests==2.31.0", "flask>=2"), base, options)


def test_hash_matches_the_documented_canonical_document():
    """Recompute the hash by hand from the document the plan module documents."""

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()

    document = {
        "format": 4,
        "runtime": "python",
        "requirements": ["flask>=2", "requests==2.31.0"],
        "pip_options": [],
        "python": {"minor": "3.11", "version": "3.11.2", "base_image": "python:3.11-slim", "base_identity": None},
        "installer": "pip",
        "index_url": "https://mirror.example/simple",
        "extra_index_urls": [],
        "template": sha(REPO / "templates" / "Dockerfile.j2"),
        "build_files": {
            "build/freeze.py": sha(REPO / "templates" / "build" / "freeze.py"),
            "build/uv-bootstrap.txt": sha(REPO / "templates" / "build" / "uv-bootstrap.txt"),
            "build/fetch.py": sha(REPO / "templates" / "build" / "fetch.py"),
            "build/install.py": sha(REPO / "templates" / "build" / "install.py"),
        },
    }
    expected = hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    options = BuildOptions(index_url="https://user:s3cret@mirror.example/simple")
    assert dependency_hash(spec("Requests == 2.31.0", "Flask>=2"), BASE, options) == expected


def test_hash_is_a_sha256_hex_digest():
    """64 lowercase hex characters."""
    digest = h()
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "a, b",
    [
        ((["requests==2.31.0", "flask>=2"], None), (["Flask >= 2", "Requests==2.31.0"], None)),
        ((["requests==2.31.0", "flask>=2"], None), ([], "# deps\n\nflask>=2\n  requests == 2.31.0  # pinned\n")),
        ((["requests==2.31.0", "flask>=2"], None), (["flask>=2", "requests==2.31.0", "requests==2.31.0"], None)),
        ((["zope.interface", "pkg[b,a]"], None), (["Zope_Interface", "PKG[A,B]"], None)),
    ],
)
def test_hash_stable_for_reordered_and_reformatted_requirements(a, b):
    """Independently built specs that mean the same thing share one hash."""
    (deps_a, content_a), (deps_b, content_b) = a, b
    assert h(spec(*deps_a, content=content_a)) == h(spec(*deps_b, content=content_b))


@pytest.mark.parametrize(
    "other",
    [
        {"s": ("requests==2.32.0", "flask>=2")},
        {"s": ("requests==2.31.0",)},
        {"s": ("requests[socks]==2.31.0", "flask>=2")},
        {"s": ("requests==2.31.0; python_version>'3.8'", "flask>=2")},
        {"base": BASE.model_copy(update={"python_version": "3.11.4"})},
        {"base": BASE.model_copy(update={"python_version": None})},
        {"base": BASE.model_copy(update={"minor": "3.12"})},
        {"base": BASE.model_copy(update={"reference": "attune-base/python:3.11"})},
        {"options": BuildOptions(installer="uv")},
        {"options": BuildOptions(index_url="https://mirror.example/simple")},
        {"options": BuildOptions(extra_index_urls=("https://extra.example/simple",))},
    ],
)
def test_hash_changes_with_what_decides_the_content(other):
    """Requirements, exact Python, minor, base reference, installer and indexes are all covered."""
    s = spec(*other["s"]) if "s" in other else None
    assert h(s, other.get("base", BASE), other.get("options", BuildOptions())) != h()


def test_hash_covers_allowed_pip_options():
    """An allowed option line changes what pip does, so it changes the hash."""
    policy = RequirementPolicy(allow_pip_options=True)
    assert h(spec("requests==2.31.0", "flask>=2", "--pre", policy=policy)) != h()


def test_index_host_and_path_matter():
    """Different indexes (not just different credentials) give different hashes."""
    a = h(options=BuildOptions(index_url="https://a.example/simple"))
    assert a != h(options=BuildOptions(index_url="https://b.example/simple"))
    assert a != h(options=BuildOptions(index_url="https://a.example/other"))
    assert a != h(options=BuildOptions(index_url="https://a.example:8443/simple"))


@pytest.mark.parametrize(
    "userinfo",
    ["user:pass@", "token@", "other:x@"],
)
def test_index_credentials_do_not_change_the_hash(userinfo):
    """Rotating a token must not rebuild every image; the hash document holds no secret."""
    plain = BuildOptions(index_url="https://mirror.example/simple", extra_index_urls=("https://extra.example/s",))
    with_creds = BuildOptions(
        index_url=f"https://{userinfo}mirror.example/simple", extra_index_urls=(f"https://{userinfo}extra.example/s",)
    )
    assert h(options=with_creds) == h(options=plain)
    text = json.dumps(hash_document(spec("a"), BASE, with_creds))
    assert userinfo not in text


def test_ca_bundle_does_not_change_the_hash():
    """The CA changes how we download, not what we install."""
    assert h(options=BuildOptions(ca_bundle=CA)) == h()
    assert h(options=BuildOptions(ca_bundle=CA)) == h(options=BuildOptions(ca_bundle=CA + "\n# another\n"))


def test_local_image_id_does_not_change_the_hash():
    """One spec gives one hash on every machine, whatever the local image ID."""
    assert h(base=BASE.model_copy(update={"image_id": "sha256:bbb", "present": False})) == h()


def plan(pack_ref: str, s=None, options=BuildOptions(), prefix: str = "attune-packs"):
    return make_plan(pack_ref, s if s is not None else spec("requests==2.31.0"), BASE, options, prefix)


def test_hash_does_not_depend_on_pack_ref_but_image_does():
    """Two packs with one spec share the hash and tag, each under its own repository."""
    a, b = plan("core.http"), plan("aws.s3")
    assert a.dependency_hash == b.dependency_hash
    assert a.tag == b.tag
    assert a.image != b.image
    assert a.image == f"attune-packs/core.http:{a.tag}"
    assert a.repository == "attune-packs/core.http"


def test_tag_is_a_prefix_of_the_hash():
    """The tag is the first TAG_LENGTH characters of the hash, a valid Docker tag."""
    p = plan("core.http")
    assert p.dependency_hash == dependency_hash(p.spec, p.base, p.options)
    assert len(p.tag) == TAG_LENGTH
    assert p.dependency_hash.startswith(p.tag)
    assert p.image.endswith(":" + p.tag)


def test_make_plan_refuses_an_invalid_pack_ref():
    """The plan is the last gate before a name reaches the engine."""
    with pytest.raises(InvalidSpecError):
        plan("../etc")


# --- labels ------------------------------------------------------------------------------------

SECRET_OPTIONS = BuildOptions(
    index_url="https://builder:s3cr3t-t0ken@mirror.example/simple",
    extra_index_urls=("https://x:extra-s3cr3t@extra.example/simple",),
    ca_bundle=CA,
)
CREATED = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)


def test_labels_describe_the_image():
    """Labels carry the exact pack ref, hash, Python and the requirements as the pack gave them."""
    s = spec("Requests >= 2.0", content="# c\nZope_Interface\n")
    p = plan("Core.HTTP", s, SECRET_OPTIONS)
    labels = p.labels(["requests==2.31.0"], CREATED)
    assert labels[L.MANAGED] == "true"
    assert labels[L.PACK_REF] == "Core.HTTP"
    assert labels[L.DEPENDENCY_HASH] == p.dependency_hash
    assert labels[L.PYTHON_VERSION] == "3.11.2"
    assert json.loads(labels[L.REQUIREMENTS]) == ["Requests >= 2.0", "Zope_Interface"]
    assert json.loads(labels[L.INSTALLED]) == ["requests==2.31.0"]
    assert labels[L.BASE_IMAGE] == "python:3.11-slim"
    assert labels[L.CREATED] == CREATED.isoformat()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


def test_labels_hold_no_build_secrets():
    """Neither the CA bundle nor index credentials (nor the index URLs) reach the final image's labels."""
    labels = plan("core.http", options=SECRET_OPTIONS).labels([], CREATED)
    blob = json.dumps(labels)
    for secret in (
        "s3cr3t-t0ken",
        "extra-s3cr3t",
        "builder:",
        "mirror.example",
        "BEGIN CERTIFICATE",
        "MIIBzzCA-UNIT-TEST-MARKER",
    ):
        assert secret not in blob


def test_labels_fall_back_to_the_minor_without_exact_version():
    """Before the exact version is known, the minor is reported."""
    base = BASE.model_copy(update={"python_version": None})
    labels = make_plan("p", spec("a"), base, BuildOptions(), "attune-packs").labels([], CREATED)
    assert labels[L.PYTHON_VERSION] == "3.11"


def test_environment_round_trips_through_labels():
    """What we write as labels is what lookups read back."""
    s = spec("Requests >= 2.0")
    p = plan("core.http", s)
    info = L.environment_from_image("sha256:123", p.image, p.labels(["requests==2.31.0"], CREATED), size_bytes=42)
    assert info is not None
    assert (info.pack_ref, info.dependency_hash, info.runtime_version) == ("core.http", p.dependency_hash, "3.11.2")
    assert info.requirements == ["Requests >= 2.0"]
    assert info.installed_dependencies == ["requests==2.31.0"]
    assert info.created_at == CREATED and info.is_valid and info.path == p.image
    assert info.executable_path.endswith("/bin/python")


@pytest.mark.parametrize("labels", [{}, {L.MANAGED: "false", L.PACK_REF: "p"}, {L.MANAGED: "true"}])
def test_foreign_images_are_not_environments(labels):
    """Images without our markers are ignored."""
    assert L.environment_from_image("sha256:1", "x:y", labels) is None


def test_damaged_labels_degrade_gracefully():
    """Broken JSON or time in a label must not crash listing."""
    info = L.environment_from_image(
        "sha256:1",
        "x:y",
        {L.MANAGED: "true", L.PACK_REF: "p", L.REQUIREMENTS: "{not json", L.INSTALLED: '"str"', L.CREATED: "yesterday"},
    )
    assert info.requirements == [] and info.installed_dependencies == []
    assert info.created_at == datetime.fromtimestamp(0, UTC)
    assert info.is_valid is False


def test_hash_changes_with_the_base_image_identity():
    """A rebuilt or updated base (new packages, a new digest) must rebuild the pack's image."""
    one = BASE.model_copy(update={"identity": "sha256:" + "1" * 64})
    two = BASE.model_copy(update={"identity": "sha256:" + "2" * 64})
    s = spec("requests==2.31.0")
    assert dependency_hash(s, one, BuildOptions()) != dependency_hash(s, two, BuildOptions())
    assert dependency_hash(s, one, BuildOptions()) == dependency_hash(s, one.model_copy(), BuildOptions())
