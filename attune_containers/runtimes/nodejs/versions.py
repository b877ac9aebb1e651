"""Choosing a pack's Node.js: the newest configured major inside its [min_version, max_version]
(inclusive majors, spec.py parses the bounds). Pure."""

from __future__ import annotations

from ...core.versions import BaseImage
from ...errors import PythonVersionUnavailableError


class NodeVersionUnavailableError(PythonVersionUnavailableError):
    """No configured Node.js major lies inside the pack's range (a subclass of the Python one so
    that callers that map "no such version" errors keep doing so for every runtime)."""


def _exact_key(image: BaseImage) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (image.python_version or "0").split("."))
    except ValueError:
        return (0,)


def choose_node(available: list[BaseImage], min_version: str | None = None, max_version: str | None = None) -> BaseImage:
    """The newest of ``available`` whose major lies inside the range, or an error naming both."""
    low = int(min_version) if min_version is not None else None
    high = int(max_version) if max_version is not None else None
    fitting = [
        image
        for image in available
        if (low is None or image.minor_key[0] >= low) and (high is None or image.minor_key[0] <= high)
    ]
    if fitting:
        return max(fitting, key=lambda image: (image.minor_key, _exact_key(image)))
    versions = ", ".join(image.python_version or image.minor for image in sorted(available, key=lambda i: i.minor_key))
    raise NodeVersionUnavailableError(
        f"no available Node.js lies inside [{min_version or 'any'}, {max_version or 'any'}]; "
        f"available: {versions or 'none configured'}",
        field="node_version",
    )
