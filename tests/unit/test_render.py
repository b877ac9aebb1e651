"""Rendering the Dockerfile and the build context: pack text never reaches the Dockerfile, build
secrets never reach the final stage, and the context is byte-for-byte reproducible."""

from __future__ import annotations

import io
import re
import tarfile

import pytest

from attune_containers.core.plan import make_plan
from attune_containers.core.render import BuildOptions, fetch_env_script, render_dockerfile
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


def members(context) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    data = context if isinstance(context, bytes) else context.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
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
def test_builder_installs_exactly_the_fetched_wheels(installer):
    """The install step takes the wheel files from the context, without resolving (--no-deps)
    and without an index: the build needs no network."""
    builder = stages(render_dockerfile(BASE, BuildOptions(installer=installer)))[0]
    assert any(line.startswith("COPY attune-build/wheels/ ") for line in builder)
    install = [line for line in builder if line.startswith("RUN ") and "/attune-build/wheels/*.whl" in line]
    assert install and "--no-deps" in install[0]
    assert ("--no-index" in install[0]) if installer == "pip" else ("--offline" in install[0])
    assert not any("requirements" in line for line in builder)


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
def test_context_has_fixed_metadata(installer, tmp_path):
    """mtime 0, uid/gid 0 and fixed modes make the context (and layer cache) reproducible."""
    wheel = tmp_path / "six-1.16.0-py2.py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    plan = make(installer)
    context = plan.context([wheel]).read()
    assert context == make(installer).context([wheel]).read()
    files = members(context)
    assert {"Dockerfile", "attune-build/freeze.py", f"attune-build/wheels/{wheel.name}"} <= set(files)
    assert files[f"attune-build/wheels/{wheel.name}"][1] == b"not really a wheel"
    for name, (info, _) in files.items():
        assert info.mtime == 0, name
        assert (info.uid, info.gid) == (0, 0), name
        assert info.mode == 0o644, name
        assert info.isfile(), name


def test_context_holds_no_pack_text_and_no_build_configuration():
    """Requirements, CA bundles and index credentials are all needed only by the fetch step."""
    options = BuildOptions(ca_bundle=CA, index_url="https://u:s3cret-idx@mirror.example/simple")
    plan = make(options=options)
    files = members(plan.context())
    assert files["Dockerfile"][1].decode() == plan.dockerfile()
    for name, (_, data) in files.items():
        for needle in (b"MIIB-UNIT-CA-MARKER-7f3a", b"s3cret-idx", b"distinctive", b"requests"):
            assert needle not in data.lower(), (name, needle)


def test_env_script_holds_the_build_configuration():
    """The fetch step's env.sh carries the CA bundle path and the index URLs, for pip."""
    env_sh = fetch_env_script(
        BuildOptions(
            ca_bundle=CA, index_url="https://u:pw@mirror.example/simple", extra_index_urls=("https://extra.example/simple",)
        )
    )
    assert "extra-ca.pem" in env_sh and "PIP_CERT=" in env_sh and "SSL_CERT_FILE=" in env_sh
    assert "PIP_INDEX_URL=https://u:pw@mirror.example/simple" in env_sh
    assert "PIP_EXTRA_INDEX_URL=https://extra.example/simple" in env_sh
    assert "extra-ca.pem" not in fetch_env_script(BuildOptions())


def test_env_script_quotes_urls():
    """An index URL with shell metacharacters cannot break out of env.sh."""
    options = BuildOptions(index_url="https://mirror.example/simple?a=1&b=$(id)")
    assert "'https://mirror.example/simple?a=1&b=$(id)'" in fetch_env_script(options)


@pytest.mark.parametrize("installer", INSTALLERS)
def test_the_committed_config_is_the_dockerfiles_final_stage(installer):
    """The one-container build commits render.final_config(): the same ENV, USER, WORKDIR and CMD
    as the last stage of the Dockerfile `render` prints, so both ways give the same run config."""
    from attune_containers.core.render import final_config

    text = render_dockerfile(BASE, BuildOptions(installer=installer))
    final = text.split("\nFROM ")[-1].replace("\\\n", " ")
    env = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^ENV (.*)$", final, re.M).group(1)))
    config = final_config()
    assert env == dict(item.split("=", 1) for item in config["Env"])
    assert re.search(r"^USER (\S+)$", final, re.M).group(1) == config["User"]
    assert re.search(r"^WORKDIR (\S+)$", final, re.M).group(1) == config["WorkingDir"]
    assert re.search(r"^CMD (.+)$", final, re.M).group(1) == '["python"]' and config["Cmd"] == ["python"]
