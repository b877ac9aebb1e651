"""The Node.js runtime: npm dependencies, a Node major among the base images, ``node_modules`` in
the image (``npm ci --offline --ignore-scripts`` from a lock), and the Python runtime's supervisor
serving each execution in a fresh child that execs ``node`` on ``loop/attune_runner.js``.

Pure apart from :meth:`NodeRuntime.fetcher`, which imports the npm cache (engine) on demand.

Why the supervisor is Python's (see also README.md beside this file): the supervisor is the
security boundary of every action container (root with only SETUID/SETGID/KILL, a fresh child per
execution dropped to uid 65532 before its request is read, frames written only by the supervisor,
cleanup and verification after each execution). Writing it again in JavaScript would mean a second
boundary to keep right, and Node has no fork(). So the supervisor runs under ``-I -S`` (no site, no
pack code in it) on its own interpreter, a copy of the host's CPython with its loader and libraries
mounted read-only (``host_mounts``, services/supervisor_python.py): a Node base needs no python3.
Only the per-execution child differs: after dropping its privileges it execs ``node`` (no zygote for
Node: a plain per-execution child; a warm container still saves the container start).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from ... import __version__
from ...core import labels as L
from ...core.plan import BuildPlan
from ...core.render import APP_UID, ATTUNE_DIR, BuildOptions, _environment, tar_context, template_source
from ...core.spec import DependencySpec, RequirementPolicy, ValidatedSpec
from ...core.versions import BaseImage
from ...errors import InvalidSpecError
from ..base import LOOP_MOUNT
from ..python import portable
from .spec import package_json, validate_node_spec, with_pack_files
from .versions import choose_node

LOOP_DIR = Path(__file__).resolve().parent / "loop"
# The Python runtime's loop folder holds the supervisor; Node's containers mount it here too.
SUPERVISOR_DIR = Path(__file__).resolve().parent.parent / "python" / "loop"
SUPERVISOR_MOUNT = "/opt/attune/supervisor"
NODE = "/usr/bin/node"
RUNNER = f"{LOOP_MOUNT}/attune_runner.js"
HELPER_DIR = f"{LOOP_MOUNT}/attune_action"
DOCKERFILE_TEMPLATE = "Dockerfile.node.j2"
PREPARE_SCRIPT = "build/node-prepare.js"
HASH_FORMAT = 1
TAG_LENGTH = 16
_EXACT = re.compile(r"\d+\.\d+\.\d+")
_MAJOR = re.compile(r"[1-9]\d{0,2}")
_IMAGE_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,254}")
# Where the official node:<major>-slim images are (the default); bootstrapped ones replace them.
DEFAULT_BASE_IMAGES = {"18": "node:18-slim", "20": "node:20-slim", "22": "node:22-slim"}


def hash_document(spec: ValidatedSpec, base: BaseImage, options: BuildOptions) -> dict[str, Any]:
    """What decides a Node pack image's content (its hash): the dependencies in canonical form,
    the Node version and base identity, whether npm scripts run, the template and build script,
    and ``HASH_FORMAT``; the npm registry when one is configured."""
    document: dict[str, Any] = {
        "format": HASH_FORMAT,
        "runtime": spec.runtime,
        "dependencies": [r.canonical() for r in spec.requirements],
        "lock": hashlib.sha256(spec.lock.encode()).hexdigest() if spec.lock is not None else None,
        "npm_scripts": options.npm_scripts,
        "node": {
            "major": base.minor,
            "version": base.python_version,
            "base_image": base.reference,
            "base_identity": base.identity,
        },
        "template": hashlib.sha256(template_source(DOCKERFILE_TEMPLATE).encode()).hexdigest(),
        "build_files": {PREPARE_SCRIPT: hashlib.sha256(template_source(PREPARE_SCRIPT).encode()).hexdigest()},
    }
    # The registry decides what a name@version is (a private registry may serve its own package
    # under a public name), so images resolved against another one are other images; as
    # pip_index_url is in Python's hash. Only when set: the images of the default stay as they were.
    # Never credentials: the setting refuses them in the URL; the token is not a build input.
    if options.npm_registry:
        document["npm_registry"] = options.npm_registry
    return document


def render_dockerfile(base: BaseImage, options: BuildOptions | None = None) -> str:
    if not _IMAGE_REFERENCE.fullmatch(base.reference):
        raise ValueError(f"not an image reference: {base.reference!r}")
    return (
        _environment()
        .get_template(DOCKERFILE_TEMPLATE)
        .render(
            base_image=base.reference,
            node_version=base.python_version or base.minor,
            attune_dir=ATTUNE_DIR,
            uid=APP_UID,
            tool_version=__version__,
            helper_dir=HELPER_DIR,
            npm_scripts=bool(options and options.npm_scripts),
        )
    )


class NodePlan(BuildPlan):
    """A Node pack's build plan: the same shape the manager builds from as Python's."""

    @cached_property
    def dependency_hash(self) -> str:
        canonical = json.dumps(hash_document(self.spec, self.base, self.options), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def dockerfile(self) -> str:
        return render_dockerfile(self.base, self.options)

    def package_json(self) -> str:
        return package_json(self.spec)

    def context(self, wheels: Sequence[Path] = (), tools: Sequence[Path] = ()) -> IO[bytes]:
        """The build context: Dockerfile, our package.json, the fetch step's lock and the tarballs
        it names (``wheels``: the fetcher hands the lock first, then ``<sha512 hex>.tgz`` files)."""
        entries: list[tuple[str, bytes | Path]] = [
            ("Dockerfile", self.dockerfile().encode()),
            ("attune-build/package.json", self.package_json().encode()),
            ("attune-build/prepare.js", template_source(PREPARE_SCRIPT).encode()),
            ("attune-build/tarballs/.keep", b""),
        ]
        for path in wheels:
            entries.append(
                (
                    "attune-build/package-lock.json"
                    if path.name == "package-lock.json"
                    else f"attune-build/tarballs/{path.name}",
                    path,
                )
            )
        return tar_context(entries)

    def read_installed(self, data: bytes) -> list[str]:
        """``installed.json`` of the build (``prepare.js record``): ``name@version`` lines. Written
        by our script from the lock, read back bounded and validated like pack input."""
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"installed.json is not JSON: {exc}") from None
        if not isinstance(document, list) or len(document) > 20000:
            raise ValueError("installed.json is not a list of {name, version}")
        lines = []
        for entry in document:
            name = entry.get("name") if isinstance(entry, dict) else None
            version = entry.get("version") if isinstance(entry, dict) else None
            if not (
                isinstance(name, str)
                and isinstance(version, str)
                and re.fullmatch(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]{0,213}", name)
                and re.fullmatch(r"[0-9A-Za-z.+-]{1,100}", version)
            ):
                raise ValueError(f"installed.json has an entry that is not {{name, version}}: {entry!r:.200}")
            lines.append(f"{name}@{version}")
        return lines

    def labels(self, installed: list[str], created: datetime) -> dict[str, str]:
        labels = super().labels(installed, created)
        version = self.base.python_version or self.base.minor
        # BuildPlan writes Python's version label; a Node image carries Node's instead.
        del labels[L.PYTHON_VERSION]
        labels[L.NODEJS_VERSION] = version
        labels[L.OCI_DESCRIPTION] = f"Node.js {version} environment of pack {self.pack_ref}"
        return labels


class NodeRuntime:
    name = "nodejs"
    display_name = "Node.js"
    aliases = frozenset({"node"})
    meta_key = "nodejs_dependencies"
    # attune's Node.js runner is "nodejs"; "node" is accepted as the runtime's alias.
    runner_types = ("nodejs", "node")
    version_label = L.NODEJS_VERSION
    executable = NODE
    loop_dir = LOOP_DIR
    support_mounts = ((SUPERVISOR_DIR, SUPERVISOR_MOUNT),)
    pack_files = ("package.json", "package-lock.json")

    def validate(self, spec: DependencySpec, policy: RequirementPolicy) -> ValidatedSpec:
        return validate_node_spec(spec, policy)

    def base_images(self, settings: Any) -> dict[str, str]:
        configured = dict(getattr(settings, "runtime_base_images", {}).get(self.name) or DEFAULT_BASE_IMAGES)
        for major in configured:
            if not _MAJOR.fullmatch(major):
                raise InvalidSpecError(
                    f"runtime_base_images.nodejs key {major!r} is not a Node.js major like '20'", field="runtime_base_images"
                )
        return configured

    def base_version(self, labels: dict[str, str], env: dict[str, str]) -> str | None:
        # Our bootstrapped images carry a label; the official images an ENV NODE_VERSION.
        for found in (labels.get(L.NODEJS_VERSION), env.get("NODE_VERSION")):
            if found and _EXACT.fullmatch(found.lstrip("v")):
                return found.lstrip("v")
        return None

    def base_version_command(self) -> list[str]:
        return ["node", "-p", "process.versions.node"]

    def choose_base(self, available: list[BaseImage], spec: ValidatedSpec) -> BaseImage:
        return choose_node(available, spec.min_version, spec.max_version)

    def plan(self, pack_ref: str, spec: ValidatedSpec, base: BaseImage, options: BuildOptions, image_prefix: str) -> BuildPlan:
        from ...core.pack_ref import validate_pack_ref

        validate_pack_ref(pack_ref)
        # The Python installer setting (pip, uv) means nothing here: a Node image is npm's.
        options = options.model_copy(update={"installer": "npm"})
        return NodePlan(pack_ref=pack_ref, spec=spec, base=base, options=options, image_prefix=image_prefix)

    def host_mounts(self, settings: Any) -> tuple[tuple[Path, str], ...]:
        # The supervisor's interpreter, made once on this host from the one running this process
        # (or supervisor_interpreter): every Node image is served the same way, whatever python
        # its base has or lacks (README).
        from ...services.supervisor_python import supervisor_python  # disk: only when a run needs it

        chosen = getattr(settings, "supervisor_interpreter", None)
        return ((supervisor_python(settings.cache_dir, str(chosen) if chosen else None), portable.MOUNT),)

    def fetcher(self, settings: Any, engine: Any) -> Any:
        from ...services.npm_cache import NpmCache  # the engine: only when a build needs it

        return NpmCache(settings, engine)

    def loop_command(self, exec_uid: int, zygote_uid: int | None, preload: tuple[str, ...]) -> list[str]:
        # No zygote for Node (no fork() to share a warm heap): every execution is a fresh child
        # of the supervisor that execs node. The preload list is accepted and passed on as whole
        # arguments after the runner; the runner ignores it.
        # node through env: Debian puts it in /usr/bin, the official images in /usr/local/bin (the
        # image's PATH, which the supervisor hands on, is ours: Dockerfile.node.j2).
        # The supervisor on its own interpreter (host_mounts), under -I -S -B like Python's.
        return portable.command(
            portable.MOUNT,
            [f"{SUPERVISOR_MOUNT}/attune_wrapper.py", str(exec_uid), "--exec", "/usr/bin/env", "node", RUNNER, *preload],
        )

    def version_command(self) -> list[str]:
        return ["node", "-p", "process.versions.node"]

    def discover_preload(self, pack_dir: Path) -> tuple[str, ...]:
        return ()

    def check_preload(self, names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        if names:
            raise InvalidSpecError("Node.js packs have no preload (no zygote): leave it out", field="preload")
        return tuple(names)

    def with_pack_files(self, spec: DependencySpec, files: dict[str, str]) -> DependencySpec:
        return with_pack_files(spec, files)

    def lock_lines(self, entries: list[dict[str, Any]]) -> list[str]:
        """The lock label as lines: ``name@version integrity``."""
        return [f"{e['name']}@{e['version']} {e['integrity']}" for e in entries]


NODEJS = NodeRuntime()
