"""Which errors the CLI reports as what: configuration is exit 2 "invalid configuration", bad input
is exit 2 with its own message, and any other ValueError is a bug, never passed off as either."""

from __future__ import annotations

import json

import pytest

from attune_containers import cli
from attune_containers.core.execution import ExecutionStatus


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    # Reaching the engine would exit 3: every case here must end before it.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("ATTUNE__CONTAINERS__STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_a_bad_setting_in_the_environment_is_invalid_configuration(no_engine, monkeypatch, capsys):
    monkeypatch.setenv("ATTUNE__CONTAINERS__INSTALLER", "conda")
    assert cli.main(["ls"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "installer" in err


def test_a_config_file_that_does_not_parse_is_invalid_configuration(no_engine, monkeypatch, capsys):
    config = no_engine / "config.toml"
    config.write_text("image_prefix = [unclosed\n")
    monkeypatch.setenv("ATTUNE__CONTAINERS__CONFIG", str(config))
    assert cli.main(["ls"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "named"), [("image_prefx = 'typo'\n", "image_prefx"), (None, "missing.toml")])
def test_an_unknown_key_or_a_missing_config_file_is_invalid_configuration(no_engine, monkeypatch, capsys, text, named):
    config = no_engine / ("config.toml" if text is not None else "missing.toml")
    if text is not None:
        config.write_text(text)
    monkeypatch.setenv("ATTUNE__CONTAINERS__CONFIG", str(config))
    assert cli.main(["ls"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and named in err


def test_bad_input_keeps_its_own_message(no_engine, capsys):
    assert cli.main(["prune", "--keep", "-1"]) == 2
    err = capsys.readouterr().err
    assert "keep" in err and "invalid configuration" not in err


def test_any_other_value_error_is_a_bug_not_invalid_configuration(no_engine, monkeypatch, capsys):
    def broken(args, manager):
        raise ValueError("a bug in a command")

    monkeypatch.setattr(cli, "cmd_ls", broken)
    with pytest.raises(ValueError, match="a bug in a command"):
        cli.main(["ls"])
    assert "invalid configuration" not in capsys.readouterr().err


# -- the README's exit codes, and the --json error contract, without an engine -------------------


def write_pack(root, pack_ref: str, dependencies: list[str]):
    folder = root / "packs" / pack_ref
    folder.mkdir(parents=True)
    (folder / "pack.yaml").write_text(json.dumps({"ref": pack_ref, "meta": {"python_dependencies": dependencies}}))
    return folder


def test_render_and_validate_need_no_engine(no_engine, capsys):
    """CI lints packs without Docker: the configured bases stand in, uninspected."""
    pack = write_pack(no_engine, "lint_me", ["six==1.17.0"])
    assert cli.main(["render", str(pack)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# syntax") or "FROM " in captured.out
    assert "no engine answers" in captured.err
    assert cli.main(["render", str(pack), "--requirements"]) == 0
    assert capsys.readouterr().out == "six==1.17.0\n"
    assert cli.main(["validate", str(pack), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["requirements"] == ["six==1.17.0"] and report["image"] is None
    # ... and still refuse what is invalid, with exit 2, not 3.
    bad = write_pack(no_engine, "bad_one", ["-e /etc"])
    for command in ("render", "validate"):
        assert cli.main([command, str(bad)]) == 2, command
        assert "editable" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["inspect", "a/b"], ["rm", "a/b"], ["ls", "--pack", "a/b"], ["inspect", "../x", "--lock"]])
def test_a_malformed_pack_ref_is_exit_2_before_the_engine_is_asked(no_engine, capsys, argv):
    # The engine is a dead socket: asking it anything would be exit 3.
    assert cli.main(argv) == 2
    assert "pack_ref" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["build", "--all", "PACKS"], ["build", "--all", "--packs-dir", "PACKS"]])
def test_build_all_with_an_unreachable_engine_is_exit_3(no_engine, capsys, argv):
    write_pack(no_engine, "one", ["six==1.17.0"])
    argv = [str(no_engine / "packs") if a == "PACKS" else a for a in argv]
    assert cli.main(argv) == 3
    assert "engine" in capsys.readouterr().err


def test_build_all_needs_the_packs_dir(no_engine, capsys):
    assert cli.main(["build", "--all"]) == 2
    assert "--packs-dir" in capsys.readouterr().err


def one_json_document(text: str) -> dict:
    (line,) = text.splitlines()
    return json.loads(line)


@pytest.mark.parametrize(
    ("argv", "code", "status", "field"),
    [
        (["inspect", "a/b", "--json"], 2, 422, "pack_ref"),
        (["ls", "--json"], 3, 503, None),
        (["build", "--all", "--packs-dir", ".", "--json"], 3, 503, None),
        (["rm", "x", "--image", "abc", "--json"], 3, 503, None),
    ],
)
def test_under_json_an_error_is_a_problem_document_on_stdout(no_engine, capsys, argv, code, status, field):
    assert cli.main(argv) == code
    captured = capsys.readouterr()
    doc = one_json_document(captured.out)
    assert (doc["exit_code"], doc["status"], doc["field"]) == (code, status, field)
    assert doc["type"].startswith("urn:attune-containers:problem:") and doc["detail"]
    assert "error" in captured.err  # the human line stays on stderr


def test_a_bad_format_is_exit_2_before_the_engine_is_asked(no_engine, capsys):
    assert cli.main(["ls", "--format", "{{.__class__}}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "format" in captured.err  # without --json, nothing on stdout


def test_under_json_a_configuration_error_is_json_too(no_engine, monkeypatch, capsys):
    monkeypatch.setenv("ATTUNE__CONTAINERS__CACHE_MAX_BYTES", "lots")
    assert cli.main(["cache", "ls", "--json"]) == 2
    doc = one_json_document(capsys.readouterr().out)
    assert doc["exit_code"] == 2 and doc["status"] == 422 and "cache_max_bytes" in doc["detail"]


def test_under_json_a_usage_error_is_json_too(no_engine, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["inspect", "--json"])  # no PACK_REF
    assert exited.value.code == 2
    captured = capsys.readouterr()
    doc = one_json_document(captured.out)
    assert doc["exit_code"] == 2 and "pack_ref" in doc["detail"] and "usage:" in captured.err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "p.a", "--packs-dir", ".", "--memory", "1q"], "'1q' is not a size"),
        (["cache", "prune", "--max-bytes=-1g"], "'-1g' is not a size"),
        (["serve", "--packs-dir", ".", "--port", "70000"], "70000 is not a TCP port"),
        (["serve", "--packs-dir", ".", "--port", "http"], "'http' is not a port number"),
    ],
)
def test_bad_sizes_and_ports_are_one_clear_line_and_exit_2(no_engine, capsys, argv, needle):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert needle in line and "Traceback" not in err


def test_a_limit_pydantic_refuses_keeps_pydantics_words_on_one_line(no_engine, capsys):
    assert cli.main(["run", "p.a", "--packs-dir", ".", "--memory", "2m"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "below the 4 MiB minimum" in err and "pydantic.dev" not in err and "memory" in err


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (ExecutionStatus.succeeded, None, 0),
        (ExecutionStatus.error, "InvalidSpecError", 2),  # the pack's spec, found when its image is ensured
        (ExecutionStatus.error, "PythonVersionUnavailableError", 2),
        (ExecutionStatus.error, "EngineUnavailable", 3),
        (ExecutionStatus.error, "BuildError", 1),
        (ExecutionStatus.error, "EnvironmentNotFoundError", 1),
        (ExecutionStatus.failed, "InvalidSpecError", 1),  # the action's own exception of that name
        (ExecutionStatus.timeout, "Timeout", 1),
        (ExecutionStatus.oom, "OOM", 1),
        (ExecutionStatus.error, "ValueError", 1),
        (ExecutionStatus.error, "RegistryAuthError", 4),
        (ExecutionStatus.error, "RegistryTLSError", 5),
        (ExecutionStatus.error, "RegistryUnavailableError", 6),
    ],
)
def test_run_exit_codes_follow_the_error_class(status, error_type, code):
    assert cli._run_exit_code(status, error_type) == code


def test_the_build_all_table_shows_pips_error_line():
    error = "building p failed\nCollecting nope==9\nERROR: No matching distribution found for nope==9"
    assert cli._headline(error) == "building p failed ERROR: No matching distribution found for nope==9"
    assert cli._headline("the engine refused") == "the engine refused"
