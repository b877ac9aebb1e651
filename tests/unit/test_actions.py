"""Action resolution (core/actions.py): an action ref names its pack by the longest known pack ref
that prefixes it; every name and path in it is hostile. (Links out of the pack and hostile YAML are
in test_pack_input.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attune_containers.core.actions import discover_packs, load_action, split_action_ref
from attune_containers.errors import InvalidSpecError


def make_pack(root: Path, ref: str, actions: dict[str, str] | None = None) -> Path:
    directory = root / ref
    (directory / "actions").mkdir(parents=True)
    (directory / "pack.yaml").write_text(f"ref: {ref}\n")
    for name, yaml in (actions or {}).items():
        (directory / "actions" / f"{name}.yaml").write_text(yaml)
        (directory / "actions" / f"{name}.py").write_text("def run():\n    return 1\n")
    return directory


@pytest.mark.parametrize(
    ("action_ref", "expected"),
    [
        ("aws.s3.upload", ("aws.s3", "upload")),
        ("aws.ec2", ("aws", "ec2")),
        ("aws.s3.x-y_z", ("aws.s3", "x-y_z")),
        ("a.aws", ("a", "aws")),
    ],
)
def test_the_longest_known_pack_ref_wins(action_ref, expected):
    assert split_action_ref(action_ref, {"aws", "aws.s3", "a"}) == expected


def test_a_pack_ref_that_is_only_a_string_prefix_does_not_match():
    """``awsx.run`` is not an action of pack ``aws``: the pack ref must end at a dot."""
    with pytest.raises(InvalidSpecError, match="no known pack"):
        split_action_ref("awsx.run", {"aws"})
    with pytest.raises(InvalidSpecError, match="not a valid action name"):
        split_action_ref("aws.s3_extra.go", {"aws", "aws.s3"})  # aws's "s3_extra.go", never aws.s3's


@pytest.mark.parametrize(
    "action_ref",
    [
        "",
        "p",
        "p.",
        "nopack.echo",
        "p.a/b",
        "p.../etc",
        "p.a.b",
        "p.-x",
        "p." + "a" * 129,
        "p." + "a" * 300,
        "p.a b",
        "p.a\x00",
        "p.é",
    ],
)
def test_bad_action_refs_are_invalid_input(action_ref):
    with pytest.raises(InvalidSpecError) as exc:
        split_action_ref(action_ref, {"p"})
    assert exc.value.field == "action_ref"


@pytest.mark.parametrize("action_ref", [None, 3, b"p.echo", ["p.echo"]])
def test_an_action_ref_that_is_not_a_string_is_invalid_input(action_ref):
    with pytest.raises(InvalidSpecError):
        split_action_ref(action_ref, {"p"})


def test_load_action_resolves_dotted_pack_refs_in_a_tree(tmp_path):
    make_pack(tmp_path, "aws", {"s3": "entry_point: s3.py\n"})
    make_pack(tmp_path, "aws.s3", {"upload": "entry_point: upload.py:send\ntimeout: 12\n"})
    upload = load_action(tmp_path, "aws.s3.upload")
    assert (upload.pack_ref, upload.name, upload.entry_point, upload.function, upload.timeout) == (
        "aws.s3",
        "upload",
        "upload.py",
        "send",
        12.0,
    )
    assert upload.pack_dir == tmp_path / "aws.s3"
    s3 = load_action(tmp_path, "aws.s3")  # the action s3 of pack aws: no pack is named like the whole ref
    assert (s3.pack_ref, s3.name) == ("aws", "s3")


def test_an_unknown_action_of_a_known_pack_is_invalid_input(tmp_path):
    make_pack(tmp_path, "p", {"echo": "entry_point: echo.py\n"})
    with pytest.raises(InvalidSpecError, match="has no action 'missing'") as exc:
        load_action(tmp_path, "p.missing")
    assert exc.value.field == "action_ref"


def test_a_yml_action_file_is_found_too(tmp_path):
    d = make_pack(tmp_path, "p")
    (d / "actions" / "go.yml").write_text("entry_point: go.py\n")
    (d / "actions" / "go.py").write_text("print(1)\n")
    assert load_action(tmp_path, "p.go").entry_point == "go.py"


def test_discovery_skips_folders_that_cannot_be_packs(tmp_path):
    make_pack(tmp_path, "good")
    make_pack(tmp_path, "bad name")  # not a valid ref
    (tmp_path / "no_pack_yaml").mkdir()
    (tmp_path / "a_file").write_text("ref: a_file\n")
    os.symlink(tmp_path / "good", tmp_path / "linked")
    assert discover_packs(tmp_path) == {"good": tmp_path / "good"}
    with pytest.raises(InvalidSpecError, match="not a directory"):
        discover_packs(tmp_path / "a_file")


@pytest.mark.parametrize(
    ("entry_point", "field"),
    [
        ("/etc/passwd", "entry_point"),
        ("../pack.yaml", "entry_point"),
        ("sub/../../x.py", "entry_point"),
        ("run.py:not-a-name", "entry_point"),
        ("run.py:1x", "entry_point"),
        ("missing.py", "entry_point"),
        ("", "entry_point"),
        ("[1]", "entry_point"),
    ],
)
def test_hostile_entry_points_are_refused(tmp_path, entry_point, field):
    d = make_pack(tmp_path, "p")
    (d / "actions" / "run.py").write_text("def run():\n    return 1\n")
    (d / "actions" / "a.yaml").write_text(f"entry_point: {entry_point!r}\n" if entry_point != "[1]" else "entry_point: [1]\n")
    with pytest.raises(InvalidSpecError) as exc:
        load_action(tmp_path, "p.a")
    assert exc.value.field == field


def test_an_entry_point_in_a_subfolder_is_normalised(tmp_path):
    d = make_pack(tmp_path, "p")
    (d / "actions" / "lib").mkdir()
    (d / "actions" / "lib" / "tool.py").write_text("def main():\n    return 1\n")
    (d / "actions" / "t.yaml").write_text("entry_point: lib//tool.py\n")
    assert load_action(tmp_path, "p.t").entry_point == "lib/tool.py"


def test_a_runner_that_is_not_python_is_refused(tmp_path):
    make_pack(tmp_path, "p", {"sh": "entry_point: sh.py\nrunner_type: local-shell-cmd\n"})
    with pytest.raises(InvalidSpecError) as exc:
        load_action(tmp_path, "p.sh")
    assert exc.value.field == "runner_type"


def test_secret_parameters_are_the_ones_marked_secret(tmp_path):
    make_pack(
        tmp_path,
        "p",
        {
            "s": "entry_point: s.py\nparameters:\n  properties:\n"
            "    token: {type: string, secret: true}\n"
            "    name: {type: string}\n"
            "    other: {secret: 'yes'}\n"
        },
    )
    assert load_action(tmp_path, "p.s").secret_parameters == ("token",)


def test_an_action_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    make_pack(tmp_path, "p", {"l": "- entry_point: l.py\n"})
    with pytest.raises(InvalidSpecError, match="must hold a mapping"):
        load_action(tmp_path, "p.l")
