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
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
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
    ENTRIES.append({"kind": kind, "filename": filename, "name": normalize(name), "version": version,
                    "sha256": digest or sha256(path), "source": source, "sdist": sdist})
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
        cached = run(PIP + ["download", "-q", "--no-index", "--find-links", TOOLS_CACHE, "--only-binary", ":all:",
                            "--no-deps", "--dest", folder, tool], check=False)
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
    result = run(PIP + ["wheel", "-q", "--no-index", "--only-binary", ":all:", "--find-links", CACHE,
                        "--wheel-dir", folder, "-r", REQUIREMENTS], check=False)
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
        fail("the wheel built from %s is not the sdist's own (%s %s): %s"
             % (os.path.basename(path), name, version, ", ".join(os.path.basename(p) for p in built) or "none"))
    return built[0]


def online_wheels():
    report_path = WORK + "/report.json"
    run(PIP + ["install", "-q", "--dry-run", "--ignore-installed", *BINARY, "--report", report_path,
               "-r", REQUIREMENTS])
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
    bootstrap_pip()
    fetch_tools()
    if OFFLINE:
        offline_wheels()
    else:
        online_wheels()
    hand_back()


if __name__ == "__main__":
    main()
