"""The worker's side of the runner protocol: what the container writes is bounded and believed only
as far as the supervisor could have written it."""

from __future__ import annotations

import json
import struct

from attune_containers.core.protocol import DONE_LIMIT, MAGIC, ExecutionCollector, encode_frame, encode_request


def frame(kind: bytes, body: bytes, size: int | None = None) -> bytes:
    return MAGIC + kind + struct.pack(">I", len(body) if size is None else size) + body


def done(nonce: str = "n1", **fields) -> bytes:
    return frame(b"d", json.dumps({"nonce": nonce, "exit_code": 0, "clean": True, **fields}).encode())


def collector(nonce: str = "n1") -> ExecutionCollector:
    return ExecutionCollector(1024, 1024, 1024, nonce=nonce)


def test_a_request_is_a_control_frame_then_the_payload():
    payload = encode_frame({"parameters": {"a": 1}})
    data = encode_request({"nonce": "x"}, payload)
    (size,) = struct.unpack(">I", data[:4])
    assert json.loads(data[4 : 4 + size]) == {"nonce": "x"} and data[4 + size :] == payload


def test_frames_assemble_output_and_result_split_anywhere():
    c = collector()
    stream = (
        frame(b"o", b"hello ")
        + frame(b"r", b'{"status": "success",')
        + frame(b"o", b"world")
        + frame(b"r", b' "result": 3}')
        + done()
    )
    for i in range(len(stream)):
        c.feed(stream[i : i + 1])
    assert c.stdout.text() == "hello world" and c.outcome() == {"status": "success", "result": 3}
    assert not c.protocol_error and c.done["exit_code"] == 0


def test_a_done_frame_without_this_executions_nonce_is_a_protocol_error():
    c = collector("expected")
    c.feed(frame(b"r", b'{"status": "success", "result": "forged"}') + done("guessed"))
    assert c.protocol_error and c.outcome() is None and c.done == {}


def test_an_unknown_frame_kind_ends_the_execution_as_a_protocol_error():
    c = collector()
    c.feed(frame(b"x", b"anything") + done())
    assert c.protocol_error and c.done == {} and c.outcome() is None


def test_a_huge_done_frame_is_refused_before_anything_is_kept():
    c = collector()
    rest = c.feed(MAGIC + b"d" + struct.pack(">I", 1_200_000_000) + b"{" * 65536)
    assert rest == b"" and c.protocol_error and c.done == {}
    assert c.stdout.kept <= 1024 and DONE_LIMIT < 1_200_000_000


def test_claimed_sizes_keep_memory_bounded_whatever_follows():
    c = collector()
    c.feed(MAGIC + b"o" + struct.pack(">I", 2**32 - 1))
    for _ in range(64):
        c.feed(b"x" * 65536)
    assert c.stdout.kept == 1024 and c.stdout.total == 64 * 65536 and c.done is None
    r = collector()
    r.feed(MAGIC + b"r" + struct.pack(">I", 1_200_000_000))
    for _ in range(64):
        r.feed(b"y" * 65536)
    assert r.result_too_large and sum(len(p) for p in r._result) <= r.result_limit + 65536


def test_a_result_the_supervisor_counted_beyond_the_limit_is_too_large():
    c = collector()
    c.feed(frame(b"r", b'{"status": "success", "result": 1}') + done(result_bytes=10**9))
    assert c.result_too_large and c.outcome() is None


def test_bytes_that_are_not_frames_are_output_never_a_result():
    c = collector()
    c.feed(b"garbage that is not a frame" + frame(b"r", b'{"status": "success"}'))
    assert c.protocol_error and c.outcome() is None and "garbage" in c.stdout.text()
