"""Which errors the CLI reports as what: configuration is exit 2 "invalid configuration", bad input
is exit 2 with its own message, and any other ValueError is a bug, never passed off as either."""

from __future__ import annotations

import pytest

from attune_containers import cli


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
