"""Reading packs in every form they come in, into one ``PackDefinition``.

Forms:
- a pack directory holding ``pack.yaml`` (and optionally ``requirements.txt``), or that
  ``pack.yaml`` itself;
- the REST API's JSON document ``{"ref", "label", "version", "meta": {...}}``, as a file or a dict.

``meta.python_dependencies`` is either a list of requirement strings or an object with the
``DependencySpec`` fields. How sources combine when a pack has several: requirements from the
list/``dependencies``, from ``requirements_file_content`` and from a ``requirements.txt`` beside
``pack.yaml`` are all installed (their union; identical requirements count once, and pip must
satisfy every line that names the same project); ``runtime``, ``min_version`` and ``max_version``
come only from the object form.

A pack may have actions of several runtimes (issue 13): each runtime's ``meta`` key
(``python_dependencies``, ``nodejs_dependencies``) or dependency file (``requirements.txt``,
``package.json``) declares it, and each gets its own spec, hence its own image. See
``PackDefinition`` for which runtimes a pack has.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidSpecError
from .execution import ResourceLimits
from .pack_ref import validate_pack_ref
from .pooling import PoolSettings
from .safe_yaml import BoundedYAMLError, load_json, load_yaml
from .spec import DependencySpec

MAX_PACK_FILE_BYTES = 1024 * 1024
PACK_FILE = "pack.yaml"
REQUIREMENTS_FILE = "requirements.txt"


MAX_ACTION_FILES = 500  # actions/*.yaml read to learn which runtimes a pack's actions need


class PackDefinition(BaseModel):
    """A pack as far as its images are concerned: one dependency spec per runtime it needs.

    ``specs`` maps each runtime's canonical name to its spec, in registry order (Python first).
    A runtime is there when the pack declares it (its ``meta`` key, or its dependency file beside
    pack.yaml) or when one of its actions names it (``runner_type``; its spec is then empty). A
    pack with neither (no keys, no files, no actions) is Python's, as in the seed.
    """

    model_config = ConfigDict(frozen=True)

    pack_ref: str
    label: str | None = None
    version: str | None = None
    specs: dict[str, DependencySpec]
    # The pack's own run limits, from meta.container_limits (validated; fields left out are unset).
    limits: ResourceLimits | None = None
    # How its warm containers are kept, from meta.container_pool.
    pool: PoolSettings | None = None
    source: str
    directory: Path | None = None

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes the pack has an image for, Python first."""
        return tuple(self.specs)

    @property
    def spec(self) -> DependencySpec:
        """The spec of a pack with one runtime (the seed's one spec per pack). A pack with several
        has no single spec: ``specs`` or ``spec_for`` say which; asking is an error, never a guess."""
        if len(self.specs) != 1:
            raise InvalidSpecError(
                f"pack {self.pack_ref!r} has {' and '.join(self.specs)} dependencies: choose a runtime (spec_for)",
                field="runtime",
            )
        return next(iter(self.specs.values()))

    def spec_for(self, runtime: str) -> DependencySpec:
        """The pack's spec for ``runtime`` (a name or alias): the declared one, else an empty spec
        (an action of a runtime the pack declares nothing for still runs, with no dependencies)."""
        from ..runtimes import get_runtime  # runtimes/ reads pack files through this module

        name = get_runtime(runtime).name
        return self.specs.get(name) or DependencySpec(runtime=name)


def load_pack(location: str | Path) -> PackDefinition:
    """Load a pack from a directory, a ``pack.yaml`` or an API JSON file."""
    path = Path(location)
    if path.is_dir():
        return _load_pack_dir(path)
    if not path.exists():
        raise InvalidSpecError(f"{path} does not exist", field="pack")
    if path.suffix == ".json":
        return pack_from_api(_parse(path.parent, path.name, load_json), source=str(path))
    if path.name in (PACK_FILE, "pack.yml"):
        return _load_pack_dir(path.parent, pack_file=path)
    raise InvalidSpecError(f"{path} is neither a pack directory, a pack.yaml nor an API JSON document", field="pack")


def pack_from_api(document: Any, *, source: str = "api") -> PackDefinition:
    """A pack from the REST API's JSON form (already parsed)."""
    if not isinstance(document, dict):
        raise InvalidSpecError("the pack document must be a JSON object", field="pack")
    return _definition(document, source=source, default_ref=None, extra_requirements=None)


def _load_pack_dir(directory: Path, pack_file: Path | None = None) -> PackDefinition:
    pack_file = pack_file or directory / PACK_FILE
    if pack_file.name == PACK_FILE and not _present(directory, PACK_FILE) and _present(directory, "pack.yml"):
        pack_file = directory / "pack.yml"
    document = _parse(directory, pack_file.name, load_yaml)
    if not isinstance(document, dict):
        raise InvalidSpecError(f"{pack_file} must hold a mapping", field="pack.yaml")
    # A link (even a dangling one) is refused by read_pack_file, not taken for "no requirements.txt".
    extra = read_pack_file(directory, [REQUIREMENTS_FILE]) if _present(directory, REQUIREMENTS_FILE) else None
    from ..runtimes import RUNTIMES  # runtimes/ reads pack files through this module

    # Other runtimes' dependency files beside pack.yaml (Node.js: package.json, package-lock.json).
    names = {name for r in RUNTIMES.values() for name in r.pack_files if name != REQUIREMENTS_FILE}
    files = {name: read_pack_file(directory, [name]) for name in sorted(names) if _present(directory, name)}
    return _definition(
        document,
        source=str(pack_file),
        default_ref=directory.resolve().name,
        extra_requirements=extra,
        directory=directory,
        pack_files=files,
    )


def _definition(
    document: dict[str, Any],
    *,
    source: str,
    default_ref: str | None,
    extra_requirements: str | None,
    directory: Path | None = None,
    pack_files: dict[str, str] | None = None,
) -> PackDefinition:
    pack_ref = document.get("ref", default_ref)
    if pack_ref is None:
        raise InvalidSpecError("the pack has no 'ref'", field="ref")
    validate_pack_ref(pack_ref)
    meta = document.get("meta") or {}
    if not isinstance(meta, dict):
        raise InvalidSpecError("must be a mapping", field="meta")
    from ..runtimes import DEFAULT_RUNTIME, RUNTIMES, runtimes_for_meta  # runtimes/ reads pack files through this module

    present = set(pack_files or ()) | ({REQUIREMENTS_FILE} if extra_requirements is not None else set())
    specs: dict[str, DependencySpec] = {}
    for runtime, declared in runtimes_for_meta(meta, present):
        spec = spec_from_meta(declared, runtime.name, runtime.meta_key)
        _check_own_runtime(spec, runtime)
        theirs = {name: text for name, text in (pack_files or {}).items() if name in runtime.pack_files}
        if theirs:
            spec = runtime.with_pack_files(spec, theirs)
        if extra_requirements is not None and REQUIREMENTS_FILE in runtime.pack_files:
            combined = "\n".join(part for part in (spec.requirements_file_content, extra_requirements) if part)
            spec = spec.with_requirements_file(combined)
        specs[runtime.name] = spec
    for name in _action_runtimes(directory) if directory is not None else ():
        specs.setdefault(name, DependencySpec(runtime=name))
    if not specs:
        specs[DEFAULT_RUNTIME] = DependencySpec(runtime=DEFAULT_RUNTIME)
    specs = {name: specs[name] for name in RUNTIMES if name in specs}  # registry order, Python first
    version = document.get("version")
    label = document.get("label")
    limits = ResourceLimits.from_pack(meta.get("container_limits"), "meta.container_limits")
    pool = PoolSettings.from_pack(meta.get("container_pool"), "meta.container_pool")
    if pool is not None and pool.preload is not None:
        # PoolSettings only knows the list suits some runtime; each runtime of this pack loads it
        # in its warm containers, so each must accept it.
        for name in specs:
            try:
                RUNTIMES[name].check_preload(pool.preload)
            except InvalidSpecError as exc:
                raise InvalidSpecError(str(exc), field="meta.container_pool.preload") from None
    return PackDefinition(
        pack_ref=pack_ref,
        label=str(label) if label is not None else None,
        version=str(version) if version is not None else None,
        specs=specs,
        limits=limits,
        pool=pool,
        source=source,
        directory=directory,
    )


def _check_own_runtime(spec: DependencySpec, runtime: Any) -> None:
    """A runtime's ``meta`` key holds that runtime's dependencies: its object form may spell the
    runtime (``runtime: python3``) but not name another one, which would give the pack two specs
    of one runtime, or one under the other's key."""
    from ..runtimes import get_runtime

    field = f"meta.{runtime.meta_key}.runtime"
    try:
        named = get_runtime(spec.runtime).name
    except InvalidSpecError as exc:
        raise InvalidSpecError(str(exc), field=field) from None  # "unknown runtime 'ruby'; supported: ..."
    if named != runtime.name:
        raise InvalidSpecError(
            f"{spec.runtime!r} is not {runtime.display_name}: meta.{runtime.meta_key} holds {runtime.display_name} "
            f"dependencies (spellings: {', '.join(sorted((runtime.name, *runtime.aliases)))})",
            field=field,
        )


def _action_runtimes(directory: Path) -> list[str]:
    """The runtimes the pack's actions name (``runner_type`` of ``actions/*.yaml``; Python when
    unset, as load_action has it). Read as every pack file is (bounded, no link followed); an
    action file that does not load, or names no known runner, is skipped here: load_action
    reports it when the action is run, and it needs no image before."""
    from ..runtimes import DEFAULT_RUNTIME, runner_types

    try:
        fd = _open_in_pack(directory, ["actions"])
    except InvalidSpecError:
        return []  # no actions folder (or a link, which load_action refuses): no action needs an image
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            return []
        names = sorted(n for n in os.listdir(fd) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
    finally:
        os.close(fd)
    known, found = runner_types(), []
    for name in names[:MAX_ACTION_FILES]:
        try:
            document = load_yaml(read_pack_file(directory, ["actions", name]))
        except (InvalidSpecError, BoundedYAMLError):
            continue
        runner = document.get("runner_type", DEFAULT_RUNTIME) if isinstance(document, dict) else None
        runtime = known.get(runner) if isinstance(runner, str) else None
        if runtime is not None and runtime.name not in found:
            found.append(runtime.name)
    return found


def spec_from_python_dependencies(value: Any) -> DependencySpec:
    """``meta.python_dependencies`` in either shape (list or object) as a DependencySpec."""
    return spec_from_meta(value, "python", "python_dependencies")


def spec_from_meta(value: Any, runtime: str, meta_key: str) -> DependencySpec:
    """A runtime's ``meta.<meta_key>`` in either shape (list or object) as a DependencySpec whose
    ``runtime`` defaults to that runtime."""
    if value is None:
        return DependencySpec(runtime=runtime)
    if isinstance(value, list):
        return _spec({"runtime": runtime, "dependencies": value}, meta_key)
    if isinstance(value, dict):
        return _spec({"runtime": runtime, **value}, meta_key)
    raise InvalidSpecError(
        f"must be a list of requirements or an object, got {type(value).__name__}",
        field=f"meta.{meta_key}",
    )


def _spec(data: dict[str, Any], meta_key: str) -> DependencySpec:
    try:
        return DependencySpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidSpecError(first["msg"], field=f"meta.{meta_key}.{where}" if where else f"meta.{meta_key}") from None


class PackFileMissing(InvalidSpecError):
    """The file (or a folder on its way) does not exist in the pack."""


def _present(directory: Path, name: str) -> bool:
    """Whether ``name`` exists in ``directory`` as anything, a dangling link included."""
    return os.path.lexists(directory / name)


def _open_in_pack(root: Path, parts: Sequence[str]) -> int:
    """A descriptor for ``root/parts...``, opened component by component with O_NOFOLLOW.

    A pack is hostile: a link anywhere on the way (``actions -> /etc``), not only at the last
    component, could lead out of it. Walking with directory descriptors refuses every link and
    leaves no window between checking a path and opening it.
    """
    if not parts or any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts):
        raise InvalidSpecError(f"{'/'.join(parts)!r} is not a path inside the pack", field=parts[-1] if parts else "pack")
    where = "/".join(parts)
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidSpecError(f"{root} cannot be opened: {exc.strerror}", field="pack") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                fd = os.open(part, flags, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) or (exc.errno == errno.ENXIO and last):
                    raise InvalidSpecError(
                        f"{root / where}: {'/'.join(parts[: i + 1])} is a link or not a "
                        f"{'regular file' if last else 'directory'}; links are not followed in a pack",
                        field=parts[-1],
                    ) from None
                if exc.errno == errno.ENOENT:
                    raise PackFileMissing(f"{root / where} does not exist", field=parts[-1]) from None
                raise InvalidSpecError(f"{root / where} cannot be opened: {exc.strerror}", field=parts[-1]) from None
            os.close(dir_fd)
            dir_fd = fd
        fd, dir_fd = dir_fd, -1
        return fd
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


def check_pack_file(root: Path, parts: Sequence[str]) -> None:
    """Refuse unless ``root/parts...`` is a regular file reached without following any link."""
    fd = _open_in_pack(root, parts)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidSpecError(f"{root.joinpath(*parts)} must be a regular file, not a link or a directory", field=parts[-1])
    finally:
        os.close(fd)


def read_pack_file(root: Path, parts: Sequence[str], limit: int = MAX_PACK_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file inside the pack folder ``root``, at most ``limit`` bytes."""
    path = root.joinpath(*parts)
    fd = _open_in_pack(root, parts)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidSpecError(f"{path} must be a regular file, not a link or a directory", field=path.name)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)  # never more than the bound, whatever the file claims
    if len(data) > limit:
        raise InvalidSpecError(f"{path} is larger than {limit} bytes", field=path.name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSpecError(f"{path} is not UTF-8 text", field=path.name) from None


def _read_text(path: Path) -> str:
    # Kept for callers outside this module: the file's own folder is the boundary.
    return read_pack_file(path.parent, [path.name])


def _parse(root: Path, name: str, loader: Any) -> Any:
    path = root / name
    text = read_pack_file(root, [name])
    try:
        return loader(text)
    except BoundedYAMLError as exc:
        raise InvalidSpecError(f"{path} cannot be parsed: {exc}", field=name) from None


class PackTreeEntry(BaseModel):
    """One folder of a packs tree: the pack it holds, or why it does not load."""

    model_config = ConfigDict(frozen=True)

    folder: Path
    pack: PackDefinition | None = None
    error: str | None = None

    @property
    def pack_ref(self) -> str:
        """The pack's ref; a folder that does not load goes by its folder name."""
        return self.pack.pack_ref if self.pack is not None else self.folder.name


def scan_pack_tree(directory: str | Path) -> list[PackTreeEntry]:
    """Every pack folder directly under ``directory`` (hidden ones aside), loaded where possible.

    A folder that does not load (no pack.yaml, bad YAML, a bad ref) is still listed, with its
    error: a broken pack is a pack being edited, not a pack that is gone.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InvalidSpecError(f"{root} is not a directory", field="packs_dir")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.is_symlink():
            # As discover_packs: a pack folder is a folder of the tree, not a link to elsewhere.
            entries.append(PackTreeEntry(folder=folder, error=f"{folder} is a link, not a pack folder"))
            continue
        try:
            entries.append(PackTreeEntry(folder=folder, pack=load_pack(folder)))
        except (InvalidSpecError, OSError) as exc:
            entries.append(PackTreeEntry(folder=folder, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad pack is one invalid row, never the end of a run
            entries.append(PackTreeEntry(folder=folder, error=f"{folder} cannot be loaded: {type(exc).__name__}"))
    return entries
