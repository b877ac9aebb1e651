"""The supervisor's own interpreter (services/supervisor_python.py): the ELF facts it needs, where
each file goes, and a real copy of this host's interpreter that starts on its own (no Docker here:
the engine tests run it in images without python)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from attune_containers.runtimes.nodejs import NODEJS
from attune_containers.runtimes.python import portable
from attune_containers.services import supervisor_python as sp
from attune_containers.settings import Settings

# ELF constants the synthetic file is written with (the reader is pyelftools).
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_STRTAB, DT_SONAME = 0, 5, 14


def synthetic_elf(interp: bytes | None, soname: bytes | None) -> bytes:
    """A minimal ELF64 LE file: PT_INTERP, one PT_LOAD mapping the file at 0x1000, PT_DYNAMIC with
    DT_STRTAB (an address, as in real files) and DT_SONAME."""
    data = bytearray(1024)
    headers = []
    if interp is not None:
        data[400 : 400 + len(interp) + 1] = interp + b"\0"
        headers.append((PT_INTERP, 400, 0, len(interp) + 1))
    headers.append((PT_LOAD, 0, 0x1000, 1024))
    dynamic = [(DT_STRTAB, 0x1000 + 600)] + ([(DT_SONAME, 1)] if soname else []) + [(DT_NULL, 0)]
    for i, (tag, value) in enumerate(dynamic):
        struct.pack_into("<qQ", data, 300 + 16 * i, tag, value)
    headers.append((PT_DYNAMIC, 300, 0x1000 + 300, 16 * len(dynamic)))
    if soname:
        data[600 : 602 + len(soname)] = b"\0" + soname + b"\0"
    data[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<Q", data, 32, 64)
    struct.pack_into("<HH", data, 54, 56, len(headers))
    for i, (p_type, offset, vaddr, size) in enumerate(headers):
        struct.pack_into("<IIQQQQQQ", data, 64 + 56 * i, p_type, 0, offset, vaddr, vaddr, size, size, 8)
    return bytes(data)


def test_elf_interpreter_and_soname_are_read_through_the_segment_that_maps_them():
    assert sp.elf_interp_and_soname(synthetic_elf(b"/lib/ld-test.so.2", b"libtest.so.7")) == (
        "/lib/ld-test.so.2",
        "libtest.so.7",
    )
    assert sp.elf_interp_and_soname(synthetic_elf(None, None)) == (None, None)


def test_what_is_not_a_64_bit_little_endian_elf_file_is_refused():
    for data in (b"#!/bin/sh\n" + bytes(64), b"\x7fELF\x01\x01\x01" + bytes(64), b"\x7fELF\x02\x02\x01" + bytes(64)):
        with pytest.raises(ValueError):
            sp.elf_interp_and_soname(data)
    truncated = bytearray(synthetic_elf(b"/lib/ld.so", b"x.so"))
    struct.pack_into("<H", truncated, 56, 500)  # more program headers than the file holds
    with pytest.raises(ValueError, match="truncated"):
        sp.elf_interp_and_soname(bytes(truncated))


def test_this_hosts_interpreter_names_its_loader_and_libc_its_soname():
    interp, _ = sp.elf_interp_and_soname(Path(os.path.realpath(sys.executable)).read_bytes())
    assert interp is not None and os.path.isabs(interp) and os.path.basename(interp).startswith("ld-")
    with open("/proc/self/maps") as handle:
        libc = next(line.split()[5] for line in handle if "/libc.so" in line or "/libc-" in line)
    assert sp.elf_interp_and_soname(Path(libc).read_bytes())[1] == "libc.so.6"


PROBE = {
    "version": "3.11",
    "platlibdir": "lib",
    "executable": "/opt/py/bin/python3.11",
    "stdlib": ["/opt/py/lib/python3.11", "/opt/py/lib/python3.11"],
    "modules": ["/opt/py/lib/python3.11/os.py", "/opt/py/lib/python3.11/lib-dynload/_json.so"],
    "encodings_files": ["/opt/py/lib/python3.11/encodings/latin_1.py"],
    "maps": [
        "/opt/py/bin/python3.11",
        "/opt/py/lib/python3.11/lib-dynload/_json.so",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
        "/usr/lib/locale/C.utf8/LC_CTYPE",
    ],
}
ELF = {
    "/opt/py/bin/python3.11": ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", None),
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": (None, "ld-linux-x86-64.so.2"),
    "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13": (None, "libz.so.1"),
}


def test_each_file_goes_where_the_loader_and_cpython_look_for_it():
    assert sp.layout(PROBE, ELF) == {
        "bin/python3": "/opt/py/bin/python3.11",
        "lib/python3.11/os.py": "/opt/py/lib/python3.11/os.py",
        "lib/python3.11/lib-dynload/_json.so": "/opt/py/lib/python3.11/lib-dynload/_json.so",
        "lib/python3.11/encodings/latin_1.py": "/opt/py/lib/python3.11/encodings/latin_1.py",
        "ld.so": "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "lib/libz.so.1": "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",  # by soname; locale data is no ELF
    }


def test_a_module_outside_the_standard_library_or_a_static_binary_is_refused():
    with pytest.raises(sp.SupervisorPythonError, match="outside the standard library"):
        sp.layout({**PROBE, "modules": ["/home/me/site-packages/evil.py"]}, ELF)
    with pytest.raises(sp.SupervisorPythonError, match="static"):
        sp.layout(PROBE, {**ELF, "/opt/py/bin/python3.11": (None, None)})
    with pytest.raises(sp.SupervisorPythonError, match="loader"):
        sp.layout({**PROBE, "maps": PROBE["maps"][:2]}, ELF)


RUN_IN_COPY = "import os, sys; print(sys.prefix, flush=True); os.execv('/usr/bin/env', ['env'])"


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(sp, "_ready", {})


def test_the_copy_stands_alone_is_reused_and_execs_children_without_loader_variables(tmp_path, fresh):
    folder = sp.supervisor_python(tmp_path / "cache")
    assert folder.parent == tmp_path / "cache-supervisor"
    done = subprocess.run(
        portable.command(str(folder), ["-c", RUN_IN_COPY]),
        capture_output=True,
        text=True,
        env={"A": "1", "PYTHONHOME": "/nowhere", "PYTHONPATH": "/tmp"},  # -I: neither moves it
        check=True,
    )
    prefix, *environment = done.stdout.splitlines()
    assert prefix == str(folder)
    assert [v for v in environment if v.startswith("LD_")] == [] and "A=1" in environment
    for path in folder.rglob("*"):
        assert not path.lstat().st_mode & 0o022, path
    made = (folder / sp.MANIFEST).stat().st_mtime_ns
    sp._ready.clear()  # another process: it checks and reuses the copy
    assert sp.supervisor_python(tmp_path / "cache") == folder
    assert (folder / sp.MANIFEST).stat().st_mtime_ns == made
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(sp.WORK_PREFIX)] == []


def test_a_copy_changed_after_it_was_made_is_never_used_but_made_again(tmp_path, fresh):
    folder = sp.supervisor_python(tmp_path / "cache")
    manifest = json.loads((folder / sp.MANIFEST).read_text())
    target = folder / next(name for name in manifest["tree"]["files"] if name.endswith("/json/__init__.py"))
    original = target.read_bytes()
    with open(target, "ab") as handle:
        handle.write(b"\nimport os; os.system('id')\n")
    assert not sp._copy_intact(folder)
    sp._ready.clear()  # another process
    assert sp.supervisor_python(tmp_path / "cache") == folder
    assert target.read_bytes() == original and sp._copy_intact(folder)
    # The changed one was moved aside for the sweep, not left in use.
    [aside] = [p for p in folder.parent.iterdir() if p.name.startswith(sp.WORK_PREFIX)]
    assert b"os.system" in (aside / target.relative_to(folder)).read_bytes()
    os.chmod(folder / "lib", 0o777)
    assert not sp._copy_intact(folder)  # a folder others may write is no better


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no distribution python3 on this host")
def test_a_distribution_python_chosen_by_the_setting_is_copied_the_same_way(tmp_path, fresh):
    # Debian's links libpython statically and keeps lib-dynload under /usr/lib/python3.X: another
    # layout than a pyenv or python.org build, same result.
    settings = Settings(cache_dir=tmp_path / "cache", supervisor_interpreter="/usr/bin/python3")
    [(folder, target)] = NODEJS.host_mounts(settings)
    assert target == portable.MOUNT == "/opt/attune/python"
    manifest = json.loads((folder / sp.MANIFEST).read_text())
    assert manifest["sources"][portable.PYTHON] == os.path.realpath("/usr/bin/python3")
    done = subprocess.run(
        portable.command(str(folder), ["-c", "import sys; print(sys.prefix, sys.version_info[:2])"]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith(str(folder) + " ")
