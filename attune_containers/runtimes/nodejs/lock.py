"""Reading a ``package-lock.json`` (v2 or v3), whether a pack brought it or the fetch step made it:
either way it is hostile input. Only registry packages pass: each under ``node_modules/``, with a
registry name, a plain version, an ``https://`` tarball (or none recorded) and a sha512 integrity,
which is what the build installs by. Git, links and local paths are refused. Pure."""

from __future__ import annotations

import base64
import binascii
import json
import re

from pydantic import BaseModel

LOCK_LIMIT = 16 * 1024 * 1024
MAX_PACKAGES = 20000
_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]{0,213}")
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,100}")


class LockedPackage(BaseModel):
    """One package a Node image is built from: the lock label's entries."""

    name: str
    version: str
    integrity: str

    @property
    def sha512_hex(self) -> str:
        return base64.b64decode(self.integrity.removeprefix("sha512-"), validate=True).hex()


class LockError(ValueError):
    """A lock file that is not one the build installs from (the message says why)."""


def parse_lock(data: bytes | str) -> list[LockedPackage]:
    """The packages of a lock, or LockError naming the first problem."""
    if len(data) > LOCK_LIMIT:
        raise LockError(f"package-lock.json is larger than {LOCK_LIMIT} bytes")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise LockError(f"package-lock.json is not JSON: {exc}") from None
    packages = document.get("packages") if isinstance(document, dict) else None
    if not isinstance(packages, dict) or len(packages) > MAX_PACKAGES:
        raise LockError("package-lock.json has no 'packages' (lockfileVersion 2 or 3 is needed)")
    found: dict[tuple[str, str], LockedPackage] = {}
    for where, entry in packages.items():
        if where == "":
            continue
        if not isinstance(entry, dict) or not where.startswith("node_modules/") or ".." in where.split("/"):
            raise LockError(f"the lock has an entry outside node_modules: {where[:200]!r}")
        if entry.get("link"):
            raise LockError(f"the lock links {where[:200]!r} to a local path; refused")
        name = entry.get("name") or where.rsplit("node_modules/", 1)[1]
        version, integrity, resolved = entry.get("version"), entry.get("integrity"), entry.get("resolved")
        if not (isinstance(name, str) and _NAME.fullmatch(name) and isinstance(version, str) and _VERSION.fullmatch(version)):
            raise LockError(f"the lock has an entry that is not a registry package: {where[:200]!r}")
        if resolved is not None and (not isinstance(resolved, str) or not resolved.startswith("https://")):
            raise LockError(f"{name}@{version} resolves to {str(resolved)[:200]!r}: only https tarballs are installed")
        if not isinstance(integrity, str) or not integrity.startswith("sha512-"):
            raise LockError(f"{name}@{version} has no sha512 integrity in the lock; it cannot be verified")
        package = LockedPackage(name=name, version=version, integrity=integrity)
        try:
            if len(package.sha512_hex) != 128:
                raise ValueError
        except (ValueError, binascii.Error):
            raise LockError(f"{name}@{version} has an unreadable integrity") from None
        found[(name, version)] = package
    return list(found.values())
