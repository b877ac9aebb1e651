"""The in-container runner loop: serves executions of one pack's actions, one at a time.
Standard library only, Python 3.9+. Both paths use it: a cold run sends one request and closes
stdin; a warm container keeps it open and sends many.

Protocol (decoded by attune_containers/core/protocol.py):
- stdin, request frames: ``length(4, big endian) JSON`` with {"action": {...}, "parameters",
  "secrets", "environment"}; EOF ends the loop.
- stdout, frames only: ``MAGIC kind(1) length(4) payload``. Per execution: ``o``/``e`` chunks of
  the action's stdout/stderr, then ``r`` (the outcome document), then ``d`` (done: exit code,
  signal, whether the container is still clean enough to reuse).

Each execution runs in a forked child with its own stdin (the parameters, for script actions),
stdout and stderr pipes and a private result pipe, so nothing the action prints can corrupt its
result, and no Python state survives from one execution to the next. After each execution every
other process of this user is killed and /tmp emptied; leftovers mark the container unclean.
"""

import ast
import json
import os
import runpy
import select
import signal
import struct
import sys
import threading
import time
import types

MAGIC = b"\x00ATC"
RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
BASE_ENV = dict(os.environ)
OUT = 1


def write_frame(kind, payload):
    data = MAGIC + kind + struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(OUT, view):]


def read_exactly(fd, size):
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_request(fd):
    header = read_exactly(fd, 4)
    if header is None:
        return None
    body = read_exactly(fd, struct.unpack(">I", header)[0])
    return None if body is None else json.loads(body.decode("utf-8"))


def error_document(exc):
    import traceback

    return {"status": "error", "error": {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }}


# -- the child: one execution ------------------------------------------------------------------

def top_level_functions(path):
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def child(request, result_fd):
    action = request["action"]
    parameters = request.get("parameters") or {}
    secrets = request.get("secrets") or {}
    os.environ.clear()
    os.environ.update(BASE_ENV)
    os.environ.update(request.get("environment") or {})

    # The secrets helper: `from attune_action import get_secret`. Never the environment.
    helper = types.ModuleType("attune_action")
    helper.parameters = types.MappingProxyType(dict(parameters))
    helper.secrets = types.MappingProxyType(dict(secrets))
    helper.get_secret = lambda name, default=None: secrets.get(name, default)
    helper.execution_id = os.environ.get("ATTUNE_EXECUTION_ID")
    sys.modules["attune_action"] = helper
    del request

    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    path = os.path.join(action["pack_dir"], "actions", action["entry_point"])
    sys.path[:0] = [os.path.dirname(path), RUNTIME_DIR]
    os.chdir("/tmp")
    exit_code = 0
    try:
        defined = top_level_functions(path)
        name = next((n for n in (action.get("function"), "run", "main") if n and n in defined), None)
        if name is None:
            sys.argv = [path]
            runpy.run_path(path, run_name="__main__")
            outcome = {"status": "script"}
        else:
            namespace = runpy.run_path(path, run_name="attune_action_module")
            value = namespace[name](**parameters)
            if isinstance(value, types.CoroutineType):
                import asyncio  # only for async actions: a heavy import

                value = asyncio.run(value)
            outcome = {"status": "success", "result": value}
    except SystemExit as exc:
        code = exc.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        outcome = {"status": "script"}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a structured error
        exit_code = 1
        outcome = error_document(exc)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    try:
        encoded = json.dumps(outcome).encode("utf-8")
    except (TypeError, ValueError) as exc:
        exit_code = 1
        encoded = json.dumps({"status": "error", "error": {
            "type": "ResultNotSerializable", "message": "the action's result is not JSON: %s" % exc,
            "traceback": ""}}).encode("utf-8")
    limit = int(action.get("result_limit", 1024 * 1024))
    if len(encoded) > limit:
        exit_code = 1
        encoded = json.dumps({"status": "error", "error": {
            "type": "ResultTooLarge",
            "message": "the result is %d bytes; the limit is %d" % (len(encoded), limit),
            "traceback": ""}}).encode("utf-8")
    view = memoryview(encoded)
    while view:
        view = view[os.write(result_fd, view):]
    os._exit(exit_code)


# -- the server: the loop and the clean-up between executions ------------------------------------

def feed(fd, payload):
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass  # the action did not read its stdin: fine
    finally:
        os.close(fd)


def kill_leftovers():
    """Kill every other process of ours (a child's children, a fork bomb); return how many."""
    me = os.getpid()

    def others():
        return [e for e in os.listdir("/proc") if e.isdigit() and int(e) not in (me, 1)]

    found = len(others())
    for _ in range(100):
        if not others():
            break
        try:
            os.kill(-1, signal.SIGKILL)  # every process we may signal but ourselves and init
        except ProcessLookupError:
            break
        time.sleep(0.005)
    return found


def empty_tmp():
    clean = True
    for name in os.listdir("/tmp"):
        path = os.path.join("/tmp", name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil

                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            clean = False
    return clean and not os.listdir("/tmp")


def execute(request):
    result_limit = int(request["action"].get("result_limit", 1024 * 1024))
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    payload = json.dumps(request.get("parameters") or {}).encode("utf-8")
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (in_w, out_r, err_r, res_r):
                os.close(fd)
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            child(request, res_w)
        finally:
            os._exit(70)
    for fd in (in_r, out_w, err_w, res_w):
        os.close(fd)
    del request
    threading.Thread(target=feed, args=(in_w, payload), daemon=True).start()
    result, result_size = [], 0
    kinds = {out_r: b"o", err_r: b"e"}
    open_fds = [out_r, err_r, res_r]
    status, leftovers = None, 0
    while open_fds:
        ready, _, _ = select.select(open_fds, [], [], 0.05 if status is None else 1.0)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
                os.close(fd)
            elif fd == res_r:
                result_size += len(chunk)
                if result_size <= result_limit + 4096:
                    result.append(chunk)
            else:
                write_frame(kinds[fd], chunk)
        if status is None:
            done, waited = os.waitpid(pid, os.WNOHANG)
            if done:
                # The action is over: whatever it left running goes now, which also closes
                # any pipe a grandchild still held, so the loop drains and ends.
                status, leftovers = waited, kill_leftovers()
    if status is None:
        _, status = os.waitpid(pid, 0)
        leftovers = kill_leftovers()
    clean = empty_tmp()
    if os.WIFSIGNALED(status):
        exit_code, killed_by = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    else:
        exit_code, killed_by = os.WEXITSTATUS(status), None
    if result_size > result_limit + 4096:
        document = json.dumps({"status": "error", "error": {
            "type": "ResultTooLarge", "message": "the result is %d bytes; the limit is %d" % (result_size, result_limit),
            "traceback": ""}}).encode("utf-8")
    else:
        document = b"".join(result) or json.dumps({"status": "none"}).encode("utf-8")
    write_frame(b"r", document)
    write_frame(b"d", json.dumps({
        "exit_code": exit_code, "signal": killed_by, "leftover_processes": leftovers,
        "clean": clean and leftovers == 0 and killed_by is None,
    }).encode("utf-8"))


def main():
    global OUT
    # Frames go to a private copy of stdout; fd 1 itself points nowhere, so nothing stray in this
    # process can write into the stream.
    OUT = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    while True:
        request = read_request(0)
        if request is None:
            return
        execute(request)


if __name__ == "__main__":
    main()
