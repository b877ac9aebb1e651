import base64
import io
import json
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support import TEST_PREFIX
from .hosts import (
    copy_image,
    host_address,
    make_ca,
    start_registry,
    start_second_engine,
    trusted_by_engines,
    write_htpasswd,
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/engine/" in str(item.fspath):
            item.add_marker(pytest.mark.engine)


# -- another host and an authenticated TLS registry (tests/engine/hosts.py) ---------------------

# The base image the fleet tests' packs use; the other host gets it as real hosts get theirs.
FLEET_BASE = "attune-base/python:3.13"


@pytest.fixture(scope="module")
def second_engine(engine):
    """Engine B: another dockerd on this machine (its own roots, socket and bridge, no iptables),
    with the 3.13 base image and nothing else; stopped and removed after its module, so it is
    never running when the suite's last test restarts the host's dockerd."""
    try:
        b = start_second_engine()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        copy_image(FLEET_BASE, None, b.url)
        yield b
    finally:
        b.stop()


@dataclass
class SecureRegistry:
    address: str
    user: str
    password: str
    password_file: Path
    ca: Path
    docker_config: Path  # a DOCKER_CONFIG folder logged in to the registry, as `docker login` leaves it


@pytest.fixture(scope="module")
def secure_registry(tmp_path_factory):
    """docker-registry with TLS (a CA made here, trusted by every engine on this host through
    certs.d) and htpasswd basic auth, on this machine's non-loopback address."""
    root = tmp_path_factory.mktemp("secure-registry")
    address = host_address()
    ca, crt, key = make_ca(root / "tls", address)
    user, password = "ci", "pw-" + secrets.token_hex(12)
    htpasswd = root / "htpasswd"
    write_htpasswd(htpasswd, user, password)
    password_file = root / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    docker_config = root / "docker-config"
    docker_config.mkdir()
    registry = start_registry(root / "server", address, tls=(crt, key), htpasswd=htpasswd)
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {registry.address: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}})
    )
    try:
        with trusted_by_engines(registry.address, ca):
            yield SecureRegistry(registry.address, user, password, password_file, ca, docker_config)
    finally:
        registry.stop()


# -- Node bases without any python, like the official node:<major>-slim images ------------------

# Our bootstrapped Node bases with every python3 package purged (python3 first: its prerm script
# needs py3clean, which python3-minimal brings). The build fails unless nothing of python is left.
NO_PYTHON_DOCKERFILE = """FROM attune-base/node:{major}
RUN dpkg --purge --force-depends python3 \\
 && dpkg --purge --force-depends $(dpkg-query -W -f '${{Package}}\\n' | grep -E '^(lib)?python3') \\
 && rm -rf /usr/lib/python3 /usr/lib/python3.* \\
 && ! command -v python3 && ! command -v python && ! ls -d /usr/bin/python* /usr/lib/python3* 2>/dev/null \\
 && ! dpkg-query -W -f '${{Package}}\\n' | grep -q python
"""


@pytest.fixture(scope="session")
def nopython_node_bases(engine):
    """runtime_base_images.nodejs with Node bases that have no python at all (the official
    node:<major>-slim images cannot be pulled here): major -> image, removed after the session."""
    bases = {}
    try:
        for major in ("18", "20"):
            dockerfile = NO_PYTHON_DOCKERFILE.format(major=major).encode()
            context = io.BytesIO()
            with tarfile.open(fileobj=context, mode="w") as tar:
                info = tarfile.TarInfo("Dockerfile")
                info.size = len(dockerfile)
                tar.addfile(info, io.BytesIO(dockerfile))
            tag = f"{TEST_PREFIX}-base/nopython-node:{major}"
            engine.build(context.getvalue(), tag=tag, network_mode="none")
            bases[major] = tag
            code, output = engine.run_once(tag, ["/bin/sh", "-c", "test ! -e /usr/bin/python3 && node -p process.version"])
            assert code == 0 and output.startswith(f"v{major}."), output
        yield bases
    finally:
        for tag in bases.values():
            engine.remove_image(tag, force=True)
