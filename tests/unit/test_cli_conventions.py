"""The CLI's habits, as docker's and pip's users expect them: --json and help everywhere, -q and a
safe --format, plain tab-separated tables off a terminal, human sizes in and out, shell completion."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from attune_containers import cli
from attune_containers.core.execution import parse_size
from attune_containers.core.spec import EnvironmentInfo
from attune_containers.errors import InvalidSpecError
from attune_containers.services.pruner import ImageEntry
from attune_containers.settings import Settings, parse_bytes

NOW = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
INFO = EnvironmentInfo(
    id="sha256:" + "ab" * 32,
    pack_ref="hello",
    image="attune-packs/hello:0123456789abcdef",
    runtime_version="3.11.2",
    dependency_hash="0123456789abcdef" * 4,
    installed_dependencies=["six==1.17.0"],
    executable_path="/opt/attune/venv/bin/python",
    created_at=NOW,
    updated_at=NOW,
    size_bytes=129_000_000,
)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command that runs something (``cache ls``, not ``cache``), with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from commands(child, (*path, name))


ALL = dict(commands(cli.build_parser()))


def test_the_command_list_is_complete():
    assert {" ".join(p) for p in ALL} >= {
        "render",
        "validate",
        "build",
        "ls",
        "prune",
        "inspect",
        "rm",
        "run",
        "serve",
        "cache ls",
        "cache prune",
        "base ls",
        "base bootstrap",
        "completion",
    }


@pytest.mark.parametrize("path", [p for p in ALL if p != ("completion",)], ids=" ".join)
def test_every_command_has_json_and_help_on_every_argument(path):
    parser = ALL[path]
    options = {s for a in parser._actions for s in a.option_strings}
    assert "--json" in options, path
    assert parser.description, path
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert undocumented == [], (path, undocumented)


def test_the_packs_folder_is_packs_dir_everywhere_it_is_taken():
    for path in (("build",), ("ls",), ("prune",), ("run",), ("serve",)):
        assert "--packs-dir" in {s for a in ALL[path]._actions for s in a.option_strings}, path


def test_build_all_takes_the_packs_dir_both_ways(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_build_all", lambda args, manager: seen.append(args.packs_dir) or 0)
    parser = cli.build_parser()
    spellings = (["--all", "tree"], ["--all", "--packs-dir", "tree"], ["--packs-dir", "tree", "--all"])
    for argv in spellings:
        assert cli.cmd_build(parser.parse_args(["build", *argv]), None) == 0
    assert seen == ["tree", "tree", "tree"]
    with pytest.raises(InvalidSpecError):
        cli.cmd_build(parser.parse_args(["build", "--all", "one", "--packs-dir", "other"]), None)


# -- --format: a {{.field}} subset over the JSON document, nothing else --------------------------


def render(template: str, model=EnvironmentInfo, item=INFO) -> str:
    return cli._formatter(template, model)(item.model_dump(mode="json"))


def test_format_fields_json_and_escapes():
    assert render("{{.pack_ref}}\\t{{ .image }}") == "hello\tattune-packs/hello:0123456789abcdef"
    assert render("{{.size_bytes}} {{.is_valid}} {{json .installed_dependencies}}") == '129000000 true ["six==1.17.0"]'
    assert render("{{json .pack_ref}}") == '"hello"'
    assert json.loads(render("{{json .}}"))["pack_ref"] == "hello"
    assert json.loads(render("json"))["id"] == INFO.id
    entry = ImageEntry(**INFO.model_dump(), current=True)
    assert render("{{.current}} {{.last_used}}|", ImageEntry, entry) == "true |"
    assert render("{pack_ref} {0.__class__}") == "{pack_ref} {0.__class__}"  # not str.format: text


@pytest.mark.parametrize(
    "template",
    [
        "{{.__class__}}",  # not a field: object internals are out of reach
        "{{.pack_ref.__class__}}",  # no attribute access
        "{{index .requirements 0}}",  # no functions
        "{{.requirements[0]}}",  # no indexing
        '{{printf "%s" .image}}',
        "{{.image}",  # unbalanced
        "}}{{.image}}",
    ],
)
def test_format_refuses_everything_else(template):
    with pytest.raises(InvalidSpecError) as refused:
        render(template)
    assert refused.value.field == "format"


def test_quiet_prints_short_ids_like_docker(capsys):
    args = argparse.Namespace(quiet=True, format=None)
    assert cli._print_items(args, [INFO, INFO], EnvironmentInfo)
    assert capsys.readouterr().out == "abababababab\nabababababab\n"
    assert not cli._print_items(argparse.Namespace(quiet=False, format=None), [INFO], EnvironmentInfo)


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "-q", "--json"],
        ["ls", "--format", "json", "-q"],
        ["inspect", "p", "-q", "--lock"],
        ["inspect", "p", "--json", "--format", "json"],
    ],
)
def test_ways_of_showing_exclude_each_other(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err


# -- tables and sizes ------------------------------------------------------------------------------


def test_off_a_terminal_a_table_is_tab_separated_with_its_header(capsys):
    assert not cli.out.is_terminal  # pytest captures stdout
    cli._print_table(("pack", "error"), [("p", "two\nlines\tand a tab"), ("q", "[red]not markup[/red]")])
    assert capsys.readouterr().out.splitlines() == ["pack\terror", "p\ttwo lines and a tab", "q\t[red]not markup[/red]"]


def test_sizes_print_as_docker_does():
    assert cli._human_size(129_000_000) == "129.0 MB"
    assert cli._human_size(None) == "?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1g", 1024**3),
        ("512m", 512 * 1024**2),
        ("2k", 2048),
        ("100", 100),
        ("1GB", 1024**3),
        (4096, 4096),
        ("1GiB", 1024**3),
        ("256Mi", 256 * 1024**2),
        ("1.5g", 1536 * 1024**2),
    ],
)
def test_sizes_are_taken_as_docker_run_takes_them(text, expected):
    assert parse_bytes(text) == expected
    if isinstance(text, str):  # the run limits (the pure core's parser) read every such size alike
        assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "1q", "-1g", "g", "1gi2", "1ib"])
def test_what_is_not_a_size_is_refused(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_bytes(text)


def test_settings_take_human_sizes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTUNE__CONTAINERS__CONFIG", raising=False)
    monkeypatch.setenv("ATTUNE__CONTAINERS__CACHE_MAX_BYTES", "1g")
    monkeypatch.setenv("ATTUNE__CONTAINERS__SERVICE_MAX_BODY_BYTES", "16m")
    settings = Settings()
    assert (settings.cache_max_bytes, settings.service_max_body_bytes) == (1024**3, 16 * 1024**2)
    assert Settings(fetch_max_bytes=5000).fetch_max_bytes == 5000


def test_cache_prune_takes_a_human_size():
    args = cli.build_parser().parse_args(["cache", "prune", "--max-bytes", "1g"])
    assert args.max_bytes == 1024**3


# -- completion ------------------------------------------------------------------------------------


def completion(shell: str, capsys) -> str:
    assert cli.main(["completion", shell]) == 0
    return capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_and_options(capsys, tmp_path):
    script = tmp_path / "completion.bash"
    script.write_text(completion("bash", capsys))
    probe = f"""
source {script}
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
  COMPREPLY=(); _shtab_attune_containers; printf '%s\\n' "${{COMPREPLY[@]}}"; }}
echo "== commands"; complete_words attune-containers in
echo "== options"; complete_words attune-containers ls --fo
"""
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    commands, options = done.stdout.split("== options")
    assert "inspect" in commands.split() and "ls" not in commands.split()
    assert "--format" in options.split()


def test_zsh_completion_is_a_compdef_script(capsys):
    script = completion("zsh", capsys)
    assert script.startswith("#compdef attune-containers") and "inspect" in script
