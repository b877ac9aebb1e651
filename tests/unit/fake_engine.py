"""An in-memory stand-in for our engine layer (attune_containers/engine.py), for fast unit tests of
the pure state machines above it: the warm pool, the frame protocol as the worker reads it, and the
classification of results. The engine's own behaviour stays tested against the real engine
(tests/engine); this double only answers the ``Engine`` methods the pool and the runner call.

Its containers run a fake runner loop that speaks the real protocol (core/protocol.py): a request is
a control frame then a payload frame, each ``length(4, big endian) JSON``; the replies are frames
``MAGIC kind(1) length(4) payload`` of kinds ``o``/``e``/``r``/``d``, and the ``d`` frame echoes the
control's nonce, as the supervisor in attune_containers/runtimes/python/loop/attune_wrapper.py writes them. What
an execution does is read from its parameters (``probe``): print, return, raise, hang, leave
processes behind, be killed for memory, forge the end, write garbage... so a test says what the
action does and checks what the worker makes of it.

Modelled on docker-py's tests/unit/fake_api_client.py: the real interface, canned behaviour, and a
record of every call so tests can say what the code asked the engine to do.
"""

from __future__ import annotations

import itertools
import json
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from attune_containers.core.protocol import DONE, ERRORS, MAGIC, OUTPUT, RESULT
from attune_containers.engine import ContainerRecord, ContainerRun, ContainerState, ImageRecord
from attune_containers.errors import EngineError

Program = Callable[[dict[str, Any], dict[str, Any]], "Reply"]


@dataclass
class Reply:
    """What the fake runner loop sends back for one request, and what happens to the container."""

    frames: list[tuple[bytes, bytes]] = field(default_factory=list)  # (kind, payload) before the end
    done: dict[str, Any] | None = None  # the done document (the nonce is added unless given); None: no end
    raw: bytes = b""  # bytes written after the frames, as they are (a loop that broke)
    dies: bool = False  # the container ends after this (EOF on its stream)
    oom: bool = False  # the engine records an OOM kill of this container
    exit_code: int = 0  # the container's own exit code when it dies
    delay: float = 0.0  # seconds before anything is sent


def frame(kind: bytes, payload: bytes) -> bytes:
    return MAGIC + kind + struct.pack(">I", len(payload)) + payload


def probe(control: dict[str, Any], request: dict[str, Any]) -> Reply:
    """The default program: what the action does is told by its parameters.

    ``stdout``/``stderr``: text it prints. ``result``: what it returns (default: its parameters).
    ``raise``: ``"Kind: message"`` it raises. ``script``: a script without a result (its stdout is
    parsed). ``exit``: its exit code. ``hang``: never ends (the worker's deadline).
    ``supervisor_timeout``: the supervisor killed it at its own deadline. ``dirty``: it left a
    process behind (the container is not reused). ``killed``: SIGKILL (with ``oom``: by the kernel,
    for memory, the container survives). ``oom_container``: the whole container is killed for
    memory. ``crash``: the container ends under it. ``forge``: a done frame with a guessed nonce.
    ``garbage``: bytes that are not frames. ``trailing``: a frame after the end. ``raw_result``:
    that many bytes written straight into the result pipe (past the child's own check).
    ``result_bytes``: what the supervisor reports having counted. ``sleep``: seconds before the reply.
    """
    p = request.get("parameters") or {}
    frames: list[tuple[bytes, bytes]] = []
    if "stdout" in p:
        frames.append((OUTPUT, str(p["stdout"]).encode()))
    if "stderr" in p:
        frames.append((ERRORS, str(p["stderr"]).encode()))
    done: dict[str, Any] = {
        "exit_code": int(p.get("exit", 0)),
        "signal": None,
        "timed_out": False,
        "leftover_processes": 0,
        "result_bytes": 0,
        "elapsed": 0.001,
        "clean": True,
        "residue": [],
    }
    reply = Reply(frames=frames, done=done, delay=float(p.get("sleep", 0)))
    if p.get("hang"):
        return Reply(frames=frames, done=None)
    if p.get("crash"):
        return Reply(frames=frames, done=None, dies=True, exit_code=137)
    if p.get("oom_container"):
        return Reply(frames=frames, done=None, dies=True, oom=True, exit_code=137)
    if "raw_result" in p:
        body = b"x" * int(p["raw_result"])
        frames.append((RESULT, body))
        done["result_bytes"] = len(body)
    elif "raise" in p:
        kind, _, message = str(p["raise"]).partition(": ")
        outcome = {"status": "error", "error": {"type": kind, "message": message, "traceback": "Traceback ..."}}
        done["exit_code"] = int(p.get("exit", 1))
        frames.append((RESULT, json.dumps(outcome).encode()))
    elif p.get("killed") or p.get("supervisor_timeout"):
        done.update(exit_code=137, signal=9, clean=False, timed_out=bool(p.get("supervisor_timeout")))
        reply.oom = bool(p.get("oom"))
    else:
        limit = int((request.get("action") or {}).get("result_limit", 1 << 20))
        outcome = {"status": "script"} if p.get("script") else {"status": "success", "result": p.get("result", p)}
        encoded = json.dumps(outcome).encode()
        if len(encoded) > limit:  # as the child's send_result: refused before it leaves the child
            encoded = json.dumps(
                {
                    "status": "error",
                    "error": {
                        "type": "ResultTooLarge",
                        "message": f"the result is {len(encoded)} bytes; the limit is {limit}",
                        "traceback": "",
                    },
                }
            ).encode()
        frames.append((RESULT, encoded))
    if "result_bytes" in p:
        done["result_bytes"] = int(p["result_bytes"])
    else:
        done["result_bytes"] = sum(len(body) for kind, body in frames if kind == RESULT)
    if p.get("dirty"):
        done.update(leftover_processes=1, clean=False)
    if p.get("forge"):
        done["nonce"] = "guessed"
    if p.get("garbage"):
        reply.raw = str(p["garbage"]).encode()
        reply.done = None
    if p.get("trailing"):
        reply.raw = frame(OUTPUT, b"after the end")
    return reply


class FakeStreams:
    """AttachedStreams of a fake container: stdin in, demultiplexed (stream, bytes) frames out."""

    def __init__(self, container: FakeContainer) -> None:
        self._container = container
        self.closed = False
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.closed or self._container.ended:
            raise EngineError("writing to the container failed: [Errno 32] Broken pipe")
        self.sent.append(data)
        self._container.stdin(data)

    def send_stdin(self, data: bytes) -> None:
        self.send(data)
        self._container.stdin_closed = True

    def read(self, timeout: float) -> list[tuple[int, bytes]] | None:
        if self.closed:
            return None
        return self._container.take_output(timeout)

    def has_pending(self) -> bool:
        return self.closed or self._container.has_output()

    def close(self) -> None:
        self.closed = True


class FakeContainer:
    """One container: its run, its state, and a fake runner loop behind its stdin."""

    def __init__(self, engine: FakeEngine, container_id: str, run: ContainerRun, auto_remove: bool) -> None:
        self.engine = engine
        self.id = container_id
        self.run = run
        self.auto_remove = auto_remove
        self.status = "created"
        self.exit_code: int | None = None
        self.oom_killed = False
        self.ended = False
        self.stdin_closed = False
        self.requests: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._input = b""
        self._output: deque[tuple[int, bytes]] = deque()
        self._eof = False
        self._cond = threading.Condition()

    # -- the fake runner loop ------------------------------------------------------------------

    def stdin(self, data: bytes) -> None:
        self._input += data
        while True:
            parsed = _two_frames(self._input)
            if parsed is None:
                return
            control, request, self._input = parsed
            self.requests.append((control, request))
            reply = self.engine.program(control, request)
            if reply.delay:
                threading.Timer(reply.delay, self._answer, args=(control, reply)).start()
            else:
                self._answer(control, reply)

    def _answer(self, control: dict[str, Any], reply: Reply) -> None:
        data = b"".join(frame(kind, body) for kind, body in reply.frames)
        if reply.done is not None:
            data += frame(DONE, json.dumps({"nonce": control.get("nonce"), **reply.done}).encode())
        data += reply.raw
        self.emit(1, data)
        if reply.oom:
            self.engine.oom_events.add(self.id)
        if reply.dies:
            self.end(reply.exit_code, oom=reply.oom)
        elif control.get("last") and reply.done is not None:
            self.end(reply.done.get("exit_code", 0))

    def emit(self, stream: int, data: bytes) -> None:
        """Output in chunks of the engine's ``chunk`` size: the worker must reassemble frames."""
        size = self.engine.chunk or len(data) or 1
        with self._cond:
            for i in range(0, len(data), size):
                self._output.append((stream, data[i : i + size]))
            self._cond.notify_all()

    # -- the engine's side ---------------------------------------------------------------------

    def end(self, exit_code: int, *, oom: bool = False) -> None:
        with self._cond:
            if self.ended:
                return
            self.ended = True
            self.status = "exited"
            self.exit_code = exit_code
            self.oom_killed = self.oom_killed or oom
            self._eof = True
            self._cond.notify_all()
        if self.auto_remove:
            self.engine.forget(self.id)

    def take_output(self, timeout: float) -> list[tuple[int, bytes]] | None:
        with self._cond:
            if not self._output and not self._eof:
                self._cond.wait(max(0.0, timeout))
            if self._output:
                frames = list(self._output)
                self._output.clear()
                return frames
            return None if self._eof else []

    def has_output(self) -> bool:
        with self._cond:
            return bool(self._output) or self._eof


def all_match(labels: dict[str, str], wanted) -> bool:
    return all(name in labels and (value is None or labels[name] == value) for name, value in wanted)


def _two_frames(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes] | None:
    """(control, payload, rest) once both length-prefixed JSON frames of a request are in."""
    documents = []
    offset = 0
    for _ in range(2):
        if len(data) < offset + 4:
            return None
        (size,) = struct.unpack(">I", data[offset : offset + 4])
        if len(data) < offset + 4 + size:
            return None
        documents.append(json.loads(data[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return documents[0], documents[1], data[offset:]


class FakeEngine:
    """The Engine methods the pool and the runner use, in memory. Every call is recorded in
    ``calls`` as ``(method, container id or None)``; ``fail`` makes a method raise once."""

    def __init__(self, program: Program = probe, *, chunk: int | None = None) -> None:
        self.program = program
        self.chunk = chunk  # split every output write into pieces this size (None: whole)
        self.containers: dict[str, FakeContainer] = {}  # every container ever created, removed too
        self.removed: set[str] = set()
        self.oom_events: set[str] = set()  # the engine's event log: kept after removal
        self.calls: list[tuple[str, str | None]] = []
        self.fail: dict[str, BaseException] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # The image every container runs: the runner checks it exists when it records it in its lease
    # (the stand-in manager of test_runner_paths.py resolves every pack to it).
    image_id = "sha256:" + "cd" * 32

    def inspect_image(self, reference: str) -> ImageRecord | None:
        return ImageRecord(id=self.image_id, tags=(reference,))

    # -- what tests look at ----------------------------------------------------------------------

    def live(self) -> list[FakeContainer]:
        """Containers that exist and have not ended."""
        with self._lock:
            return [c for c in self.containers.values() if c.id not in self.removed and not c.ended]

    def existing(self) -> list[FakeContainer]:
        """Containers the engine still has (running or not)."""
        with self._lock:
            return [c for c in self.containers.values() if c.id not in self.removed]

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for name, _ in self.calls if name == method)

    def forget(self, container_id: str) -> None:
        with self._lock:
            self.removed.add(container_id)

    def _call(self, method: str, container_id: str | None = None) -> None:
        with self._lock:
            self.calls.append((method, container_id))
            failure = self.fail.pop(method, None)
        if failure is not None:
            raise failure

    def _get(self, container_id: str) -> FakeContainer:
        with self._lock:
            container = self.containers.get(container_id)
            if container is None or container_id in self.removed:
                raise EngineError(f"{container_id[:12]}: not found (No such container: {container_id})")
            return container

    # -- the Engine interface ------------------------------------------------------------------

    def create_container(self, run: ContainerRun, *, auto_remove: bool = False) -> str:
        self._call("create_container")
        container_id = f"{next(self._ids):064x}"
        with self._lock:
            self.containers[container_id] = FakeContainer(self, container_id, run, auto_remove)
            self.calls[-1] = ("create_container", container_id)
        return container_id

    def attach(self, container_id: str) -> FakeStreams:
        self._call("attach", container_id)
        return FakeStreams(self._get(container_id))

    def start(self, container_id: str) -> None:
        self._call("start", container_id)
        self._get(container_id).status = "running"

    def kill(self, container_id: str) -> None:
        self._call("kill", container_id)
        try:
            self._get(container_id).end(137)
        except EngineError:
            pass

    def wait(self, container_id: str, timeout: float) -> int | None:
        self._call("wait", container_id)
        with self._lock:
            container = self.containers.get(container_id)
        return container.exit_code if container is not None and container.ended else None

    def run_attached(
        self, container_id: str, stdin: bytes, timeout: float, on_frame: Callable[[int, bytes], None]
    ) -> tuple[int | None, bool, float]:
        streams = self.attach(container_id)
        timed_out = False
        self.start(container_id)
        started = time.monotonic()
        deadline = started + timeout
        try:
            streams.send_stdin(stdin)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    self.kill(container_id)
                    break
                frames = streams.read(min(remaining, 1.0))
                if frames is None:
                    break
                for stream, data in frames:
                    on_frame(stream, data)
        finally:
            streams.close()
        return self.wait(container_id, timeout=10), timed_out, time.monotonic() - started

    def container_state(self, container_id: str) -> ContainerState | None:
        self._call("container_state", container_id)
        try:
            container = self._get(container_id)
        except EngineError:
            return None
        return ContainerState(
            status=container.status,
            running=container.status == "running",
            exit_code=container.exit_code,
            oom_killed=container.oom_killed,
        )

    def saw_oom(self, container_id: str, since: float) -> bool:
        self._call("saw_oom", container_id)
        return container_id in self.oom_events

    def list_containers(self, labels: dict[str, str] | list[str], *, all: bool = True) -> list[ContainerRecord]:
        self._call("list_containers")
        wanted = labels.items() if isinstance(labels, dict) else [(name, None) for name in labels]
        return [
            ContainerRecord(id=c.id, name=c.id[:12], image_id=self.image_id, labels=dict(c.run.labels), status=c.status)
            for c in self.existing()
            if (all or not c.ended) and all_match(c.run.labels, wanted)
        ]

    def remove_container(self, container_id: str, *, attempts: int = 1, delay: float = 0.5) -> bool:
        self._call("remove_container", container_id)
        with self._lock:
            container = self.containers.get(container_id)
        if container is not None:
            container.end(137)
        self.forget(container_id)
        return True
