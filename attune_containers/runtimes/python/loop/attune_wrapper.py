"""The in-container runner loop (the supervisor): serves executions of one pack's actions, one at a
time. Standard library only, Python 3.9+. Cold runs send one request marked last; warm containers
keep stdin open and send many. Started as ``python -I -S -B attune_wrapper.py EXEC_UID``.

Protocol (the worker's side is attune_containers/core/protocol.py):
- stdin: per execution a control frame ``length(4, big endian) JSON`` ({"nonce", "timeout",
  "result_limit", "last"}) and a payload frame ``length(4) JSON`` ({"action", "parameters",
  "secrets", "environment"}). The supervisor parses the control frame only; the payload goes
  unread to the execution's child. EOF ends the loop.
- stdout, frames only: ``MAGIC kind(1) length(4) payload``. Per execution: ``o``/``e`` chunks of
  the action's stdout/stderr, ``r`` chunks of the outcome document, then ``d`` (done), which only
  the supervisor writes and which echoes the request's nonce.

Why it is built this way (SECURITY.md has the whole threat model):
- The supervisor runs as root with only CAP_SETUID, CAP_SETGID and CAP_KILL (the engine layer
  drops every other capability, with no-new-privileges and a read-only root), under ``-I -S``: no
  site-packages, so no code of the pack (a ``.pth`` file, a library) ever runs in it.
- Each execution runs in a child forked *before* its request is read, which drops to EXEC_UID at
  once. Another uid cannot ptrace, signal or open the supervisor's ``/proc`` entries (nor tini's),
  and the child closes every descriptor but its own pipes, so it cannot reach the worker's stream.
- The supervisor never holds request data in memory a later child could inherit: payloads and
  outputs move through one preallocated buffer (``os.readv``/``os.writev``, no copies), zeroed
  after each execution.
- The deadline is kept here as well as by the worker: an execution ends on time even if the
  worker died. After each execution every process of EXEC_UID is killed; a cleaner running as
  EXEC_UID (root here has no CAP_FOWNER) empties /tmp, /dev/shm, /dev/mqueue and SysV IPC; the
  supervisor then checks that all of it is gone. Anything left marks the execution unclean, and
  the worker destroys the container instead of reusing it.
"""

# Every standard library module a child needs is imported here, once, so each fresh child starts
# with them. The standard library is the base image's, never the pack's: the pack's site-packages
# are added only in the child, by site.main(), after it dropped its privileges.
import ast
import ctypes
import gc
import importlib
import json
import os
import re
import runpy
import select
import shutil
import signal
import site
import socket
import struct
import sys
import time
import traceback
import types

# Bound once: an action that monkeypatches json (its right, in its own process) still gets its
# result encoded by the real encoder.
DUMPS = json.dumps
MAGIC = b"\x00ATC"
RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
BASE_ENV = dict(os.environ)
OUT = 1
CONTROL_LIMIT = 64 * 1024
CLEANER_SECONDS = 10.0
WRITABLE_STATE = ("/tmp", "/dev/shm", "/dev/mqueue")
SYSV = ("shm", "msg", "sem")

# Every byte of a request or of an execution's output passes through this one buffer, so nothing
# of it stays behind in freed heap memory that the next child would inherit.
BUFFER = bytearray(1 << 16)
VIEW = memoryview(BUFFER)
ZEROS = bytes(len(BUFFER))


def scrub():
    VIEW[:] = ZEROS


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(kind, data=b""):
    parts = [memoryview(MAGIC + kind + struct.pack(">I", len(data))), memoryview(data)]
    while parts:
        written = os.writev(OUT, parts)
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts.pop(0)
        if parts and written:
            parts[0] = parts[0][written:]


def read_exactly(fd, size):
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_length(fd):
    header = read_exactly(fd, 4)
    return None if header is None else struct.unpack(">I", header)[0]


def forward(src, size, dst):
    """Move ``size`` bytes from ``src`` to ``dst`` through the buffer; a dead ``dst`` is drained
    past so the stream stays in step. False when ``src`` ended first."""
    while size:
        count = os.readv(src, [VIEW[: min(size, len(BUFFER))]])
        if count == 0:
            return False
        size -= count
        if dst is not None:
            try:
                write_all(dst, VIEW[:count])
            except OSError:
                dst = None
    return True


def drop_privileges(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != uid:
        raise PermissionError("the uid did not change")


def close_other_fds(keep):
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def error_document(kind, message, tb=""):
    return {"status": "error", "error": {"type": kind, "message": message, "traceback": tb}}


# -- the child: one execution, as EXEC_UID -------------------------------------------------------


def top_level_functions(path):
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def child_main(uid, request_fd, result_fd, out_fd, err_fd, from_zygote=False):
    """Runs in the forked child: never returns."""
    exit_code = 70
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # never the container's stdin: that is the worker's request stream
        close_other_fds({0, 1, 2, request_fd, result_fd})
        prefer_to_die()
        if not from_zygote:  # a zygote's child changed its uid already
            try:
                drop_privileges(uid)
            except OSError as exc:
                send_result(
                    result_fd,
                    error_document(
                        "IsolationError",
                        "the runner loop cannot drop to the execution uid (%s); it must "
                        "start as root with CAP_SETUID and CAP_SETGID" % exc,
                    ),
                    1 << 20,
                )
                os._exit(71)
        os.chdir("/tmp")
        if CHILD_EXEC:
            exec_child(request_fd, result_fd)  # never returns
        if not from_zygote:
            site.main()  # the pack's site-packages, now that only this child's uid runs its code
            preload(PRELOAD)  # no zygote: the libraries are still imported before the request
        exit_code = run_execution(request_fd, result_fd)
    finally:
        os._exit(exit_code)


def exec_child(request_fd, result_fd):
    """Another runtime's execution (``--exec``, Node's): the child, already unprivileged and with
    only its own pipes, becomes that runtime's runner. It finds the request on fd 3 and writes its
    outcome document to fd 4, as a Python child does on its pipes; everything else (deadline,
    output frames, result limit, cleanup, verification) stays the supervisor's."""
    request_copy, result_copy = os.dup(request_fd), os.dup(result_fd)  # copies: dup2 onto 3 cannot clobber 4
    os.dup2(request_copy, 3)
    os.dup2(result_copy, 4)
    for fd in (3, 4):  # os.dup's copies are close-on-exec, and dup2 onto itself keeps that
        os.set_inheritable(fd, True)
    close_other_fds({0, 1, 2, 3, 4})
    os.execve(CHILD_EXEC[0], list(CHILD_EXEC), BASE_ENV)


def prefer_to_die():
    """Under memory pressure the action (or the zygote) dies first, not the supervisor. Written while
    still root: once a process changed uid its /proc files are root's, and the write would fail."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def send_result(fd, document, limit):
    try:
        encoded = DUMPS(document).encode("utf-8")
    except (TypeError, ValueError) as exc:
        encoded = DUMPS(error_document("ResultNotSerializable", "the action's result is not JSON: %s" % exc)).encode("utf-8")
    if len(encoded) > limit:
        encoded = DUMPS(
            error_document("ResultTooLarge", "the result is %d bytes; the limit is %d" % (len(encoded), limit))
        ).encode("utf-8")
    write_all(fd, encoded)


def run_execution(request_fd, result_fd):
    chunks = []
    while True:
        chunk = os.read(request_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(request_fd)
    request = json.loads(b"".join(chunks).decode("utf-8"))
    del chunks
    action = request["action"]
    parameters = request.get("parameters") or {}
    secrets = request.get("secrets") or {}
    os.environ.clear()
    os.environ.update(BASE_ENV)
    os.environ.update(request.get("environment") or {})

    # Script actions read their parameters as JSON on stdin.
    stdin = os.memfd_create("attune-parameters")
    write_all(stdin, json.dumps(parameters).encode("utf-8"))
    os.lseek(stdin, 0, os.SEEK_SET)
    os.dup2(stdin, 0)
    os.close(stdin)

    # The secrets helper: `from attune_action import get_secret`. Never the environment.
    helper = types.ModuleType("attune_action")
    helper.__dict__.update(
        parameters=types.MappingProxyType(dict(parameters)),
        secrets=types.MappingProxyType(dict(secrets)),
        get_secret=lambda name, default=None: secrets.get(name, default),
        execution_id=os.environ.get("ATTUNE_EXECUTION_ID"),
    )
    sys.modules["attune_action"] = helper
    del request

    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    path = os.path.join(action["pack_dir"], "actions", action["entry_point"])
    sys.path[:0] = [os.path.dirname(path), RUNTIME_DIR]
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
        outcome = error_document(
            type(exc).__name__, str(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    send_result(result_fd, outcome, int(action.get("result_limit", 1 << 20)))
    return exit_code


# -- the supervisor ------------------------------------------------------------------------------


class Child:
    """An execution's process, forked and unprivileged before its request arrives."""

    def __init__(self, uid):
        req_r, self.request = os.pipe()
        self.stdout, out_w = os.pipe()
        self.stderr, err_w = os.pipe()
        self.result, res_w = os.pipe()
        pid = None
        if ZYGOTE is not None:
            try:
                pid = ZYGOTE.spawn([req_r, res_w, out_w, err_w])
            except (OSError, ValueError) as exc:
                fall_back("the zygote failed to fork (%s)" % type(exc).__name__)
        if pid is None:
            pid = os.fork()
            if pid == 0:
                child_main(uid, req_r, res_w, out_w, err_w)
        self.pid = pid
        for fd in (req_r, out_w, err_w, res_w):
            os.close(fd)

    def kill(self):
        """Kill the child and reap it (an unreaped zombie would count as a leftover)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.pid, 0)
        return status


def others():
    spared = (os.getpid(), 1, ZYGOTE.pid if ZYGOTE is not None else None)
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) not in spared]


def reap():
    """Collect exited orphans: with a zygote this process is their subreaper, not tini."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_leftovers():
    """Kill every process but ourselves, init and the zygote (root with CAP_KILL reaches every
    uid); return how many there were."""
    reap()
    found = len(others())
    for _ in range(400):
        pids = others()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)
        reap()
    return found


def clean_state(uid):
    """Empty every place an execution can leave state, as the execution uid; return what is still
    there (categories only, never names an action chose), checked again here as root."""
    if not residue():
        return []  # the common case: nothing to clean, no cleaner to start
    ended_r, ended_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            close_other_fds({2, ended_w})
            drop_privileges(uid)
            code = 0 if clear_everything() else 1
        finally:
            os._exit(code)
    os.close(ended_w)
    ready, _, _ = select.select([ended_r], [], [], CLEANER_SECONDS)  # readable (EOF) once it exits
    os.close(ended_r)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    kill_leftovers()
    cleaner_ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return ([] if cleaner_ok else ["cleaner"]) + residue()


def clear_everything():
    ok = True
    for folder in WRITABLE_STATE:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    # Folders the action made unreadable (mode 000) are ours to open again, top
                    # down, before the tree can go.
                    os.chmod(path, 0o700)
                    for root, dirs, _files in os.walk(path):
                        for d in dirs:
                            full = os.path.join(root, d)
                            if not os.path.islink(full):
                                os.chmod(full, 0o700)
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                ok = False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        remove = {
            "shm": lambda i: libc.shmctl(i, 0, None),
            "msg": lambda i: libc.msgctl(i, 0, None),
            "sem": lambda i: libc.semctl(i, 0, 0),
        }  # 0 is IPC_RMID
        for kind in SYSV:
            for ident in sysv_ids(kind):
                remove[kind](ident)
    except OSError:
        ok = False
    return ok


def sysv_ids(kind):
    try:
        with open("/proc/sysvipc/" + kind) as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return []
    return [int(line.split()[1]) for line in lines if line.strip()]


def residue():
    left = []
    for folder in WRITABLE_STATE:
        try:
            if os.listdir(folder):
                left.append(folder)
        except FileNotFoundError:
            continue
        except OSError:
            left.append(folder)
    left += ["sysv " + kind for kind in SYSV if sysv_ids(kind)]
    return left + (["processes"] if others() else [])


def serve(child, control):
    """Serve one execution; return whether the container is still clean."""
    limit = int(control.get("result_limit", 1 << 20)) + 4096
    timeout = float(control.get("timeout", 300))
    started = time.monotonic()
    deadline = started + timeout
    kinds = {child.stdout: b"o", child.stderr: b"e", child.result: b"r"}
    open_fds = list(kinds)
    status, leftovers, timed_out, result_bytes, ended = None, 0, False, 0, 0.0
    while True:
        now = time.monotonic()
        if status is None:
            if now >= deadline:
                timed_out = True
                status = child.kill()  # the action and all it started end at the deadline
                leftovers, ended = kill_leftovers(), time.monotonic()
            else:
                done, waited = os.waitpid(child.pid, os.WNOHANG)
                if done:
                    # The action is over: whatever it left running goes now, which also closes
                    # any pipe a grandchild still held, so the loop drains and ends.
                    status, leftovers, ended = waited, kill_leftovers(), time.monotonic()
        if not open_fds:
            if status is not None:
                break
            time.sleep(0.0005)  # its pipes closed as it exits; wait for the exit itself
            continue
        if status is not None and now - ended > 5:
            break  # a pipe still open long after the end: nothing alive should hold it
        wait = max(0.0, min(deadline - now, 0.05)) if status is None else 0.5
        ready, _, _ = select.select(open_fds, [], [], wait)
        for fd in ready:
            count = os.readv(fd, [VIEW])
            if count == 0:
                open_fds.remove(fd)
                os.close(fd)
            elif fd == child.result:
                # Forwarded while within the limit; beyond it only counted (the worker decides).
                if result_bytes <= limit:
                    write_frame(b"r", VIEW[: min(count, limit + 1 - result_bytes)])
                result_bytes += count
            else:
                write_frame(kinds[fd], VIEW[:count])
    for fd in open_fds:
        os.close(fd)
    scrub()
    if os.WIFSIGNALED(status):
        exit_code, killed_by = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    else:
        exit_code, killed_by = os.WEXITSTATUS(status), None
    clean = not timed_out and leftovers == 0 and killed_by is None and exit_code != 71
    left = clean_state(EXEC_UID) if clean and not control.get("last") else []
    if ZYGOTE is not None and not ZYGOTE.intact():
        left.append("zygote")  # an execution stopped, killed or changed it: no one is forked from it
    clean = clean and not left
    write_frame(
        b"d",
        json.dumps(
            {
                "nonce": control.get("nonce"),
                "exit_code": exit_code,
                "signal": killed_by,
                "timed_out": timed_out,
                "leftover_processes": leftovers,
                "result_bytes": result_bytes,
                "elapsed": round(time.monotonic() - started, 6),
                "clean": bool(clean),
                "residue": left,
                "preload": PRELOAD_STATE,
            }
        ).encode("utf-8"),
    )
    return clean


# -- the zygote: the pack's libraries imported once ------------------------------------------------

MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}")
PRELOAD = ()
ZYGOTE = None
PRELOAD_STATE = "off"
PR_SET_CHILD_SUBREAPER = 36


def preload(modules):
    """Import libraries; one that fails is skipped (the action's own import reports it).

    Libraries that load their parts lazily (PEP 562: pydantic's BaseModel is imported on first
    access) have their public names touched too, so the parts an action uses are loaded here."""
    failed = []
    for name in modules:
        try:
            module = importlib.import_module(name)
            public = getattr(module, "__all__", ())
            for attribute in list(public)[:2000] if isinstance(public, (list, tuple)) else ():
                try:
                    getattr(module, attribute)
                except BaseException:  # noqa: BLE001 - a broken optional part is the action's concern
                    pass
        except BaseException:  # noqa: BLE001 - a library's import may raise anything, even SystemExit
            failed.append(name)
    return failed


def fall_back(reason):
    """No zygote from now on: each child imports the libraries itself, before its request."""
    global ZYGOTE, PRELOAD_STATE
    if ZYGOTE is not None:
        ZYGOTE.stop()
    ZYGOTE = None
    PRELOAD_STATE = "per-execution: " + reason


def proc_status(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except OSError:
        return {}


class Zygote:
    """A process that imported the pack's libraries once and forks every execution from there, so
    an execution starts with them loaded (a fork, not an import).

    It runs as ZYGOTE_UID with the execution uid as its *saved* uid: its children can take that uid
    without any capability, while an execution (real and effective uid EXEC_UID) cannot ptrace it,
    read its /proc entries, change its limits, priority or affinity: those need its real or
    effective uid. An execution can still send it signals; it ignores every one it can, and the
    supervisor checks after each execution that it is alive, not stopped, one thread, with the same
    uids and signal dispositions, or the container is destroyed. It never receives request data:
    each child gets its pipes (passed as descriptors) straight from the supervisor. Its children
    are reparented to the supervisor (a subreaper), which waits for them itself.
    """

    def __init__(self, exec_uid, uid, modules):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            zygote_main(theirs, exec_uid, uid, modules)
        theirs.close()
        self.exec_uid = exec_uid
        self.baseline = None

    def ready(self, timeout):
        """None once the libraries are in, else why the zygote cannot be used."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return "the libraries took longer than %d s to import" % timeout
        try:
            report = json.loads(self.sock.recv(65536).decode("utf-8"))
        except (OSError, ValueError):
            return "the zygote ended while importing"
        if not isinstance(report, dict) or report.get("threads") != 1:
            return "importing the libraries started a thread, and forking a threaded process is unsafe"
        self.baseline = self.identity()
        return None if self.baseline else "the zygote ended"

    def identity(self):
        status = proc_status(self.pid)
        if not status or status.get("State", "Z")[:1] not in ("S", "R", "D"):
            return None
        return tuple(status.get(k) for k in ("Uid", "Gid", "Groups", "Threads", "SigIgn", "SigCgt", "SigBlk", "CapEff"))

    def intact(self):
        return self.baseline is not None and self.identity() == self.baseline

    def spawn(self, fds):
        socket.send_fds(self.sock, [b"f"], fds)
        readable, _, _ = select.select([self.sock], [], [], 10)
        if not readable:
            raise OSError("no answer")
        pid = int(self.sock.recv(32).decode("ascii"))
        # Trust nothing it says: the process must be ours now and run as the execution uid.
        want = "\t".join([str(self.exec_uid)] * 4)
        deadline = time.monotonic() + 2
        while True:
            status = proc_status(pid)
            if status.get("PPid") == str(os.getpid()) and status.get("Uid") == want:
                return pid
            if time.monotonic() > deadline:
                raise OSError("the forked process is not an execution of ours")
            time.sleep(0.0002)

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (OSError, ChildProcessError):
            pass
        self.sock.close()


def zygote_main(sock, exec_uid, uid, modules):
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)  # a library's noise goes nowhere, never into the worker's stream
        close_other_fds({0, 1, 2, sock.fileno()})
        prefer_to_die()  # its children inherit it
        os.setgroups([])
        os.setresgid(uid, uid, exec_uid)
        os.setresuid(uid, uid, exec_uid)
        if os.getresuid() != (uid, uid, exec_uid):
            raise PermissionError("the uids did not change")
        os.chdir("/")
        site.main()
        failed = preload(modules)
        threads = len(os.listdir("/proc/self/task"))
        handlers = {}
        for number in range(1, signal.NSIG):
            if number in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
                continue
            try:
                handlers[number] = signal.signal(number, signal.SIG_IGN)
            except (OSError, ValueError, RuntimeError):
                pass
        gc.disable()  # no library finalizer runs here between forks
        gc.freeze()
        sock.send(json.dumps({"threads": threads, "failed": failed[:64]}).encode("utf-8"))
        if threads != 1:
            os._exit(0)
        while True:
            message, fds, _, _ = socket.recv_fds(sock, 16, 4)
            if not message:
                os._exit(0)  # the supervisor is gone
            if message != b"f" or len(fds) != 4:
                for fd in fds:
                    os.close(fd)
                continue
            middle = os.fork()
            if middle == 0:
                if os.fork() == 0:
                    for number, handler in handlers.items():
                        try:
                            signal.signal(number, signal.SIG_DFL if handler is None else handler)
                        except (OSError, ValueError, RuntimeError):
                            pass
                    gc.enable()
                    os.setresgid(exec_uid, exec_uid, exec_uid)
                    os.setresuid(exec_uid, exec_uid, exec_uid)
                    sock.send(str(os.getpid()).encode("ascii"))
                    sock.close()
                    child_main(exec_uid, fds[0], fds[1], fds[2], fds[3], from_zygote=True)
                os._exit(0)  # its child is orphaned at once and so becomes the supervisor's
            for fd in fds:
                os.close(fd)
            os.waitpid(middle, 0)
    finally:
        os._exit(1)


def start_preload(exec_uid, zygote_uid, modules):
    global ZYGOTE, PRELOAD, PRELOAD_STATE
    PRELOAD = tuple(m for m in modules if MODULE.fullmatch(m))[:64]
    if not PRELOAD:
        return
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ZYGOTE = Zygote(exec_uid, zygote_uid, PRELOAD)
    reason = ZYGOTE.ready(120)
    if reason:
        fall_back(reason)
    else:
        PRELOAD_STATE = "zygote"


def read_control():
    size = read_length(0)
    if size is None or size > CONTROL_LIMIT:
        return None
    body = read_exactly(0, size)
    if body is None:
        return None
    control = json.loads(body.decode("utf-8"))
    return control if isinstance(control, dict) else None


EXEC_UID = 65532
# ``EXEC_UID --exec PROGRAM ARG...``: each execution's child execs PROGRAM instead of running
# Python code (no zygote then). The supervisor is the same.
CHILD_EXEC: "tuple[str, ...]" = ()


def main():
    global OUT, EXEC_UID, CHILD_EXEC
    EXEC_UID = int(sys.argv[1]) if len(sys.argv) > 1 else EXEC_UID
    if len(sys.argv) > 3 and sys.argv[2] == "--exec":
        CHILD_EXEC = tuple(sys.argv[3:])
    # Frames go to a private copy of stdout; fd 1 itself points nowhere, so nothing stray in this
    # process can write into the stream.
    OUT = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    if len(sys.argv) > 3 and not CHILD_EXEC:
        start_preload(EXEC_UID, int(sys.argv[2]), sys.argv[3:])
    while True:
        child = Child(EXEC_UID)  # ready before the request: its start-up is off the critical path
        control = read_control()
        size = read_length(0) if control is not None else None
        if control is None or size is None:
            child.kill()
            kill_leftovers()
            stop_zygote()
            return
        delivered = forward(0, size, child.request)
        os.close(child.request)
        if not delivered:
            child.kill()
            kill_leftovers()
            stop_zygote()
            return
        if not serve(child, control) or control.get("last"):
            # Not clean: the worker destroys this container; serve nothing more from it.
            kill_leftovers()
            stop_zygote()
            return


def stop_zygote():
    if ZYGOTE is not None:
        ZYGOTE.stop()


if __name__ == "__main__":
    main()
