"""The service's JSON log lines."""

from __future__ import annotations

import io
import json
import logging

import pytest

from attune_containers import logs


@pytest.fixture
def captured():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    logs.configure("info", stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_its_extra_fields(captured):
    logging.getLogger("attune_containers.access").info("GET /x 200", extra={"execution_id": "e-1", "status_code": 200})
    (line,) = lines(captured)
    assert line["message"] == "GET /x 200" and line["level"] == "info" and line["logger"] == "attune_containers.access"
    assert line["execution_id"] == "e-1" and line["status_code"] == 200 and line["time"].endswith("+00:00")


def test_the_level_filters_and_an_exception_travels_inside_the_line(captured):
    log = logging.getLogger("attune_containers.service")
    log.debug("not shown")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("failed")
    (line,) = lines(captured)
    assert line["level"] == "error" and "RuntimeError: boom" in line["exception"]


def test_uvicorns_coloured_copy_is_dropped(captured):
    logging.getLogger("uvicorn.error").info("Started", extra={"color_message": "\x1b[36mStarted\x1b[0m"})
    assert "color_message" not in lines(captured)[0]


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError):
        logs.configure("verbose")
