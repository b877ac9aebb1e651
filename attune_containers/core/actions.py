"""Finding an action from its ref in a packs tree, and reading its YAML.

Layout (attune's): ``PACKS/<pack_ref>/pack.yaml``, ``PACKS/<pack_ref>/actions/<name>.yaml`` and
the action's code at ``PACKS/<pack_ref>/actions/<entry_point>``. Pack refs contain dots, so an
action ref resolves by the longest pack ref that prefixes it, not by its first dot.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import InvalidSpecError, NotFoundError
from .pack_ref import validate_pack_ref
from .packs import PACK_FILE, PackFileMissing, check_pack_file, read_pack_file
from .safe_yaml import BoundedYAMLError, load_yaml

MAX_TIMEOUT = 7 * 24 * 3600  # as ResourceLimits.timeout; the operator's max_limits may cap it lower
_ACTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
_ENTRY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class ActionDefinition(BaseModel):
    model_config = ConfigDict(frozen=True)

    action_ref: str
    pack_ref: str
    name: str
    pack_dir: Path
    entry_point: str  # relative to the pack's actions/ folder, validated
    function: str | None = None
    timeout: float | None = None
    # Which registered runtime's runner this action names (its pack's runtime must be the same).
    runner_type: str = "python"
    secret_parameters: tuple[str, ...] = ()


def discover_packs(packs_dir: Path) -> dict[str, Path]:
    """Every pack folder (one holding pack.yaml) under ``packs_dir``, by folder name = pack_ref."""
    root = Path(packs_dir)
    if not root.is_dir():
        raise InvalidSpecError(f"{root} is not a directory", field="packs_dir")
    found = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and (child / PACK_FILE).is_file():
            try:
                found[validate_pack_ref(child.name)] = child
            except InvalidSpecError:
                continue  # a folder that is not a valid ref cannot be a pack's home
    return found


def split_action_ref(action_ref: str, pack_refs: set[str] | dict[str, Any]) -> tuple[str, str]:
    """(pack_ref, action name) by the longest known pack ref that prefixes ``action_ref``."""
    if not isinstance(action_ref, str) or not action_ref or len(action_ref) > 256:
        raise InvalidSpecError("must be a non-empty string of at most 256 characters", field="action_ref")
    candidates = [p for p in pack_refs if action_ref.startswith(p + ".")]
    if not candidates:
        # Well formed (<pack_ref>.<action name>) but no such pack: not found; anything else is invalid.
        head, dot, tail = action_ref.partition(".")
        try:
            well_formed = bool(dot) and validate_pack_ref(head) == head and bool(_ACTION_NAME.fullmatch(tail))
        except InvalidSpecError:
            well_formed = False
        error = NotFoundError if well_formed else InvalidSpecError
        raise error(f"no known pack is a prefix of {action_ref!r}", field="action_ref")
    pack_ref = max(candidates, key=len)
    name = action_ref[len(pack_ref) + 1 :]
    if not _ACTION_NAME.fullmatch(name):
        raise InvalidSpecError(f"{name!r} is not a valid action name", field="action_ref")
    return pack_ref, name


def load_action(packs_dir: Path, action_ref: str, packs: dict[str, Path] | None = None) -> ActionDefinition:
    """The action ``action_ref`` of the tree; ``packs`` is a discover_packs result to reuse."""
    packs = discover_packs(packs_dir) if packs is None else packs
    pack_ref, name = split_action_ref(action_ref, packs)
    pack_dir = packs[pack_ref]
    actions_dir = pack_dir / "actions"
    # Every component from the pack's folder on is checked, existence too (actions/ itself may be
    # a link out of the pack: nothing beyond it is looked at).
    for candidate in (f"{name}.yaml", f"{name}.yml"):
        try:
            text = read_pack_file(pack_dir, ["actions", candidate])
        except PackFileMissing:
            continue
        yaml_path = actions_dir / candidate
        break
    else:
        raise NotFoundError(f"pack {pack_ref!r} has no action {name!r} (no actions/{name}.yaml)", field="action_ref")
    try:
        document = load_yaml(text)
    except BoundedYAMLError as exc:
        raise InvalidSpecError(f"{yaml_path} cannot be parsed: {exc}", field="action") from None
    if not isinstance(document, dict):
        raise InvalidSpecError(f"{yaml_path} must hold a mapping", field="action")
    from ..runtimes import DEFAULT_RUNTIME, runner_types  # runtimes/ reads pack files through core.packs

    known = runner_types()
    runner = str(document.get("runner_type", DEFAULT_RUNTIME))
    if runner not in known:
        raise InvalidSpecError(
            f"runner_type {runner!r} is not a runner of any runtime; known: {', '.join(sorted(known))}", field="runner_type"
        )
    entry_point, function = _entry_point(document.get("entry_point"), pack_dir)
    timeout = document.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
        or timeout > MAX_TIMEOUT
    ):
        # .nan and .inf are YAML floats too; refused here, not as a ValidationError later.
        raise InvalidSpecError(f"must be a positive number of seconds up to {MAX_TIMEOUT}, got {timeout!r}", field="timeout")
    parameters = document.get("parameters")
    properties = (parameters.get("properties") or {}) if isinstance(parameters, dict) else {}
    secrets = tuple(sorted(k for k, v in properties.items() if isinstance(v, dict) and v.get("secret") is True))
    return ActionDefinition(
        action_ref=action_ref,
        pack_ref=pack_ref,
        name=name,
        pack_dir=pack_dir,
        entry_point=entry_point,
        function=function,
        timeout=float(timeout) if timeout is not None else None,
        secret_parameters=secrets,
        runner_type=runner,
    )


def _entry_point(value: Any, pack_dir: Path) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value:
        raise InvalidSpecError("must name the action's file", field="entry_point")
    file_part, _, function = value.partition(":")
    if function and not _FUNCTION.fullmatch(function):
        raise InvalidSpecError(f"{function!r} is not a Python function name", field="entry_point")
    parts = PurePosixPath(file_part).parts
    if not parts or file_part.startswith("/") or any(not _ENTRY_PART.fullmatch(p) or p in (".", "..") for p in parts):
        raise InvalidSpecError(f"{file_part!r} must be a relative path inside actions/", field="entry_point")
    try:
        check_pack_file(pack_dir, ["actions", *parts])  # no link on any component, from the pack's folder on
    except InvalidSpecError:
        raise InvalidSpecError(f"actions/{file_part} is not a regular file of the pack", field="entry_point") from None
    return "/".join(parts), function or None
