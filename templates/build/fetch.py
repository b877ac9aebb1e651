"""Fetch the wheels of one requirements set, reusing the shared wheel cache (read-only here).

Runs inside a throwaway container of the pack's own base image (so wheels match its Python and
platform), as an unprivileged user with a read-only root. Standard library only, 3.9+.

Nothing here can write shared state: the cache is mounted read-only and there is no writable
mount at all. What this step hands back is one tar stream on stdout (a manifest, then the files it
had to download or build), which the host reads up to a bound, checks member by member (regular
files with wheel names only), verifies by sha256 and only then caches. Everything else (pip's
output, our ``fetch:`` lines) goes to stderr.

- Online (the default): pip resolves against the index without downloading (``--dry-run
  --report``); each distribution is taken from the cache when the file is there with the index's
  sha256, else downloaded. Only wheels are accepted (``--only-binary :all:``), so no code of any
  distribution runs here. With ``ATTUNE_FETCH_SDISTS=1`` (the operator's ``allow_sdist_builds``)
  sdists are built here too; the host then caches nothing this run hands back.
- Offline (``ATTUNE_FETCH_OFFLINE=1``, no network): the cache alone must satisfy the requirements.
- A complete lock (every requirement ``name==version --hash=sha256:...``, and every dependency
  those distributions declare for this Python pinned among them: what ``inspect --lock`` prints)
  needs no resolution: each file is taken from the cache by its sha256, without the index (and,
  unless the installer's tools are fetched too, without pip or a venv); a file the cache lacks is
  downloaded by its exact name and hash alone (offline: an error naming it). A lock that is not
  complete is resolved as any requirements are.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser

CACHE = "/cache/wheelhouse"
TOOLS_CACHE = "/cache/tools"
REQUIREMENTS = "/attune-build/config/requirements.txt"
WORK = "/tmp/fetch"
VENV = "/tmp/fetch-venv"
PIP = [VENV + "/bin/python", "-m", "pip", "--disable-pip-version-check", "--no-input"]
OFFLINE = os.environ.get("ATTUNE_FETCH_OFFLINE") == "1"
SDISTS = os.environ.get("ATTUNE_FETCH_SDISTS") == "1"
TOOLS = [t for t in os.environ.get("ATTUNE_FETCH_TOOLS", "").split() if t]
DEADLINE = int(os.environ.get("ATTUNE_FETCH_DEADLINE", "0") or 0)
MODERN_PIP = "pip>=23.1"  # --dry-run --report with PEP 658 metadata
BINARY = [] if SDISTS else ["--only-binary", ":all:"]
# One line of a complete lock, as spec.py rebuilds it: nothing else may be on the line.
LOCK_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)((?: --hash=sha256:[0-9a-f]{64})+)")

# The tar goes to the original stdout; fd 1 becomes stderr, so nothing else (pip, build code) can
# print into the stream by accident.
RESULT = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
sys.stdout = sys.stderr

ENTRIES = []  # the manifest: one dict per file of this build
FILES = []  # (kind, path) of files to hand back


def log(message):
    print("fetch: " + message, file=sys.stderr, flush=True)


def run(args, check=True):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout)
        sys.exit(result.returncode or 1)
    return result


def fail(message):
    log("ERROR: " + message)
    sys.exit(1)


def regular(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def sha256(path):
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_identity(filename):
    name, version = filename[: -len(".whl")].split("-")[:2]
    return normalize(name), version


def add(kind, path, source, name=None, version=None, digest=None, sdist=None):
    if not regular(path) or not path.endswith(".whl"):
        fail("%s is not a wheel file" % os.path.basename(path))
    filename = os.path.basename(path)
    if name is None:
        name, version = wheel_identity(filename)
    ENTRIES.append(
        {
            "kind": kind,
            "filename": filename,
            "name": normalize(name),
            "version": version,
            "sha256": digest or sha256(path),
            "source": source,
            "sdist": sdist,
        }
    )
    if source != "cache":
        FILES.append((kind, path))


def fresh(folder):
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def only_file(folder):
    names = [n for n in os.listdir(folder) if n.endswith(".whl") and regular(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in sorted(names)]


def bootstrap_pip():
    if os.path.isdir(VENV):
        return  # done already in this run
    run([sys.executable, "-m", "venv", VENV])
    found = run(PIP + ["install", "-q", "--no-index", "--find-links", TOOLS_CACHE, MODERN_PIP], check=False)
    if found.returncode == 0:
        log("pip from the cache")
        return
    if OFFLINE:
        log("no modern pip in the cache; using the base image's pip offline")
        return
    folder = fresh(WORK + "/pip")
    run(PIP + ["download", "-q", "--only-binary", ":all:", "--dest", folder, MODERN_PIP])
    run(PIP + ["install", "-q", "--no-index", "--find-links", folder, MODERN_PIP])
    for path in only_file(folder):
        add("bootstrap", path, "download")
    log("downloaded pip")


def fetch_tools():
    for tool in TOOLS:
        folder = fresh(WORK + "/tool")
        cached = run(
            PIP
            + [
                "download",
                "-q",
                "--no-index",
                "--find-links",
                TOOLS_CACHE,
                "--only-binary",
                ":all:",
                "--no-deps",
                "--dest",
                folder,
                tool,
            ],
            check=False,
        )
        if cached.returncode == 0:
            for path in only_file(folder):
                add("tools", path, "cache")
            log("cached %s" % tool)
            continue
        if OFFLINE:
            sys.stderr.write(cached.stdout)
            fail("%s is not in the cache and the fetch is offline" % tool)
        folder = fresh(WORK + "/tools-new")
        run(PIP + ["download", "-q", "--only-binary", ":all:", "--no-deps", "--dest", folder, tool])
        for path in only_file(folder):
            add("tools", path, "download")
        log("downloaded %s" % tool)


def offline_wheels():
    folder = fresh(WORK + "/offline")
    result = run(
        PIP
        + [
            "wheel",
            "-q",
            "--no-index",
            "--only-binary",
            ":all:",
            "--find-links",
            CACHE,
            "--wheel-dir",
            folder,
            "-r",
            REQUIREMENTS,
        ],
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        fail("the cache does not hold everything these requirements need, and the fetch is offline")
    for path in only_file(folder):
        add("wheels", path, "cache")
        log("cached %s" % os.path.basename(path))


def build_sdist(path, name, version):
    """Build a wheel from an sdist (sdist builds allowed only): it must be that sdist's wheel."""
    folder = fresh(WORK + "/built")
    run(PIP + ["wheel", "-q", "--no-deps", "--wheel-dir", folder, path])
    built = only_file(folder)
    identities = [wheel_identity(os.path.basename(p)) for p in built]
    if len(built) != 1 or identities[0] != (normalize(name), version):
        fail(
            "the wheel built from %s is not the sdist's own (%s %s): %s"
            % (os.path.basename(path), name, version, ", ".join(os.path.basename(p) for p in built) or "none")
        )
    return built[0]


def online_wheels():
    report_path = WORK + "/report.json"
    run(PIP + ["install", "-q", "--dry-run", "--ignore-installed", *BINARY, "--report", report_path, "-r", REQUIREMENTS])
    with open(report_path) as handle:
        report = json.load(handle)
    for number, item in enumerate(report.get("install", [])):
        info = item.get("download_info") or {}
        url = info.get("url", "")
        name = item["metadata"]["name"]
        version = item["metadata"]["version"]
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        expected = hashes.get("sha256")
        if "vcs_info" in info or "dir_info" in info or not url.startswith(("https://", "http://")):
            if not SDISTS:
                fail("%s %s is a direct reference pip would have to build; sdist builds are off" % (name, version))
            folder = fresh(WORK + "/direct-%d" % number)
            run(PIP + ["wheel", "-q", "--no-deps", "--wheel-dir", folder, "%s @ %s" % (name, url)])
            for path in only_file(folder):
                add("wheels", path, "build", name, version)
            log("built %s %s from a direct reference" % (name, version))
            continue
        filename = url.rsplit("/", 1)[-1].split("#", 1)[0].split("?", 1)[0]
        cached = os.path.join(CACHE, filename)
        if filename.endswith(".whl") and expected and regular(cached) and sha256(cached) == expected:
            add("wheels", cached, "cache", name, version, expected)
            log("cached %s" % filename)
            continue
        # pip downloads it: its session carries the CA bundle and index credentials.
        folder = fresh(WORK + "/dl-%d" % number)
        run(PIP + ["download", "-q", "--no-deps", *BINARY, "--dest", folder, url])
        path = os.path.join(folder, filename)
        if not regular(path):
            fail("pip did not download %s" % filename)
        digest = sha256(path)
        if expected is not None and digest != expected:
            fail("%s does not have the index's sha256" % filename)
        if filename.endswith(".whl"):
            add("wheels", path, "download", name, version, digest)
            log("downloaded %s" % filename)
        elif SDISTS:
            built = build_sdist(path, name, version)
            add("wheels", built, "build", name, version, sdist=filename)
            log("built %s from %s" % (os.path.basename(built), filename))
        else:
            fail("%s is an sdist; sdist builds are off" % filename)


def read_lock():
    """The requirements as a lock, [(name, version, {sha256, ...})]; None unless every line is
    ``name==version --hash=sha256:...`` (one line per project)."""
    lock = []
    with open(REQUIREMENTS) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            match = LOCK_LINE.fullmatch(line)
            if match is None:
                return None
            lock.append(
                (normalize(match.group(1)), match.group(2), set(re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(3))))
            )
    names = [name for name, _, _ in lock]
    return lock if lock and len(set(names)) == len(names) else None


def packaging_module():
    """``packaging`` (requirements and markers) from what the base image ships, without a venv:
    Debian's debundled wheels, the python.org images' pip, or ensurepip's bundled pip wheel."""
    import glob

    for pattern in ("/usr/share/python-wheels/packaging-*.whl", "/usr/share/python-wheels/pyparsing-*.whl"):
        sys.path.extend(sorted(glob.glob(pattern))[-1:])
    try:
        from packaging import requirements

        return requirements
    except ImportError:
        pass
    bundled = os.path.join(os.path.dirname(os.__file__), "ensurepip", "_bundled", "pip-*.whl")
    sys.path.extend(sorted(glob.glob(bundled))[-1:] + sorted(glob.glob("/usr/share/python-wheels/pip-*.whl"))[-1:])
    try:
        from pip._vendor.packaging import requirements

        return requirements
    except ImportError:
        return None


def requires_dist(path):
    """The Requires-Dist lines of a wheel's METADATA (read as data, nothing of it runs)."""
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError("%s has %d METADATA files" % (os.path.basename(path), len(names)))
        with wheel.open(names[0]) as handle:
            text = handle.read(4 << 20).decode("utf-8", "replace")
    return HeaderParser().parsestr(text).get_all("Requires-Dist") or []


def incomplete(found):
    """Why the locked distributions do not satisfy each other's dependencies for this Python
    (markers evaluated here, extras followed), or None when they do."""
    requirements = packaging_module()
    if requirements is None:
        return "no packaging library in the base image to read dependencies with"
    wanted = {name: set() for name in found}  # extras asked of each
    queue = sorted(found)
    while queue:
        name = queue.pop()
        version, path = found[name][0], found[name][1]
        try:
            lines = requires_dist(path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            return "cannot read the metadata of %s: %s" % (os.path.basename(path), exc)
        for text in lines:
            try:
                requirement = requirements.Requirement(text)
            except Exception:  # an unparsable line: let the resolver judge it
                return "%s %s declares %r, which is not a requirement" % (name, version, text[:200])
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in [""] + sorted(wanted[name])
            ):
                continue
            dependency = normalize(requirement.name)
            if dependency not in found:
                return "%s %s needs %s, which the lock does not pin" % (name, version, requirement)
            if not requirement.specifier.contains(found[dependency][0], prereleases=True):
                return "%s %s needs %s; the lock pins %s" % (name, version, requirement, found[dependency][0])
            extras = set(requirement.extras) - wanted[dependency]
            if extras:
                wanted[dependency] |= extras
                queue.append(dependency)
    return None


def lock_wheels(lock):
    """Take a complete lock's files from the cache by sha256; None, or why the lock cannot be used
    (then nothing was added and the requirements are resolved instead)."""
    by_name = {}
    for filename in sorted(os.listdir(CACHE)) if os.path.isdir(CACHE) else []:
        if filename.endswith(".whl") and filename.count("-") >= 4:
            by_name.setdefault(wheel_identity(filename)[0], []).append(filename)
    found = {}  # name -> (version, path, sha256, source)
    missing = []
    for name, version, hashes in lock:
        for filename in by_name.get(name, []):
            path = os.path.join(CACHE, filename)
            if regular(path):
                digest = sha256(path)
                if digest in hashes:
                    found[name] = (version, path, digest, "cache")
                    break
        else:
            missing.append((name, version, hashes))
    if missing and OFFLINE:
        fail(
            "the lock pins files the cache does not hold, and the fetch is offline: "
            + ", ".join("%s==%s" % (name, version) for name, version, _ in missing)
        )
    if missing:
        bootstrap_pip()
    for number, (name, version, hashes) in enumerate(missing):
        # Exactly this file: its name, version and hash; no dependencies, no resolution.
        folder = fresh(WORK + "/lock-%d" % number)
        pinned = folder + ".txt"
        with open(pinned, "w") as handle:
            handle.write("%s==%s %s\n" % (name, version, " ".join("--hash=sha256:" + h for h in sorted(hashes))))
        run(PIP + ["download", "-q", "--no-deps", "--only-binary", ":all:", "--require-hashes", "--dest", folder, "-r", pinned])
        files = only_file(folder)
        if len(files) != 1 or sha256(files[0]) not in hashes:
            fail("pip did not download %s==%s with the locked sha256" % (name, version))
        found[name] = (version, files[0], sha256(files[0]), "download")
    problem = incomplete(found)
    if problem is not None:
        return problem
    log("lock complete, no resolution: %d distributions taken by their sha256" % len(found))
    for name in sorted(found):
        version, path, digest, source = found[name]
        add("wheels", path, source, name, version, digest)
        log("%s %s" % ("cached" if source == "cache" else "downloaded", os.path.basename(path)))
    return None


def hand_back():
    """The manifest and the new files, as one tar on the original stdout."""
    with tarfile.open(fileobj=RESULT, mode="w|") as tar:
        data = json.dumps({"entries": ENTRIES}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
        for kind, path in FILES:
            info = tarfile.TarInfo(kind + "/" + os.path.basename(path))
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as handle:
                info.size = os.fstat(handle.fileno()).st_size
                tar.addfile(info, handle)
    RESULT.flush()


def main():
    if DEADLINE > 0:
        # The step ends on its own at the build's deadline, even if the process that started it
        # was killed: when this process dies the container (tini as PID 1) stops with it.
        signal.alarm(DEADLINE)
    fresh(WORK)
    if TOOLS:
        bootstrap_pip()
        fetch_tools()
    lock = read_lock()
    problem = lock_wheels(lock) if lock is not None else None
    if lock is None or problem is not None:
        if problem is not None:
            log("lock not complete (%s); resolving" % problem)
        bootstrap_pip()
        if OFFLINE:
            offline_wheels()
        else:
            online_wheels()
    hand_back()


if __name__ == "__main__":
    main()
