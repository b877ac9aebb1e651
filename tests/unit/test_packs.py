"""Loading packs from every form they come in (pack dir, pack.yaml, API JSON) into one definition."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attune_containers.core.packs import load_pack, pack_from_api, spec_from_python_dependencies
from attune_containers.core.spec import DependencySpec, validate_spec
from attune_containers.errors import InvalidSpecError


def make_pack(root: Path, pack_yaml: str, requirements: str | None = None, name: str = "my_pack") -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "pack.yaml").write_text(pack_yaml)
    if requirements is not None:
        (directory / "requirements.txt").write_text(requirements)
    return directory


def canonical(pack) -> list[str]:
    return validate_spec(pack.spec).requirement_lines()


def test_list_form(tmp_path):
    """meta.python_dependencies as a plain list of requirement strings."""
    d = make_pack(
        tmp_path, "ref: core.http\nlabel: HTTP\nversion: 1.2.0\nmeta:\n  python_dependencies:\n    - requests>=2\n    - PyYAML\n"
    )
    pack = load_pack(d)
    assert (pack.pack_ref, pack.label, pack.version) == ("core.http", "HTTP", "1.2.0")
    assert pack.spec.dependencies == ["requests>=2", "PyYAML"]
    assert pack.directory == d
    assert canonical(pack) == ["pyyaml", "requests>=2"]


def test_object_form_carries_runtime_and_bounds(tmp_path):
    """The object form is a DependencySpec: runtime and version range come from it."""
    d = make_pack(
        tmp_path,
        "ref: aws.s3\nmeta:\n  python_dependencies:\n    runtime: python3\n    dependencies: [boto3]\n"
        "    requirements_file_content: |\n      botocore>=1\n    min_version: '3.10'\n    max_version: '3.12'\n",
    )
    pack = load_pack(d)
    assert pack.spec.runtime == "python3"
    assert (pack.spec.min_version, pack.spec.max_version) == ("3.10", "3.12")
    assert canonical(pack) == ["boto3", "botocore>=1"]


def test_all_sources_combine_as_a_union(tmp_path):
    """List/dependencies, requirements_file_content and requirements.txt are all installed."""
    d = make_pack(
        tmp_path,
        "ref: p\nmeta:\n  python_dependencies:\n    dependencies: [alpha, shared==1.0]\n"
        '    requirements_file_content: "beta\\nshared==1.0\\n"\n',
        requirements="# from the file\ngamma\nShared == 1.0\n",
    )
    pack = load_pack(d)
    assert canonical(pack) == ["alpha", "beta", "gamma", "shared==1.0"]


def test_list_form_plus_requirements_txt(tmp_path):
    """requirements.txt beside pack.yaml adds to the list form too."""
    d = make_pack(tmp_path, "ref: p\nmeta:\n  python_dependencies: [alpha]\n", requirements="beta\n")
    assert canonical(load_pack(d)) == ["alpha", "beta"]


def test_requirements_txt_alone(tmp_path):
    """A pack without python_dependencies still gets its requirements.txt installed."""
    d = make_pack(tmp_path, "ref: p\n", requirements="beta\n")
    pack = load_pack(d)
    assert canonical(pack) == ["beta"]
    assert pack.spec.dependencies == []


def test_pack_yaml_path_is_accepted(tmp_path):
    """Pointing at pack.yaml itself is the same as pointing at its directory."""
    d = make_pack(tmp_path, "ref: p\nmeta:\n  python_dependencies: [alpha]\n", requirements="beta\n")
    assert load_pack(d / "pack.yaml").spec == load_pack(d).spec


def test_pack_yml_is_found(tmp_path):
    """pack.yml is accepted as the pack file name too."""
    d = tmp_path / "yml_pack"
    d.mkdir()
    (d / "pack.yml").write_text("meta:\n  python_dependencies: [alpha]\n")
    pack = load_pack(d)
    assert pack.pack_ref == "yml_pack"
    assert pack.spec.dependencies == ["alpha"]


def test_missing_ref_falls_back_to_directory_name(tmp_path):
    """Packs without 'ref' are named after their directory."""
    d = make_pack(tmp_path, "meta:\n  python_dependencies: [alpha]\n", name="dir_named.pack")
    assert load_pack(d).pack_ref == "dir_named.pack"


def test_invalid_directory_name_as_ref_is_refused(tmp_path):
    """The fallback ref is validated like any other."""
    d = make_pack(tmp_path, "meta: {}\n", name="bad name")
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert exc.value.field == "pack_ref"


@pytest.mark.parametrize("ref", ["../x", "a b", "123abc/..", 5])
def test_invalid_ref_in_pack_yaml_is_refused(tmp_path, ref):
    """The ref in pack.yaml is hostile."""
    d = make_pack(tmp_path, f"ref: {json.dumps(ref)}\n")
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert exc.value.field == "pack_ref"


def test_api_json_file(tmp_path):
    """The REST API document, saved as a .json file."""
    doc = {
        "ref": "core.http",
        "label": "HTTP",
        "version": 3,
        "meta": {"python_dependencies": {"dependencies": ["requests"], "max_version": "3.11"}},
    }
    path = tmp_path / "pack.json"
    path.write_text(json.dumps(doc))
    pack = load_pack(path)
    assert (pack.pack_ref, pack.label, pack.version) == ("core.http", "HTTP", "3")
    assert pack.spec == DependencySpec(dependencies=["requests"], max_version="3.11")
    assert pack.source == str(path)
    assert pack.directory is None


def test_pack_from_api_dict_matches_file_form(tmp_path):
    """The dict and the .json file give the same definition (except for the source)."""
    doc = {"ref": "core.http", "meta": {"python_dependencies": ["requests>=2"]}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    from_dict = pack_from_api(doc)
    assert from_dict.source == "api"
    assert from_dict.model_copy(update={"source": str(path)}) == load_pack(path)


def test_pack_from_api_needs_a_ref():
    """The API form has no directory to fall back on."""
    with pytest.raises(InvalidSpecError) as exc:
        pack_from_api({"meta": {}})
    assert exc.value.field == "ref"


@pytest.mark.parametrize("document", [[], "x", None, 3])
def test_pack_from_api_needs_an_object(document):
    """Anything but a JSON object is refused."""
    with pytest.raises(InvalidSpecError):
        pack_from_api(document)


def test_json_file_that_is_not_an_object(tmp_path):
    """A .json array is not a pack."""
    path = tmp_path / "p.json"
    path.write_text("[1, 2]")
    with pytest.raises(InvalidSpecError):
        load_pack(path)


def test_symlinked_requirements_txt_is_refused(tmp_path):
    """A link could read a file outside the pack (e.g. a secret) into the build context."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret\n")
    d = make_pack(tmp_path, "ref: p\n")
    os.symlink(secret, d / "requirements.txt")
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert exc.value.field == "requirements.txt"


def test_dangling_symlinked_requirements_txt_is_refused(tmp_path):
    """A link is refused whatever it points to; silently dropping requirements is worse."""
    d = make_pack(tmp_path, "ref: p\n")
    os.symlink(tmp_path / "nowhere.txt", d / "requirements.txt")
    with pytest.raises(InvalidSpecError):
        load_pack(d)


def test_symlinked_pack_yaml_is_refused(tmp_path):
    """pack.yaml itself must be a regular file too."""
    real = tmp_path / "elsewhere.yaml"
    real.write_text("ref: p\n")
    d = tmp_path / "linked"
    d.mkdir()
    os.symlink(real, d / "pack.yaml")
    with pytest.raises(InvalidSpecError):
        load_pack(d)


def test_requirements_txt_directory_is_refused(tmp_path):
    """A directory named requirements.txt is not a requirements file."""
    d = make_pack(tmp_path, "ref: p\n")
    (d / "requirements.txt").mkdir()
    with pytest.raises(InvalidSpecError):
        load_pack(d)


def test_non_utf8_requirements_txt_is_refused(tmp_path):
    """Binary junk is refused, not decoded loosely."""
    d = make_pack(tmp_path, "ref: p\n")
    (d / "requirements.txt").write_bytes(b"requests\n\xff\xfe\n")
    with pytest.raises(InvalidSpecError):
        load_pack(d)


@pytest.mark.parametrize(
    "python_dependencies, field",
    [
        ({"dependencies": ["a"], "index_url": "https://evil"}, "meta.python_dependencies.index_url"),
        ({"dependencies": "requests"}, "meta.python_dependencies.dependencies"),
        ({"dependencies": [1]}, "meta.python_dependencies.dependencies.0"),
        ([1, 2], "meta.python_dependencies.dependencies.0"),
        ({"min_version": 3.10}, "meta.python_dependencies.min_version"),
        ("requests", "meta.python_dependencies"),
    ],
)
def test_malformed_python_dependencies_are_refused(python_dependencies, field):
    """Unknown keys, wrong types (and YAML floats like 3.10 == 3.1) never become a spec."""
    with pytest.raises(InvalidSpecError) as exc:
        spec_from_python_dependencies(python_dependencies)
    assert exc.value.field == field


def test_unknown_key_in_pack_yaml_object_form(tmp_path):
    """The same refusal through a pack directory."""
    d = make_pack(tmp_path, "ref: p\nmeta:\n  python_dependencies:\n    dependencies: [a]\n    pip_args: ['--pre']\n")
    with pytest.raises(InvalidSpecError):
        load_pack(d)


def test_yaml_float_version_is_refused_not_truncated(tmp_path):
    """`min_version: 3.10` in YAML is the float 3.1; refusing beats silently asking for Python 3.1."""
    d = make_pack(tmp_path, "ref: p\nmeta:\n  python_dependencies:\n    min_version: 3.10\n")
    with pytest.raises(InvalidSpecError):
        load_pack(d)


@pytest.mark.parametrize("text", ["ref: [unclosed\n", "a: b: c\n", "ref: p\n  bad-indent: x\n - y\n", "\tref: p\n"])
def test_invalid_yaml_is_refused(tmp_path, text):
    """Parse errors become InvalidSpecError, not a yaml traceback."""
    d = make_pack(tmp_path, text)
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert exc.value.field == "pack.yaml"
    assert "cannot be parsed" in str(exc.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "meta: [1]\n"])
def test_pack_yaml_must_be_a_mapping(tmp_path, text):
    """A pack.yaml that is not a mapping (or whose meta is not) is refused."""
    d = make_pack(tmp_path, text)
    with pytest.raises(InvalidSpecError):
        load_pack(d)


def test_invalid_json_is_refused(tmp_path):
    """A broken API document is refused."""
    path = tmp_path / "p.json"
    path.write_text('{"ref": "p",')
    with pytest.raises(InvalidSpecError):
        load_pack(path)


def test_missing_and_unknown_locations(tmp_path):
    """Nonexistent paths and unrelated files are refused, and so is a dir without pack.yaml."""
    with pytest.raises(InvalidSpecError):
        load_pack(tmp_path / "nope")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(InvalidSpecError):
        load_pack(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidSpecError):
        load_pack(empty)
