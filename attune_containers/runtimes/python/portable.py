"""The layout of the supervisor's own interpreter (services/supervisor_python.py makes it on the
host) and the argv that starts it: pure, so runtimes can name it without touching the disk.

A folder with the host's CPython, its shared libraries and the loader they were linked with:
``ld.so --library-path lib bin/python3``. The loader is run as a program, so the binary's own
PT_INTERP (a path in the host's file system) is never looked up in the image, and the library path
is an argument, not a variable the supervisor's children would inherit.
"""

from __future__ import annotations

# Where action containers see it (read-only), beside the supervisor's folder.
MOUNT = "/opt/attune/python"
LOADER = "ld.so"
LIB = "lib"
PYTHON = "bin/python3"


def command(folder: str, arguments: list[str]) -> list[str]:
    """argv that runs the interpreter at ``folder`` (a host path or ``MOUNT``) isolated (-I: no
    variable, no user site; -S: no site-packages; -B: writes no bytecode) with ``arguments``."""
    return [f"{folder}/{LOADER}", "--library-path", f"{folder}/{LIB}", f"{folder}/{PYTHON}", "-I", "-S", "-B", *arguments]
