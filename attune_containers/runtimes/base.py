"""The seam every runtime plugs into: what the manager, runner, pool, pruner and CLI ask of one.

One object per runtime (cibuildwheel's platform modules, repo2docker's buildpacks): it knows its
pack spec, its versions among the configured base images, its build, its in-container loop and how
that loop is started, the ``runner_type`` values of its actions and the label that carries its
exact version. The neutral code holds no runtime's names: it asks ``runtimes.get_runtime(spec.runtime)``.

Pure: importing this module (or a runtime's module) never imports the engine; what needs the
engine (fetching dependencies) is created on demand by :meth:`Runtime.fetcher`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # types only: the registry stays importable from the pure core
    from ..core.plan import BuildPlan
    from ..core.render import BuildOptions
    from ..core.spec import DependencySpec, RequirementPolicy, ValidatedSpec
    from ..core.versions import BaseImage

# Where every runtime's in-container loop folder is mounted (read-only), and the pack's code.
LOOP_MOUNT = "/opt/attune/runtime"
PACK_MOUNT = "/opt/attune/pack"


@runtime_checkable
class Runtime(Protocol):
    """One language runtime. Attributes are constants of the runtime; methods never mutate it."""

    #: The canonical ``runtime_type`` (``python``): the registry's key and the spec's ``runtime``.
    name: str
    #: How people call it in messages (``Python``).
    display_name: str
    #: Other spellings a pack may use for ``runtime`` (``python3``).
    aliases: frozenset[str]
    #: The key of ``pack.yaml``'s ``meta`` that holds the dependency spec (``python_dependencies``).
    meta_key: str
    #: The action ``runner_type`` values this runtime runs; the first is the default.
    runner_types: tuple[str, ...]
    #: The image label that carries the exact runtime version (core/labels.py defines it).
    version_label: str
    #: The interpreter inside a pack image (EnvironmentInfo.executable_path).
    executable: str
    #: The host folder mounted read-only at LOOP_MOUNT: the in-container loop (no engine, no pack code).
    loop_dir: Path
    #: The dependency files a pack folder may hold beside pack.yaml, its own first
    #: (``requirements.txt``; ``package.json`` then ``package-lock.json``).
    pack_files: tuple[str, ...]
    #: Further host folders the loop needs, each mounted read-only at its target (Node's
    #: containers mount the Python runtime's supervisor); usually none.
    support_mounts: tuple[tuple[Path, str], ...]

    def host_mounts(self, settings: Any) -> tuple[tuple[Path, str], ...]:
        """Read-only mounts the loop needs that are made on this host when a container is about to
        start (impure, on demand, like ``fetcher``): Node's mounts the supervisor's own
        interpreter. Usually none."""
        ...

    def validate(self, spec: DependencySpec, policy: RequirementPolicy) -> ValidatedSpec:
        """The spec's canonical form, or InvalidSpecError naming the field at fault."""
        ...

    def base_images(self, settings: Any) -> dict[str, str]:
        """The configured base images: version (``3.11``) -> image reference."""
        ...

    def base_version(self, labels: dict[str, str], env: dict[str, str]) -> str | None:
        """A base image's exact runtime version from its labels or ENV, when it says it (pure)."""
        ...

    def base_version_command(self) -> list[str]:
        """argv that prints a base image's exact runtime version, when labels and ENV do not say."""
        ...

    def choose_base(self, available: list[BaseImage], spec: ValidatedSpec) -> BaseImage:
        """The base image to build on among ``available``, or an error naming what was asked and
        what there is. Never a version outside what the spec admits."""
        ...

    def plan(self, pack_ref: str, spec: ValidatedSpec, base: BaseImage, options: BuildOptions, image_prefix: str) -> BuildPlan:
        """The build plan: its hash names the image; it renders the Dockerfile and the context."""
        ...

    def fetcher(self, settings: Any, engine: Any) -> Any:
        """What fetches and caches the spec's dependencies for a build (impure: engine, disk)."""
        ...

    def loop_command(self, exec_uid: int, zygote_uid: int | None, preload: tuple[str, ...]) -> list[str]:
        """argv of the in-container loop (never a shell): serves executions as ``exec_uid``; with
        ``zygote_uid``, a warm container's zygote preloads ``preload`` once as that uid."""
        ...

    def version_command(self) -> list[str]:
        """argv that prints the image's exact runtime version (checks an image is intact)."""
        ...

    def with_pack_files(self, spec: DependencySpec, files: dict[str, str]) -> DependencySpec:
        """``spec`` with the pack folder's dependency files (name -> text, only this runtime's)."""
        ...

    def lock_lines(self, entries: list[dict[str, Any]]) -> list[str]:
        """The image's lock label (its decoded JSON list) as the lines ``inspect --lock`` prints."""
        ...

    def discover_preload(self, pack_dir: Path) -> tuple[str, ...]:
        """What a warm container loads ahead, found in the pack's action files (never run)."""
        ...

    def check_preload(self, names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """A pack's own preload list, validated (InvalidSpecError), else unchanged."""
        ...
