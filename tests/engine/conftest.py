import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

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
