"""The engine layer reads the engine's documents once, into typed records: its times (nanoseconds,
'Z', epoch seconds, the zero time), its '<none>' names and -1 sizes never reach the services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from attune_containers.core import labels as L
from attune_containers.engine import (
    ContainerRecord,
    ContainerState,
    DiskUsage,
    HistoryStep,
    ImageRecord,
    parse_engine_time,
)

UTC = UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T04:02:01.045892208Z", datetime(2026, 11, 27, 4, 2, 1, 45892, tzinfo=UTC)),
        ("2026-11-27T04:02:01Z", datetime(2026, 11, 27, 4, 2, 1, tzinfo=UTC)),
        ("2026-11-27T04:02:01.5Z", datetime(2026, 11, 27, 4, 2, 1, 500000, tzinfo=UTC)),
        ("2026-11-27T06:02:01.123+02:00", datetime(2026, 11, 27, 4, 2, 1, 123000, tzinfo=UTC)),
    ],
)
def test_engine_times_with_nanoseconds_and_zones_parse_to_aware_datetimes(text, expected):
    parsed = parse_engine_time(text)
    assert parsed == expected and parsed.tzinfo is not None


def test_listing_times_are_epoch_seconds():
    assert parse_engine_time(1795763202) == datetime.fromtimestamp(1795763202, UTC)


@pytest.mark.parametrize(
    "value", [None, "", "0001-01-01T00:00:00Z", "yesterday", "2026-13-01T00:00:00Z", "2026-11-27 04:02:01", True, [1]]
)
def test_missing_zero_and_malformed_times_are_none(value):
    assert parse_engine_time(value) is None


INSPECTED_IMAGE = {
    "Id": "sha256:" + "ab" * 32,
    "RepoTags": ["attune-packs/p:0123456789abcdef"],
    "RepoDigests": ["reg:5000/attune-packs/p@sha256:" + "cd" * 32],
    "Parent": "",
    "Created": "2026-11-27T04:02:01.045892208Z",
    "Size": 122392485,
    "RootFS": {"Type": "layers", "Layers": ["sha256:" + "01" * 32, "sha256:" + "02" * 32]},
    "Config": {
        "User": "65532:65532",
        "Env": ["PATH=/usr/bin", "PYTHON_VERSION=3.11.2"],
        "Cmd": ["python3"],
        "WorkingDir": "/opt/attune",
        "Entrypoint": None,
        "Volumes": {"/data": {}, "/a": {}},
        "Shell": None,
        "OnBuild": None,
        "StopSignal": "SIGTERM",
        "Healthcheck": {"Test": ["NONE"]},
        "Labels": {"x": "y"},
    },
}


def test_an_inspected_image_carries_its_labels_config_and_layers():
    image = ImageRecord.from_inspect(INSPECTED_IMAGE)
    assert image.id == "sha256:" + "ab" * 32 and image.labels == {"x": "y"}
    assert image.tags == ("attune-packs/p:0123456789abcdef",) and image.parent is None
    assert image.created == datetime(2026, 11, 27, 4, 2, 1, 45892, tzinfo=UTC) and image.size == 122392485
    assert image.config is not None and image.config.env_value("PYTHON_VERSION") == "3.11.2"
    assert image.config.env_value("HOME") is None and image.config.volumes == ("/a", "/data")
    assert image.layers == ("sha256:" + "01" * 32, "sha256:" + "02" * 32)


def test_content_identity_of_a_record_is_the_digest_images_already_carry():
    # Computed by the first version from the raw document: labelled images on hosts carry it.
    assert L.content_identity(ImageRecord.from_inspect(INSPECTED_IMAGE)) == (
        "sha256:1eeb713fd8e20b76e5f131841ad9e3a4df6a3e4ded8554ddd6004781719de777"
    )
    bare = {"Id": "sha256:x", "RootFS": {"Layers": ["sha256:1"]}, "Config": None}
    assert L.content_identity(ImageRecord.from_inspect(bare)) == (
        "sha256:b154999da7e16c55f1ed1989fe33c10139f1c65807304d3fab578e76404ccb17"
    )


def test_a_listed_or_gone_image_has_no_content_identity_rather_than_a_wrong_one():
    listed = ImageRecord.from_summary({"Id": "sha256:x", "Labels": {L.CONTENT: "sha256:y"}})
    with pytest.raises(ValueError, match="configuration is unknown"):
        L.content_identity(listed)
    with pytest.raises(ValueError, match="gone"):
        L.content_identity(None)


def test_a_listed_image_drops_none_names_and_uncounted_sizes():
    image = ImageRecord.from_summary(
        {
            "Id": "sha256:1bad",
            "ParentId": "sha256:7df9",
            "RepoTags": ["<none>:<none>"],
            "RepoDigests": ["<none>@<none>"],
            "Labels": None,
            "Created": 1795763202,
            "Size": 204537648,
            "SharedSize": -1,
        }
    )
    assert image.tags == () and image.digests == () and image.labels == {}
    assert image.parent == "sha256:7df9" and image.size == 204537648
    assert image.created == datetime.fromtimestamp(1795763202, UTC) and image.config is None


def test_a_minimal_image_document_gives_empty_fields_not_errors():
    for image in (ImageRecord.from_summary({"Id": "sha256:1"}), ImageRecord.from_inspect({"Id": "sha256:1"})):
        assert (image.tags, image.digests, image.labels, image.created, image.size, image.parent) == (
            (),
            (),
            {},
            None,
            None,
            None,
        )


def test_a_stopped_container_reads_its_state_and_times():
    container = ContainerRecord.from_inspect(
        {
            "Id": "c" * 64,
            "Name": "/eager_turing",
            "Image": "sha256:img",
            "Created": "2026-11-27T04:00:00.1Z",
            "Config": {"Labels": {L.RUN: "true"}},
            "State": {
                "Status": "exited",
                "Running": False,
                "ExitCode": 137,
                "OOMKilled": True,
                "StartedAt": "2026-11-27T04:00:01.000000001Z",
                "FinishedAt": "2026-11-27T04:00:02Z",
            },
        }
    )
    assert (container.name, container.image_id, container.status) == ("eager_turing", "sha256:img", "exited")
    assert container.labels == {L.RUN: "true"}
    state = container.state
    assert state is not None and state.oom_killed and state.exit_code == 137 and not state.running
    assert state.started_at == datetime(2026, 11, 27, 4, 0, 1, tzinfo=UTC)
    assert state.finished_at == datetime(2026, 11, 27, 4, 0, 2, tzinfo=UTC)


def test_a_container_that_never_ran_has_no_times():
    state = ContainerState.from_doc(
        {"Status": "created", "ExitCode": 0, "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}
    )
    assert state.started_at is None and state.finished_at is None and not state.oom_killed


def test_a_listed_container_without_a_name_is_called_by_its_short_id():
    listed = ContainerRecord.from_summary({"Id": "f" * 64, "ImageID": "sha256:i", "State": "created", "Names": []})
    assert listed.name == "f" * 12 and listed.status == "created" and listed.state is None
    named = ContainerRecord.from_summary({"Id": "f" * 64, "Names": ["/attune-run-1"], "Labels": {"a": "b"}})
    assert named.name == "attune-run-1" and named.labels == {"a": "b"} and named.image_id == ""


def test_disk_usage_knows_unique_bytes_only_when_the_engine_counted_shared_ones():
    usage = DiskUsage.from_doc(
        {
            "LayersSize": 1000,
            "Images": [{"Id": "a", "Size": 300, "SharedSize": 100}, {"Id": "b", "Size": 200, "SharedSize": -1}],
            "Containers": [{"Id": "c", "SizeRw": 7}, {"Id": "d"}],
            "BuildCache": None,
        }
    )
    assert usage.layers_size == 1000 and usage.containers == {"c": 7, "d": 0}
    assert usage.images["a"].unique_size == 200 and usage.images["b"].unique_size is None
    assert DiskUsage.from_doc({}) == DiskUsage(layers_size=0, images={}, containers={})


def test_a_history_step_of_a_missing_image_has_no_id():
    step = HistoryStep.from_doc({"Id": "<missing>", "CreatedBy": "/bin/sh -c #(nop)  USER root", "Size": 0})
    assert step.id is None and step.created_by == "/bin/sh -c #(nop)  USER root" and step.size == 0
    assert HistoryStep.from_doc({"Id": "sha256:1", "CreatedBy": None}).created_by == ""
