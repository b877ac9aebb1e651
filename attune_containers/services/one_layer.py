"""The pack image as ONE loaded layer (issue 11): the install step writes the venv into a host
folder, the host writes that folder as one layer tar, builds the image config itself (the base's
own config, the final run config, every label) and ``docker load``-s config and layer in one go.

That replaces a ``docker commit`` and a label build (two engine round trips, one of them a whole
layer diff). The engine's loader skips every layer whose chain ID it already has, so the base's
layers are named in the manifest but never sent. The base's config is listed too, with ours naming
it as ``Parent``: the loader links them only then, and the pruner finds a pack image's base by
that link, as after a commit.

The folder was written by code from the pack's distributions: the walk never follows a link (links
are stored as links), opens every file with ``O_NOFOLLOW`` and checks it is the regular file it
listed, stores everything as root's with permission bits only (no set-uid, set-gid or sticky bit,
as the ``chown`` to root left them before), and leaves out anything but folders, regular files and
links (a FIFO or socket has no business in a venv).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..engine import ImageRecord

# Where the folder lands in the image (render.ATTUNE_DIR without its leading slash).
TOP = "opt/attune"
_CHUNK = 1 << 20


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.size


def write_layer(root: Path, out: BinaryIO, *, top: str = TOP) -> tuple[str, int, list[str]]:
    """Write the tree at ``root`` as a layer tar whose entries are under ``top``; return its diff ID
    (the sha256 of the uncompressed tar), its size and the paths left out (not a folder, regular
    file or link). The same tree gives the same bytes: sorted names, fixed owners, no user names."""
    sink = _Hashing(out)
    left_out: list[str] = []
    seen: dict[tuple[int, int], str] = {}
    top_info = os.lstat(root)
    if not stat.S_ISDIR(top_info.st_mode):
        raise ValueError(f"{root} is not a folder")
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        parts = top.split("/")
        for depth in range(1, len(parts)):
            tar.addfile(_info("/".join(parts[:depth]), tarfile.DIRTYPE, 0o755, int(top_info.st_mtime)))
        tar.addfile(_info(top, tarfile.DIRTYPE, top_info.st_mode, int(top_info.st_mtime)))
        _walk(tar, str(root), top, seen, left_out)
    return "sha256:" + sink.digest.hexdigest(), sink.size, left_out


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    # Permission bits only: what `chown` to root leaves of a set-uid file the builder uid made.
    info.mode = stat.S_IMODE(mode) & 0o777
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime  # kept: the bytecode checks its source's mtime (whole seconds)
    return info


def _walk(tar: tarfile.TarFile, path: str, name: str, seen: dict[tuple[int, int], str], left_out: list[str]) -> None:
    with os.scandir(path) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        child, child_name = entry.path, f"{name}/{entry.name}"
        info = entry.stat(follow_symlinks=False)
        mtime = int(info.st_mtime)
        if stat.S_ISLNK(info.st_mode):
            link = _info(child_name, tarfile.SYMTYPE, 0o777, mtime)
            link.linkname = os.readlink(child)
            tar.addfile(link)
        elif stat.S_ISDIR(info.st_mode):
            tar.addfile(_info(child_name, tarfile.DIRTYPE, info.st_mode, mtime))
            _walk(tar, child, child_name, seen, left_out)
        elif stat.S_ISREG(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and key in seen:
                hard = _info(child_name, tarfile.LNKTYPE, info.st_mode, mtime)
                hard.linkname = seen[key]
                tar.addfile(hard)
                continue
            seen[key] = child_name
            fd = os.open(child, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                opened = os.fstat(fd)
                if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != key:
                    raise ValueError(f"{child_name} changed while the layer was written")
                regular = _info(child_name, tarfile.REGTYPE, opened.st_mode, int(opened.st_mtime))
                regular.size = opened.st_size
                tar.addfile(regular, handle)  # exactly st_size bytes, or tarfile raises
        else:
            left_out.append(child_name)


def image_config(
    base_config: bytes,
    diff_id: str,
    run_config: Mapping[str, Any],
    labels: Mapping[str, str],
    *,
    created: str,
    created_by: str,
) -> dict[str, Any]:
    """The config document of the pack image: the base's, with ``run_config`` (Env, User,
    WorkingDir, Cmd) merged in as ``docker commit`` merges a config object (our Env entries first,
    then the base's whose names we do not set), the base's labels plus ``labels``, and one more
    layer and history step. The base's history is kept as it is: the loader checks a parent's
    history is a prefix of its child's."""
    base = json.loads(base_config)
    config = dict(base.get("config") or {})
    ours = list(run_config.get("Env") or [])
    names = {entry.partition("=")[0] for entry in ours}
    config["Env"] = ours + [e for e in config.get("Env") or [] if e.partition("=")[0] not in names]
    for key in ("User", "WorkingDir", "Cmd"):
        if key in run_config:
            config[key] = run_config[key]
    config["Labels"] = {**(config.get("Labels") or {}), **labels}
    document = {key: base[key] for key in ("architecture", "os", "os.version", "os.features", "variant") if key in base}
    document.update(
        {
            "config": config,
            "created": created,
            "history": [*(base.get("history") or []), {"created": created, "created_by": created_by}],
            "rootfs": {"type": "layers", "diff_ids": [*base["rootfs"]["diff_ids"], diff_id]},
        }
    )
    return document


def config_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes the engine stores: the image ID is their sha256."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def as_inspected(document: Mapping[str, Any]) -> ImageRecord:
    """The config document as the engine's inspection will show it, for ``labels.content_identity``."""
    return ImageRecord.from_inspect(
        {
            "Id": "sha256:" + hashlib.sha256(config_bytes(document)).hexdigest(),
            "Config": document.get("config") or {},
            "RootFS": {"Layers": list(document["rootfs"]["diff_ids"])},
        }
    )


def docker_archive(base_id: str, base_config: bytes, config: bytes, layer: Path, layer_size: int, tag: str) -> Iterator[bytes]:
    """The ``docker load`` stream, in pieces: the base's config, ours (naming the base as its
    Parent and ``tag`` as its tag), our one layer, read from ``layer`` as it streams, and the
    manifest. The base's layers are named but not sent: the engine has them."""
    base_hex, own_hex = base_id.removeprefix("sha256:"), hashlib.sha256(config).hexdigest()
    base_layers = [f"base-{number}/layer.tar" for number in range(len(json.loads(base_config)["rootfs"]["diff_ids"]))]
    manifest = [
        {"Config": f"{base_hex}.json", "RepoTags": None, "Layers": base_layers},
        {"Config": f"{own_hex}.json", "RepoTags": [tag], "Layers": [*base_layers, "layer/layer.tar"], "Parent": base_id},
    ]
    yield from _member(f"{base_hex}.json", base_config)
    yield from _member(f"{own_hex}.json", config)
    yield _header("layer/layer.tar", layer_size)
    sent = 0
    with layer.open("rb") as handle:
        while sent < layer_size:
            block = handle.read(min(_CHUNK, layer_size - sent))
            if not block:
                raise ValueError(f"{layer} is shorter than the {layer_size} bytes written")
            sent += len(block)
            yield block
    yield b"\0" * (-layer_size % 512)
    yield from _member("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * 1024


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _member(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data
    yield b"\0" * (-len(data) % 512)


def read_bounded(path: Path, limit: int) -> bytes:
    """A regular file the install step wrote, never through a link and never more than ``limit``
    bytes (ValueError otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{path.name} is larger than {limit} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data
