"""The runtime registry (attune_containers/runtimes/): names and aliases resolve, an unknown runtime
is a clear error, every registered runtime keeps the protocol and brings its contract pack, and a
second runtime (a toy shaped like Node: its own meta key, runner type, loop and label) plugs in
without the pack loader, action resolver, manager, runner or label reader naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.actions import load_action
from attune_containers.core.execution import ResourceLimits
from attune_containers.core.packs import load_pack
from attune_containers.core.spec import DependencySpec, ValidatedSpec
from attune_containers.core.versions import BaseImage
from attune_containers.engine import ImageConfig, ImageRecord
from attune_containers.errors import InvalidSpecError
from attune_containers.runtimes import (
    LOOP_MOUNT,
    PACK_MOUNT,
    RUNTIMES,
    Runtime,
    UnknownRuntimeError,
    check_registry,
    get_runtime,
    runner_types,
)
from attune_containers.runtimes.python import PYTHON, PythonRuntime
from attune_containers.services import runner as runner_module
from attune_containers.services.base_images import BaseImageCatalog
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings

from .fake_engine import FakeEngine

CONTRACT_PACKS = Path(__file__).resolve().parent.parent / "packs" / "contract"


class ToyRuntime(PythonRuntime):
    """A second runtime for the seam's sake: everything a Node runtime would set differently."""

    name = "toy"
    display_name = "Toy"
    aliases = frozenset({"toyjs"})
    meta_key = "toy_dependencies"
    runner_types = ("toy", "toy-script")
    version_label = L.PREFIX + "toy.version"
    executable = "/opt/attune/toy/bin/toy"
    loop_dir = Path(__file__).resolve().parent  # any folder: only its path is used here

    def __init__(self) -> None:
        self.calls: list[str] = []

    def validate(self, spec, policy):
        self.calls.append("validate")
        return ValidatedSpec(runtime=self.name, requirements=())

    def choose_base(self, available, spec):
        self.calls.append("choose_base")
        return BaseImage(minor="22", reference="toy:22", python_version="22.1.0")

    def base_images(self, settings):
        return settings.runtime_base_images.get(self.name) or {"22": "toy:22-slim"}

    def base_version(self, labels, env):
        return env.get("TOY_VERSION")

    def loop_command(self, exec_uid, zygote_uid, preload):
        return [self.executable, "/opt/attune/runtime/loop.js", str(exec_uid), *preload]

    def check_preload(self, names):
        if "forbidden" in names:
            raise InvalidSpecError("not a toy package", field="container_pool.preload")
        return tuple(names)


@pytest.fixture
def toy(monkeypatch):
    toy = ToyRuntime()
    monkeypatch.setitem(RUNTIMES, toy.name, toy)
    return toy


def write_pack(root: Path, ref: str, pack_yaml: str, actions: dict[str, str] | None = None) -> Path:
    directory = root / ref
    (directory / "actions").mkdir(parents=True)
    (directory / "pack.yaml").write_text(pack_yaml)
    for name, runner in (actions or {}).items():
        (directory / "actions" / f"{name}.yaml").write_text(f"runner_type: {runner}\nentry_point: {name}.js\n")
        (directory / "actions" / f"{name}.js").write_text("module.exports = () => 1;\n")
    return directory


def test_names_and_aliases_resolve_and_no_name_means_the_default():
    assert get_runtime("python") is PYTHON
    assert get_runtime("python3") is PYTHON
    assert get_runtime() is PYTHON


def test_an_unknown_runtime_is_an_invalid_spec_naming_what_is_supported():
    with pytest.raises(UnknownRuntimeError) as exc:
        get_runtime("cobol")
    assert isinstance(exc.value, InvalidSpecError) and exc.value.field == "runtime"
    assert "'cobol'" in str(exc.value) and "python, python3" in str(exc.value)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_every_registered_runtime_keeps_the_protocol(name):
    runtime = RUNTIMES[name]
    assert isinstance(runtime, Runtime) and runtime.name == name
    # Its version label is one of the vocabulary's keys (core/labels.py defines them all).
    assert runtime.version_label in {v for k, v in vars(L).items() if k.isupper() and isinstance(v, str)}
    assert runtime.loop_dir.is_dir() and not (runtime.loop_dir / "__init__.py").exists()
    # argv, never a shell; preload names arrive as whole arguments, never spliced into one.
    argv = runtime.loop_command(65532, 65533, ("requests", "a;b"))
    assert all(isinstance(a, str) for a in argv) and argv[:2] != ["sh", "-c"]
    assert argv[-2:] == ["requests", "a;b"]
    assert "requests" not in runtime.loop_command(65532, None, ())


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_every_registered_runtime_brings_its_contract_pack(name):
    pack = load_pack(CONTRACT_PACKS / name / "contract")
    assert get_runtime(pack.spec.runtime).name == name


def test_a_spelling_meta_key_or_runner_type_claimed_twice_is_refused():
    with pytest.raises(ValueError, match="runner_type 'toy' is claimed"):
        check_registry(
            (
                ToyRuntime(),
                type("Other", (ToyRuntime,), {"name": "other", "aliases": frozenset(), "meta_key": "other_dependencies"})(),
            )
        )
    with pytest.raises(ValueError, match="runtime 'python3' is claimed"):
        check_registry((PYTHON, type("Py", (ToyRuntime,), {"aliases": frozenset({"python3"})})()))
    assert set(check_registry((PYTHON, ToyRuntime()))) == {"python", "toy"}


def test_a_new_runtime_is_found_by_its_name_alias_meta_key_and_runner_types(toy, tmp_path):
    assert get_runtime("toyjs") is toy and runner_types()["toy-script"] is toy
    directory = write_pack(tmp_path, "t", "ref: t\nmeta:\n  toy_dependencies: [leftpad]\n", {"go": "toy"})
    pack = load_pack(directory)
    assert pack.spec.runtime == "toy" and pack.spec.dependencies == ["leftpad"]
    action = load_action(tmp_path, "t.go")
    assert action.runner_type == "toy"


def test_a_pack_may_declare_several_runtimes_each_with_its_own_spec(toy, tmp_path):
    directory = write_pack(tmp_path, "t", "ref: t\nmeta:\n  toy_dependencies: [leftpad]\n  python_dependencies: [six]\n")
    pack = load_pack(directory)
    assert list(pack.specs) == ["python", "toy"]  # registry order, whatever the YAML's
    assert pack.specs["toy"] == DependencySpec(runtime="toy", dependencies=["leftpad"])
    assert pack.specs["python"] == DependencySpec(runtime="python", dependencies=["six"])
    # No single spec: asking for one is an error naming the runtimes, never a guess.
    with pytest.raises(InvalidSpecError, match="python and toy") as exc:
        pack.spec  # noqa: B018 - the property raises
    assert exc.value.field == "runtime"


def test_a_packs_preload_list_is_checked_by_its_own_runtime(toy, tmp_path):
    ok = write_pack(tmp_path, "ok", "ref: ok\nmeta:\n  container_pool:\n    preload: [forbidden]\n")
    assert load_pack(ok).pool.preload == ["forbidden"]  # a Python module name: fine for a Python pack
    bad = write_pack(tmp_path, "bad", "ref: bad\nmeta:\n  toy_dependencies: []\n  container_pool:\n    preload: [forbidden]\n")
    with pytest.raises(InvalidSpecError) as exc:
        load_pack(bad)
    assert exc.value.field == "meta.container_pool.preload"


def test_an_action_runs_in_the_image_of_its_own_runtime_even_one_its_pack_declares_nothing_for(toy, tmp_path):
    directory = write_pack(tmp_path, "t", "ref: t\nmeta:\n  toy_dependencies: [leftpad]\n", {"js": "toy", "py": "python"})
    pack = load_pack(directory)
    assert runner_module.action_runtime(load_action(tmp_path, "t.js")) is toy
    assert runner_module.action_runtime(load_action(tmp_path, "t.py")) is PYTHON
    # The Python action's runtime gets an image with no dependencies; the toy spec stays as declared.
    assert pack.specs == {
        "python": DependencySpec(runtime="python"),
        "toy": DependencySpec(runtime="toy", dependencies=["leftpad"]),
    }
    assert pack.spec_for("python3") == DependencySpec(runtime="python") and pack.spec_for("toyjs") is pack.specs["toy"]


def test_the_container_runs_the_runtimes_loop_from_its_folder(toy, tmp_path):
    run = runner_module._container_run("t", tmp_path, "sha256:" + "ab" * 32, ResourceLimits(), {}, ("lodash",), runtime=toy)
    assert run.command == [toy.executable, "/opt/attune/runtime/loop.js", "65532", "lodash"]
    assert (str(toy.loop_dir), LOOP_MOUNT, True) in run.mounts and (str(tmp_path), PACK_MOUNT, True) in run.mounts
    default = runner_module._container_run("t", tmp_path, "sha256:" + "ab" * 32, ResourceLimits(), {})
    assert default.command[0] == PYTHON.executable and (str(PYTHON.loop_dir), LOOP_MOUNT, True) in default.mounts


def test_an_image_says_its_runtime_by_its_runtime_label_and_older_images_are_pythons(toy):
    # An image built on one of our Python bases inherits its python.version label: the runtime
    # label decides, never which version labels happen to be there.
    labels = {
        L.MANAGED: "true",
        L.PACK_REF: "t",
        L.DEPENDENCY_HASH: "0" * 64,
        L.RUNTIME: "toy",
        toy.version_label: "22.1.0",
        L.PYTHON_VERSION: "3.13.5",
    }
    info = L.environment_from_image("sha256:" + "ab" * 32, "x/t:1", labels)
    assert (info.runtime, info.runtime_version, info.executable_path, info.is_valid) == ("toy", "22.1.0", toy.executable, True)
    python = L.environment_from_image(
        "sha256:" + "ab" * 32, "x/t:1", {L.MANAGED: "true", L.PACK_REF: "t", L.PYTHON_VERSION: "3.11.2"}
    )
    assert (python.runtime, python.runtime_version) == ("python", "3.11.2")
    unknown = L.environment_from_image("sha256:" + "ab" * 32, "x/t:1", {**labels, L.RUNTIME: "cobol"})
    assert (unknown.runtime, unknown.runtime_version, unknown.is_valid) == ("cobol", "", False)


def test_the_manager_plans_with_the_specs_runtime(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTUNE__CONTAINERS__CONFIG", raising=False)
    manager = ContainerDependencyManager(Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"), FakeEngine())
    monkeypatch.setattr(manager.bases, "available", lambda runtime=None: [])
    plan = manager.plan(
        "t", load_pack(write_pack(tmp_path, "t", "ref: t\nmeta:\n  toy_dependencies: []\n")).spec, pull_base=False
    )
    assert toy.calls == ["validate", "choose_base"]
    assert plan.base.reference == "toy:22" and plan.spec.runtime == "toy"


class ToyImages(FakeEngine):
    def inspect_image(self, reference: str) -> ImageRecord | None:
        return ImageRecord(id="sha256:" + "ef" * 32, config=ImageConfig(env=("TOY_VERSION=22.1.0", "PYTHON_VERSION=3.11.2")))


def test_base_images_come_from_each_runtimes_own_setting_and_say_their_version(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTUNE__CONTAINERS__CONFIG", raising=False)
    settings = Settings(
        state_dir=tmp_path / "state",
        base_images={"3.11": "python:3.11-slim"},
        runtime_base_images={"toy": {"22": "registry.example/toy:22"}},
    )
    catalog = BaseImageCatalog(settings, ToyImages())
    (toy_base,) = catalog.available(toy)
    assert (toy_base.minor, toy_base.reference, toy_base.python_version) == ("22", "registry.example/toy:22", "22.1.0")
    (python_base,) = catalog.available()
    assert (python_base.reference, python_base.python_version) == ("python:3.11-slim", "3.11.2")
