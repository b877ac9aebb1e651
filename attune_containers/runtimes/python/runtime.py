"""The Python runtime: pip requirements, a Python among the base images, a venv in the image, and
the ``attune_wrapper.py`` loop started as ``python -I -S -B``.

Pure apart from :meth:`PythonRuntime.fetcher`, which imports the wheel cache (engine) on demand.
Its spec (spec.py) and version choice (versions.py) live here; the build itself (render, plan,
fetch) still lives in core/render.py, core/plan.py and services/wheels.py: this runtime delegates
to their public functions until they move here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...core import labels as L
from ...core.plan import BuildPlan, make_plan
from ...core.render import INTERPRETER, BuildOptions
from ...core.spec import DependencySpec, RequirementPolicy, ValidatedSpec
from ...core.versions import BaseImage
from ..base import LOOP_MOUNT
from . import preload
from .lock import LockedDistribution
from .spec import validate_python_spec
from .versions import choose_python

LOOP_DIR = Path(__file__).resolve().parent / "loop"
_EXACT = re.compile(r"\d+\.\d+\.\d+")
WRAPPER = f"{LOOP_MOUNT}/attune_wrapper.py"


class PythonRuntime:
    name = "python"
    display_name = "Python"
    aliases = frozenset({"python3"})
    meta_key = "python_dependencies"
    runner_types = ("python", "python3", "python-script", "local-python", "run-python")
    version_label = L.PYTHON_VERSION
    executable = INTERPRETER
    loop_dir = LOOP_DIR
    support_mounts: tuple[tuple[Path, str], ...] = ()
    # requirements.txt beside pack.yaml is read by core/packs.py itself (it predates runtimes).
    pack_files: tuple[str, ...] = ("requirements.txt",)

    def validate(self, spec: DependencySpec, policy: RequirementPolicy) -> ValidatedSpec:
        return validate_python_spec(spec, policy)

    def base_images(self, settings: Any) -> dict[str, str]:
        return dict(settings.base_images)

    def base_version(self, labels: dict[str, str], env: dict[str, str]) -> str | None:
        # Our bootstrapped images carry a label; the official images an ENV PYTHON_VERSION.
        for found in (labels.get(L.BASE_PYTHON_VERSION), env.get("PYTHON_VERSION")):
            if found and _EXACT.fullmatch(found):
                return found
        return None

    def base_version_command(self) -> list[str]:
        return ["python3", "-c", "import platform; print(platform.python_version())"]

    def choose_base(self, available: list[BaseImage], spec: ValidatedSpec) -> BaseImage:
        return choose_python(available, spec.min_version, spec.max_version)

    def plan(self, pack_ref: str, spec: ValidatedSpec, base: BaseImage, options: BuildOptions, image_prefix: str) -> BuildPlan:
        return make_plan(pack_ref, spec, base, options, image_prefix)

    def host_mounts(self, settings: Any) -> tuple[tuple[Path, str], ...]:
        return ()  # the supervisor runs on the image's own python3

    def fetcher(self, settings: Any, engine: Any) -> Any:
        from ...services.wheels import WheelCache  # the engine: only when a build needs it

        return WheelCache(settings, engine)

    def loop_command(self, exec_uid: int, zygote_uid: int | None, preload: tuple[str, ...]) -> list[str]:
        # -S: no site-packages in the supervisor, so no code of the pack runs in it (the child,
        # or the zygote, imports site after dropping to its uid).
        zygote = [str(zygote_uid), *preload] if zygote_uid is not None and preload else []
        return [INTERPRETER, "-I", "-S", "-B", WRAPPER, str(exec_uid), *zygote]

    def version_command(self) -> list[str]:
        return [INTERPRETER, "-c", "import platform; print(platform.python_version())"]

    def with_pack_files(self, spec: DependencySpec, files: dict[str, str]) -> DependencySpec:
        return spec  # requirements.txt is combined by core/packs.py (extra_requirements)

    def lock_lines(self, entries: list[dict[str, Any]]) -> list[str]:
        return [LockedDistribution(**d).requirement() for d in entries]

    def discover_preload(self, pack_dir: Path) -> tuple[str, ...]:
        return preload.discover(pack_dir)

    def check_preload(self, names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        return preload.checked(names)


PYTHON = PythonRuntime()
