"""Fetch the wheels of one requirements set into /out/wheels, reusing the shared wheel cache.

Runs inside a throwaway container of the pack's own base image (so wheels match its Python and
platform), as an unprivileged user, with the host's cache mounted. Standard library only, 3.9+.

- Online (the default): pip resolves against the index without downloading (``--dry-run
  --report``, from the index's metadata files), so resolution is what a plain pip install would
  give; then each distribution is taken from the cache when its file is there with the index's
  hash, and downloaded (then cached) only when it is not. Sdists are built into wheels once and
  the wheels cached too.
- Offline (``ATTUNE_FETCH_OFFLINE=1``, no network): the cache alone must satisfy the requirements;
  what is missing is named and the fetch fails.
Every line it prints starting with ``fetch:`` says what came from where.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

CACHE = "/cache/wheelhouse"
TOOLS_CACHE = "/cache/tools"
OUT = "/out/wheels"
OUT_TOOLS = "/out/tools"
REQUIREMENTS = "/out/requirements.txt"
VENV = "/tmp/fetch-venv"
PIP = [VENV + "/bin/python", "-m", "pip", "--disable-pip-version-check", "--no-input"]
OFFLINE = os.environ.get("ATTUNE_FETCH_OFFLINE") == "1"
TOOLS = [t for t in os.environ.get("ATTUNE_FETCH_TOOLS", "").split() if t]
MODERN_PIP = "pip>=23.1"  # --dry-run --report with PEP 658 metadata


def log(message):
    print("fetch: " + message, flush=True)


def run(args, check=True):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if check and result.returncode != 0:
        sys.stdout.write(result.stdout)
        sys.exit(result.returncode)
    return result


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_put(path, directory):
    # Atomic: a concurrent fetch never sees half a file.
    target = os.path.join(directory, os.path.basename(path))
    if not os.path.exists(target):
        tmp = target + ".part-%d" % os.getpid()
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return target


def bootstrap_pip():
    run([sys.executable, "-m", "venv", VENV])
    found = run(PIP + ["install", "-q", "--no-index", "--find-links", TOOLS_CACHE, MODERN_PIP], check=False)
    if found.returncode == 0:
        log("pip from the cache")
        return
    if OFFLINE:
        log("no modern pip in the cache; using the base image's pip offline")
        return
    os.makedirs("/tmp/pipdl", exist_ok=True)
    run(PIP + ["download", "-q", "--only-binary", ":all:", "--dest", "/tmp/pipdl", MODERN_PIP])
    for name in os.listdir("/tmp/pipdl"):
        cache_put(os.path.join("/tmp/pipdl", name), TOOLS_CACHE)
    run(PIP + ["install", "-q", "--no-index", "--find-links", TOOLS_CACHE, MODERN_PIP])
    log("downloaded pip")


def fetch_tools():
    for tool in TOOLS:
        cached = run(PIP + ["download", "-q", "--no-index", "--find-links", TOOLS_CACHE, "--only-binary", ":all:",
                            "--no-deps", "--dest", OUT_TOOLS, tool], check=False)
        if cached.returncode == 0:
            log("cached %s" % tool)
            continue
        if OFFLINE:
            sys.stdout.write(cached.stdout)
            log("ERROR: %s is not in the cache and the fetch is offline" % tool)
            sys.exit(1)
        run(PIP + ["download", "-q", "--only-binary", ":all:", "--no-deps", "--dest", OUT_TOOLS, tool])
        for name in os.listdir(OUT_TOOLS):
            cache_put(os.path.join(OUT_TOOLS, name), TOOLS_CACHE)
        log("downloaded %s" % tool)


def offline_wheels():
    result = run(PIP + ["wheel", "-q", "--no-index", "--find-links", CACHE, "--wheel-dir", OUT, "-r", REQUIREMENTS],
                 check=False)
    return result


def online_wheels():
    report_path = "/tmp/report.json"
    run(PIP + ["install", "-q", "--dry-run", "--ignore-installed", "--report", report_path, "-r", REQUIREMENTS])
    with open(report_path) as handle:
        report = json.load(handle)
    for item in report.get("install", []):
        info = item.get("download_info") or {}
        url = info.get("url", "")
        name = item["metadata"]["name"]
        version = item["metadata"]["version"]
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        expected = hashes.get("sha256")
        if "vcs_info" in info or "dir_info" in info or not url.startswith(("https://", "http://")):
            # A direct reference pip must build itself; not cached.
            run(PIP + ["wheel", "-q", "--no-deps", "--wheel-dir", OUT, "%s @ %s" % (name, url)])
            log("built %s %s from a direct reference" % (name, version))
            continue
        filename = url.rsplit("/", 1)[-1].split("#", 1)[0].split("?", 1)[0]
        cached = os.path.join(CACHE, filename)
        if os.path.exists(cached) and (expected is None or sha256(cached) == expected):
            log("cached %s" % filename)
        else:
            # pip downloads it: its session carries the CA bundle and index credentials.
            run(PIP + ["download", "-q", "--no-deps", "--dest", "/tmp/dl", url])
            tmp = os.path.join("/tmp/dl", filename)
            if expected is not None and sha256(tmp) != expected:
                log("ERROR: %s does not have the index's sha256" % filename)
                sys.exit(1)
            cached = cache_put(tmp, CACHE)
            os.unlink(tmp)
            log("downloaded %s" % filename)
        if filename.endswith(".whl"):
            shutil.copyfile(cached, os.path.join(OUT, filename))
        else:
            # An sdist: build its wheel once; the built wheel is cached for the next pack.
            run(PIP + ["wheel", "-q", "--no-deps", "--wheel-dir", "/tmp/built", cached])
            for built in os.listdir("/tmp/built"):
                shutil.copyfile(os.path.join("/tmp/built", built), os.path.join(OUT, built))
                cache_put(os.path.join("/tmp/built", built), CACHE)
                log("built %s from %s" % (built, filename))
            shutil.rmtree("/tmp/built")


def main():
    for directory in (OUT, OUT_TOOLS):
        os.makedirs(directory, exist_ok=True)
    bootstrap_pip()
    fetch_tools()
    if not OFFLINE:
        online_wheels()
        return
    result = offline_wheels()
    if result.returncode != 0:
        sys.stdout.write(result.stdout)
        log("ERROR: the cache does not hold everything these requirements need, and the fetch is offline")
        sys.exit(1)
    for name in sorted(os.listdir(OUT)):
        log("cached %s" % name)


if __name__ == "__main__":
    main()
