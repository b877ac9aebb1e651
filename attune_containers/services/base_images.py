"""Base images: which Python versions are available, from which image, and making local ones.

Configuration maps Python minor versions to base images (``python:X.Y-slim`` by default). The
exact interpreter version of each is read from the image: our bootstrapped images carry a label,
the official images an ``ENV PYTHON_VERSION``; for anything else we ask the interpreter once.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from cachetools import TTLCache

from ..core import labels as L
from ..core.versions import BaseImage
from ..engine import Engine, ImageRecord
from ..errors import AttuneContainersError, EngineError, EnvironmentNotFoundError, InvalidSpecError
from ..runtimes import Runtime, get_runtime
from ..settings import Settings

BOOTSTRAP_SCRIPT = Path(__file__).resolve().parent.parent / "docker" / "bootstrap-base.sh"
BOOTSTRAP_REPOSITORY = "attune-base/python"
# Debian suites that ship each interpreter (docker/bootstrap-base.sh builds from them).
BOOTSTRAP_SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
# The same for Node.js majors (bookworm: 18.20.x, trixie: 20.19.x), with npm.
NODE_BOOTSTRAP_REPOSITORY = "attune-base/node"
NODE_BOOTSTRAP_SUITES = {"18": "bookworm", "20": "trixie"}

_VERSION = re.compile(r"\d+\.\d+\.\d+")


class BaseImageCatalog:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._cache: TTLCache[tuple[str, str], BaseImage] = TTLCache(maxsize=64, ttl=settings.cache_ttl)
        self._lock = threading.Lock()

    def available(self, runtime: Runtime | None = None) -> list[BaseImage]:
        """Every base image configured for ``runtime`` (default: the default runtime), inspected
        (exact version, presence) where it is local."""
        runtime = runtime or get_runtime()
        images = [self.describe(minor, ref, runtime) for minor, ref in runtime.base_images(self.settings).items()]
        return sorted(images, key=lambda image: image.minor_key)

    def describe(self, minor: str, reference: str, runtime: Runtime | None = None) -> BaseImage:
        runtime = runtime or get_runtime()
        with self._lock:
            cached = self._cache.get((runtime.name, reference))
        if cached is not None:
            return cached
        attrs = self.engine.inspect_image(reference)
        if attrs is None:
            image = BaseImage(minor=minor, reference=reference)
        else:
            image = BaseImage(
                minor=minor,
                reference=reference,
                python_version=self._exact_version(reference, attrs, runtime),
                identity=_identity(attrs),
                image_id=attrs.id,
                present=True,
            )
            if image.python_version and not image.python_version.startswith(minor + "."):
                setting = "BASE_IMAGES" if runtime.name == "python" else "RUNTIME_BASE_IMAGES"
                raise AttuneContainersError(
                    f"base image {reference} is configured for {runtime.display_name} {minor} but provides "
                    f"{runtime.display_name} {image.python_version}; fix ATTUNE__CONTAINERS__{setting}"
                )
            with self._lock:
                self._cache[(runtime.name, reference)] = image
        return image

    def ensure_present(self, image: BaseImage, runtime: Runtime | None = None) -> BaseImage:
        """``image`` pulled if it is not local yet, then described again (exact version known)."""
        if image.present:
            return image
        runtime = runtime or get_runtime()
        flag, setting = ("--python", "BASE_IMAGES") if runtime.name == "python" else ("--node", "RUNTIME_BASE_IMAGES")
        try:
            self.engine.pull(image.reference)
        except (EngineError, EnvironmentNotFoundError) as exc:
            raise AttuneContainersError(
                f"base image {image.reference} for {runtime.display_name} {image.minor} is not on this host and "
                f"cannot be pulled ({exc}). On a host without a registry, run "
                f"`attune-containers base bootstrap {flag} {image.minor}` and point "
                f"ATTUNE__CONTAINERS__{setting} at the result."
            ) from None
        return self.describe(image.minor, image.reference, runtime)

    def _exact_version(self, reference: str, attrs: ImageRecord, runtime: Runtime) -> str | None:
        env = dict(entry.partition("=")[::2] for entry in (attrs.config.env if attrs.config is not None else ()))
        found = runtime.base_version(dict(attrs.labels), env)
        if found:
            return found
        code, output = self.engine.run_once(reference, runtime.base_version_command())
        found = output.strip().splitlines()[-1] if code == 0 and output.strip() else ""
        return found if _VERSION.fullmatch(found) else None


def _identity(attrs: ImageRecord) -> str:
    if attrs.labels.get(L.BASE_IDENTITY):
        return attrs.labels[L.BASE_IDENTITY]
    digests = sorted(d.split("@", 1)[1] for d in attrs.digests if "@" in d)
    return digests[0] if digests else attrs.id


def bootstrap(minor: str, *, repository: str | None = None, runtime: str = "python") -> str:
    """Build ``repository:minor`` (a Python minor, or with ``runtime="nodejs"`` a Node major) from
    Debian packages with debootstrap; return its reference."""
    suites, flag, name = (
        (NODE_BOOTSTRAP_SUITES, "--node", "Node.js") if runtime == "nodejs" else (BOOTSTRAP_SUITES, "--python", "Python")
    )
    repository = repository or (NODE_BOOTSTRAP_REPOSITORY if runtime == "nodejs" else BOOTSTRAP_REPOSITORY)
    suite = suites.get(minor)
    if suite is None:
        raise InvalidSpecError(
            f"no Debian suite ships {name} {minor}; bootstrap knows {', '.join(suites)}",
            field=flag,
        )
    reference = f"{repository}:{minor}"
    result = subprocess.run(
        ["bash", str(BOOTSTRAP_SCRIPT), suite, reference, "nodejs" if runtime == "nodejs" else "python"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AttuneContainersError(f"bootstrapping {reference} from Debian {suite} failed:\n{result.stderr.strip()}")
    return reference
