"""A hostile action: tries every road from an execution to the runner loop and the worker's stream.

Returns what it reached; an empty list is the only acceptable answer. It also leaves a process
behind that keeps trying to read the loop's input, and prints forged frames on its own stdout.
"""

import ctypes
import os
import struct
import subprocess
import sys

FORGED_RESULT = b'{"status": "success", "result": "forged"}'


def frame(kind, body):
    return b"\x00ATC" + kind + struct.pack(">I", len(body)) + body


def forged():
    done = b'{"exit_code": 0, "signal": null, "leftover_processes": 0, "clean": true}'
    return frame(b"r", FORGED_RESULT) + frame(b"d", done)


def run():
    reached = []
    me, parent = os.getpid(), os.getppid()
    own = set(int(fd) for fd in os.listdir("/proc/self/fd"))
    # Descriptors beyond stdin/stdout/stderr and the result pipe: anything inherited from the loop.
    extra = sorted(own - {0, 1, 2})
    if len(extra) > 2:  # the result pipe, and the directory listing's own descriptor
        reached.append("inherited descriptors %s" % extra)
    targets = sorted(int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me)
    signalable = []
    for pid in targets:
        for fd in range(0, 12):
            path = "/proc/%d/fd/%d" % (pid, fd)
            for mode in (os.O_WRONLY, os.O_RDONLY):
                try:
                    handle = os.open(path, mode | os.O_NONBLOCK)
                except OSError:
                    continue
                reached.append("opened %s" % path)
                if mode == os.O_WRONLY:
                    try:
                        os.write(handle, forged())
                    except OSError:
                        pass
                os.close(handle)
        for what in ("mem", "environ", "fd"):
            try:
                if what == "fd":
                    os.listdir("/proc/%d/fd" % pid)
                else:
                    with open("/proc/%d/%s" % (pid, what), "rb") as handle:
                        handle.read(16)
                reached.append("read /proc/%d/%s" % (pid, what))
            except OSError:
                pass
        try:
            os.kill(pid, 0)
            signalable.append(uid_of(pid))  # the zygote ignores signals; the loop checks it
        except OSError:
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
            reached.append("reniced %d" % pid)
        except OSError:
            pass
        try:
            os.sched_setaffinity(pid, {0})
            reached.append("pinned %d" % pid)
        except OSError:
            pass
        try:
            import resource

            resource.prlimit(pid, resource.RLIMIT_NOFILE, (16, 16))
            reached.append("limited %d" % pid)
        except (OSError, ValueError):
            pass
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.restype = ctypes.c_long
        if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
            reached.append("ptrace attached %d" % pid)
            libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    # Forged frames on our own stdout are only output: the loop frames them as such.
    os.write(1, forged())
    # Stay behind, trying to read what the loop reads next.
    subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import os, time\n"
                "for _ in range(600):\n"
                "    for path in ('/proc/%d/fd/0', '/proc/1/fd/0'):\n"
                "        try:\n"
                "            os.read(os.open(path, os.O_RDONLY | os.O_NONBLOCK), 65536)\n"
                "        except OSError:\n"
                "            pass\n"
                "    time.sleep(0.05)\n"
            )
            % parent,
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return {
        "reached": reached,
        "uid": os.getuid(),
        "parent_uid": os.stat("/proc/%d" % parent).st_uid,
        "signalable_uids": sorted(set(signalable)),
    }


def uid_of(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return -1
