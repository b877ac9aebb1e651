"""The one-layer build's host side (services/one_layer.py): the layer tar of a folder the install
step (code from a pack) wrote, the image config built from the base's, and the load stream."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.render import final_config
from attune_containers.services import one_layer

BASE = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "Cmd": ["python3"],
        "Labels": {"io.attune.containers.base": "true"},
        "Entrypoint": None,
    },
    "container_config": {"Cmd": ["/bin/sh", "-c", "secret-build-step"]},
    "history": [{"created": "2026-01-01T00:00:00Z", "comment": "Imported from -"}],
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]},
}


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "lib.py").write_text("x = 1\n")
    os.utime(root / "venv" / "lib.py", (1_700_000_000.7, 1_700_000_000.7))
    (root / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "installed.json").write_text("[]")
    return root


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_layer_is_root_owned_under_opt_attune_and_its_diff_id_is_its_sha256(tmp_path):
    root = tree(tmp_path)
    out = io.BytesIO()
    diff_id, size, left_out = one_layer.write_layer(root, out)
    data = out.getvalue()
    assert diff_id == "sha256:" + hashlib.sha256(data).hexdigest() and size == len(data) and left_out == []
    found = members(data)
    assert list(found)[:2] == ["opt", "opt/attune"]
    assert {"opt/attune/venv/lib.py", "opt/attune/venv/bin/python", "opt/attune/installed.json"} <= set(found)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in found.values())
    assert found["opt/attune/venv/bin/python"].issym() and found["opt/attune/venv/bin/python"].linkname == "/usr/bin/python3"
    # Whole seconds of the source's mtime: what the bytecode's header checks.
    assert found["opt/attune/venv/lib.py"].mtime == 1_700_000_000
    # The same tree gives the same bytes.
    again = io.BytesIO()
    assert one_layer.write_layer(root, again)[0] == diff_id


def test_links_are_never_followed_and_special_bits_and_files_are_dropped(tmp_path):
    root = tree(tmp_path)
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    (root / "venv" / "leak").symlink_to(secret)
    (root / "venv" / "dirlink").symlink_to(tmp_path)
    (root / "venv" / "suid").write_text("#!/bin/sh\n")
    os.chmod(root / "venv" / "suid", 0o6755)
    os.mkfifo(root / "venv" / "pipe")
    os.link(root / "venv" / "lib.py", root / "venv" / "same.py")
    out = io.BytesIO()
    _, _, left_out = one_layer.write_layer(root, out)
    found = members(out.getvalue())
    assert left_out == ["opt/attune/venv/pipe"]
    assert found["opt/attune/venv/leak"].issym() and found["opt/attune/venv/dirlink"].issym()
    assert not any(name.startswith("opt/attune/venv/dirlink/") for name in found)
    assert b"host only" not in out.getvalue()
    assert found["opt/attune/venv/suid"].mode == 0o755
    # A second name of one inode is a hard link in the layer, as the engine's own diff makes it.
    assert found["opt/attune/venv/same.py"].islnk() and found["opt/attune/venv/same.py"].linkname == "opt/attune/venv/lib.py"


def test_the_config_is_the_bases_with_the_final_run_config_and_our_labels():
    base = json.dumps(BASE).encode()
    document = one_layer.image_config(
        base, "sha256:" + "b" * 64, final_config(), {L.MANAGED: "true"}, created="2026-11-27T00:00:00Z", created_by="step"
    )
    config = document["config"]
    # As `docker commit` merges a config object: our Env first, then the base's we do not set.
    assert config["Env"] == [*final_config()["Env"], "LANG=C.UTF-8"]
    assert (config["User"], config["WorkingDir"], config["Cmd"]) == ("65532:65532", "/tmp", ["python"])
    assert config["Labels"] == {"io.attune.containers.base": "true", L.MANAGED: "true"}
    assert document["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    # The base's history is a prefix (the loader checks it before linking the parent).
    assert document["history"][:1] == BASE["history"] and len(document["history"]) == 2
    assert "container_config" not in document  # the base's own build step is not ours to repeat
    # content_identity reads the document as the engine's inspection will show it.
    inspected = one_layer.as_inspected(document)
    assert inspected.layers == tuple(document["rootfs"]["diff_ids"])
    assert inspected.id == "sha256:" + hashlib.sha256(one_layer.config_bytes(document)).hexdigest()
    assert L.content_identity(inspected).startswith("sha256:")


def test_the_load_stream_holds_our_layer_both_configs_and_a_manifest_naming_the_parent(tmp_path):
    base = json.dumps(BASE).encode()
    base_id = "sha256:" + hashlib.sha256(base).hexdigest()
    layer = one_layer.plan_layer(tree(tmp_path))
    seen: list[str] = []

    def make_config(diff_id: str) -> bytes:
        seen.append(diff_id)
        return json.dumps({"diff": diff_id}).encode()

    stream = b"".join(one_layer.docker_archive(base_id, base, layer, make_config, "attune/p:tag"))
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer_bytes = tar.extractfile("layer/layer.tar").read()  # type: ignore[union-attr]
    # The size was planned before a byte was read, and the config got the streamed bytes' digest.
    assert len(layer_bytes) == layer.size
    assert seen == [layer.diff_id] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    own = hashlib.sha256(json.dumps({"diff": seen[0]}).encode()).hexdigest()
    assert names == ["layer/layer.tar", f"{base_id[7:]}.json", f"{own}.json", "manifest.json"]
    assert manifest[1] == {
        "Config": f"{own}.json",
        "RepoTags": ["attune/p:tag"],
        "Layers": ["base-0/layer.tar", "layer/layer.tar"],
        "Parent": base_id,
    }


def test_a_file_that_changed_after_the_plan_fails_the_stream(tmp_path):
    root = tree(tmp_path)
    layer = one_layer.plan_layer(root)
    (root / "venv" / "lib.py").write_text("x = 1  # and more\n")
    with pytest.raises(ValueError, match="changed"):
        b"".join(layer.chunks())
    layer = one_layer.plan_layer(root)
    (root / "venv" / "lib.py").unlink()
    (root / "venv" / "lib.py").symlink_to("/etc/shadow")
    with pytest.raises(ValueError, match="cannot be read"):
        b"".join(layer.chunks())


def test_the_record_is_read_bounded_and_never_through_a_link(tmp_path):
    record = tmp_path / "installed.json"
    record.write_text("[]")
    assert one_layer.read_bounded(record, 10) == b"[]"
    record.write_text("x" * 11)
    with pytest.raises(ValueError, match="larger than 10"):
        one_layer.read_bounded(record, 10)
    record.unlink()
    record.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("[]")
    with pytest.raises(OSError):
        one_layer.read_bounded(record, 10)
