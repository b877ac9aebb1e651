"""Operator caps on run limits: a pack, an action or a request lowers limits freely, raises them only
up to ``max_limits``, and names a network only from ``allowed_networks``."""

from __future__ import annotations

import pytest

from attune_containers.core.execution import DEFAULT_MAX_LIMITS, ResourceLimits
from attune_containers.core.packs import load_pack
from attune_containers.errors import InvalidSpecError
from attune_containers.settings import Settings


@pytest.fixture
def settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no attune-containers.toml of the repository
    for name in ("CONFIG", "LIMITS", "MAX_LIMITS", "ALLOWED_NETWORKS"):
        monkeypatch.delenv(f"ATTUNE__CONTAINERS__{name}", raising=False)
    return Settings()


def hostile_pack(tmp_path, limits: str):
    d = tmp_path / "greedy"
    d.mkdir()
    (d / "pack.yaml").write_text(f"ref: greedy\nmeta:\n  container_limits:\n{limits}")
    return load_pack(d)


@pytest.mark.parametrize(
    "limits, field, asked, cap",
    [
        ("    memory: 64g\n", "memory", "64g", "2g"),
        ("    pids: 1000000\n", "pids", "1000000", "1024"),
        ("    timeout: 86400\n", "timeout", "86400", "3600"),
        ("    stdout_limit: 1073741824\n", "stdout_limit", "1073741824", "67108864"),
    ],
)
def test_a_pack_cannot_raise_its_own_limits_above_the_cap(settings, tmp_path, limits, field, asked, cap):
    pack = hostile_pack(tmp_path, limits)
    with pytest.raises(InvalidSpecError) as exc:
        settings.run_limits(pack=pack.limits)
    assert exc.value.field == f"meta.container_limits.{field}"
    assert asked in str(exc.value) and cap in str(exc.value) and f"max_limits.{field}" in str(exc.value)


@pytest.mark.parametrize("network", ["bridge", "some_named_network"])
def test_a_pack_names_a_network_only_from_the_allow_list(settings, tmp_path, network):
    pack = hostile_pack(tmp_path, f"    network: {network}\n")
    with pytest.raises(InvalidSpecError) as exc:
        settings.run_limits(pack=pack.limits)
    assert exc.value.field == "meta.container_limits.network" and "allowed_networks" in str(exc.value)
    allowed = settings.model_copy(update={"allowed_networks": [network]})
    assert allowed.run_limits(pack=pack.limits).network == network


def test_lowering_is_free_and_raising_up_to_the_cap_is_allowed(settings, tmp_path):
    pack = hostile_pack(tmp_path, "    memory: 64m\n    pids: 16\n    network: none\n")
    request = ResourceLimits(memory="2g", cpus=4.0, timeout=3600)  # exactly the caps
    limits = settings.run_limits(pack=pack.limits, request=request)
    assert (limits.memory, limits.pids, limits.cpus, limits.timeout, limits.network) == ("2g", 16, 4.0, 3600, "none")


def test_a_request_and_an_action_are_capped_too(settings):
    with pytest.raises(InvalidSpecError) as exc:
        settings.run_limits(request=ResourceLimits(cpus=64))
    assert exc.value.field == "limits.cpus"
    with pytest.raises(InvalidSpecError) as exc:
        settings.run_limits(request=ResourceLimits(network="bridge", memory="2g"))  # issue 9's request
    assert exc.value.field == "limits.network"
    with pytest.raises(InvalidSpecError) as exc:
        settings.run_limits(action=ResourceLimits(timeout=7200))
    assert exc.value.field == "action.timeout"


def test_caps_are_settings_merged_field_by_field(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTUNE__CONTAINERS__MAX_LIMITS", '{"memory": "8g"}')
    settings = Settings()
    assert settings.max_limits.memory == "8g" and settings.max_limits.pids == DEFAULT_MAX_LIMITS.pids
    assert settings.run_limits(request=ResourceLimits(memory="8g")).memory == "8g"


@pytest.mark.parametrize(
    "values",
    [
        {"limits": ResourceLimits(memory="4g")},  # defaults above the caps
        {"limits": ResourceLimits(network="bridge")},  # a default network not allowed
        {"max_limits": ResourceLimits(network="bridge")},  # networks are not capped, they are allowed
        {"allowed_networks": ["host"]},  # host stays impossible whatever is configured
        {"allowed_networks": ["container:abc"]},
    ],
)
def test_inconsistent_caps_are_a_configuration_error(monkeypatch, tmp_path, values):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError):
        Settings(**values)


def test_a_default_network_that_is_allowed_is_fine(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings(limits=ResourceLimits(network="bridge"), allowed_networks=["bridge"])
    assert settings.run_limits().network == "bridge"
