"""Choosing a pack's Python: the newest available version inside its [min_version, max_version]. Pure."""

from __future__ import annotations

from packaging.version import Version

from ...core.versions import BaseImage
from ...errors import PythonVersionUnavailableError


def _key(version: str, width: int) -> tuple[int, ...]:
    release = (*Version(version).release, 0, 0)
    return tuple(release[:width])


def _inside(image: BaseImage, min_version: str | None, max_version: str | None) -> bool:
    # A bound given as major.minor compares minors, so max_version "3.11" admits 3.11.x. A bound
    # with a patch level compares the exact version; unknown exact versions do not pass it, so we
    # never build a version outside the range.
    for bound, ok in ((min_version, lambda a, b: a >= b), (max_version, lambda a, b: a <= b)):
        if bound is None:
            continue
        if len(Version(bound).release) <= 2:
            if not ok(image.minor_key, _key(bound, 2)):
                return False
        else:
            if image.python_version is None or not ok(_key(image.python_version, 3), _key(bound, 3)):
                return False
    return True


def choose_python(available: list[BaseImage], min_version: str | None = None, max_version: str | None = None) -> BaseImage:
    """The newest of ``available`` inside the inclusive range, or a clear error naming both."""
    fitting = [image for image in available if _inside(image, min_version, max_version)]
    if fitting:
        return max(fitting, key=lambda image: (image.minor_key, _key(image.python_version or "0", 3)))
    versions = ", ".join(image.python_version or image.minor for image in sorted(available, key=lambda i: i.minor_key))
    wanted = f"[{min_version or 'any'}, {max_version or 'any'}]"
    raise PythonVersionUnavailableError(
        f"no available Python lies inside {wanted}; available: {versions or 'none configured'}",
        field="python_version",
    )
