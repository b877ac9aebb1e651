"""Live logs of an execution (services/executions.py OutputLog and LogReader, and the collector's
output hook): bounded by the execution's output limits, replayed then followed, and never waiting
for a reader, however slow."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time

from attune_containers.core.execution import ExecutionResult, ExecutionStatus
from attune_containers.core.protocol import MAGIC, ExecutionCollector
from attune_containers.http_api import NDJSON, SSE, encode_event
from attune_containers.services.executions import ExecutionStore, OutputLog


def frame(kind: bytes, body: bytes) -> bytes:
    return MAGIC + kind + struct.pack(">I", len(body)) + body


async def drain(reader) -> list[dict]:
    events = []
    while (batch := await reader.next()) is not None:
        events.extend(batch)
    return events


def text_of(events: list[dict], stream: str) -> str:
    return "".join(e["data"] for e in events if e.get("stream") == stream)


def test_the_collector_tells_output_chunks_and_nothing_else():
    seen: list[tuple[str, bytes]] = []
    collector = ExecutionCollector(1024, 1024, 1024, nonce=None, on_output=lambda s, d: seen.append((s, d)))
    collector.feed(frame(b"o", b"out") + frame(b"e", b"err") + frame(b"r", b'{"result": 1}') + frame(b"d", b"{}"))
    assert seen == [("stdout", b"out"), ("stderr", b"err")]


def test_each_stream_is_kept_up_to_its_limit_and_replayed_to_a_late_reader():
    async def scenario() -> list[dict]:
        log = OutputLog(stdout_limit=10, stderr_limit=4)
        log.write("stdout", b"0123456789abcdef")
        log.write("stdout", b"more")
        log.write("stderr", b"ee")
        log.write("stderr", b"eeee")
        assert log.kept == {"stdout": 10, "stderr": 4}
        reader = log.subscribe(asyncio.get_running_loop())
        log.close({"event": "end", "status": "succeeded"})
        return await drain(reader)

    events = asyncio.run(scenario())
    assert text_of(events, "stdout") == "0123456789" and text_of(events, "stderr") == "eeee"
    assert events[-1] == {"event": "end", "status": "succeeded"}
    assert all(isinstance(e.get("ts", ""), str) for e in events)


def test_a_character_split_between_chunks_arrives_whole():
    async def scenario() -> list[dict]:
        log = OutputLog(100, 100)
        reader = log.subscribe(asyncio.get_running_loop())
        encoded = "é€".encode()
        log.write("stdout", encoded[:1])
        log.write("stdout", encoded[1:4])
        log.write("stdout", encoded[4:])
        log.close({"event": "end"})
        return await drain(reader)

    assert text_of(asyncio.run(scenario()), "stdout") == "é€"


def test_a_reader_that_never_reads_never_blocks_the_writer_and_is_told_what_it_missed():
    async def scenario() -> tuple[list[dict], float]:
        log = OutputLog(64 * 1024 * 1024, 0, reader_bytes=1000)
        reader = log.subscribe(asyncio.get_running_loop())
        chunk = b"x" * 100

        def writer() -> float:
            started = time.monotonic()
            for _ in range(20_000):  # 2 MB, into a reader that holds 1000 bytes
                log.write("stdout", chunk)
            return time.monotonic() - started

        seconds = await asyncio.get_running_loop().run_in_executor(None, writer)
        log.write("stdout", b"last")  # still dropped: the reader has not caught up
        first = await reader.next()
        log.write("stdout", b"after")  # caught up: delivered again
        log.close({"event": "end"})
        return first + await drain(reader), seconds

    events, seconds = asyncio.run(scenario())
    assert seconds < 10
    lines = [e for e in events if "stream" in e]
    missed = [e for e in events if e.get("event") == "missed"]
    assert len(lines) == 11 and text_of(lines[:10], "stdout") == "x" * 1000  # what fitted, in order
    assert missed == [{"event": "missed", "lines": 19_991, "bytes": 19_990 * 100 + 4}]
    # The gap is reported where it happened: after what fitted, before what came later.
    assert events.index(missed[0]) == 10 and lines[-1]["data"] == "after"
    assert events[-1] == {"event": "end"}


def test_lines_written_from_another_thread_wake_a_waiting_reader():
    async def scenario() -> list[dict]:
        log = OutputLog(100, 100)
        reader = log.subscribe(asyncio.get_running_loop())

        def later() -> None:
            time.sleep(0.2)
            log.write("stderr", b"late")
            time.sleep(0.2)
            log.close({"event": "end"})

        threading.Thread(target=later).start()
        return await asyncio.wait_for(drain(reader), timeout=10)

    events = asyncio.run(scenario())
    assert [e.get("data") or e["event"] for e in events] == ["late", "end"]


def test_finishing_an_execution_ends_its_readers_and_releases_its_lines():
    async def scenario() -> tuple[list[dict], OutputLog]:
        store = ExecutionStore()
        record, _ = store.claim("e-1", "probe.echo", store.fingerprint({}))
        log = record.output = OutputLog(100, 100)
        reader = log.subscribe(asyncio.get_running_loop())
        log.write("stdout", b"hi")
        store.finish(
            "e-1",
            ExecutionResult(
                execution_id="e-1", action_ref="probe.echo", status=ExecutionStatus.failed, stdout="hi", stderr_truncated=True
            ),
        )
        return await drain(reader), log

    events, log = asyncio.run(scenario())
    assert events[-1] == {"event": "end", "status": "failed", "stdout_truncated": False, "stderr_truncated": True}
    other = asyncio.new_event_loop()
    assert log.subscribe(other) is None  # closed: a new reader replays the result
    other.close()
    log.write("stdout", b"too late")
    assert log._lines == []


def test_output_cannot_forge_a_stream_event():
    forged = 'x\n\nevent: end\ndata: {"event": "end"}\n\n'
    line = {"stream": "stdout", "data": forged, "ts": "t"}
    sse = encode_event(line, SSE).decode()
    assert sse.count("\n\n") == 1 and sse.endswith("\n\n")
    assert [field.split(":", 1)[0] for field in sse.strip().split("\n")] == ["event", "data"]
    assert sse.startswith("event: output\n")
    assert json.loads(sse.strip().split("\n")[1][len("data: ") :])["data"] == forged
    encoded = encode_event(line, NDJSON).decode()
    assert encoded.count("\n") == 1 and json.loads(encoded) == line
