"""Pack refs are hostile input and become Docker repository names: validate, then name safely."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest

from attune_containers.core.pack_ref import MAX_PACK_REF_LENGTH, image_name_for, validate_pack_ref
from attune_containers.errors import InvalidSpecError

# Docker's grammar for one path component of a repository name (distribution/reference).
DOCKER_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")

GOOD_REFS = ["core.http", "aws.s3", "my_pack", "A-b", "a", "x" * MAX_PACK_REF_LENGTH, "Core.HTTP", "a--b", "a_-b", "a-"]


@pytest.mark.parametrize("ref", GOOD_REFS)
def test_accepted_refs_are_returned_unchanged(ref):
    """Valid refs pass through untouched (the exact ref is what labels store)."""
    assert validate_pack_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "x" * (MAX_PACK_REF_LENGTH + 1),
        "../x",
        "a/b",
        "a\\b",
        ".a",
        "a.",
        "a..b",
        "a b",
        " a",
        "a\n",
        "a\nb",
        "a\tb",
        "-a",
        "_a",
        "a:b",
        "a@b",
        "pâck",
        "a\x00",
        "${REF}",
    ],
)
def test_refused_refs_raise_invalid_spec_on_pack_ref(ref):
    """Paths, traversal, whitespace and odd characters never become a pack ref."""
    with pytest.raises(InvalidSpecError) as exc:
        validate_pack_ref(ref)
    assert exc.value.field == "pack_ref"


@pytest.mark.parametrize("ref", [None, 1, b"core.http", ["core.http"], {"ref": "a"}])
def test_non_string_refs_are_refused(ref):
    """A ref from YAML/JSON may be any type; only str is acceptable."""
    with pytest.raises(InvalidSpecError) as exc:
        validate_pack_ref(ref)
    assert exc.value.field == "pack_ref"


def test_image_name_for_validates_its_input():
    """image_name_for must not turn an invalid ref into a name."""
    with pytest.raises(InvalidSpecError):
        image_name_for("../etc")


@pytest.mark.parametrize("a, b", [("a.b", "a_b"), ("A", "a"), ("a-b", "a--b"), ("Core.HTTP", "core.http"), ("a.b", "a-b")])
def test_distinct_refs_get_distinct_image_names(a, b):
    """Two packs must never share a repository."""
    assert image_name_for(a) != image_name_for(b)


@pytest.mark.parametrize("ref", GOOD_REFS)
def test_image_name_is_a_docker_repository_component(ref):
    """Whatever the ref, the name must be usable as a Docker repository component."""
    name = image_name_for(ref)
    assert DOCKER_COMPONENT.fullmatch(name), name
    assert len(name) <= 255


def _random_refs(n: int) -> list[str]:
    rng = random.Random(20240517)
    alphabet = "abcXYZ019_-."
    refs = set()
    while len(refs) < n:
        candidate = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        try:
            refs.add(validate_pack_ref(candidate))
        except InvalidSpecError:
            continue
    return sorted(refs)


def test_image_names_property_over_many_refs():
    """For many random valid refs: always a Docker component, never shared between two refs."""
    refs = _random_refs(3000)
    names = {}
    for ref in refs:
        name = image_name_for(ref)
        assert DOCKER_COMPONENT.fullmatch(name), (ref, name)
        assert names.setdefault(name, ref) == ref, f"{ref!r} and {names[name]!r} share {name!r}"


def test_as_is_name_cannot_collide_with_a_hashed_name():
    """A hostile pack may pick a ref equal to another pack's hashed image name."""
    hashed = image_name_for("A")
    assert hashed != "a"  # 'A' is not a lowercase component, so it was cleaned and hashed
    assert image_name_for(hashed) != hashed


def test_image_name_is_deterministic_across_processes():
    """Names must be stable between runs (no use of Python's salted hash())."""
    refs = ["A", "Core.HTTP", "a--b", "core.http"]
    here = [image_name_for(r) for r in refs]
    assert here == [image_name_for(r) for r in refs]
    code = f"from attune_containers.core.pack_ref import image_name_for;print('\\n'.join(image_name_for(r) for r in {refs!r}))"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout.split()
        assert out == here
