"""Python's pack spec: requirements as PEP 508 lines and a Python version range.

Every string in a spec comes from a pack and is hostile until it has passed :func:`validate_python_spec`:
each requirement is parsed as PEP 508 by ``packaging``, anything that is not a plain requirement
(pip options, URLs, local paths, editables, ``-r`` includes) is refused unless a policy allows it,
and what leaves this module is a canonical form rebuilt from the parsed pieces, never the raw text.
Pure.
"""

from __future__ import annotations

import re
import sys

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ...core.spec import DependencySpec, RequirementPolicy, ValidatedSpec, ValidRequirement
from ...errors import InvalidSpecError

MAX_REQUIREMENTS = 500
MAX_LINE_LENGTH = 1000
MAX_REQUIREMENTS_FILE_BYTES = 256 * 1024

_HASH_OPTION = re.compile(r"--hash=(sha256|sha384|sha512):([0-9a-f]{64,128})")
_PYTHON_BOUND = re.compile(r"\d+\.\d+(?:\.\d+)?")
_ALLOWED_URL_SCHEMES = ("https://", "http://", "git+https://")


def validate_python_spec(spec: DependencySpec, policy: RequirementPolicy | None = None) -> ValidatedSpec:
    """Check every field of a Python ``spec`` and return its canonical form, or raise InvalidSpecError."""
    policy = policy or RequirementPolicy()
    runtime = "python"  # the runtime's own name, whichever alias (python3) the pack used
    min_v = _python_bound(spec.min_version, "min_version")
    max_v = _python_bound(spec.max_version, "max_version")
    if min_v is not None and max_v is not None and _bound_key(min_v) > _bound_key(max_v, upper=True):
        raise InvalidSpecError(
            f"the range [{spec.min_version}, {spec.max_version}] is empty: min_version is above max_version",
            field="min_version",
        )

    lines: list[tuple[str, str]] = []  # (where, line)
    for i, dep in enumerate(spec.dependencies):
        where = f"dependencies[{i}]"
        if not isinstance(dep, str):
            raise InvalidSpecError("must be a string", field=where)
        if "\n" in dep or "\r" in dep:
            raise InvalidSpecError(f"a requirement must be one line, got {dep!r}", field=where)
        lines.append((where, dep))
    if spec.requirements_file_content is not None:
        content = spec.requirements_file_content
        if len(content.encode("utf-8", "surrogatepass")) > MAX_REQUIREMENTS_FILE_BYTES:
            raise InvalidSpecError(f"is larger than {MAX_REQUIREMENTS_FILE_BYTES} bytes", field="requirements_file_content")
        for n, line in enumerate(content.splitlines(), start=1):
            lines.append((f"requirements_file_content line {n}", line))

    requirements: dict[str, ValidRequirement] = {}
    options: list[str] = []
    as_given: list[str] = []
    for where, raw in lines:
        line = _strip_comment(raw)
        if not line:
            continue
        _check_characters(line, where)
        as_given.append(line)
        if line.startswith("-"):
            options.append(_validate_option(line, where, policy))
            continue
        req = _parse_requirement(line, where, policy)
        requirements.setdefault(req.canonical(), req)
        if len(requirements) > MAX_REQUIREMENTS:
            raise InvalidSpecError(f"more than {MAX_REQUIREMENTS} requirements", field="dependencies")

    return ValidatedSpec(
        runtime=runtime,
        requirements=tuple(requirements[k] for k in sorted(requirements)),
        pip_options=tuple(options),
        min_version=str(min_v) if min_v is not None else None,
        max_version=str(max_v) if max_v is not None else None,
        as_given=tuple(as_given),
    )


def _python_bound(value: str | None, field: str) -> Version | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _PYTHON_BOUND.fullmatch(value.strip()):
        raise InvalidSpecError(f"{value!r} is not a Python version like '3.11' or '3.11.4'", field=field)
    try:
        return Version(value.strip())
    except InvalidVersion as exc:  # pragma: no cover - the regex already guarantees a version
        raise InvalidSpecError(f"{value!r} is not a version", field=field) from exc


def _bound_key(v: Version, *, upper: bool = False) -> tuple[int, int, int]:
    # An upper bound given as major.minor admits every patch release of that minor.
    if upper and len(v.release) <= 2:
        return v.release[0], v.release[1], sys.maxsize
    rel = (*v.release, 0, 0)
    return rel[0], rel[1], rel[2]


def _strip_comment(line: str) -> str:
    # pip's rule: '#' starts a comment at the start of a line or after whitespace (so URL
    # fragments survive).
    stripped = re.sub(r"(^|\s)#.*$", "", line)
    return stripped.strip()


def _check_characters(line: str, where: str) -> None:
    if len(line) > MAX_LINE_LENGTH:
        raise InvalidSpecError(f"is longer than {MAX_LINE_LENGTH} characters", field=where)
    for pos, ch in enumerate(line):
        if not (" " <= ch <= "~"):
            raise InvalidSpecError(
                f"character {ch!r} at position {pos} is not allowed in a requirement (printable ASCII only): {line!r}",
                field=where,
            )
    if "\\" in line:
        raise InvalidSpecError(f"backslashes (line continuations) are not allowed: {line!r}", field=where)
    if "${" in line:
        raise InvalidSpecError(f"environment variable references are not allowed: {line!r}", field=where)


def _validate_option(line: str, where: str, policy: RequirementPolicy) -> str:
    option = line.split()[0].split("=")[0]
    if policy.allow_pip_options:
        return " ".join(line.split())
    kind = {
        "-e": "editable installs",
        "--editable": "editable installs",
        "-r": "includes of other requirement files",
        "--requirement": "includes of other requirement files",
        "-c": "constraint files",
        "--constraint": "constraint files",
    }.get(option, "pip options")
    raise InvalidSpecError(
        f"{kind} are not allowed ({option!r} in {line!r}); set ATTUNE__CONTAINERS__ALLOW_PIP_OPTIONS=true to allow them",
        field=where,
    )


def _parse_requirement(line: str, where: str, policy: RequirementPolicy) -> ValidRequirement:
    # Per-requirement '--hash=' options stay; any other trailing option is refused.
    tokens = line.split()
    first_option = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
    text = " ".join(tokens[:first_option])
    hashes = []
    for token in tokens[first_option:]:
        m = _HASH_OPTION.fullmatch(token)
        if not m:
            raise InvalidSpecError(
                f"option {token!r} is not allowed after a requirement (only --hash=ALGO:HEX is)",
                field=where,
            )
        hashes.append(f"{m.group(1)}:{m.group(2)}")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise InvalidSpecError(
            f"{text!r} is not a PEP 508 requirement ({exc}); local paths, archives and bare URLs are not accepted",
            field=where,
        ) from None
    if req.url is not None:
        if not policy.allow_direct_urls:
            raise InvalidSpecError(
                f"direct URL requirements are not allowed ({text!r}); "
                "set ATTUNE__CONTAINERS__ALLOW_DIRECT_URLS=true to allow them",
                field=where,
            )
        if not req.url.startswith(_ALLOWED_URL_SCHEMES):
            raise InvalidSpecError(
                f"URL scheme of {req.url!r} is not allowed; use one of {', '.join(_ALLOWED_URL_SCHEMES)}",
                field=where,
            )
    elif policy.strict:
        specs = list(req.specifier)
        pinned = len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version
        if not pinned:
            raise InvalidSpecError(f"strict mode requires an exact pin like 'name==1.2.3', got {text!r}", field=where)
    marker = str(Marker(str(req.marker))) if req.marker is not None else None
    return ValidRequirement(
        name=canonicalize_name(req.name),
        extras=tuple(sorted(canonicalize_name(e) for e in req.extras)),
        specifier=str(req.specifier),
        marker=marker,
        url=req.url,
        hashes=tuple(sorted(set(hashes))),
    )
