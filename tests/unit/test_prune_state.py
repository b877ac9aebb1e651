"""The host-wide state the pruner relies on: current-image records and the build gate."""

from __future__ import annotations

import os
import threading
import time

import pytest

from attune_containers.services.build_gate import BuildGate
from attune_containers.services.current import CurrentImages


def test_current_records_round_trip_and_skip_unchanged_writes(tmp_path):
    records = CurrentImages(tmp_path)
    assert records.get("aws.s3") is None and records.all() == {}
    records.set("aws.s3", "p/aws.s3:aaaa")
    records.set("aws_s3", "p/aws_s3:bbbb")
    path = tmp_path / "current" / "aws.s3"
    os.utime(path, (1, 1))
    records.set("aws.s3", "p/aws.s3:aaaa")  # unchanged: not rewritten
    assert path.stat().st_mtime == 1
    records.set("aws.s3", "p/aws.s3:cccc")
    assert records.all() == {("aws.s3", "python"): "p/aws.s3:cccc", ("aws_s3", "python"): "p/aws_s3:bbbb"}
    assert not [p for p in (tmp_path / "current").iterdir() if p.name.startswith(".")]


def test_each_runtime_of_a_pack_has_its_own_current_record_and_pythons_keeps_its_old_file(tmp_path):
    records = CurrentImages(tmp_path)
    records.set("mixed", "p/mixed:aaaa")
    records.set("mixed", "p/mixed:bbbb", runtime="nodejs")
    # Python's record is the file earlier versions wrote: their records keep their meaning.
    assert (tmp_path / "current" / "mixed").read_text() == "p/mixed:aaaa\n"
    assert (tmp_path / "current" / "mixed@nodejs").read_text() == "p/mixed:bbbb\n"
    assert (records.get("mixed"), records.get("mixed", "nodejs")) == ("p/mixed:aaaa", "p/mixed:bbbb")
    assert records.all() == {("mixed", "python"): "p/mixed:aaaa", ("mixed", "nodejs"): "p/mixed:bbbb"}
    for runtime in ("node", "../x", "cobol"):  # only registered names: never a path of a caller's choosing
        with pytest.raises(ValueError):
            records.set("mixed", "p/mixed:cccc", runtime=runtime)


def test_builds_share_the_gate_and_the_pruner_needs_it_alone(tmp_path):
    gate = BuildGate(tmp_path)
    assert gate.idle()
    with gate.shared(), gate.shared():  # two builds at once
        assert not gate.idle()
        with gate.exclusive() as alone:
            assert alone is False
    with gate.exclusive() as alone:
        assert alone is True
        # A build starting now waits until the pruner lets go.
        started = threading.Event()
        entered = threading.Event()

        def build():
            started.set()
            with gate.shared():
                entered.set()

        thread = threading.Thread(target=build)
        thread.start()
        started.wait()
        time.sleep(0.2)
        assert not entered.is_set()
    thread.join(5)
    assert entered.is_set()
