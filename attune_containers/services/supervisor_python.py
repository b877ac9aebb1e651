"""The supervisor's own interpreter: a relocatable, read-only copy of this host's CPython (the
binary, its shared libraries, the dynamic loader they were linked with, and the part of the standard
library the supervisor imports), mounted into the containers of runtimes without a Python of their
own (Node: the official ``node:<major>-slim`` images have no python3).

Started as ``<dir>/ld.so --library-path <dir>/lib <dir>/bin/python3 -I -S -B attune_wrapper.py ...``
(argv, never a shell; runtimes/python/portable.py). It carries its loader and libc, so it runs in any image of this host's
architecture, whatever python the image has or lacks; the loader's ``--library-path`` is an
argument, not LD_LIBRARY_PATH, so the processes the supervisor execs (``node``) start with the
image's own loader and libraries and see no LD_* variable. CPython finds its prefix from argv[0]
(``bin/python3``: the landmark ``lib/python3.X/os.py`` one folder up); with ``-I`` no variable
can move it. runtimes/nodejs/README.md says why the copy is made here rather than baked into images.

The copy lives under ``<cache_dir>-supervisor`` (host-owned, beside the wheel and npm caches), in a
folder named by the sha256 of what it was copied from (every source's path, size and mtime, the
supervisor's source, ``FORMAT``). A folder is complete before it gets its name (built aside, then
renamed) and never changes after, so running containers keep a consistent view; a changed host
interpreter or library gives a new folder. Each process checks the sources once (a few stat calls).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from ..errors import AttuneContainersError
from ..runtimes.python.portable import LIB, LOADER, PYTHON, command

FORMAT = 1
SUPERVISOR = Path(__file__).resolve().parent.parent / "runtimes" / "python" / "loop" / "attune_wrapper.py"
MANIFEST = "attune-manifest.json"
WORK_PREFIX = ".work-"
_PROBE_TIMEOUT = 120

# Runs under the interpreter to copy (-I -S -B: no site, no variables): loads the supervisor as a
# module (its imports, not its main loop) and reports what that took: every module file, every
# file mapped into the process (the loader and shared libraries), and where the standard library is.
_PROBE = r"""
import importlib.util, json, os, sys, sysconfig
spec = importlib.util.spec_from_file_location("attune_supervisor_probe", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import encodings
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
with open("/proc/self/maps") as handle:
    maps = sorted({line.split(None, 5)[5].strip() for line in handle if len(line.split(None, 5)) == 6})
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "sys_version": sys.version,
    "executable": os.path.realpath("/proc/self/exe"),
    "platlibdir": getattr(sys, "platlibdir", "lib"),
    "stdlib": [sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")],
    "encodings": os.path.dirname(encodings.__file__),
    "modules": files,
    "maps": [m for m in maps if m.startswith("/")],
}))
"""

_lock = threading.Lock()
_ready: dict[tuple[str, str], Path] = {}


class SupervisorPythonError(AttuneContainersError):
    """This host's interpreter cannot be made into the supervisor's (not ELF64, a layout the probe
    does not know, or the copy does not start)."""


# -- ELF: what the copy needs to know of a binary (pure) --------------------------------------------


def elf_interp_and_soname(data: bytes) -> tuple[str | None, str | None]:
    """The program interpreter (PT_INTERP) and the DT_SONAME of a 64-bit little-endian ELF file,
    each None when absent. ValueError when ``data`` is not such a file."""
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or not elf.little_endian:
            raise ValueError("not a 64-bit little-endian ELF file")  # the copy is made for this host
        # Program headers only (what the loader itself reads): files stripped of sections work too.
        segments = list(elf.iter_segments())
        interp = next((seg.get_interp_name() for seg in segments if isinstance(seg, InterpSegment)), None)
        # pyelftools sets ``soname`` on a DT_SONAME tag at run time (from the string table).
        sonames = [tag.soname for seg in segments if isinstance(seg, DynamicSegment) for tag in seg.iter_tags("DT_SONAME")]  # type: ignore[attr-defined]
        soname = sonames[0] if sonames else None
    except (ELFError, struct.error, UnicodeDecodeError, IndexError, KeyError) as exc:
        raise ValueError(f"a truncated or malformed ELF file: {exc}") from None
    return interp, soname


# -- what to copy where (pure) ---------------------------------------------------------------------


def layout(probe: dict[str, Any], elf: dict[str, tuple[str | None, str | None]]) -> dict[str, str]:
    """Destination (relative to the copy) -> source path, from the probe's report. ``elf`` holds
    (interp, soname) of the executable and of each mapped ELF file. The standard library keeps its
    layout under ``<platlibdir>/python3.X`` (CPython's landmark); shared libraries go to ``lib/``
    under their soname (the name the loader looks for); the loader is ``ld.so``."""
    executable = probe["executable"]
    interp = elf[executable][0]
    if interp is None:
        raise SupervisorPythonError(f"{executable} has no program interpreter (a static binary is not supported)")
    interp_real = os.path.realpath(interp)
    stdlib_dirs = sorted({d for d in probe["stdlib"] if d}, key=len, reverse=True)
    sub = f"{probe['platlibdir']}/python{probe['version']}"
    files: dict[str, str] = {PYTHON: executable}

    def in_stdlib(path: str) -> str:
        for base in stdlib_dirs:
            if path.startswith(base.rstrip("/") + "/"):
                return f"{sub}/{path[len(base.rstrip('/')) + 1 :]}"
        raise SupervisorPythonError(f"the supervisor imports {path}, outside the standard library")

    for path in probe["modules"]:
        files[in_stdlib(path)] = path
    for name in probe.get("encodings_files", []):
        files[in_stdlib(name)] = name
    modules = set(probe["modules"])
    for path in probe["maps"]:
        if path == executable or path in modules or path not in elf:
            continue
        if os.path.realpath(path) == interp_real:
            files[LOADER] = path
            continue
        soname = elf[path][1] or os.path.basename(path)
        files[f"{LIB}/{soname}"] = path
    if LOADER not in files:
        raise SupervisorPythonError(f"the loader {interp} of {executable} is not among its mapped files")
    return files


# -- making the copy (impure) ----------------------------------------------------------------------


def _probe(executable: str) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [executable, "-I", "-S", "-B", "-c", _PROBE, str(SUPERVISOR)],
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
            env={},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SupervisorPythonError(f"cannot run {executable} to copy it for the supervisor: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SupervisorPythonError(f"{executable} cannot load the supervisor: {' | '.join(tail)}")
    probe: dict[str, Any] = json.loads(done.stdout)
    encodings = probe["encodings"]
    # Every codec, not only those this host's locale loaded: an image's locale may name another.
    probe["encodings_files"] = sorted(os.path.join(encodings, name) for name in os.listdir(encodings) if name.endswith(".py"))
    return probe


def _elf_of(paths: list[str]) -> dict[str, tuple[str | None, str | None]]:
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                if handle.read(4) != b"\x7fELF":
                    continue  # locale data, gconv cache: mapped, but not code
                data = b"\x7fELF" + handle.read()
            found[path] = elf_interp_and_soname(data)
        except (OSError, ValueError) as exc:
            raise SupervisorPythonError(f"cannot read {path}: {exc}") from None
    return found


def _stats(sources: list[str]) -> list[list[Any]]:
    out = []
    for path in sources:
        st = os.stat(path)
        out.append([path, st.st_size, st.st_mtime_ns])
    return out


def _supervisor_hash() -> str:
    return hashlib.sha256(SUPERVISOR.read_bytes()).hexdigest()


def _folder_name(stats: list[list[Any]], supervisor_hash: str) -> str:
    document = json.dumps([FORMAT, supervisor_hash, stats], sort_keys=True, separators=(",", ":"))
    return "py-" + hashlib.sha256(document.encode()).hexdigest()[:24]


def _ours(path: Path, kind: int) -> bool:
    """``path`` itself (never a link's target) is of ``kind``, this user's, and no one else can write it."""
    info = path.lstat()
    return stat.S_IFMT(info.st_mode) == kind and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _tree(folder: Path) -> dict[str, Any]:
    """Every folder and file of a finished copy, with each file's size and mtime."""
    folders: list[str] = []
    files: dict[str, list[int]] = {}
    for path, names, filenames in os.walk(folder):
        base = Path(path)
        folders.extend(str((base / n).relative_to(folder)) for n in names)
        for name in filenames:
            if name != MANIFEST:
                info = (base / name).lstat()
                files[str((base / name).relative_to(folder))] = [info.st_size, info.st_mtime_ns]
    return {"folders": sorted(folders), "files": files}


def _copy_intact(folder: Path) -> bool:
    """The copy is as it was made: every folder and file of its record is ours, writable by no one
    else, not a link, and each file has its recorded size and mtime. (It runs as root in every Node
    container; the host user who made it is the only one who may have changed it.)"""
    uid, base = os.geteuid(), str(folder)
    try:
        tree = json.loads((folder / MANIFEST).read_text())["tree"]
        if not _ours(folder, stat.S_IFDIR) or not _ours(folder / MANIFEST, stat.S_IFREG):
            return False
        if not all(_ours(folder / name, stat.S_IFDIR) for name in tree["folders"]):
            return False
        for name, (size, mtime_ns) in tree["files"].items():
            info = os.lstat(f"{base}/{name}")  # one call per file: this runs once in every process
            if not (
                stat.S_ISREG(info.st_mode)
                and info.st_uid == uid
                and not info.st_mode & 0o022
                and info.st_size == size
                and info.st_mtime_ns == mtime_ns
            ):
                return False
        return bool(tree["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _intact(root: Path, pointer: Path) -> Path | None:
    """The folder the pointer names, if its sources are still what it was copied from and the copy
    is as it was made."""
    try:
        recorded = json.loads(pointer.read_text())
        folder = root / recorded["folder"]
        stats = recorded["sources"]
        if _stats([s[0] for s in stats]) != stats:
            return None
        if _folder_name(stats, _supervisor_hash()) != recorded["folder"]:
            return None
        return folder if _copy_intact(folder) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _copy(files: dict[str, str], target: Path, executable: str) -> None:
    for relative, source in sorted(files.items()):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copy2(source, destination)  # copy2: mtimes kept, so the record's stats describe it
        # Read-only for everyone but the owner (the host user who made it; the mount is read-only).
        os.chmod(destination, 0o755 if os.stat(source).st_mode & 0o111 else 0o644)
    # Bytecode ahead of time (unchecked: never compared with the sources), so the supervisor
    # compiles nothing at each start; -B keeps it from writing any itself.
    subprocess.run(
        [executable, "-I", "-S", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", str(target)],
        check=True,
        capture_output=True,
        timeout=_PROBE_TIMEOUT,
        env={},
    )


def check(folder: Path) -> str:
    """Start the copy as the containers do and have it load the supervisor's imports: its
    ``sys.prefix`` must be the copy (else it found a standard library elsewhere) and every shared
    object it mapped must be the copy's (else the image's would be used, or be missing). Returns
    the prefix."""
    probe = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('probe', sys.argv[1])\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "maps = [line.split(None, 5)[5].strip() for line in open('/proc/self/maps') if len(line.split(None, 5)) == 6]\n"
        "print(json.dumps([sys.prefix, sorted({m for m in maps if '.so' in m.rsplit('/', 1)[-1]})]))\n"
    )
    done = subprocess.run(
        command(str(folder), ["-c", probe, str(SUPERVISOR)]),
        capture_output=True,
        timeout=_PROBE_TIMEOUT,
        check=False,
        env={},
    )
    try:
        prefix, mapped = json.loads(done.stdout)
    except ValueError:
        prefix, mapped = None, []
    outside = [m for m in mapped if not m.startswith(f"{folder}/")]
    if done.returncode != 0 or prefix != str(folder) or outside:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SupervisorPythonError(
            f"the supervisor's interpreter copy in {folder} does not stand alone (prefix {prefix}, "
            f"libraries from outside it: {outside}): {' | '.join(tail)}"
        )
    return str(prefix)


def build(root: Path, executable: str, pointer: Path) -> Path:
    """Copy ``executable`` (with what it needs) under ``root``, or find the copy made already."""
    probe = _probe(executable)
    elf = _elf_of([probe["executable"], *(p for p in probe["maps"] if p not in set(probe["modules"]))])
    files = layout(probe, elf)
    stats = _stats(sorted(set(files.values())))
    name = _folder_name(stats, _supervisor_hash())
    folder = root / name
    if folder.exists() and not _copy_intact(folder):
        # Changed since it was made (or made by an older version): never used; moved aside (a
        # running container may still have it mounted) for the sweep, and made again.
        os.rename(folder, tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))
    if not folder.exists():
        _sweep(root)
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))
        try:
            os.chmod(work, 0o755)
            _copy(files, work, probe["executable"])
            manifest = {"format": FORMAT, "python": probe["sys_version"], "sources": files, "tree": _tree(work)}
            (work / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.chmod(work / MANIFEST, 0o644)
            check(work)
            try:
                os.rename(work, folder)  # complete before it has its name
            except OSError:
                if not folder.is_dir():  # else another process finished the same copy first
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not _copy_intact(folder):
        raise SupervisorPythonError(f"{folder} is not as it was made (or not this user's); remove it to have it made again")
    temporary = pointer.with_name(pointer.name + f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"folder": name, "sources": stats}))
    os.replace(temporary, pointer)
    return folder


def _sweep(root: Path) -> None:
    """Work folders of copies that were killed outright (an hour is far more than a copy takes)."""
    for path in root.glob(WORK_PREFIX + "*"):
        try:
            if time.time() - path.lstat().st_mtime > 3600:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def supervisor_python(cache_dir: Path, executable: str | None = None) -> Path:
    """The folder holding the supervisor's interpreter (made from ``executable``, by default the
    interpreter running this process) under ``<cache_dir>-supervisor``: checked once per process,
    made when missing or when what it was copied from changed."""
    executable = os.path.realpath(executable or sys.executable)
    root = cache_dir.with_name(cache_dir.name + "-supervisor")
    key = (str(root), executable)
    with _lock:
        found = _ready.get(key)
        if found is not None and found.is_dir():
            return found
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not root.is_dir() or root.is_symlink() or root.lstat().st_uid != os.geteuid():
            raise SupervisorPythonError(f"{root} is not a folder of this user's")
        if root.lstat().st_mode & 0o022:
            os.chmod(root, 0o755)
        pointer = root / f"{hashlib.sha256(executable.encode()).hexdigest()[:16]}.json"
        found = _intact(root, pointer) or build(root, executable, pointer)
        _ready[key] = found
        return found
