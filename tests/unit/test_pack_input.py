"""Hostile pack input: YAML bombs, deep nesting, huge files and links out of the pack.

Each refusal is an InvalidSpecError (exit 2 in the CLI) that names the file and never quotes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from attune_containers.core.actions import load_action
from attune_containers.core.packs import MAX_PACK_FILE_BYTES, load_pack, scan_pack_tree
from attune_containers.core.safe_yaml import MAX_DEPTH, MAX_NODES, BoundedYAMLError, load_json, load_yaml
from attune_containers.errors import InvalidSpecError

# The 456-byte "billion laughs" of issue 9: 9 levels of 9 aliases each, 9^9 strings once expanded.
ALIAS_BOMB = (
    "\n".join(
        ["ref: bomb", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    )
    + "\n"
)
HOST_LINE = "root:x:0:0:HOST-ONLY-CONTENT:/root:/bin/bash"


def deep_block(levels: int) -> str:
    # "- - - ... 1": block sequences nested on one line, 10,000 levels in 20 kB.
    return "ref: deep\nx:\n  " + "- " * levels + "1\n"


def deep_flow(levels: int) -> str:
    return "ref: deep\nx: " + "[" * levels + "]" * levels + "\n"


def pack(root: Path, name: str, pack_yaml: str) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "pack.yaml").write_text(pack_yaml)
    return directory


def test_the_alias_bomb_is_refused_at_once(tmp_path):
    d = pack(tmp_path, "bomb", ALIAS_BOMB)
    started = time.monotonic()
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert time.monotonic() - started < 1
    assert exc.value.field == "pack.yaml" and "aliases" in str(exc.value)


def test_a_single_harmless_alias_is_refused_too():
    """Refused, not bounded: a pack file has no use for aliases, and a bound is one more number to get right."""
    with pytest.raises(BoundedYAMLError, match="aliases"):
        load_yaml("a: &x 1\nb: *x\n")


@pytest.mark.parametrize("text", [deep_block(10_000), deep_flow(10_000), deep_flow(MAX_DEPTH + 2)])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, text):
    """10,000 levels crashed every caller with RecursionError; now a clear error, well before."""
    d = pack(tmp_path, "deep", text)
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert f"nested deeper than {MAX_DEPTH} levels" in str(exc.value)


def test_nesting_within_the_bound_loads():
    assert load_yaml("x: " + "[" * 20 + "1" + "]" * 20) is not None


def test_too_many_nodes_are_refused():
    with pytest.raises(BoundedYAMLError, match=f"more than {MAX_NODES} nodes"):
        load_yaml("[" + "1," * MAX_NODES + "1]")


def test_a_file_above_the_size_bound_is_refused_unread(tmp_path):
    d = pack(tmp_path, "big", "ref: big\n# " + "x" * MAX_PACK_FILE_BYTES + "\n")
    with pytest.raises(InvalidSpecError, match="larger than"):
        load_pack(d)


def test_a_parse_error_names_line_and_column_but_never_quotes_the_file(tmp_path):
    d = pack(tmp_path, "broken", f"ref: p\n{HOST_LINE}: [\n")
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(d)
    assert "line" in str(exc.value) and "HOST-ONLY" not in str(exc.value)


def test_deep_api_json_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"ref": "p", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InvalidSpecError, match="nested deeper"):
        load_pack(path)
    with pytest.raises(BoundedYAMLError):
        load_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_a_bad_pack_is_one_invalid_row_and_the_rest_of_the_tree_loads(tmp_path):
    pack(tmp_path, "a_bomb", ALIAS_BOMB)
    pack(tmp_path, "b_deep", deep_block(10_000))
    pack(tmp_path, "c_good", "ref: c_good\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "pack.yaml").write_text("ref: d_linked\n")
    os.symlink(outside, tmp_path / "d_linked")
    entries = {e.pack_ref: e for e in scan_pack_tree(tmp_path)}
    assert entries["c_good"].pack is not None and entries["c_good"].error is None
    assert "aliases" in entries["a_bomb"].error
    assert "nested deeper" in entries["b_deep"].error
    assert entries["d_linked"].pack is None and "link" in entries["d_linked"].error


# -- actions -------------------------------------------------------------------------------------


def packs_tree(tmp_path: Path) -> tuple[Path, Path]:
    packs = tmp_path / "packs"
    packs.mkdir()
    d = pack(packs, "p", "ref: p\n")
    (d / "actions").mkdir()
    (d / "actions" / "ok.yaml").write_text("entry_point: ok.py\n")
    (d / "actions" / "ok.py").write_text("def run():\n    return 1\n")
    host = tmp_path / "host"  # stands for /etc: a folder outside the pack
    host.mkdir()
    (host / "passwd.yaml").write_text(f"{HOST_LINE}: [\n")
    (host / "tool.py").write_text("def run():\n    return 'host code'\n")
    (host / "tool.yaml").write_text("entry_point: tool.py\n")
    return packs, d


def test_a_well_formed_action_still_loads(tmp_path):
    packs, _ = packs_tree(tmp_path)
    assert load_action(packs, "p.ok").entry_point == "ok.py"


def test_an_actions_folder_linked_out_of_the_pack_is_not_followed(tmp_path):
    """Issue 16: only the last component was checked; a parse error then echoed a host line."""
    packs, d = packs_tree(tmp_path)
    for child in (d / "actions").iterdir():
        child.unlink()
    (d / "actions").rmdir()
    os.symlink(tmp_path / "host", d / "actions")
    for ref in ("p.passwd", "p.tool"):
        with pytest.raises(InvalidSpecError) as exc:
            load_action(packs, ref)
        assert "link" in str(exc.value) and "HOST-ONLY" not in str(exc.value)


def test_an_entry_point_through_a_linked_folder_is_refused(tmp_path):
    packs, d = packs_tree(tmp_path)
    os.symlink(tmp_path / "host", d / "actions" / "lib")
    (d / "actions" / "via.yaml").write_text("entry_point: lib/tool.py\n")
    with pytest.raises(InvalidSpecError) as exc:
        load_action(packs, "p.via")
    assert exc.value.field == "entry_point"


def test_a_linked_action_yaml_is_refused(tmp_path):
    packs, d = packs_tree(tmp_path)
    os.symlink(tmp_path / "host" / "passwd.yaml", d / "actions" / "passwd.yaml")
    with pytest.raises(InvalidSpecError) as exc:
        load_action(packs, "p.passwd")
    assert "HOST-ONLY" not in str(exc.value)


@pytest.mark.parametrize(
    "text", [ALIAS_BOMB.replace("ref: bomb", "entry_point: ok.py"), deep_flow(10_000).replace("ref: deep", "entry_point: ok.py")]
)
def test_hostile_action_yaml_is_refused(tmp_path, text):
    packs, d = packs_tree(tmp_path)
    (d / "actions" / "bad.yaml").write_text(text)
    started = time.monotonic()
    with pytest.raises(InvalidSpecError) as exc:
        load_action(packs, "p.bad")
    assert time.monotonic() - started < 2 and exc.value.field == "action"


@pytest.mark.parametrize("timeout", [".nan", ".inf", "-1", "1e12", "true"])
def test_an_action_timeout_that_is_not_a_sane_number_is_refused(tmp_path, timeout):
    packs, d = packs_tree(tmp_path)
    (d / "actions" / "t.yaml").write_text(f"entry_point: ok.py\ntimeout: {timeout}\n")
    with pytest.raises(InvalidSpecError) as exc:
        load_action(packs, "p.t")
    assert exc.value.field == "timeout"


def test_the_bomb_is_456_bytes_or_so():
    """The test input is the issue's: a few hundred bytes, not a big file."""
    assert len(ALIAS_BOMB) < 600
    json.dumps(ALIAS_BOMB)
