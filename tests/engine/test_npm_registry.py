"""Node.js packs against an npm registry of our own (issue 13's gaps): an https registry on the
host, reached by the real fetch container, that demands a token. The token must reach that
registry and nothing else: no image layer, no label, no build log, no file left on disk."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import ssl
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.errors import BuildError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.npm_cache import NpmCache

from ..support import unique_ref
from .hosts import make_ca

BRIDGE = "172.17.0.1"  # the host as containers on the default bridge reach it (engine-here.md)


def make_package(manifest: dict, files: dict[str, str]) -> bytes:
    """A package tarball as `npm pack` writes it: every file under ``package/``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in {"package.json": json.dumps(manifest), **files}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class NpmRegistry:
    """A registry on the bridge, over TLS (its CA in ``ca``), answering only requests that carry
    ``Bearer <token>``; ``seen`` is every (path, Authorization header) in order. ``during_fetch``
    runs in the handler before a tarball is served: the fetch container is alive then."""

    def __init__(self, root: Path, token: str) -> None:
        self.token = token
        self.packuments: dict[str, dict] = {}
        self.tarballs: dict[str, bytes] = {}
        self.seen: list[tuple[str, str | None]] = []
        self.during_fetch = None
        self.ca, crt, key = make_ca(root / "tls", BRIDGE)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                auth = self.headers.get("Authorization")
                registry.seen.append((self.path, auth))
                if auth != f"Bearer {registry.token}":
                    return self._send(401, b'{"error":"token required"}')
                if self.path in registry.tarballs:
                    if registry.during_fetch is not None:
                        registry.during_fetch()
                    return self._send(200, registry.tarballs[self.path], "application/octet-stream")
                name = self.path.lstrip("/").replace("%2f", "/").replace("%2F", "/")
                if name in registry.packuments:
                    return self._send(200, json.dumps(registry.packuments[name]).encode())
                return self._send(404, b'{"error":"not found"}')

            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((BRIDGE, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://{BRIDGE}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, name: str, version: str, files: dict[str, str] | None = None, scripts: dict[str, str] | None = None) -> str:
        """Publish ``name@version``; its sha512 integrity."""
        manifest = {"name": name, "version": version, **({"scripts": scripts} if scripts else {})}
        data = make_package(manifest, {"index.js": "module.exports = 1;\n", **(files or {})})
        path = f"/{name}/-/{name}-{version}.tgz"
        self.tarballs[path] = data
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        entry = {**manifest, "dist": {"tarball": self.url.rstrip("/") + path, "integrity": integrity}}
        if scripts:
            entry["hasInstallScript"] = True
        packument = self.packuments.setdefault(name, {"name": name, "versions": {}, "dist-tags": {}})
        packument["versions"][version] = entry
        packument["dist-tags"]["latest"] = version
        return integrity


@pytest.fixture(scope="module")
def npm_registry(tmp_path_factory):
    served = NpmRegistry(tmp_path_factory.mktemp("npm-registry"), "npm_" + unique_ref("tok") + "Zq/+=")
    yield served
    served.server.shutdown()


@pytest.fixture
def private(settings, npm_registry, tmp_path):
    """Settings with this test's own npm cache, our registry, its token file and CA."""
    token_file = tmp_path / "npm-token"
    token_file.write_text(npm_registry.token + "\n")
    token_file.chmod(0o600)
    return settings.model_copy(
        update={
            "cache_dir": tmp_path / "cache",
            "npm_registry_url": npm_registry.url,
            "npm_token_file": token_file,
            "ca_bundle": npm_registry.ca,
        }
    )


def saved_image(engine, image: str) -> bytes:
    """Every layer and the configuration of ``image``, as `docker save` writes them (uncompressed)."""
    return b"".join(engine.api.get_image(image))


def test_the_token_reaches_the_registry_and_no_image_label_log_or_file(private, engine, npm_registry, tmp_path):
    name = unique_ref("attune-private-")
    npm_registry.publish(name, "1.0.0", {"index.js": "module.exports = 'private 1.0.0';\n"})
    token = npm_registry.token
    inspected: list[str] = []

    def while_fetching():
        # The fetch container runs right now: what docker inspect shows of it holds no token.
        for container in engine.list_containers({L.HELPER: "fetch", L.CACHE: NpmCache(private, engine).cache_id}):
            inspected.append(json.dumps(engine.api.inspect_container(container.id)))

    npm_registry.during_fetch = while_fetching
    logs: list[str] = []
    manager = ContainerDependencyManager(private, engine)
    try:
        info = manager.ensure_environment(
            unique_ref("npmpriv"), DependencySpec(runtime="nodejs", dependencies=[f"{name}@1.0.0"]), on_log=logs.append
        )
    finally:
        npm_registry.during_fetch = None
    asked = [(path, auth) for path, auth in npm_registry.seen if name in path]
    # npm asked our registry for the packument and the tarball, each time with the token.
    assert any(path.endswith(".tgz") for path, _ in asked) and any(not path.endswith(".tgz") for path, _ in asked)
    assert all(auth == f"Bearer {token}" for _, auth in asked), asked
    assert info.installed_dependencies == [f"{name}@1.0.0"]
    code, output = engine.run_once(info.image, ["node", "-e", f"console.log(require('/opt/attune/node_modules/{name}'))"])
    assert code == 0 and output.strip() == "private 1.0.0", output

    assert inspected and all(token not in text for text in inspected)
    assert logs and all(token not in line for line in logs)
    image = engine.api.inspect_image(info.image)
    assert token not in json.dumps(image) and token not in json.dumps(engine.api.history(info.image))
    assert token.encode() not in saved_image(engine, info.image)
    # The registry URL (no secret in it) is in the hash; nothing of the token is on disk.
    assert not any(
        token.encode() in p.read_bytes()
        for p in Path(private.cache_dir.parent).rglob("*")
        if p.is_file() and p.name != "npm-token"
    )


def test_without_the_token_the_registry_refuses_and_the_build_says_so(private, engine, npm_registry, tmp_path):
    name = unique_ref("attune-private-")
    npm_registry.publish(name, "1.0.0")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("npm_wrong")
    manager = ContainerDependencyManager(private.model_copy(update={"npm_token_file": wrong}), engine)
    with pytest.raises(BuildError, match="fetching the npm packages failed") as caught:
        manager.ensure_environment(unique_ref("npmdeny"), DependencySpec(runtime="nodejs", dependencies=[f"{name}@1.0.0"]))
    assert "npm_wrong" not in str(caught.value) + "".join(caught.value.log_tail)
    assert any(auth == "Bearer npm_wrong" for path, auth in npm_registry.seen if name in path)


def test_a_rotated_token_file_is_read_by_the_next_fetch(private, engine, npm_registry, tmp_path):
    name = unique_ref("attune-private-")
    npm_registry.publish(name, "1.0.0")
    private.npm_token_file.write_text("npm_stale")
    manager = ContainerDependencyManager(private, engine)
    spec = DependencySpec(runtime="nodejs", dependencies=[f"{name}@1.0.0"])
    with pytest.raises(BuildError):
        manager.ensure_environment(unique_ref("npmrot"), spec)
    private.npm_token_file.write_text(npm_registry.token)  # the same process, no restart
    started = time.monotonic()
    info = manager.ensure_environment(unique_ref("npmrot"), spec)
    assert info.installed_dependencies == [f"{name}@1.0.0"] and time.monotonic() - started < 300


# -- a killed build: its fetch container and work folder are swept, a live one's never --------

KILLED_CHILD = """
import sys
from attune_containers.core.spec import DependencySpec
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
spec = DependencySpec(runtime="nodejs", dependencies=[sys.argv[3]])
ContainerDependencyManager(settings).ensure_environment(sys.argv[2], spec)
"""


def test_a_killed_builds_fetch_container_is_swept_and_a_live_ones_never(private, engine, npm_registry):
    name = unique_ref("attune-slow-")
    npm_registry.publish(name, "1.0.0")
    release = threading.Event()
    fetching = threading.Event()

    def hold_the_tarball():
        fetching.set()
        release.wait(300)  # the fetch container waits on us: it is alive, and so is its build

    npm_registry.during_fetch = hold_the_tarball
    cache = NpmCache(private, engine)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, private.model_dump_json(), unique_ref("npmkilled"), f"{name}@1.0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not fetching.is_set() and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.2)
        assert fetching.is_set(), "the fetch container never asked for the tarball"
        [container] = engine.list_containers({L.HELPER: "fetch", L.CACHE: cache.cache_id})
        # Its owner lives: another process's sweep leaves its container and its folders alone.
        assert cache.sweep() == []
        assert engine.inspect_container(container.id) is not None
        work = [p for p in cache.work_root.iterdir()]
        assert work and all(p.stat().st_mode & 0o077 == 0 for p in work)
        # The token is on disk only in a file the container's user alone reads, while it is needed.
        holding = [p for p in cache.work_root.rglob("*") if p.is_file() and npm_registry.token.encode() in p.read_bytes()]
        assert holding and all(p.stat().st_mode & 0o777 == 0o400 for p in holding)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    try:
        # SIGKILL ran no clean-up: the container is still there, waiting on the registry.
        assert engine.inspect_container(container.id) is not None
        swept = NpmCache(private, engine).sweep()
        assert container.id in swept
        assert engine.inspect_container(container.id) is None
        assert list(cache.work_root.iterdir()) == []
        assert not any(
            npm_registry.token.encode() in p.read_bytes()
            for p in private.cache_dir.parent.rglob("*")
            if p.is_file() and p.name != "npm-token"
        )
    finally:
        release.set()
        npm_registry.during_fetch = None


# -- lifecycle scripts: off by default; with allow_npm_scripts, in the offline build stage only -----

# The package's postinstall: it records that it ran, in which step, and whether it could reach the
# registry that served it (it must not: the build stage has no network).
SCRIPT = """
const fs = require("fs"), os = require("os"), path = require("path"), { spawnSync } = require("child_process");
const probe = spawnSync(process.execPath, ["-e",
  "require('net').connect(%PORT%, '%HOST%').on('connect', () => process.exit(0)).on('error', () => process.exit(3))"],
  { timeout: 10000 });
fs.writeFileSync(path.join(__dirname, "ran.json"), JSON.stringify({
  event: process.env.npm_lifecycle_event,
  interfaces: Object.keys(os.networkInterfaces()).sort(),
  reached_registry: probe.status === 0,
}));
"""


def cache_snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_scripts_run_only_when_allowed_offline_and_never_touch_the_shared_cache(private, engine, npm_registry):
    name = unique_ref("attune-scripted-")
    host, port = npm_registry.url.split("//")[1].rstrip("/").split(":")
    npm_registry.publish(
        name,
        "1.0.0",
        {"ran.js": SCRIPT.replace("%PORT%", port).replace("%HOST%", host)},
        scripts={"postinstall": "node ran.js"},
    )
    spec = DependencySpec(runtime="nodejs", dependencies=[f"{name}@1.0.0"])
    where = f"/opt/attune/node_modules/{name}/ran.json"

    default = ContainerDependencyManager(private, engine).ensure_environment(unique_ref("npmnoscripts"), spec)
    # Only stdout, and one word: run_once merges the streams in no fixed order.
    code, output = engine.run_once(default.image, ["/bin/sh", "-c", f"test -e {where} && echo PRESENT || echo ABSENT"])
    assert (code, output.strip()) == (0, "ABSENT"), output  # --ignore-scripts: it never ran

    npm_cache = NpmCache(private, engine).root
    before = cache_snapshot(npm_cache)
    assert any(p.endswith(".tgz") for p in before)  # the package is in the shared cache already
    asked = len(npm_registry.seen)
    allowed = private.model_copy(update={"allow_npm_scripts": True})
    scripted = ContainerDependencyManager(allowed, engine).ensure_environment(unique_ref("npmscripts"), spec)
    assert scripted.dependency_hash != default.dependency_hash
    code, output = engine.run_once(scripted.image, ["cat", where])
    assert code == 0, output
    ran = json.loads(output)
    # It ran at install, with no network at all (loopback only), and could not reach the registry.
    assert ran == {"event": "postinstall", "interfaces": ["lo"], "reached_registry": False}
    # The build took everything from the cache (no fetch: the lock and tarball were known) and
    # the script changed nothing in it: the shared cache never reaches a build.
    assert len(npm_registry.seen) == asked
    assert cache_snapshot(npm_cache) == before
