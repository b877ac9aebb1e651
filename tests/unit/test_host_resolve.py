"""The pure side of the host fetch (issue 11): which wheel fits a base, reading uv's resolution,
and whether a hash-pinned lock is complete for the base's Python."""

from __future__ import annotations

import io
import zipfile

from attune_containers.services import host_resolve as H

CP311 = H.tag_priority("3.11.2", 36, "x86_64")
SHA = "a" * 64


def test_platforms_are_most_specific_first_with_the_legacy_aliases():
    plats = H.platforms(31, "x86_64")
    assert plats[0] == "manylinux_2_31_x86_64" and plats[-1] == "linux_x86_64"
    assert plats.index("manylinux_2_17_x86_64") + 1 == plats.index("manylinux2014_x86_64")
    assert "manylinux_2_36_x86_64" not in plats  # newer than the base's glibc


def test_the_wheel_pip_would_pick_for_the_base():
    files = [
        "charset_normalizer-3.5.3-py3-none-any.whl",
        "charset_normalizer-3.5.3-cp37-abi3-manylinux_2_28_x86_64.whl",
        "charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl",
        "charset_normalizer-3.5.3-cp312-cp312-manylinux_2_28_x86_64.whl",
    ]
    assert H.best_wheel(files, CP311) == "charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert H.best_wheel(files[:2], CP311) == files[1]  # abi3 beats pure Python
    # A wheel for a newer glibc, for musl, or for another interpreter does not fit at all.
    assert (
        H.best_wheel(
            [
                "x-1-cp311-cp311-manylinux_2_39_x86_64.whl",
                "x-1-cp311-cp311-musllinux_1_2_x86_64.whl",
                "x-1-cp312-cp312-manylinux_2_17_x86_64.whl",
                "not a wheel",
            ],
            CP311,
        )
        is None
    )


def test_read_pylock_takes_one_fitting_wheel_per_package(tmp_path):
    lock = tmp_path / "pylock.toml"
    lock.write_text(f'''lock-version = "1.0"
[[packages]]
name = "Charset_Normalizer"
version = "3.5.3"
wheels = [
  {{ url = "https://f.example/charset_normalizer-3.5.3-py3-none-any.whl", hashes = {{ sha256 = "{"b" * 64}" }} }},
  {{ url = "https://f.example/charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl", hashes = {{ sha256 = "{SHA}" }} }},
]
''')
    (pinned,) = H.read_pylock(lock, CP311)
    assert (pinned.name, pinned.version, pinned.sha256) == ("charset-normalizer", "3.5.3", SHA)
    assert pinned.filename.endswith("cp311-cp311-manylinux_2_28_x86_64.whl")
    lock.write_text(lock.read_text().replace("https://", "file://"))  # only http(s) URLs are taken
    assert "has no wheel" in H.read_pylock(lock, CP311)


def test_read_lock_accepts_only_complete_hash_pinned_lines():
    assert H.read_lock([f"Six==1.17.0 --hash=sha256:{SHA}"]) == [("six", "1.17.0", {SHA})]
    assert H.read_lock([f"six==1.17.0 --hash=sha256:{SHA}", "idna==3.7"]) is None
    assert H.read_lock([f"six==1.17.0 --hash=sha256:{SHA}", f"six==1.16.0 --hash=sha256:{SHA}"]) is None
    assert H.read_lock([]) is None


def wheel(tmp_path, name: str, version: str, requires: list[str]):
    path = tmp_path / f"{name}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            f"{name}-{version}.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s"
            % (name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)),
        )
    path.write_bytes(buffer.getvalue())
    return version, path


def test_a_lock_is_complete_only_when_every_dependency_for_that_python_is_pinned(tmp_path):
    env = H.marker_environment("3.11.2", "x86_64")
    found = {
        "app": wheel(
            tmp_path,
            "app",
            "1.0",
            ["dep>=2", "old ; python_version < '3.8'", "win ; sys_platform == 'win32'", "extra-only ; extra == 'x'"],
        ),
        "dep": wheel(tmp_path, "dep", "2.1", []),
    }
    assert H.incomplete(found, env) is None
    found["dep"] = wheel(tmp_path, "dep", "1.9", [])
    assert "dep>=2" in H.incomplete(found, env)
    del found["dep"]
    assert "does not pin" in H.incomplete(found, env)
    # Markers are the base's, not the host's: 3.7 would need `old`.
    found["dep"] = wheel(tmp_path, "dep", "2.1", [])
    assert "old" in H.incomplete(found, H.marker_environment("3.7.9", "x86_64"))


def test_uvs_platform_name_is_the_newest_level_it_knows_at_most_the_bases_glibc():
    assert H.uv_platform(36, "x86_64") == "x86_64-manylinux_2_36"
    assert H.uv_platform(41, "x86_64") == "x86_64-manylinux_2_40"  # trixie: uv names up to 2.40
    assert H.uv_platform(30, "aarch64") == "aarch64-manylinux_2_28"
    assert H.uv_platform(12, "x86_64") is None
