"""Node.js's pack spec: npm dependencies (``name@range``) and a Node major version range. Pure.

Every string comes from a pack and is hostile until it has passed :func:`validate_node_spec`:

- names are npm registry names (lowercase, optionally ``@scope/``, at most 214 characters);
- a version is an exact semver version or a semver range built from a closed grammar (``^``,
  ``~``, comparators, x-ranges, hyphen ranges, ``||``): nothing else, so no shell or file syntax
  ever passes. A bare name means any version (``*``). Strict mode accepts exact versions only;
- git, ``file:``, ``link:``, aliases (``npm:``) and tarball URLs are refused. With
  ``allow_direct_urls`` an ``https://`` tarball URL is accepted (npm records its integrity in the
  lock like a registry tarball's); git, ``file:`` and ``link:`` never are: git has no integrity to
  install offline from, and ``file:``/``link:`` name paths of the host that builds.

The dependency text reaches the build only as a ``package.json`` we write ourselves (JSON, built
from the parsed pieces); never a Dockerfile or a command line.

Node version bounds (``min_version``, ``max_version``) are majors: ``"18"`` or ``">=18"`` for the
lower bound, ``"20"``, ``"<=20"``, ``"20.x"`` or ``"<21"`` for the upper one, both inclusive. A
full version (``"18.19.0"``) is accepted and means its major: base images are chosen by major.
"""

from __future__ import annotations

import json
import re

from ...core.spec import DependencySpec, RequirementPolicy, ValidatedSpec, ValidRequirement
from ...errors import InvalidSpecError
from .lock import LockError, parse_lock

RUNTIME_NAME = "nodejs"
# Where a pack's own lock travels in a DependencySpec (its metadata: the API form may carry it too).
LOCK_KEY = "package-lock.json"
MAX_DEPENDENCIES = 500
MAX_LINE_LENGTH = 1000
MAX_PACKAGE_JSON_BYTES = 256 * 1024

_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*")
_NUM = r"(?:0|[1-9]\d{0,8})"
_PRE = r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
_EXACT = re.compile(rf"v?{_NUM}\.{_NUM}\.{_NUM}{_PRE}")
_XR = rf"(?:[xX*]|{_NUM})"
_PARTIAL = rf"{_XR}(?:\.{_XR}(?:\.{_XR}{_PRE})?)?"
_SIMPLE = rf"(?:\^|~|>=|<=|>|<|=)?\s*v?{_PARTIAL}"
_HYPHEN = rf"v?{_PARTIAL}\s+-\s+v?{_PARTIAL}"
_SET = rf"(?:{_HYPHEN}|{_SIMPLE}(?:\s+{_SIMPLE})*)"
_RANGE = re.compile(rf"\s*{_SET}\s*(?:\|\|\s*{_SET}\s*)*")
_TARBALL = re.compile(r"https://[A-Za-z0-9.-]+(?::\d{1,5})?/[A-Za-z0-9._~%/@+-]*\.(?:tgz|tar\.gz)")
_BOUND = re.compile(r"\s*(>=|<=|<|=)?\s*v?(\d{1,3})(?:\.(?:[xX*]|\d+)){0,2}\s*")


def _version_bound(value: str | None, field: str) -> int | None:
    """A bound as an inclusive major (``"<21"`` is 20), or InvalidSpecError."""
    if value is None:
        return None
    match = _BOUND.fullmatch(str(value)) if isinstance(value, (str, int)) else None
    if match is None:
        raise InvalidSpecError(f"{value!r} is not a Node.js major version bound like '18' or '>=18'", field=field)
    op, major = match.group(1) or "", int(match.group(2))
    if field == "min_version" and op not in ("", ">=", "="):
        raise InvalidSpecError(f"a lower bound is '18' or '>=18', got {value!r}", field=field)
    if field == "max_version" and op not in ("", "<=", "<", "="):
        raise InvalidSpecError(f"an upper bound is '20', '<=20' or '<21', got {value!r}", field=field)
    return major - 1 if op == "<" else major


def _requirement(name: str, wanted: str, where: str, policy: RequirementPolicy) -> ValidRequirement:
    if not isinstance(name, str) or len(name) > 214 or not _NAME.fullmatch(name):
        raise InvalidSpecError(f"{name!r} is not an npm package name", field=where)
    if name == "attune_action":
        raise InvalidSpecError("attune_action is the runtime's own helper module; a pack cannot replace it", field=where)
    if not isinstance(wanted, str) or len(wanted) > MAX_LINE_LENGTH or "\n" in wanted or "\r" in wanted:
        raise InvalidSpecError(f"the version of {name} must be one line of text", field=where)
    wanted = wanted.strip()
    lowered = wanted.lower()
    if lowered.startswith(("git", "github:", "gitlab:", "bitbucket:", "gist:", "ssh:")) or (
        "/" in wanted and ":" not in wanted
    ):  # user/repo: a GitHub shorthand
        raise InvalidSpecError(f"{name}: git dependencies are refused ({wanted!r}); name a registry version", field=where)
    if lowered.startswith(("file:", "link:", "portal:", "workspace:")) or wanted.startswith((".", "/", "~/")):
        raise InvalidSpecError(f"{name}: local paths are refused ({wanted!r}); name a registry version", field=where)
    if lowered.startswith("npm:"):
        raise InvalidSpecError(f"{name}: aliases are refused ({wanted!r}); name the package itself", field=where)
    if "://" in wanted:
        if not policy.allow_direct_urls:
            raise InvalidSpecError(
                f"{name}: URL dependencies are refused ({wanted!r}); the operator may allow "
                "https tarball URLs with allow_direct_urls",
                field=where,
            )
        if policy.strict or not _TARBALL.fullmatch(wanted):
            raise InvalidSpecError(f"{name}: only an https:// URL of a .tgz tarball is accepted, got {wanted!r}", field=where)
        return ValidRequirement(name=name, url=wanted)
    if policy.strict:
        if not _EXACT.fullmatch(wanted):
            raise InvalidSpecError(f"strict mode: {name} must name one exact version like 1.2.3, got {wanted!r}", field=where)
        return ValidRequirement(name=name, specifier="@" + wanted.lstrip("v"))
    if wanted in ("", "latest"):
        wanted = "*"
    if not _RANGE.fullmatch(wanted):
        raise InvalidSpecError(f"{name}: {wanted!r} is not a semver version or range", field=where)
    # One space between tokens: equal ranges written differently hash alike.
    return ValidRequirement(name=name, specifier="@" + " ".join(wanted.split()))


def _split(line: str, where: str) -> tuple[str, str]:
    """``lodash@4.17.21``, ``@scope/x@^1``, ``lodash`` -> (name, range)."""
    if not isinstance(line, str):
        raise InvalidSpecError("must be a string", field=where)
    line = line.strip()
    at = line.find("@", 1)  # a scope's own '@' comes first
    return (line, "") if at < 0 else (line[:at], line[at + 1 :])


def _package_json(content: str) -> dict[str, str]:
    """The ``dependencies`` of a ``package.json`` text; everything else in it (scripts, above all)
    is ignored: the build writes its own package.json."""
    if len(content.encode("utf-8", "surrogatepass")) > MAX_PACKAGE_JSON_BYTES:
        raise InvalidSpecError(f"is larger than {MAX_PACKAGE_JSON_BYTES} bytes", field="package.json")
    try:
        document = json.loads(content)
    except ValueError as exc:
        raise InvalidSpecError(f"is not JSON: {exc}", field="package.json") from None
    deps = document.get("dependencies", {}) if isinstance(document, dict) else None
    if not isinstance(deps, dict) or not all(isinstance(v, str) for v in deps.values()):
        raise InvalidSpecError("'dependencies' must be an object of name: version", field="package.json")
    return deps


def validate_node_spec(spec: DependencySpec, policy: RequirementPolicy | None = None) -> ValidatedSpec:
    """Check every field of a Node.js ``spec`` and return its canonical form, or raise InvalidSpecError."""
    policy = policy or RequirementPolicy()
    low = _version_bound(spec.min_version, "min_version")
    high = _version_bound(spec.max_version, "max_version")
    if low is not None and high is not None and low > high:
        raise InvalidSpecError(f"the range [{spec.min_version}, {spec.max_version}] is empty", field="min_version")
    pairs: list[tuple[str, str, str, str]] = []  # (where, name, range, as given)
    if len(spec.dependencies) > MAX_DEPENDENCIES:
        raise InvalidSpecError(f"more than {MAX_DEPENDENCIES} dependencies", field="dependencies")
    for i, dep in enumerate(spec.dependencies):
        where = f"dependencies[{i}]"
        name, wanted = _split(dep, where)
        pairs.append((where, name, wanted, dep))
    if spec.requirements_file_content is not None:
        deps = _package_json(spec.requirements_file_content)
        if len(deps) > MAX_DEPENDENCIES:
            raise InvalidSpecError(f"more than {MAX_DEPENDENCIES} dependencies", field="package.json")
        pairs += [(f"package.json dependencies[{name!r}]", name, wanted, f"{name}@{wanted}") for name, wanted in deps.items()]
    found: dict[str, ValidRequirement] = {}
    for where, name, wanted, _ in pairs:
        requirement = _requirement(name, wanted, where, policy)
        if name in found and found[name] != requirement:
            raise InvalidSpecError(
                f"{name} is asked for twice, as {found[name].canonical()!r} and {requirement.canonical()!r}", field=where
            )
        found[name] = requirement
    lock = spec.metadata.get(LOCK_KEY)
    if lock is not None:
        if not isinstance(lock, str):
            raise InvalidSpecError("must be the text of a package-lock.json", field=LOCK_KEY)
        try:
            parse_lock(lock)
        except LockError as exc:
            raise InvalidSpecError(str(exc), field=LOCK_KEY) from None
    return ValidatedSpec(
        runtime=RUNTIME_NAME,
        lock=lock,
        requirements=tuple(found[n] for n in sorted(found)),
        min_version=None if low is None else str(low),
        max_version=None if high is None else str(high),
        as_given=tuple(given.strip() for *_, given in pairs),
    )


def with_pack_files(spec: DependencySpec, files: dict[str, str]) -> DependencySpec:
    """A pack folder's ``package.json`` (its dependencies) and ``package-lock.json`` into ``spec``."""
    if "package.json" in files:
        if spec.requirements_file_content is not None:
            raise InvalidSpecError(
                "give package.json beside pack.yaml or requirements_file_content, not both", field="package.json"
            )
        spec = spec.with_requirements_file(files["package.json"])
    if LOCK_KEY in files:
        if "package.json" not in files:
            raise InvalidSpecError("a package-lock.json needs its package.json beside it", field=LOCK_KEY)
        spec = spec.model_copy(update={"metadata": {**spec.metadata, LOCK_KEY: files[LOCK_KEY]}})
    return spec


def package_json(spec: ValidatedSpec) -> str:
    """The ``package.json`` the fetch step and the build use: written by us from the validated
    pieces (no scripts, no other fields of the pack's)."""
    dependencies = {r.name: r.url or r.specifier[1:] for r in spec.requirements}
    document = {"name": "attune-pack", "version": "0.0.0", "private": True, "dependencies": dependencies}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
