"""Scans the memory this execution inherited for canaries (``CANARY`` + 32 hex digits) that an
earlier execution received as parameters or secrets. Its own canary (a secret) must be found: that
proves the scan sees what it should. The pattern is built so that the scanner's code holds none."""

import ctypes
import os
import re

from attune_action import get_secret

PATTERN = re.compile(b"CAN" + b"ARY([0-9a-f]{32})")


def regions(pid):
    with open("/proc/%s/maps" % pid) as handle:
        for line in handle:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if fields[1].startswith("r") and name not in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                yield start, end


def scan(pid):
    found = set()
    with open("/proc/%s/mem" % pid, "rb", buffering=0) as mem:
        for start, end in regions(pid):
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found.update(m.decode() for m in PATTERN.findall(data))
    return found


def run(remember=None):
    own = get_secret("canary") or ""
    if remember:
        print("secret in a log line: " + own)  # travels through the loop's buffers as output
        return {"echo": own}
    # A process that changed uid is not dumpable, which hides /proc/self/mem even from itself; an
    # attacker just turns that back on.
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    found = scan("self")
    others = {}
    for pid in (os.getppid(), 1):
        try:
            others[pid] = sorted(scan(pid))
        except OSError as exc:
            others[pid] = type(exc).__name__
    return {
        "own_found": own[len("CANARY") :] in found,
        "foreign": sorted(found - {own[len("CANARY") :]}),
        "other_processes": {str(k): v for k, v in others.items()},
    }
