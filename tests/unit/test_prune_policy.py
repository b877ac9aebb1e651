"""Prune policies as pure decisions: durations, validation, and which image each policy selects."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from attune_containers import cli
from attune_containers.core.packs import scan_pack_tree
from attune_containers.core.prune_policy import (
    PackImage,
    PrunePolicy,
    format_duration,
    parse_duration,
    select_images,
)
from attune_containers.errors import InvalidPolicyError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30),
        ("90m", 5400),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1d12h", 129600),
        (" 0s ", 0),
        ("1h30m15s", 5415),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "1.5h", "7 d", "1y", "7days", "1d-2h", "99999999999w"])
def test_bad_durations_are_refused(text):
    with pytest.raises(InvalidPolicyError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0, 1, 59, 3600, 129600, 694861])
def test_format_duration_reads_back(seconds):
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"keep": -1}, "keep"),
        ({"older_than": timedelta(seconds=-1)}, "negative"),
        ({"orphans": True}, "packs_dir"),
        ({"pack": "../etc"}, "pack"),
        ({"packs_dir": "/nonexistent/packs"}, "not a directory"),
    ],
)
def test_bad_policies_raise_one_error_type(fields, message):
    with pytest.raises(InvalidPolicyError, match=message):
        PrunePolicy(**fields)


def image(pack: str, n: int, *, age_days: float, used_days_ago: float | None = None) -> PackImage:
    return PackImage(
        id=f"sha256:{pack}{n}",
        reference=f"p/{pack}:{n}",
        pack_ref=pack,
        created=NOW - timedelta(days=age_days),
        last_used=NOW - timedelta(days=used_days_ago) if used_days_ago is not None else None,
    )


def decide(images, current=None, **policy):
    extra = {k: policy.pop(k) for k in ("existing_packs", "unresolved") if k in policy}
    verdicts = select_images(images, PrunePolicy(**policy), current=current or {}, now=NOW, **extra)
    return {v.image.reference: v.action for v in verdicts}, {v.image.reference: v.reason for v in verdicts}


# Pack "a": four images, newest a4; a1 (the oldest) is current.
A = [image("a", n, age_days=10 - n) for n in (1, 2, 3, 4)]
CURRENT = {"a": {"p/a:1"}}


def test_no_removal_policy_keeps_everything():
    actions, reasons = decide(A, CURRENT)
    assert set(actions.values()) == {"keep"}
    assert "no removal policy" in reasons["p/a:4"]


def test_keep_counts_the_current_image_among_the_kept():
    actions, reasons = decide(A, CURRENT, keep=2)
    # a1 (current) takes one place, a4 (the newest) the other.
    assert actions == {"p/a:4": "keep", "p/a:3": "remove", "p/a:2": "remove", "p/a:1": "keep"}
    assert reasons["p/a:1"] == "current image of its pack"
    assert reasons["p/a:3"] == "beyond the newest 2 of its pack"


def test_keep_zero_still_keeps_the_current_image_unless_asked():
    assert decide(A, CURRENT, keep=0)[0] == {"p/a:4": "remove", "p/a:3": "remove", "p/a:2": "remove", "p/a:1": "keep"}
    assert set(decide(A, CURRENT, keep=0, include_current=True)[0].values()) == {"remove"}
    # With include_current the current image is just an image: the newest N stay.
    assert decide(A, CURRENT, keep=1, include_current=True)[0]["p/a:4"] == "keep"


def test_older_than_counts_the_last_use_not_only_creation():
    images = [
        image("b", 1, age_days=30),  # old, never used
        image("b", 2, age_days=30, used_days_ago=1),  # old, used yesterday
        image("b", 3, age_days=2),  # new
    ]
    actions, reasons = decide(images, older_than=timedelta(days=7))
    assert actions == {"p/b:1": "remove", "p/b:2": "keep", "p/b:3": "keep"}
    assert reasons["p/b:2"].startswith("used within 7d")
    assert reasons["p/b:3"].startswith("created within 7d")
    assert reasons["p/b:1"] == "not used or created within 7d"


def test_orphans_only_for_packs_missing_and_never_for_unresolved_ones():
    images = [image("gone", 1, age_days=1), image("here", 1, age_days=1), image("broken", 1, age_days=1)]
    actions, reasons = decide(
        images, orphans=True, packs_dir=".", existing_packs={"here", "broken"}, unresolved={"broken": "pack.yaml does not load"}
    )
    assert actions == {"p/gone:1": "remove", "p/here:1": "keep", "p/broken:1": "keep"}
    assert reasons["p/here:1"] == "its pack exists in the packs tree"


def test_unresolved_current_image_is_skipped_not_guessed():
    images = [image("u", 1, age_days=3), image("u", 2, age_days=1)]
    actions, reasons = decide(images, keep=1, unresolved={"u": "its spec does not resolve"})
    assert actions == {"p/u:2": "keep", "p/u:1": "skip"}
    assert "current image is unknown" in reasons["p/u:1"]


def test_criteria_combine_as_and():
    images = [
        image("c", 1, age_days=30),
        image("c", 2, age_days=20, used_days_ago=1),
        image("c", 3, age_days=10),
        image("c", 4, age_days=1),
    ]
    # Beyond the newest 1 AND unused for 7 days: c2 was used yesterday, so only c1 and c3 go.
    actions, reasons = decide(images, keep=1, older_than=timedelta(days=7))
    assert actions == {"p/c:4": "keep", "p/c:3": "remove", "p/c:2": "keep", "p/c:1": "remove"}
    assert reasons["p/c:1"] == "beyond the newest 1 of its pack; not used or created within 7d"


def test_pack_limits_the_decision_to_one_pack():
    actions, _ = decide(A + [image("other", 1, age_days=50)], CURRENT, keep=0, pack="other")
    assert actions == {"p/other:1": "remove"}


def test_scan_pack_tree_keeps_broken_packs_by_folder_name(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "pack.yaml").write_text("ref: good.ref\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pack.yaml").write_text("ref: [unclosed\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("not a pack")
    entries = {e.pack_ref: e for e in scan_pack_tree(tmp_path)}
    assert set(entries) == {"good.ref", "broken", "empty"}
    assert entries["good.ref"].error is None
    assert entries["broken"].error and entries["empty"].error


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--older-than", "7days"], "not a duration"),
        (["prune", "--keep", "-1"], "keep"),
        (["prune", "--orphans"], "packs_dir"),
        (["prune", "--pack", "a/b", "--keep", "1"], "pack"),
        (["prune", "--leftover-grace", "soon"], "not a duration"),
        (["ls", "--packs-dir", "/nonexistent/packs"], "not a directory"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2_before_asking_the_engine(argv, message, monkeypatch, capsys):
    # An engine that cannot answer: reaching it would exit 3, not 2.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_without_an_engine_exits_3(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("ATTUNE__CONTAINERS__STATE_DIR", str(tmp_path))
    assert cli.main(["prune", "--keep", "1", "--dry-run"]) == 3
    assert cli.main(["ls"]) == 3
    assert not os.listdir(tmp_path)  # nothing recorded, nothing locked
