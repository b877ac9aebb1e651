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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidSpecError
from .execution import ResourceLimits
from .pooling import PoolSettings
from .pack_ref import validate_pack_ref
from .spec import DependencySpec

MAX_PACK_FILE_BYTES = 1024 * 1024
PACK_FILE = "pack.yaml"
REQUIREMENTS_FILE = "requirements.txt"


class PackDefinition(BaseModel):
    """A pack as far as its image is concerned."""

    model_config = ConfigDict(frozen=True)

    pack_ref: str
    label: str | None = None
    version: str | None = None
    spec: DependencySpec
    # The pack's own run limits, from meta.container_limits (validated; fields left out are unset).
    limits: ResourceLimits | None = None
    # How its warm containers are kept, from meta.container_pool.
    pool: PoolSettings | None = None
    source: str
    directory: Path | None = None


def load_pack(location: str | Path) -> PackDefinition:
    """Load a pack from a directory, a ``pack.yaml`` or an API JSON file."""
    path = Path(location)
    if path.is_dir():
        return _load_pack_dir(path)
    if not path.exists():
        raise InvalidSpecError(f"{path} does not exist", field="pack")
    if path.suffix == ".json":
        return pack_from_api(_parse(path, json.loads), source=str(path))
    if path.name in (PACK_FILE, "pack.yml"):
        return _load_pack_dir(path.parent, pack_file=path)
    raise InvalidSpecError(
        f"{path} is neither a pack directory, a pack.yaml nor an API JSON document", field="pack"
    )


def pack_from_api(document: Any, *, source: str = "api") -> PackDefinition:
    """A pack from the REST API's JSON form (already parsed)."""
    if not isinstance(document, dict):
        raise InvalidSpecError("the pack document must be a JSON object", field="pack")
    return _definition(document, source=source, default_ref=None, extra_requirements=None)


def _load_pack_dir(directory: Path, pack_file: Path | None = None) -> PackDefinition:
    pack_file = pack_file or directory / PACK_FILE
    if not pack_file.exists() and (directory / "pack.yml").exists():
        pack_file = directory / "pack.yml"
    document = _parse(pack_file, yaml.safe_load)
    if not isinstance(document, dict):
        raise InvalidSpecError(f"{pack_file} must hold a mapping", field="pack.yaml")
    requirements_path = directory / REQUIREMENTS_FILE
    # is_symlink too: a dangling link must be refused, not taken for "no requirements.txt".
    present = requirements_path.is_symlink() or requirements_path.exists()
    extra = _read_text(requirements_path) if present else None
    return _definition(
        document,
        source=str(pack_file),
        default_ref=directory.resolve().name,
        extra_requirements=extra,
        directory=directory,
    )


def _definition(
    document: dict[str, Any],
    *,
    source: str,
    default_ref: str | None,
    extra_requirements: str | None,
    directory: Path | None = None,
) -> PackDefinition:
    pack_ref = document.get("ref", default_ref)
    if pack_ref is None:
        raise InvalidSpecError("the pack has no 'ref'", field="ref")
    validate_pack_ref(pack_ref)
    meta = document.get("meta") or {}
    if not isinstance(meta, dict):
        raise InvalidSpecError("must be a mapping", field="meta")
    spec = spec_from_python_dependencies(meta.get("python_dependencies"))
    if extra_requirements is not None:
        combined = "\n".join(
            part for part in (spec.requirements_file_content, extra_requirements) if part
        )
        spec = spec.with_requirements_file(combined)
    version = document.get("version")
    label = document.get("label")
    limits = ResourceLimits.from_pack(meta.get("container_limits"), "meta.container_limits")
    pool = PoolSettings.from_pack(meta.get("container_pool"), "meta.container_pool")
    return PackDefinition(
        pack_ref=pack_ref,
        label=str(label) if label is not None else None,
        version=str(version) if version is not None else None,
        spec=spec,
        limits=limits,
        pool=pool,
        source=source,
        directory=directory,
    )


def spec_from_python_dependencies(value: Any) -> DependencySpec:
    """``meta.python_dependencies`` in either shape (list or object) as a DependencySpec."""
    if value is None:
        return DependencySpec()
    if isinstance(value, list):
        return _spec({"dependencies": value})
    if isinstance(value, dict):
        return _spec(value)
    raise InvalidSpecError(
        f"must be a list of requirements or an object, got {type(value).__name__}",
        field="meta.python_dependencies",
    )


def _spec(data: dict[str, Any]) -> DependencySpec:
    try:
        return DependencySpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidSpecError(
            first["msg"], field=f"meta.python_dependencies.{where}" if where else "meta.python_dependencies"
        ) from None


def _read_text(path: Path) -> str:
    # A pack is hostile: never follow a link out of it, never read something huge or binary.
    if path.is_symlink() or not path.is_file():
        raise InvalidSpecError(f"{path} must be a regular file, not a link or a directory", field=path.name)
    if path.stat().st_size > MAX_PACK_FILE_BYTES:
        raise InvalidSpecError(f"{path} is larger than {MAX_PACK_FILE_BYTES} bytes", field=path.name)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidSpecError(f"{path} is not UTF-8 text", field=path.name) from None


def _parse(path: Path, loader: Any) -> Any:
    if not path.exists():
        raise InvalidSpecError(f"{path} does not exist", field=path.name)
    text = _read_text(path)
    try:
        return loader(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidSpecError(f"{path} cannot be parsed: {exc}", field=path.name) from None


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
        try:
            entries.append(PackTreeEntry(folder=folder, pack=load_pack(folder)))
        except (InvalidSpecError, OSError) as exc:
            entries.append(PackTreeEntry(folder=folder, error=str(exc)))
    return entries
