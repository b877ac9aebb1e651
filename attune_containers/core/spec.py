"""The dependency spec of a pack (the seed's ``DependencySpec``), its validated form, and
:func:`validate_spec`, which hands a spec to its runtime's validation (Python's is
runtimes/python/spec.py). Every string in a spec is hostile until it has passed it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DependencySpec(BaseModel):
    """What a pack declares, exactly as the seed's ``DependencySpec`` (and the REST API) has it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str = "python"
    dependencies: list[str] = Field(default_factory=list)
    requirements_file_content: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    # The seed's builder, for callers ported from it: DependencySpec.new("python").with_dependency(...)
    @classmethod
    def new(cls, runtime: str = "python") -> DependencySpec:
        return cls(runtime=runtime)

    def with_dependency(self, requirement: str) -> DependencySpec:
        return self.model_copy(update={"dependencies": [*self.dependencies, requirement]})

    def with_requirements_file(self, content: str) -> DependencySpec:
        return self.model_copy(update={"requirements_file_content": content})

    def with_version_range(self, min_version: str | None, max_version: str | None) -> DependencySpec:
        return self.model_copy(update={"min_version": min_version, "max_version": max_version})


class RequirementPolicy(BaseModel):
    """What a requirement may be beyond a plain PEP 508 requirement from the index."""

    model_config = ConfigDict(frozen=True)

    allow_pip_options: bool = False
    allow_direct_urls: bool = False
    strict: bool = False


class ValidRequirement(BaseModel):
    """One requirement after validation, in canonical form."""

    model_config = ConfigDict(frozen=True)

    name: str
    extras: tuple[str, ...] = ()
    specifier: str = ""
    marker: str | None = None
    url: str | None = None
    hashes: tuple[str, ...] = ()

    def canonical(self) -> str:
        """One line pip understands; equal for requirements that mean the same thing."""
        text = self.name
        if self.extras:
            text += "[" + ",".join(self.extras) + "]"
        if self.url:
            text += f" @ {self.url}"
            if self.marker:
                text += " "
        else:
            text += self.specifier
        if self.marker:
            text += f"; {self.marker}"
        for h in self.hashes:
            text += f" --hash={h}"
        return text


class ValidatedSpec(BaseModel):
    """A spec that passed validation: what the rest of the package works from."""

    model_config = ConfigDict(frozen=True)

    runtime: str
    requirements: tuple[ValidRequirement, ...]
    pip_options: tuple[str, ...] = ()
    min_version: str | None = None
    max_version: str | None = None
    # The requirement lines as the pack gave them (comments and blanks dropped), for the image label.
    as_given: tuple[str, ...] = ()
    # A lock file the pack brings, checked by its runtime (Node.js: package-lock.json); part of the hash.
    lock: str | None = None

    def requirement_lines(self) -> list[str]:
        """The requirements file written into the build context: options first, then sorted lines."""
        return [*self.pip_options, *(r.canonical() for r in self.requirements)]


class EnvironmentInfo(BaseModel):
    """A pack's environment, i.e. its image: the seed's ``EnvironmentInfo`` for the image world."""

    id: str = Field(description="The image ID (sha256:...)")
    pack_ref: str = Field(description="The pack")
    image: str = Field(description="The image reference to run: <prefix>/<name>:<hash prefix>")
    runtime: str = Field("python", description="The runtime: python")
    runtime_version: str = Field(description="The exact Python version of the image")
    dependency_hash: str = Field(description="The hash of the pack's resolved dependencies (names the image)")
    requirements: list[str] = Field(default_factory=list, description="The pack's requirements as declared")
    installed_dependencies: list[str] = Field(default_factory=list, description="What is installed: name==version")
    executable_path: str = Field(description="The interpreter in the image")
    created_at: datetime = Field(description="When the image was built")
    updated_at: datetime = Field(description="When the image was last used or checked")
    is_valid: bool = Field(True, description="Whether the image is usable")
    size_bytes: int | None = Field(None, description="The image's size, when known")

    @property
    def path(self) -> str:
        """The seed's ``path``: where the environment lives, here the image reference."""
        return self.image


def validate_spec(spec: DependencySpec, policy: RequirementPolicy | None = None) -> ValidatedSpec:
    """Check every field of ``spec`` by its runtime and return its canonical form, or raise
    InvalidSpecError (an unknown runtime included)."""
    from ..runtimes import get_runtime  # runtimes/ imports this module

    return get_runtime(spec.runtime).validate(spec, policy or RequirementPolicy())
