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


def test_build_all_exits_with_the_registry_problem_when_it_is_every_failure():
    from attune_containers.services.prebuild import PackBuildReport, PrebuildReport

    def pack(outcome: str, error_type: str | None = None) -> PackBuildReport:
        return PackBuildReport(
            pack_ref="p", folder="/p", outcome=outcome, error_type=error_type, error="x" if error_type else None
        )

    assert PrebuildReport(packs=[pack("built"), pack("reused")]).exit_code() == 0
    assert PrebuildReport(packs=[pack("built"), pack("failed", "RegistryAuthError")] * 2).exit_code() == 4
    assert PrebuildReport(packs=[pack("failed", "RegistryTLSError")]).exit_code() == 5
    assert PrebuildReport(packs=[pack("failed", "RegistryUnavailableError")]).exit_code() == 6
    # Mixed causes, a build failure or an invalid pack: the table has to be read, exit 1.
    assert PrebuildReport(packs=[pack("failed", "RegistryAuthError"), pack("failed", "BuildError")]).exit_code() == 1
    assert PrebuildReport(packs=[pack("failed", "RegistryAuthError"), pack("invalid")]).exit_code() == 1
    assert PrebuildReport(packs=[pack("failed", "BuildError")]).exit_code() == 1
