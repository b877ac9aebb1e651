"""Runs one Attune action inside its pack's container. Standard library only, Python 3.9+.

Protocol (see attune_containers/core/protocol.py, which decodes it):
- stdin: one JSON document {"action": {...}, "parameters": {...}, "secrets": {...}}, then EOF.
- stdout: frames only. ``MAGIC kind(1) length(4, big endian) payload``; kind ``o`` carries a chunk
  of the action's own stdout, kind ``r`` the result document (last). The action's stdout goes to
  a pipe this wrapper frames, so nothing the action prints can corrupt the result.
- stderr: the action's stderr, raw.
"""

import ast
import asyncio
import inspect
import io
import json
import os
import runpy
import struct
import sys
import threading
import traceback
import types

MAGIC = b"\x00ATC"
RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))


def _write_frame(fd, kind, payload):
    data = MAGIC + kind + struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pump(read_fd, out_fd):
    # Frames everything the action (and its children) write to fd 1.
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        _write_frame(out_fd, b"o", chunk)


def _functions(path):
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def _error(exc, limit_traceback=True):
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def main():
    document = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    action = document["action"]
    parameters = document.get("parameters") or {}
    secrets = document.get("secrets") or {}
    result_limit = int(action.get("result_limit", 1024 * 1024))

    # The secrets helper: `from attune_action import get_secret`. Never the environment.
    helper = types.ModuleType("attune_action")
    helper.parameters = types.MappingProxyType(dict(parameters))
    helper.secrets = types.MappingProxyType(dict(secrets))
    helper.get_secret = lambda name, default=None: secrets.get(name, default)
    helper.execution_id = os.environ.get("ATTUNE_EXECUTION_ID")
    sys.modules["attune_action"] = helper
    del document

    real_out = os.dup(1)
    os.set_inheritable(real_out, False)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, real_out), daemon=True)
    pump.start()
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0, closefd=False), encoding="utf-8",
                                  line_buffering=True, write_through=True)

    # Scripts read their parameters from stdin themselves, as with attune's script actions.
    params_r, params_w = os.pipe()
    payload = json.dumps(parameters).encode("utf-8")
    writer = threading.Thread(target=lambda: (os.write(params_w, payload), os.close(params_w)), daemon=True)
    writer.start()
    os.dup2(params_r, 0)
    os.close(params_r)
    sys.stdin = io.TextIOWrapper(os.fdopen(0, "rb", closefd=False), encoding="utf-8")

    path = os.path.join(action["pack_dir"], "actions", action["entry_point"])
    sys.path[:0] = [os.path.dirname(path), RUNTIME_DIR]
    function_name = action.get("function")
    exit_code = 0
    try:
        defined = _functions(path)
        name = next((n for n in (function_name, "run", "main") if n and n in defined), None)
        if name is None:
            sys.argv = [path]
            runpy.run_path(path, run_name="__main__")
            outcome = {"status": "script"}
        else:
            namespace = runpy.run_path(path, run_name="attune_action_module")
            value = namespace[name](**parameters)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
            outcome = {"status": "success", "result": value}
    except SystemExit as exc:
        code = exc.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        outcome = {"status": "script"}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a structured error
        exit_code = 1
        outcome = {"status": "error", "error": _error(exc)}

    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        encoded = json.dumps(outcome).encode("utf-8")
    except (TypeError, ValueError) as exc:
        exit_code = 1
        encoded = json.dumps({"status": "error", "error": {
            "type": "ResultNotSerializable", "message": "the action's result is not JSON: %s" % exc,
            "traceback": ""}}).encode("utf-8")
    if len(encoded) > result_limit:
        exit_code = 1
        encoded = json.dumps({"status": "error", "error": {
            "type": "ResultTooLarge",
            "message": "the result is %d bytes; the limit is %d" % (len(encoded), result_limit),
            "traceback": ""}}).encode("utf-8")
    # Close our end of the pipe so the pump sees EOF once children holding fd 1 are gone too.
    os.close(1)
    pump.join(timeout=2)
    _write_frame(real_out, b"r", encoded)
    os._exit(exit_code)


if __name__ == "__main__":
    main()
