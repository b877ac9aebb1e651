"""Rendering the Dockerfile and the build context: pack text never reaches the Dockerfile, build
secrets never reach the final stage, and the context is byte-for-byte reproducible."""

from __future__ import annotations

import io
import re
import tarfile

import pytest

from attune_containers.core.plan import make_plan
from attune_containers.core.render import BuildOptions, build_context, render_dockerfile
from attune_containers.core.spec import DependencySpec, validate_spec
from attune_containers.core.versions import BaseImage

BASE = BaseImage(minor="3.11", reference="python:3.11-slim", python_version="3.11.2")
DISTINCTIVE = "Zqxwv_Distinctive-Pkg[Extra] == 9.8.7"
CA = "-----BEGIN CERTIFICATE-----\nMIIB-UNIT-CA-MARKER-7f3a\n-----END CERTIFICATE-----\n"
INSTALLERS = ["pip", "uv"]


def make(installer="pip", deps=(DISTINCTIVE, "requests==2.31.0"), options=None):
    spec = validate_spec(DependencySpec(dependencies=list(deps)))
    options = options or BuildOptions(installer=installer)
    return make_plan("core.http", spec, BASE, options, "attune-packs")


def members(context: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}


def stages(dockerfile: str) -> list[list[str]]:
    """The instruction lines of each stage (comments and continuation-joined)."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    out: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


@pytest.mark.parametrize("installer", INSTALLERS)
def test_dockerfile_never_contains_requirements(installer):
    """Requirements travel in requirements.txt; the Dockerfile holds no pack text at all."""
    plan = make(installer)
    dockerfile = plan.dockerfile()
    lowered = dockerfile.lower()
    for needle in ("zqxwv", "9.8.7", "distinctive", "requests", DISTINCTIVE, *plan.spec.requirement_lines()):
        assert needle.lower() not in lowered, needle
    # It is the same Dockerfile for any pack on this base.
    assert dockerfile == make(installer, deps=("flask",)).dockerfile()


@pytest.mark.parametrize("installer", INSTALLERS)
def test_dockerfile_is_multi_stage(installer):
    """A builder stage and a final stage, both from the chosen base image."""
    dockerfile = render_dockerfile(BASE, BuildOptions(installer=installer))
    from_lines = [line for line in dockerfile.splitlines() if line.strip().upper().startswith("FROM ")]
    assert len(from_lines) == 2
    assert all(line.split()[1] == BASE.reference for line in from_lines)
    assert len(stages(dockerfile)) == 2


@pytest.mark.parametrize("installer", INSTALLERS)
def test_final_stage_runs_as_numeric_non_root_user(installer):
    """The last USER of the final stage is numeric and not 0."""
    final = stages(render_dockerfile(BASE, BuildOptions(installer=installer)))[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert m, f"USER {users[-1]!r} is not numeric"
    assert int(m.group(1)) != 0 and (m.group(2) is None or int(m.group(2)) != 0)


@pytest.mark.parametrize("installer", INSTALLERS)
def test_final_stage_copies_nothing_from_the_build_config(installer):
    """No attune-build path (env.sh, CA, requirements.txt) is copied into the final stage."""
    final = stages(render_dockerfile(BASE, BuildOptions(installer=installer)))[-1]
    for line in final:
        assert "attune-build" not in line, line
        if line.upper().startswith(("COPY ", "ADD ")):
            assert "--from=builder" in line, f"final stage copies from the context: {line}"


@pytest.mark.parametrize("installer", INSTALLERS)
def test_builder_installs_from_requirements_txt(installer):
    """The install step reads the requirements file from the context."""
    builder = stages(render_dockerfile(BASE, BuildOptions(installer=installer)))[0]
    assert any(line.startswith("COPY requirements.txt ") for line in builder)
    assert any("-r /attune-build/requirements.txt" in line for line in builder if line.startswith("RUN "))


@pytest.mark.parametrize(
    "reference",
    ["python:3.11\nRUN curl evil | sh", "python:3.11 AS x", "python:3.11\r", "Python:3.11", "", "-python", "python:${TAG}"],
)
def test_render_refuses_a_bad_base_reference(reference):
    """The only value rendered into FROM must be a plain image reference."""
    with pytest.raises(ValueError):
        render_dockerfile(BASE.model_copy(update={"reference": reference}), BuildOptions())


def test_render_refuses_an_unknown_installer():
    """Only pip and uv have a template branch."""
    with pytest.raises(ValueError):
        render_dockerfile(BASE, BuildOptions(installer="poetry"))


def test_render_is_deterministic():
    """Same inputs, same text (the layer cache depends on it)."""
    assert render_dockerfile(BASE, BuildOptions()) == render_dockerfile(BASE, BuildOptions())


# --- build context -----------------------------------------------------------------------------


@pytest.mark.parametrize("installer", INSTALLERS)
def test_context_has_fixed_metadata(installer):
    """mtime 0, uid/gid 0 and fixed modes make the context (and layer cache) reproducible."""
    plan = make(installer)
    context = plan.context()
    assert context == make(installer).context()
    files = members(context)
    assert {"Dockerfile", "requirements.txt", "attune-build/freeze.py", "attune-build/config/env.sh"} <= set(files)
    for name, (info, _) in files.items():
        assert info.mtime == 0, name
        assert (info.uid, info.gid) == (0, 0), name
        assert info.mode == 0o644, name
        assert info.isfile(), name


def test_context_requirements_txt_holds_the_canonical_lines():
    """requirements.txt is the canonical form, one line each, not the pack's raw text."""
    plan = make()
    files = members(plan.context())
    text = files["requirements.txt"][1].decode()
    assert text.splitlines() == plan.spec.requirement_lines()
    assert text.splitlines() == ["requests==2.31.0", "zqxwv-distinctive-pkg[extra]==9.8.7"]
    assert text.endswith("\n")
    assert files["Dockerfile"][1].decode() == plan.dockerfile()


def test_ca_bundle_lives_only_under_build_config():
    """The CA bundle is in the context only as attune-build/config/*, never in the Dockerfile."""
    plan = make(options=BuildOptions(ca_bundle=CA))
    files = members(plan.context())
    holders = [name for name, (_, data) in files.items() if b"MIIB-UNIT-CA-MARKER-7f3a" in data]
    assert holders == ["attune-build/config/extra-ca.pem"]
    assert files["attune-build/config/extra-ca.pem"][1].decode() == CA
    assert "extra-ca.pem" in files["attune-build/config/env.sh"][1].decode()
    assert "attune-build/config/extra-ca.pem" not in members(make().context())


def test_index_credentials_live_only_in_builder_env_script():
    """Index URLs (with credentials) are only in env.sh, which the final stage never copies."""
    options = BuildOptions(index_url="https://u:s3cret-idx@mirror.example/simple",
                           extra_index_urls=("https://v:s3cret-extra@extra.example/simple",))
    files = members(make(options=options).context())
    for secret in (b"s3cret-idx", b"s3cret-extra"):
        holders = [name for name, (_, data) in files.items() if secret in data]
        assert holders == ["attune-build/config/env.sh"]


def test_env_script_quotes_urls():
    """An index URL with shell metacharacters cannot break out of env.sh."""
    options = BuildOptions(index_url="https://mirror.example/simple?a=1&b=$(id)")
    env_sh = members(build_context("FROM x\n", [], options))["attune-build/config/env.sh"][1].decode()
    assert "'https://mirror.example/simple?a=1&b=$(id)'" in env_sh
