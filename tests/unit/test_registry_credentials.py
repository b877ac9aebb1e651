"""Registry credentials from the settings: a user and a password file, read at each use."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from attune_containers.errors import RegistryAuthError
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings

from .fake_engine import FakeEngine


def manager(**settings) -> ContainerDependencyManager:
    return ContainerDependencyManager(Settings(**settings), FakeEngine())


@pytest.mark.parametrize("half", [{"registry_username": "ci"}, {"registry_password_file": "/run/secrets/pw"}])
def test_user_and_password_file_go_together(half):
    with pytest.raises(ValidationError, match="go together"):
        Settings(**half)


def test_no_credentials_leaves_the_engine_login():
    assert manager().registry_auth() is None


def test_the_password_file_is_read_at_each_use_so_replacing_it_rotates(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("first\n")
    m = manager(registry_username="ci", registry_password_file=secret)
    assert m.registry_auth() == {"username": "ci", "password": "first"}
    secret.write_text("second")
    assert m.registry_auth() == {"username": "ci", "password": "second"}


def test_a_missing_or_empty_password_file_is_a_credentials_error(tmp_path):
    m = manager(registry_username="ci", registry_password_file=tmp_path / "absent")
    with pytest.raises(RegistryAuthError, match="cannot read registry_password_file") as raised:
        m.registry_auth()
    assert raised.value.exit_code == 4
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RegistryAuthError, match="is empty"):
        manager(registry_username="ci", registry_password_file=tmp_path / "empty").registry_auth()


def test_the_password_is_not_in_the_settings_repr(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("hunter2-not-shown")
    settings = Settings(registry_username="ci", registry_password_file=secret)
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
