"""The dependency spec of a pack (the seed's ``DependencySpec``) and its validation.

Every string in a spec comes from a pack and is hostile until it has passed :func:`validate_spec`:
each requirement is parsed as PEP 508 by ``packaging``, anything that is not a plain requirement
(pip options, URLs, local paths, editables, ``-r`` includes) is refused unless a policy allows it,
and what leaves this module is a canonical form rebuilt from the parsed pieces, never the raw text.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidSpecError

SUPPORTED_RUNTIMES = {"python": "python", "python3": "python"}

MAX_REQUIREMENTS = 500
MAX_LINE_LENGTH = 1000
MAX_REQUIREMENTS_FILE_BYTES = 256 * 1024

_HASH_OPTION = re.compile(r"--hash=(sha256|sha384|sha512):([0-9a-f]{64,128})")
_PYTHON_BOUND = re.compile(r"\d+\.\d+(?:\.\d+)?")
_ALLOWED_URL_SCHEMES = ("https://", "http://", "git+https://")


class DependencySpec(BaseModel):
    """What a pack declares, exactly as the seed's ``DependencySpec`` (and the REST API) has it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str = "python"
    dependencies: list[str] = Field(default_factory=list)
    requirements_file_content: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    # The seed's builder, for callers ported from it: DependencySpec.new("python").with_dependency(...)
    @classmethod
    def new(cls, runtime: str = "python") -> DependencySpec:
        return cls(runtime=runtime)

    def with_dependency(self, requirement: str) -> DependencySpec:
        return self.model_copy(update={"dependencies": [*self.dependencies, requirement]})

    def with_requirements_file(self, content: str) -> DependencySpec:
        return self.model_copy(update={"requirements_file_content": content})

    def with_version_range(self, min_version: str | None, max_version: str | None) -> DependencySpec:
        return self.model_copy(update={"min_version": min_version, "max_version": max_version})


class RequirementPolicy(BaseModel):
    """What a requirement may be beyond a plain PEP 508 requirement from the index."""

    model_config = ConfigDict(frozen=True)

    allow_pip_options: bool = False
    allow_direct_urls: bool = False
    strict: bool = False


class ValidRequirement(BaseModel):
    """One requirement after validation, in canonical form."""

    model_config = ConfigDict(frozen=True)

    name: str
    extras: tuple[str, ...] = ()
    specifier: str = ""
    marker: str | None = None
    url: str | None = None
    hashes: tuple[str, ...] = ()

    def canonical(self) -> str:
        """One line pip understands; equal for requirements that mean the same thing."""
        text = self.name
        if self.extras:
            text += "[" + ",".join(self.extras) + "]"
        if self.url:
            text += f" @ {self.url}"
            if self.marker:
                text += " "
        else:
            text += self.specifier
        if self.marker:
            text += f"; {self.marker}"
        for h in self.hashes:
            text += f" --hash={h}"
        return text


class ValidatedSpec(BaseModel):
    """A spec that passed validation: what the rest of the package works from."""

    model_config = ConfigDict(frozen=True)

    runtime: str
    requirements: tuple[ValidRequirement, ...]
    pip_options: tuple[str, ...] = ()
    min_version: str | None = None
    max_version: str | None = None
    # The requirement lines as the pack gave them (comments and blanks dropped), for the image label.
    as_given: tuple[str, ...] = ()

    def requirement_lines(self) -> list[str]:
        """The requirements file written into the build context: options first, then sorted lines."""
        return [*self.pip_options, *(r.canonical() for r in self.requirements)]


class EnvironmentInfo(BaseModel):
    """A pack's environment, i.e. its image: the seed's ``EnvironmentInfo`` for the image world."""

    id: str = Field(description="The image ID (sha256:...)")
    pack_ref: str = Field(description="The pack")
    image: str = Field(description="The image reference to run: <prefix>/<name>:<hash prefix>")
    runtime: str = Field("python", description="The runtime: python")
    runtime_version: str = Field(description="The exact Python version of the image")
    dependency_hash: str = Field(description="The hash of the pack's resolved dependencies (names the image)")
    requirements: list[str] = Field(default_factory=list, description="The pack's requirements as declared")
    installed_dependencies: list[str] = Field(default_factory=list, description="What is installed: name==version")
    executable_path: str = Field(description="The interpreter in the image")
    created_at: datetime = Field(description="When the image was built")
    updated_at: datetime = Field(description="When the image was last used or checked")
    is_valid: bool = Field(True, description="Whether the image is usable")
    size_bytes: int | None = Field(None, description="The image's size, when known")

    @property
    def path(self) -> str:
        """The seed's ``path``: where the environment lives, here the image reference."""
        return self.image


def validate_spec(spec: DependencySpec, policy: RequirementPolicy | None = None) -> ValidatedSpec:
    """Check every field of ``spec`` and return its canonical form, or raise InvalidSpecError."""
    policy = policy or RequirementPolicy()
    runtime = SUPPORTED_RUNTIMES.get(spec.runtime)
    if runtime is None:
        raise InvalidSpecError(
            f"unknown runtime {spec.runtime!r}; supported: {', '.join(sorted(set(SUPPORTED_RUNTIMES)))}",
            field="runtime",
        )
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
            raise InvalidSpecError(
                f"is larger than {MAX_REQUIREMENTS_FILE_BYTES} bytes", field="requirements_file_content"
            )
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
        raise InvalidSpecError(
            f"{value!r} is not a Python version like '3.11' or '3.11.4'", field=field
        )
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
                f"character {ch!r} at position {pos} is not allowed in a requirement "
                f"(printable ASCII only): {line!r}",
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
        f"{kind} are not allowed ({option!r} in {line!r}); "
        "set ATTUNE__CONTAINERS__ALLOW_PIP_OPTIONS=true to allow them",
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
            f"{text!r} is not a PEP 508 requirement ({exc}); local paths, archives and bare URLs "
            "are not accepted",
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
            raise InvalidSpecError(
                f"strict mode requires an exact pin like 'name==1.2.3', got {text!r}", field=where
            )
    marker = str(Marker(str(req.marker))) if req.marker is not None else None
    return ValidRequirement(
        name=canonicalize_name(req.name),
        extras=tuple(sorted(canonicalize_name(e) for e in req.extras)),
        specifier=str(req.specifier),
        marker=marker,
        url=req.url,
        hashes=tuple(sorted(set(hashes))),
    )
