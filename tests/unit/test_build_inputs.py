"""What the build side reads back from containers and images, and what it writes for them.

The hostile versions of these run against the real engine in tests/engine/test_hostile_builds.py;
these pin the parsing rules themselves.
"""

from __future__ import annotations

import pytest

from attune_containers.core.render import BuildOptions, fetch_env_script
from attune_containers.services.wheels import INSTALLED_RECORD_LIMIT, _Manifest, _scrubber, read_installed_record


def test_the_installed_record_is_validated_like_pack_input():
    assert [d.name for d in read_installed_record(b'[{"name": "six", "version": "1.17.0"}]')] == ["six"]
    for bad in (
        b'{"a": [1]}',
        b"[1]",
        b'[{"name": 1, "version": "1"}]',
        b"not json",
        b'[{"name": "six", "version": "1", "extra": "x"}]',
        b'[{"name": "a b", "version": "1"}]',
    ):
        with pytest.raises(ValueError, match="installed.json"):
            read_installed_record(bad)
    with pytest.raises(ValueError, match="larger than"):
        read_installed_record(b" " * (INSTALLED_RECORD_LIMIT + 1))


def test_the_fetch_manifest_takes_only_wheel_names_and_hashes():
    good = {
        "kind": "wheels",
        "filename": "six-1.17.0-py2.py3-none-any.whl",
        "name": "six",
        "version": "1.17.0",
        "sha256": "a" * 64,
        "source": "download",
    }
    assert _Manifest.model_validate({"entries": [good]}).entries[0].filename == good["filename"]
    for field, value in [
        ("filename", "../../etc/passwd"),
        ("filename", "x/y.whl"),
        ("filename", ".hidden.whl"),
        ("sha256", "A" * 64),
        ("kind", "cache"),
        ("source", "elsewhere"),
    ]:
        with pytest.raises(ValueError):
            _Manifest.model_validate({"entries": [{**good, field: value}]})


def test_credentials_are_masked_in_fetch_log_lines():
    class Plan:
        options = BuildOptions(index_url="https://attune:s3cr3t-token@pypi.example/simple/")

    scrub = _scrubber(Plan())
    assert "s3cr3t-token" not in scrub("ERROR: fetching https://attune:s3cr3t-token@pypi.example/simple/x failed")
    assert "s3cr3t-token" not in scrub("password s3cr3t-token")


def test_a_plain_http_index_is_trusted_by_host_without_its_credentials():
    script = fetch_env_script(BuildOptions(index_url="http://u:pw@10.0.0.1:8080/simple/"))
    assert "PIP_TRUSTED_HOST=10.0.0.1:8080" in script
    assert "PIP_TRUSTED_HOST" not in fetch_env_script(BuildOptions(index_url="https://pypi.org/simple/"))
