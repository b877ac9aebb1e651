"""Install the fetched wheels into a fresh venv: the one step of a pack build (issue 11).

Runs as PID 1 of one container of the pack's own base image, with no network and a read-only
root filesystem, started by the host as ``python3 -I -S /tmp/attune-build/bin/install.py UID:GID``
(root, every capability dropped but the few below). ``/opt/attune`` is a folder of the host's,
bind-mounted: what this step leaves there is the image's one layer (the host writes it as a layer
tar, every entry root's, and loads it). Nothing else of this container is kept. Standard library
only, 3.9+. Nothing from the pack is in a command line here: the wheel files are found by listing
the read-only mount the host filled with verified files; UID:GID are the host process's own ids.

- ``uv venv`` + ``uv pip install --offline --no-index --no-deps --compile-bytecode`` (the static
  uv binary, mounted read-only) run as the unprivileged uid: code of the pack's distributions
  (``.pth`` files run when Python starts to compile or to record) can write only the venv folder
  (and the tmpfs mounts, which are discarded with the container).
- Then, back as root: every process left behind is killed, and the folder is given to the host's
  uid (so the host can read and remove it; the layer records root as the owner, as the
  Dockerfile's ``COPY --from=builder`` leaves it). That happens on failure too.
"""

import os
import shutil
import signal
import subprocess
import sys

ATTUNE = "/opt/attune"
VENV = ATTUNE + "/venv"
RECORD = ATTUNE + "/installed.json"
UV_CACHE = ATTUNE + "/.uv-cache"
UV = "/tmp/attune-build/uv"
WHEELS = "/tmp/attune-build/wheels"
FREEZE = "/tmp/attune-build/bin/freeze.py"
UID = 65532


def log(message):
    print("install: " + message, file=sys.stderr, flush=True)


def as_builder():
    """Child side: the unprivileged uid does everything that runs code of the pack."""
    os.setgroups([])
    os.setgid(UID)
    os.setuid(UID)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        # uv unpacks each wheel into its cache and links the files into the venv: with the cache
        # on the venv's own file system the links are hard links, not copies. The cache goes
        # before the host writes the layer.
        "UV_CACHE_DIR": UV_CACHE,
        "UV_LINK_MODE": "hardlink",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    wheels = sorted(os.path.join(WHEELS, n) for n in os.listdir(WHEELS) if n.endswith(".whl"))
    steps = [[UV, "venv", "--quiet", "--python", sys.executable, VENV]]
    if wheels:
        steps.append(
            [
                UV,
                "pip",
                "install",
                "--offline",
                "--no-index",
                "--no-deps",
                "--compile-bytecode",
                "--python",
                VENV + "/bin/python",
                *wheels,
            ]
        )
    for args in steps:
        code = subprocess.call(args, env=env, stdout=sys.stderr)
        if code != 0:
            os._exit(code or 1)
    shutil.rmtree(UV_CACHE)
    fd = os.open(RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    code = subprocess.call([VENV + "/bin/python", FREEZE], env=env, stdout=fd)
    os._exit(code)


def give_to(uid, gid):
    # uv's own lock file of the venv (mode 0666): of no use in an image.
    if os.path.isfile(VENV + "/.lock") and not os.path.islink(VENV + "/.lock"):
        os.unlink(VENV + "/.lock")
    for top, dirs, files in os.walk(ATTUNE):  # never follows links
        for name in dirs + files:
            os.lchown(os.path.join(top, name), uid, gid)
    os.lchown(ATTUNE, uid, gid)


def main():
    owner = sys.argv[1] if len(sys.argv) > 1 else "0:0"
    uid, gid = (int(part) for part in owner.split(":"))
    os.umask(0o022)
    # The host's (bind-mounted, empty) folder: the builder uid may write only there.
    os.chmod(ATTUNE, 0o755)
    os.chown(ATTUNE, UID, UID)
    pid = os.fork()
    if pid == 0:
        try:
            as_builder()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
    # Anything the builder started is still the builder's: it ends before the venv changes hands.
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    give_to(uid, gid)
    if code != 0:
        log("failed (exit %s)" % code)
        return code if code > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
