"""Hostile packs against the real CLI and engine: a YAML bomb, 10,000 levels of nesting and an
``actions/`` folder linked out of the pack are each one clear refusal, and never the end of a run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..support import unique_ref
from ..unit.test_pack_input import ALIAS_BOMB, HOST_LINE, deep_block
from .test_cli import cli


def hostile_tree(root: Path) -> tuple[Path, str]:
    tree = root / "packs"
    tree.mkdir()
    for name, text in (("a_bomb", ALIAS_BOMB), ("b_deep", deep_block(10_000))):
        (tree / name).mkdir()
        (tree / name / "pack.yaml").write_text(text)
    good = unique_ref("good")
    (tree / good).mkdir()
    (tree / good / "pack.yaml").write_text(
        f"ref: {good}\nmeta:\n  python_dependencies:\n    dependencies: []\n    min_version: '3.13'\n"
    )
    return tree, good


def test_build_all_reports_the_hostile_packs_and_builds_the_rest(tmp_path, engine):
    tree, good = hostile_tree(tmp_path)
    started = time.monotonic()
    result = cli("build", "--all", str(tree), "--json", state_dir=tmp_path / "state")
    assert time.monotonic() - started < 300
    assert result.returncode == 1, result.stderr  # some packs are invalid: the run reports it
    rows = {p["pack_ref"]: p for p in json.loads(result.stdout)["packs"]}
    assert rows[good]["outcome"] == "built", rows[good]
    assert rows["a_bomb"]["outcome"] == "invalid" and "aliases" in rows["a_bomb"]["error"]
    assert rows["b_deep"]["outcome"] == "invalid" and "nested deeper" in rows["b_deep"]["error"]
    assert "Traceback" not in result.stderr


def test_ls_and_prune_over_a_tree_with_a_deep_pack_do_not_crash(tmp_path, engine):
    tree, good = hostile_tree(tmp_path)
    listed = cli("ls", "--packs-dir", str(tree), "--pack", good, "--json", state_dir=tmp_path / "state")
    assert listed.returncode == 0 and "RecursionError" not in listed.stderr, listed.stderr
    pruned = cli(
        "prune",
        "--dry-run",
        "--keep",
        "1",
        "--no-leftovers",
        "--pack",
        good,
        "--packs-dir",
        str(tree),
        "--json",
        state_dir=tmp_path / "state",
    )
    assert pruned.returncode == 0 and "RecursionError" not in pruned.stderr, pruned.stderr


def test_validate_refuses_the_alias_bomb_at_once_with_exit_2(tmp_path):
    (tmp_path / "bomb").mkdir()
    (tmp_path / "bomb" / "pack.yaml").write_text(ALIAS_BOMB)
    started = time.monotonic()
    result = cli("validate", str(tmp_path / "bomb"))
    assert result.returncode == 2 and "aliases" in result.stderr, result.stderr
    assert time.monotonic() - started < 20  # was 23 s and 2.2 GB, then a MemoryError


def test_an_actions_folder_linked_out_of_the_pack_is_refused_without_echo(tmp_path, engine):
    host = tmp_path / "host"  # stands for /etc
    host.mkdir()
    (host / "passwd.yaml").write_text(f"{HOST_LINE}: [\n")
    tree = tmp_path / "packs"
    (tree / "p").mkdir(parents=True)
    (tree / "p" / "pack.yaml").write_text("ref: p\n")
    os.symlink(host, tree / "p" / "actions")
    result = cli("run", "p.passwd", "--packs-dir", str(tree), state_dir=tmp_path / "state")
    assert result.returncode == 2, result.stderr
    assert "link" in result.stderr and "HOST-ONLY" not in result.stderr + result.stdout


def test_a_pack_that_raises_its_own_limits_is_refused_before_anything_runs(tmp_path, engine):
    """Issue 9: meta.container_limits asked for 64 GiB, a million pids and any named network."""
    tree = tmp_path / "packs"
    for name, limits in (("greedy_mem", "memory: 64g"), ("greedy_pids", "pids: 1000000"), ("greedy_net", "network: some_lan")):
        d = tree / name
        (d / "actions").mkdir(parents=True)
        (d / "pack.yaml").write_text(f"ref: {name}\nmeta:\n  container_limits:\n    {limits}\n")
        (d / "actions" / "x.yaml").write_text("entry_point: x.py\n")
        (d / "actions" / "x.py").write_text("def run():\n    return 1\n")
    for name, needle in (
        ("greedy_mem", "'64g' is above the operator's cap of '2g'"),
        ("greedy_pids", "1000000 is above the operator's cap of 1024"),
        ("greedy_net", "allowed_networks"),
    ):
        result = cli("run", f"{name}.x", "--packs-dir", str(tree), state_dir=tmp_path / "state")
        assert result.returncode == 2 and needle in result.stderr, (name, result.stderr)
        assert "meta.container_limits" in result.stderr
    # The operator may raise the caps (and allow networks): then the same packs are within them.
    raised = cli(
        "run",
        "greedy_pids.x",
        "--packs-dir",
        str(tree),
        state_dir=tmp_path / "state",
        env={"ATTUNE__CONTAINERS__MAX_LIMITS": '{"pids": 1000000}'},
    )
    assert raised.returncode == 0, raised.stderr
