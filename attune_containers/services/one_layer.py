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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..engine import ImageRecord

# Where the folder lands in the image (render.ATTUNE_DIR without its leading slash).
TOP = "opt/attune"
_CHUNK = 1 << 20


class Layer:
    """A folder as a layer tar, planned from one walk (``plan_layer``) so its size is known before
    a byte is sent, then streamed (``chunks``) while its diff ID is computed. A file that is not
    what the walk saw when it is streamed fails the stream (ValueError): nothing writes the folder
    any more by then, so that is an attack or a bug, never a race to tolerate."""

    def __init__(self, entries: list[tuple[tarfile.TarInfo, str | None, tuple[int, int]]], left_out: list[str]) -> None:
        self.entries, self.left_out = entries, left_out
        body = sum(len(_header(info)) + _padded(info.size) for info, _, _ in entries) + 2 * tarfile.BLOCKSIZE
        self.size = body + (-body % tarfile.RECORDSIZE)
        self._digest = hashlib.sha256()
        self._sent = 0

    @property
    def diff_id(self) -> str:
        """The sha256 of the uncompressed tar: known once ``chunks`` has run to its end."""
        if self._sent != self.size:
            raise ValueError("the layer has not been streamed whole")
        return "sha256:" + self._digest.hexdigest()

    def chunks(self) -> Iterator[bytes]:
        for piece in self._pieces():
            self._digest.update(piece)
            self._sent += len(piece)
            yield piece
        if self._sent != self.size:
            raise ValueError(f"the layer is {self._sent} bytes, {self.size} were planned")

    def _pieces(self) -> Iterator[bytes]:
        for info, path, key in self.entries:
            yield _header(info)
            if path is None:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                # Said as what it is: inside the load's request, an OSError reads as the engine's.
                raise ValueError(f"{info.name} cannot be read as the file planned ({exc.strerror})") from None
            with os.fdopen(fd, "rb") as handle:
                opened = os.fstat(fd)
                if (
                    not stat.S_ISREG(opened.st_mode)
                    or (opened.st_dev, opened.st_ino) != key
                    or opened.st_size != info.size
                    or int(opened.st_mtime) != info.mtime
                ):
                    raise ValueError(f"{info.name} changed after the layer was planned")
                left = info.size
                while left:
                    block = handle.read(min(_CHUNK, left))
                    if not block:
                        raise ValueError(f"{info.name} is shorter than planned")
                    left -= len(block)
                    yield block
            yield b"\0" * (-info.size % tarfile.BLOCKSIZE)
        body = sum(len(_header(info)) + _padded(info.size) for info, _, _ in self.entries) + 2 * tarfile.BLOCKSIZE
        yield b"\0" * (2 * tarfile.BLOCKSIZE + (-body % tarfile.RECORDSIZE))


def plan_layer(root: Path, *, top: str = TOP) -> Layer:
    """The layer of the tree at ``root``, its entries under ``top``: sorted names, everything
    root's, no user names, the paths left out (not a folder, regular file or link) listed. The
    same tree gives the same bytes."""
    top_info = os.lstat(root)
    if not stat.S_ISDIR(top_info.st_mode):
        raise ValueError(f"{root} is not a folder")
    entries: list[tuple[tarfile.TarInfo, str | None, tuple[int, int]]] = []
    parts = top.split("/")
    for depth in range(1, len(parts)):
        entries.append((_info("/".join(parts[:depth]), tarfile.DIRTYPE, 0o755, int(top_info.st_mtime)), None, (0, 0)))
    entries.append((_info(top, tarfile.DIRTYPE, top_info.st_mode, int(top_info.st_mtime)), None, (0, 0)))
    left_out: list[str] = []
    _walk(str(root), top, entries, {}, left_out)
    return Layer(entries, left_out)


def write_layer(root: Path, out: BinaryIO, *, top: str = TOP) -> tuple[str, int, list[str]]:
    """``plan_layer`` written to ``out``: (diff ID, size, paths left out)."""
    layer = plan_layer(root, top=top)
    for chunk in layer.chunks():
        out.write(chunk)
    return layer.diff_id, layer.size, layer.left_out


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return size + (-size % tarfile.BLOCKSIZE)


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    # Permission bits only: what `chown` to root leaves of a set-uid file the builder uid made.
    info.mode = stat.S_IMODE(mode) & 0o777
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime  # kept: the bytecode checks its source's mtime (whole seconds)
    return info


def _walk(
    path: str,
    name: str,
    entries: list[tuple[tarfile.TarInfo, str | None, tuple[int, int]]],
    seen: dict[tuple[int, int], str],
    left_out: list[str],
) -> None:
    with os.scandir(path) as listing:
        found = sorted(listing, key=lambda e: e.name)
    for entry in found:
        child, child_name = entry.path, f"{name}/{entry.name}"
        info = entry.stat(follow_symlinks=False)
        mtime = int(info.st_mtime)
        if stat.S_ISLNK(info.st_mode):
            link = _info(child_name, tarfile.SYMTYPE, 0o777, mtime)
            link.linkname = os.readlink(child)
            entries.append((link, None, (0, 0)))
        elif stat.S_ISDIR(info.st_mode):
            entries.append((_info(child_name, tarfile.DIRTYPE, info.st_mode, mtime), None, (0, 0)))
            _walk(child, child_name, entries, seen, left_out)
        elif stat.S_ISREG(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and key in seen:
                # A second name of one inode: a hard link, as the engine's own diff makes it.
                hard = _info(child_name, tarfile.LNKTYPE, info.st_mode, mtime)
                hard.linkname = seen[key]
                entries.append((hard, None, (0, 0)))
                continue
            seen[key] = child_name
            regular = _info(child_name, tarfile.REGTYPE, info.st_mode, mtime)
            regular.size = info.st_size
            entries.append((regular, child, key))
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


def docker_archive(
    base_id: str, base_config: bytes, layer: Layer, make_config: Callable[[str], bytes], tag: str
) -> Iterator[bytes]:
    """The ``docker load`` stream, in pieces: our one layer first (streamed from the folder as it
    is read; its size was planned), then the base's config, ours (``make_config(diff_id)``, the
    diff ID being known only now; it names the base as Parent and ``tag`` as its tag) and the
    manifest. The engine reads the manifest once the stream has ended, so the order is free. The
    base's layers are named but not sent: the engine has them."""
    base_hex = base_id.removeprefix("sha256:")
    base_layers = [f"base-{number}/layer.tar" for number in range(len(json.loads(base_config)["rootfs"]["diff_ids"]))]
    yield _member_header("layer/layer.tar", layer.size)
    yield from layer.chunks()
    yield b"\0" * (-layer.size % tarfile.BLOCKSIZE)
    config = make_config(layer.diff_id)
    own_hex = hashlib.sha256(config).hexdigest()
    manifest = [
        {"Config": f"{base_hex}.json", "RepoTags": None, "Layers": base_layers},
        {"Config": f"{own_hex}.json", "RepoTags": [tag], "Layers": [*base_layers, "layer/layer.tar"], "Parent": base_id},
    ]
    yield from _member(f"{base_hex}.json", base_config)
    yield from _member(f"{own_hex}.json", config)
    yield from _member("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * 1024


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _member(name: str, data: bytes) -> Iterator[bytes]:
    yield _member_header(name, len(data))
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
