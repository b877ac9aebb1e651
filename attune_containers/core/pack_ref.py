"""Pack refs: what a valid ``pack_ref`` is, and the image repository name derived from it."""

from __future__ import annotations

import hashlib
import re

from ..errors import InvalidSpecError

MAX_PACK_REF_LENGTH = 64

# Letters, digits, '_' and '-', in dot-separated parts (``core.http``, ``aws.s3``, ``my_pack``).
# No empty part, so no leading/trailing dot and no '..'; no '/', '\\' or whitespace anywhere.
_PACK_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")

# One path component of a Docker repository name.
_REPO_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HASHED_SUFFIX = re.compile(r"-[0-9a-f]{16}$")


def validate_pack_ref(pack_ref: object) -> str:
    """Return ``pack_ref`` unchanged if it is acceptable, else raise :class:`InvalidSpecError`."""
    if not isinstance(pack_ref, str):
        raise InvalidSpecError(f"must be a string, got {type(pack_ref).__name__}", field="pack_ref")
    if not pack_ref:
        raise InvalidSpecError("must not be empty", field="pack_ref")
    if len(pack_ref) > MAX_PACK_REF_LENGTH:
        raise InvalidSpecError(
            f"is {len(pack_ref)} characters long; at most {MAX_PACK_REF_LENGTH} are allowed",
            field="pack_ref",
        )
    if not _PACK_REF.fullmatch(pack_ref):
        raise InvalidSpecError(
            f"{pack_ref!r} is not a valid pack ref: use letters, digits, '_' and '-' in "
            "dot-separated parts (like 'core.http'); no '/', '\\', '..', spaces or leading dots",
            field="pack_ref",
        )
    return pack_ref


def image_name_for(pack_ref: str) -> str:
    """The repository name component for a pack's images.

    A ref that already is a valid lowercase repository component is used as it is. Any other ref
    (uppercase, '--', '_-') is lowercased and cleaned, then suffixed with '-' and 16 hex digits of a
    hash of the exact ref, so two different refs never share a name (``A`` vs ``a``). A ref that
    itself ends like a hashed name is hashed too, so the two kinds of name never meet: a hostile
    ref cannot take another pack's hashed name. Lookups never parse this name: the exact
    ``pack_ref`` lives in a label, and an image whose label disagrees is refused.
    """
    validate_pack_ref(pack_ref)
    if _REPO_COMPONENT.fullmatch(pack_ref) and not _HASHED_SUFFIX.search(pack_ref):
        return pack_ref
    cleaned = re.sub(r"[^a-z0-9]+", "-", pack_ref.lower()).strip("-") or "pack"
    digest = hashlib.sha256(pack_ref.encode()).hexdigest()[:16]
    return f"{cleaned}-{digest}"
