"""choose_python: the newest configured Python inside [min_version, max_version], never outside."""

from __future__ import annotations

import itertools

import pytest
from packaging.version import Version

from attune_containers.core.versions import BaseImage
from attune_containers.errors import InvalidSpecError, PythonVersionUnavailableError
from attune_containers.runtimes.python.versions import choose_python


def image(version: str) -> BaseImage:
    minor = ".".join(version.split(".")[:2])
    return BaseImage(minor=minor, reference=f"python:{version}-slim", python_version=version, present=True)


AVAILABLE = [image("3.9.2"), image("3.11.2"), image("3.13.5")]


def chosen(available, lo=None, hi=None) -> str:
    return choose_python(available, lo, hi).python_version


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        ("3.9", "3.11", "3.11.2"),
        ("3.12", None, "3.13.5"),
        (None, None, "3.13.5"),
        (None, "3.11", "3.11.2"),
        (None, "3.10", "3.9.2"),
        ("3.9", "3.9", "3.9.2"),
        ("3.10", "3.12", "3.11.2"),
        ("3.11.2", "3.11.2", "3.11.2"),
        ("3.11.1", "3.12", "3.11.2"),
        (None, "3.13.5", "3.13.5"),
        (None, "3.13.4", "3.11.2"),
    ],
)
def test_newest_inside_the_range(lo, hi, expected):
    """The newest image whose Python lies inside the inclusive range is chosen."""
    assert chosen(AVAILABLE, lo, hi) == expected


def test_input_order_does_not_matter():
    """The choice depends on versions, not on configuration order."""
    for perm in itertools.permutations(AVAILABLE):
        assert chosen(list(perm), "3.9", "3.11") == "3.11.2"


def test_minor_max_admits_every_patch_release():
    """max_version '3.11' means 'up to any 3.11.x', not 'up to 3.11.0'."""
    assert chosen([image("3.9.2"), image("3.11.9")], None, "3.11") == "3.11.9"


def test_patch_level_min_refuses_older_patch():
    """min_version '3.11.3' refuses 3.11.2 even though the minor matches."""
    assert chosen(AVAILABLE, "3.11.2", "3.12") == "3.11.2"
    assert chosen(AVAILABLE, "3.11.3", None) == "3.13.5"
    with pytest.raises(PythonVersionUnavailableError):
        choose_python(AVAILABLE, "3.11.3", "3.12")


def test_patch_level_bound_refuses_images_of_unknown_exact_version():
    """Unknown exact versions cannot be shown inside a patch-level range, so they are not used."""
    unknown = [BaseImage(minor="3.11", reference="python:3.11-slim"), BaseImage(minor="3.12", reference="python:3.12-slim")]
    with pytest.raises(PythonVersionUnavailableError):
        choose_python(unknown, "3.11.3", None)
    # Minor-level bounds work without exact versions.
    assert choose_python(unknown, "3.11", "3.11").minor == "3.11"
    assert choose_python(unknown).minor == "3.12"


def test_same_minor_prefers_the_newer_patch():
    """Two images of one minor: the newer interpreter wins."""
    assert chosen([image("3.11.9"), image("3.11.2")], "3.11", "3.11") == "3.11.9"


@pytest.mark.parametrize("lo, hi", [("3.14", None), (None, "3.8"), ("3.10", "3.10"), ("3.13.6", None), ("3.11.3", "3.12")])
def test_nothing_fits_names_range_and_available(lo, hi):
    """The error tells the user both what was asked for and what exists."""
    with pytest.raises(PythonVersionUnavailableError) as exc:
        choose_python(AVAILABLE, lo, hi)
    message = str(exc.value)
    assert f"[{lo or 'any'}, {hi or 'any'}]" in message
    for version in ("3.9.2", "3.11.2", "3.13.5"):
        assert version in message
    assert isinstance(exc.value, InvalidSpecError)  # same exit code as any bad spec


def test_no_images_configured():
    """An empty catalogue is a clear error, not an exception from max()."""
    with pytest.raises(PythonVersionUnavailableError, match="none configured"):
        choose_python([], None, None)


# --- property: never outside the range ---------------------------------------------------------

BOUNDS = [
    None,
    "3.8",
    "3.9",
    "3.9.1",
    "3.9.2",
    "3.9.3",
    "3.10",
    "3.10.0",
    "3.11",
    "3.11.0",
    "3.11.2",
    "3.11.3",
    "3.12",
    "3.13",
    "3.13.0",
    "3.13.5",
    "3.13.6",
    "3.14",
    "4.0",
]
CATALOGUES = [
    AVAILABLE,
    [image("3.9.2"), image("3.10.14"), image("3.11.2"), image("3.11.9"), image("3.12.0"), image("3.13.5")],
    [image("3.13.5")],
]


def _inside(version: str, lo: str | None, hi: str | None) -> bool:
    """Independent oracle: 'X.Y' as min means >= X.Y.0, as max means any X.Y.z; 'X.Y.Z' is exact."""
    v = Version(version)
    if lo is not None and v < Version(lo):
        return False
    if hi is not None:
        h = Version(hi)
        if len(h.release) == 2:
            if (v.major, v.minor) > (h.major, h.minor):
                return False
        elif v > h:
            return False
    return True


@pytest.mark.parametrize("catalogue", range(len(CATALOGUES)))
def test_choice_agrees_with_oracle_for_every_range(catalogue):
    """Over every pair of bounds: the choice is the newest admitted version, or an error if none."""
    available = CATALOGUES[catalogue]
    for lo, hi in itertools.product(BOUNDS, BOUNDS):
        admitted = [i.python_version for i in available if _inside(i.python_version, lo, hi)]
        if admitted:
            got = chosen(available, lo, hi)
            assert _inside(got, lo, hi), (lo, hi, got)
            assert got == max(admitted, key=Version), (lo, hi)
        else:
            with pytest.raises(PythonVersionUnavailableError):
                choose_python(available, lo, hi)
