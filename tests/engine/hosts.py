"""Another host and a real registry for the fleet tests: a second dockerd on this machine, and
Debian's docker-registry with TLS (a CA made here) and htpasswd basic auth.

The second engine has its own data root, exec root, pidfile and socket, a bridge of its own and no
iptables rules (it must not touch the first engine's network: with no bridge at all, dockerd would
delete the host's docker0); it is another host as far as images go: it
sees none of the first engine's images and gets each one through a registry (or save | load for
the base images, which real hosts pull from their usual registry).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from attune_containers.engine import Engine
from attune_containers.errors import AttuneContainersError

CERTS_D = Path("/etc/docker/certs.d")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not come up in {seconds}s\n{tail}")


def host_address() -> str:
    """This machine's address on its main interface. Not loopback: dockerd treats 127.0.0.0/8 as an
    insecure registry (TLS unverified, plain HTTP allowed), so a CA could not be tested there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
        address = s.getsockname()[0]
    if address.startswith("127."):
        raise RuntimeError("no non-loopback IPv4 address on this machine for a TLS registry")
    return address


@dataclass
class SecondEngine:
    root: Path
    url: str
    engine: Engine
    process: subprocess.Popen

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        # dockerd unmounts its layers on a clean stop; anything left mounted would make rmtree fail.
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", f"atb{os.getpid() % 100000}"], check=False, capture_output=True)


def start_second_engine() -> SecondEngine:
    # A short path: a unix socket's path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="attB-", dir="/tmp"))
    sock = root / "docker.sock"
    log = root / "dockerd.log"
    # Its own bridge, not --bridge=none: a dockerd started with no bridge deletes the host's
    # docker0 (moby's removeDefaultBridgeInterface), cutting the first engine's containers off.
    bridge = f"atb{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=False, capture_output=True)
    subprocess.run(["ip", "addr", "add", "172.31.254.1/24", "dev", bridge], check=False, capture_output=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    process = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "--host",
            f"unix://{sock}",
            f"--bridge={bridge}",
            "--iptables=false",
            "--ip6tables=false",
        ],
        stdin=subprocess.DEVNULL,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"unix://{sock}"
    engine = Engine(base_url=url)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError("the second dockerd exited: " + log.read_text(errors="replace")[-3000:])
        try:
            engine.ping()
            return True
        except AttuneContainersError:
            return False

    second = SecondEngine(root=root, url=url, engine=engine, process=process)
    try:
        wait_for(answers, 60, "the second dockerd", log)
    except BaseException:
        second.stop()
        raise
    return second


def copy_image(reference: str, source_url: str | None, target_url: str) -> None:
    """``docker save`` on one engine into ``docker load`` on the other (fixed references only)."""
    env_a = {**os.environ}
    env_a.pop("DOCKER_HOST", None)
    if source_url:
        env_a["DOCKER_HOST"] = source_url
    save = subprocess.Popen(["docker", "save", reference], stdout=subprocess.PIPE, env=env_a)
    load = subprocess.run(
        ["docker", "load", "-q"],
        stdin=save.stdout,
        capture_output=True,
        env={**os.environ, "DOCKER_HOST": target_url},
        timeout=600,
    )
    save.stdout.close()
    if save.wait(timeout=600) != 0 or load.returncode != 0:
        raise RuntimeError(f"copying {reference} failed: {load.stderr.decode(errors='replace')}")


# -- a registry with TLS and basic auth ------------------------------------------------------------


def make_ca(root: Path, address: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``address`` signed by it: (ca.crt, server.crt, server.key)."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = root / "ca.key", root / "ca.crt"
    key, csr, crt = root / "server.key", root / "server.csr", root / "server.crt"
    quiet = {"check": True, "capture_output": True}
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_crt),
            "-days",
            "2",
            "-subj",
            "/CN=attune-test-ca",
        ],
        **quiet,
    )
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={address}"],
        **quiet,
    )
    ext = root / "san.cnf"
    ext.write_text(f"subjectAltName=IP:{address}\n")
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_crt),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(crt),
            "-days",
            "2",
            "-extfile",
            str(ext),
        ],
        **quiet,
    )
    return ca_crt, crt, key


def write_htpasswd(path: Path, user: str, password: str) -> None:
    """bcrypt (the only scheme the registry takes) via apache2-utils' htpasswd, the password on
    its standard input (never in an argument list, where ps shows it)."""
    if shutil.which("htpasswd") is not None:
        subprocess.run(["htpasswd", "-i", "-B", "-c", str(path), user], input=password.encode(), check=True, capture_output=True)
        return
    import bcrypt  # fallback where apache2-utils is missing

    path.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")


@dataclass
class Registry:
    address: str  # host:port
    process: subprocess.Popen
    root: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_registry(
    root: Path, host: str, *, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None, data: Path | None = None
) -> Registry:
    if shutil.which("docker-registry") is None:
        raise RuntimeError("docker-registry is not installed (make test installs it)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    http: dict = {"addr": f"{host}:{port}"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(data or root / "data")}, "delete": {"enabled": True}},
        "http": http,
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "attune-test", "path": str(htpasswd)}}
    (root / "config.yml").write_text(yaml.safe_dump(config))
    log = root / "registry.log"
    process = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL, stderr=open(log, "wb")
    )

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError("the registry exited: " + log.read_text(errors="replace"))
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(listening, 30, "the registry", log)
    return Registry(address=f"{host}:{port}", process=process, root=root)


@contextlib.contextmanager
def trusted_by_engines(address: str, ca: Path) -> Iterator[None]:
    """Every dockerd on this host reads /etc/docker/certs.d/<host:port>/ca.crt at each connection:
    both test engines trust the CA for this one registry, and nothing else changes."""
    folder = CERTS_D / address
    made_certs_d = not CERTS_D.exists()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, folder / "ca.crt")
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if made_certs_d:
            with contextlib.suppress(OSError):  # not empty: another test run's registry is in it
                CERTS_D.rmdir()
