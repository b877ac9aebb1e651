"""The fetch container's streams are bounded whatever it writes."""

from __future__ import annotations

import io

import pytest

from attune_containers.errors import BuildError
from attune_containers.services.fetch_output import KEPT_LINES, LINE_LIMIT, FetchOutput


def test_stdout_is_written_until_the_limit_then_refused():
    out = io.BytesIO()
    collect = FetchOutput(out, limit=10)
    collect(1, b"12345")
    collect(1, b"67890")
    with pytest.raises(BuildError, match="more than 10 bytes"):
        collect(1, b"x")
    assert out.getvalue() == b"1234567890"


def test_a_line_that_never_ends_is_cut_not_kept_growing():
    told: list[str] = []
    collect = FetchOutput(io.BytesIO(), limit=0, on_log=told.append)
    for _ in range(100):
        collect(2, b"y" * 1000)  # 100 kB without a newline
    assert all(len(line) <= LINE_LIMIT for line in collect.log)
    assert len(collect._partial) <= LINE_LIMIT
    assert told and all(set(line) == {"y"} for line in told)


def test_lines_are_scrubbed_and_only_the_last_are_kept():
    collect = FetchOutput(io.BytesIO(), limit=0, scrub=lambda line: line.replace("secret", "***"))
    collect(2, b"".join(b"line %d secret\n" % i for i in range(KEPT_LINES + 50)))
    assert len(collect.log) == KEPT_LINES
    assert collect.log[-1] == f"line {KEPT_LINES + 49} ***"
    assert not any("secret" in line for line in collect.log)
