"""Leaves state everywhere an execution can: a marker file in every writable folder, SysV shared
memory, a message queue and a semaphore set, a POSIX message queue. ``find_state`` looks for it."""

import ctypes
import ctypes.util
import os

IPC_CREAT, IPC_PRIVATE = 0o1000, 0


def writable_folders():
    for root, dirs, _files in os.walk("/"):
        if root in ("/proc", "/sys"):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys")]
        yield root


def run(marker="m"):
    left = []
    for folder in writable_folders():
        path = os.path.join(folder, "attune-marker-" + marker)
        try:
            with open(path, "w") as handle:
                handle.write(marker)
            left.append(path)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600) >= 0:
        left.append("sysv shm")
    if libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600) >= 0:
        left.append("sysv msg")
    if libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600) >= 0:
        left.append("sysv sem")
    rt = ctypes.CDLL(ctypes.util.find_library("rt") or None, use_errno=True)
    rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    if rt.mq_open(("/attune-marker-" + marker).encode(), os.O_CREAT | os.O_RDWR, 0o600, None) >= 0:
        left.append("posix mq")
    os.makedirs("/tmp/deep/locked", exist_ok=True)
    with open("/tmp/deep/locked/f", "w") as handle:
        handle.write(marker)
    os.chmod("/tmp/deep/locked", 0)
    os.chmod("/tmp/deep", 0)
    os.symlink("/etc/passwd", "/tmp/attune-marker-link")
    return {"left": left}
