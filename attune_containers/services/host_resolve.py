"""Pure helpers of the host-side fetch (issue 11): which wheel fits a base image, what a uv
resolution says, and whether a hash-pinned lock is complete for a base's Python.

Nothing here runs code of a distribution: wheels are read as zip data (``METADATA`` only), and the
resolver (uv, with ``--no-build``) only ever reads metadata too.
"""

from __future__ import annotations

import platform
import re
import stat
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

# glibc of the Debian suites our bootstrapped bases come from (their suite label says which).
SUITE_GLIBC = {"bullseye": 31, "bookworm": 36, "trixie": 41}
_LOCK_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)((?: --hash=sha256:[0-9a-f]{64})+)")
_METADATA_LIMIT = 4 << 20


# The manylinux glibc levels uv's --python-platform names (the newest it knows is 2.40).
UV_GLIBC_LEVELS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


def uv_platform(glibc_minor: int, arch: str) -> str | None:
    """uv's name of the newest manylinux level a glibc 2.<minor> base runs, or None."""
    levels = [level for level in UV_GLIBC_LEVELS if level <= glibc_minor]
    return f"{arch}-manylinux_2_{levels[-1]}" if levels else None


def machine() -> str:
    return platform.machine()


def platforms(glibc_minor: int, arch: str) -> list[str]:
    """Platform tags a glibc 2.<minor> Linux accepts, most specific first (as pip orders them)."""
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    found = []
    for minor in range(glibc_minor, 4, -1):
        found.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            found.append(f"{legacy[minor]}_{arch}")
    return [*found, f"linux_{arch}"]


def tag_priority(python_version: str, glibc_minor: int, arch: str) -> dict[Tag, int]:
    """Every tag a CPython of ``python_version`` on that platform installs, best first."""
    major, minor = (int(p) for p in python_version.split(".")[:2])
    plats = platforms(glibc_minor, arch)
    ordered = [
        *cpython_tags((major, minor), platforms=plats),
        *compatible_tags((major, minor), interpreter=f"cp{major}{minor}", platforms=plats),
    ]
    priority: dict[Tag, int] = {}
    for number, tag in enumerate(ordered):
        priority.setdefault(tag, number)
    return priority


def best_wheel(filenames: list[str], priority: dict[Tag, int]) -> str | None:
    """The filename pip would pick for that interpreter (its most specific tag), or None."""
    best: tuple[int, str] | None = None
    for filename in filenames:
        try:
            _, _, _, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        ranks = [priority[t] for t in tags if t in priority]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), filename)
    return best[1] if best else None


class Pinned:
    """One resolved distribution: a wheel to use, by URL and sha256."""

    def __init__(self, name: str, version: str, filename: str, url: str, sha256: str) -> None:
        self.name, self.version, self.filename, self.url, self.sha256 = name, version, filename, url, sha256


def oldest_page_age(cache: Path, names: list[str], now: float) -> float | None:
    """Seconds since the oldest of the index pages a resolution used was fetched into uv's cache
    (``simple-v*/<index>/<name>.rkyv``, one per index that served the project), or None when a
    project has no page there: then the resolution was not made from the cache alone. Every page
    of a name counts, so a stale page of another index makes the whole answer stale."""
    oldest = 0.0
    for name in names:
        ages = []
        for folder in cache.glob("simple-v*/*"):
            page = folder / f"{canonicalize_name(name)}.rkyv"
            try:
                info = page.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_mtime > now:
                return None  # a page from the future proves nothing about its age
            ages.append(now - info.st_mtime)
        if not ages:
            return None
        oldest = max(oldest, *ages)
    return oldest


def read_pylock(path: Path, priority: dict[Tag, int]) -> list[Pinned] | str:
    """The resolution uv wrote (pylock.toml): one wheel per package; or why it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"the resolution is not readable: {exc}"
    return parse_pylock(text, priority)


def parse_pylock(text: str, priority: dict[Tag, int]) -> list[Pinned] | str:
    """``read_pylock`` of the file's text."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"the resolution is not readable: {exc}"
    pinned = []
    for package in document.get("packages") or []:
        name, version = str(package.get("name", "")), str(package.get("version", ""))
        wheels = {}
        for wheel in package.get("wheels") or []:
            url = str(wheel.get("url") or "")
            filename = str(wheel.get("name") or url.rsplit("/", 1)[-1].split("#", 1)[0].split("?", 1)[0])
            sha = str((wheel.get("hashes") or {}).get("sha256") or "")
            if url.startswith(("https://", "http://")) and re.fullmatch(r"[0-9a-f]{64}", sha):
                wheels[filename] = (url, sha)
        chosen = best_wheel(sorted(wheels), priority)
        if chosen is None:
            return f"{name} {version} has no wheel for this Python and platform"
        pinned.append(Pinned(canonicalize_name(name), version, chosen, *wheels[chosen]))
    return pinned


def read_lock(lines: list[str]) -> list[tuple[str, str, set[str]]] | None:
    """The requirements as a complete-lock candidate [(name, version, {sha256})], or None unless
    every line is ``name==version --hash=sha256:...`` (one line per project): as fetch.py reads it."""
    lock: list[tuple[str, str, set[str]]] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        match = _LOCK_LINE.fullmatch(line)
        if match is None:
            return None
        lock.append(
            (canonicalize_name(match.group(1)), match.group(2), set(re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(3))))
        )
    names = [name for name, _, _ in lock]
    return lock if lock and len(set(names)) == len(names) else None


def marker_environment(python_version: str, arch: str) -> dict[str, str]:
    """Markers as the base image's interpreter evaluates them (CPython on Linux)."""
    env: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    env.update(
        {
            "implementation_name": "cpython",
            "implementation_version": python_version,
            "os_name": "posix",
            "platform_machine": arch,
            "platform_python_implementation": "CPython",
            "platform_system": "Linux",
            "python_full_version": python_version,
            "python_version": ".".join(python_version.split(".")[:2]),
            "sys_platform": "linux",
        }
    )
    return env


def requires_dist(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{path.name} has {len(names)} METADATA files")
        with wheel.open(names[0]) as handle:
            text = handle.read(_METADATA_LIMIT).decode("utf-8", "replace")
    return HeaderParser().parsestr(text).get_all("Requires-Dist") or []


def incomplete(found: dict[str, tuple[str, Path]], environment: dict[str, str]) -> str | None:
    """Why the locked wheels do not satisfy each other's dependencies for that Python (markers
    evaluated, extras followed), or None when they do. ``found``: name -> (version, wheel path)."""
    wanted: dict[str, set[str]] = {name: set() for name in found}
    queue = sorted(found)
    while queue:
        name = queue.pop()
        version, path = found[name]
        try:
            lines = requires_dist(path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            return f"cannot read the metadata of {path.name}: {exc}"
        for text in lines:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                return f"{name} {version} declares {text[:200]!r}, which is not a requirement"
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in ["", *sorted(wanted[name])]
            ):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in found:
                return f"{name} {version} needs {requirement}, which the lock does not pin"
            try:
                ok = requirement.specifier.contains(Version(found[dependency][0]), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                return f"{name} {version} needs {requirement}; the lock pins {found[dependency][0]}"
            extras = set(requirement.extras) - wanted[dependency]
            if extras:
                wanted[dependency] |= extras
                queue.append(dependency)
    return None
