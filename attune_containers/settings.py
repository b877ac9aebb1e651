"""Configuration: environment variables ``ATTUNE__CONTAINERS__*`` and a TOML config file.

Precedence, highest first: arguments given in code, environment variables, the config file, the
defaults. The config file is ``$ATTUNE__CONTAINERS__CONFIG`` if set, else ``./attune-containers.toml``
if it exists, else ``~/.config/attune-containers/config.toml`` if it exists. Nested values are
written as JSON in the environment, e.g.
``ATTUNE__CONTAINERS__BASE_IMAGES='{"3.11": "attune-base/python:3.11"}'``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .core.execution import DEFAULT_LIMITS, DEFAULT_MAX_LIMITS, ResourceLimits, check_within_caps, effective_limits, parse_size
from .core.pooling import DEFAULT_POOL, PoolSettings
from .core.render import BuildOptions
from .core.spec import RequirementPolicy
from .errors import BuildError, InvalidSpecError

ENV_PREFIX = "ATTUNE__CONTAINERS__"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

# The official images real users have. Hosts that cannot pull them use `base bootstrap`.
DEFAULT_BASE_IMAGES = {f"3.{m}": f"python:3.{m}-slim" for m in range(9, 15)}

_MINOR = re.compile(r"3\.\d{1,2}")
_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,254}")
_URL = re.compile(r"https?://[^\s'\"\\]+")
_NPM_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,4096}")


def parse_bytes(value: str | int) -> int:
    """``"1g"`` -> 1073741824: the Docker SDK's parser, binary units b, k, m, g as ``docker run
    --memory`` takes them; what the CLI and the configuration accept wherever a size is given."""
    from docker.errors import DockerException
    from docker.utils import parse_bytes as docker_parse_bytes

    text = str(value).strip()
    # The SDK takes "" as 0 and "-1g" as negative: neither is a size anyone means.
    if isinstance(value, bool) or not text or text.startswith("-"):
        raise ValueError(f"{value!r} is not a size: bytes, or a number with b, k, m or g (512m, 1g)")
    # "1GiB" and "256Mi" mean what "1g" and "256m" do, for the docker CLI and for the run limits
    # (core.execution.parse_size): the SDK's parser only lacks the spelling.
    text = re.sub(r"(?i)([kmg])i(b?)$", r"\1\2", text)
    try:
        return int(docker_parse_bytes(value if isinstance(value, int) else text))
    except DockerException:
        raise ValueError(f"{value!r} is not a size: bytes, or a number with b, k, m or g (512m, 1g)") from None


# A byte count that may be written as a size ("4g") in the config file and the environment.
Bytes = Annotated[int, BeforeValidator(lambda v: parse_bytes(v) if isinstance(v, str) else v)]


def config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        if not Path(explicit).is_file():
            # A file the operator named and we cannot read would silently mean "all defaults".
            raise ValueError(f"the config file {explicit} ({CONFIG_ENV}) does not exist or is not a file")
        return Path(explicit)
    for candidate in (Path("attune-containers.toml"), Path.home() / ".config/attune-containers/config.toml"):
        if candidate.is_file():
            return candidate
    return None


# Settings whose value, when a higher-precedence source gives it, replaces lower ones whole: a set
# of base images is one choice. (Limits and pool policy do merge field by field.)
REPLACED_WHOLE = ("base_images", "runtime_base_images")


class _Wrapped(PydanticBaseSettingsSource):
    """A settings source that passes another's values through a check or a filter (``__call__``)."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self.inner = inner

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is what is used
        return self.inner.get_field_value(field, field_name)


class _KnownKeys(_Wrapped):
    """The config file's values, refusing keys that are no setting: a misspelt key would otherwise be
    ignored and its setting left at its default without a word."""

    def __init__(self, inner: PydanticBaseSettingsSource, path: Path) -> None:
        super().__init__(inner)
        self.path = path

    def __call__(self) -> dict:
        values = dict(self.inner())
        unknown = sorted(set(values) - set(self.settings_cls.model_fields))
        if unknown:
            raise ValueError(
                f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in the config file {self.path}"
            )
        return values


class _Shadowed(_Wrapped):
    """A settings source that drops the REPLACED_WHOLE fields a higher source already gives."""

    def __init__(self, inner: PydanticBaseSettingsSource, higher: list[PydanticBaseSettingsSource]) -> None:
        super().__init__(inner)
        self.higher = higher

    def __call__(self) -> dict:
        values = dict(self.inner())
        given_above = {key for source in self.higher for key in source()}
        for key in REPLACED_WHOLE:
            if key in given_above:
                values.pop(key, None)
        return values


class Settings(BaseSettings):
    """The configuration of one installation: ``ATTUNE__CONTAINERS__*`` variables over the config file
    over the defaults (the module's docstring says where the file is). Frozen once read."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    image_prefix: str = Field("attune-packs", description="Repository prefix of pack images")
    base_images: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_BASE_IMAGES),
        description="Python minor version -> base image providing it",
    )
    # Python's stay in base_images (the setting predates runtimes); a new runtime reads its own
    # here, so adding one needs no new setting.
    runtime_base_images: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Base images of the other runtimes: runtime -> version -> image (else the runtime's "
        "defaults: Node.js node:18-slim, node:20-slim, node:22-slim, as they are: no python3 needed)",
    )
    supervisor_interpreter: Path | None = Field(
        None,
        description="The CPython (3.9+) copied, with its libraries and their loader, to run the action "
        "supervisor in images with no python of their own (Node.js); default: the one running "
        "attune-containers. A distribution build (/usr/bin/python3) starts faster than a pyenv one",
    )
    pip_index_url: str | None = Field(None, description="Index URL for builds (builder stage only)")
    pip_extra_index_urls: list[str] = Field(default_factory=list)
    ca_bundle: Path | None = Field(None, description="Extra CA bundle file for builds (builder stage only)")
    installer: str = Field("pip", description="pip or uv")
    allow_pip_options: bool = False
    allow_direct_urls: bool = False
    strict: bool = Field(False, description="Refuse unpinned or wildcard requirements")
    state_dir: Path = Field(
        Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "attune-containers",
        description="Locks and records shared by every process on this host",
    )
    cache_dir: Path = Field(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attune-containers",
        description="The shared wheel cache of every build on this host",
    )
    cache_max_bytes: Bytes = Field(4 * 1024**3, ge=0, description="Bound of the wheel cache; oldest files go first")
    offline: bool = Field(False, description="Builds use the wheel cache only, with networking off")
    registry: str | None = Field(None, description="host[:port] of a registry to pull pack images from / push to")
    registry_username: str | None = Field(
        None,
        description="User for the registry; with registry_password_file. Unset: the engine's own "
        "`docker login` (DOCKER_CONFIG or ~/.docker/config.json)",
    )
    registry_password_file: Path | None = Field(
        None,
        description="File holding the registry password (read at each push or pull, so replacing the "
        "file rotates it); a password is never taken on the command line or from a variable",
    )
    allow_build: bool = Field(True, description="False: a worker that finds no image fails instead of building")
    trusted_manifest: Path | None = Field(
        None,
        description="JSON manifest (written by `build --all --push --manifest`) of the registry images, "
        "by digest, this host trusts; a pulled image must match it",
    )
    trust_registry_tags: bool = Field(
        False,
        description="UNSAFE: run an image pulled from the registry by its tag when no trusted manifest "
        "names it (anyone who can push to the registry then chooses the code that runs)",
    )
    build_no_cache: bool = Field(False, description="Ignore the engine's layer cache (cold builds, benchmarks)")
    build_memory: str | None = Field("4g", description="Memory limit of each build container")
    build_timeout: int = Field(1800, gt=0, description="Wall-clock seconds a whole build may take (fetch and image)")
    allow_sdist_builds: bool = Field(
        False,
        description="Build wheels from sdists (runs their build code in the fetch step; nothing it "
        "hands back is cached); false: only wheels are used",
    )
    npm_registry_url: str | None = Field(
        None,
        description="npm registry of Node.js packs' fetch step (https, no credentials in it; "
        "npm_token_file holds them); unset: npm's own (registry.npmjs.org)",
    )
    npm_token_file: Path | None = Field(
        None,
        description="File holding the npm registry's auth token (read at each fetch, so replacing "
        "the file rotates it); it reaches only the fetch container, never an image, label or log",
    )
    allow_npm_scripts: bool = Field(
        False,
        description="Run npm lifecycle scripts (install, postinstall) of Node.js packs' packages in the "
        "build stage (no network, no shared cache there; never in the fetch step); false: --ignore-scripts",
    )
    fetch_max_bytes: Bytes = Field(2 * 1024**3, gt=0, description="Bound of what one fetch step may hand back")
    # 600 s is what PyPI's own index pages allow any cache (Cache-Control: max-age=600): a new
    # release is picked up no later than a resolver honouring PyPI's caching would pick it up.
    resolution_max_age: int = Field(
        600,
        ge=0,
        description="Seconds a host resolution (uv, wheels only) is reused for the same requirements, "
        "Python, platform and indexes, and index pages in uv's host cache serve a new requirement set "
        "offline; 0: ask the index at every build",
    )
    engine_timeout: int = Field(120, description="Seconds to wait for one engine API call")
    cache_ttl: float = Field(60.0, description="Seconds environment information stays in memory")
    limits: ResourceLimits = Field(
        default_factory=lambda: DEFAULT_LIMITS,
        description="Default limits of every run; packs and runs override single fields",
    )
    max_concurrent_runs: int = Field(4, ge=1, description="Executions one runner serves at once")
    pool: PoolSettings = Field(default_factory=lambda: DEFAULT_POOL, description="Warm containers, per pack")
    # The operator's caps over every pool of one runner (a pack cannot change them): idle
    # containers beyond them are evicted, least recently used first.
    max_warm_containers: int = Field(16, ge=0, description="Warm containers one runner keeps at most, all pools together")
    max_warm_memory: str = Field("4g", description="Memory limits of one runner's warm containers, added up, at most")
    max_limits: ResourceLimits = Field(
        default_factory=lambda: DEFAULT_MAX_LIMITS,
        description="Caps: a pack, action or request may lower limits freely, raise them only up to these",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="Networks besides none that a pack or request may ask for (e.g. bridge); empty: none only",
    )
    # The local service (`attune-containers serve`).
    service_socket_group: str | None = Field(
        None, description="Group that may use the service's Unix socket (mode 0660); default: owner only (0600)"
    )
    service_token_file: Path | None = Field(None, description="File holding the service's bearer token (not readable by others)")
    service_token: SecretStr | None = Field(None, description="The service's bearer token itself (prefer service_token_file)")
    service_max_body_bytes: Bytes = Field(8 * 1024 * 1024, ge=1024, description="Largest request body the service reads")
    service_max_queued: int = Field(64, ge=1, description="Executions waiting for a slot before the service answers 503")
    service_executions_kept: int = Field(
        1000,
        ge=1,
        description="Finished executions the service keeps for GET "
        "/v1/executions/{id} and idempotent retries (the oldest dropped first)",
    )
    service_executions_ttl: float = Field(3600, gt=0, description="Seconds a finished execution is kept")

    @field_validator("image_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        component = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
        if not re.fullmatch(rf"{component}(?:/{component})*(?::\d+)?(?:/{component})*", v):
            raise ValueError(f"{v!r} is not a valid image repository prefix")
        return v

    @field_validator("base_images")
    @classmethod
    def _bases(cls, v: dict[str, str]) -> dict[str, str]:
        for minor, ref in v.items():
            if not _MINOR.fullmatch(minor):
                raise ValueError(f"base_images key {minor!r} is not a Python minor version like '3.11'")
            if not _REFERENCE.fullmatch(ref):
                raise ValueError(f"base_images[{minor!r}] = {ref!r} is not an image reference")
        return v

    @field_validator("runtime_base_images")
    @classmethod
    def _runtime_bases(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for runtime, images in v.items():
            for version, ref in images.items():
                if not re.fullmatch(r"\d+(?:\.\d+){0,2}", version) or not _REFERENCE.fullmatch(ref):
                    raise ValueError(
                        f"runtime_base_images[{runtime!r}][{version!r}] = {ref!r} is not a version and an image reference"
                    )
        return v

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9._-]+)*", v.lower()):
            raise ValueError(f"{v!r} is not a registry like 'registry.example.com:5000'")
        return v

    @model_validator(mode="after")
    def _registry_credentials(self) -> Settings:
        if (self.registry_username is None) != (self.registry_password_file is None):
            raise ValueError("registry_username and registry_password_file go together")
        return self

    @field_validator("pip_index_url")
    @classmethod
    def _index(cls, v: str | None) -> str | None:
        if v is not None and not _URL.fullmatch(v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @field_validator("npm_registry_url")
    @classmethod
    def _npm_registry(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # https only: the lock admits only https tarballs (runtimes/nodejs/lock.py), and a token
        # must never cross the network in clear. Credentials go in npm_token_file: a URL is
        # logged, hashed (without them) and written into locks.
        parts = urllib.parse.urlsplit(v)
        if not _URL.fullmatch(v) or parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{v!r} is not an https URL")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("npm_registry_url must not hold credentials: put the token in npm_token_file")
        if parts.query or parts.fragment:
            raise ValueError(f"{v!r}: an npm registry URL has no query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a port that is no number
        except ValueError:
            raise ValueError(f"{v!r} has no valid port") from None
        # npm matches a token to a registry by the URL's path with its trailing slash.
        return v if v.endswith("/") else v + "/"

    @field_validator("pip_extra_index_urls")
    @classmethod
    def _extra(cls, v: list[str]) -> list[str]:
        for url in v:
            cls._index(url)
        return v

    @field_validator("installer")
    @classmethod
    def _installer(cls, v: str) -> str:
        if v not in ("pip", "uv"):
            raise ValueError(f"installer must be 'pip' or 'uv', not {v!r}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(_KnownKeys(TomlConfigSettingsSource(settings_cls, toml_file=path), path))
        # pydantic-settings deep-merges mappings across sources; a mapping given at a higher level
        # must replace the lower one instead (base_images from the environment replaces the config
        # file's, it does not add to it).
        return tuple(_Shadowed(source, sources[:i]) for i, source in enumerate(sources))

    @field_validator("max_warm_memory")
    @classmethod
    def _warm_memory(cls, v: str) -> str:
        parse_size(v)
        return v

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: PoolSettings) -> PoolSettings:
        return DEFAULT_POOL.merged(v)

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: ResourceLimits) -> ResourceLimits:
        # Fields left out of the configured limits keep their defaults.
        return DEFAULT_LIMITS.merged(v)

    @field_validator("max_limits")
    @classmethod
    def _max_limits(cls, v: ResourceLimits) -> ResourceLimits:
        if v.network is not None:
            raise ValueError("max_limits has no network: networks are allowed by allowed_networks")
        return DEFAULT_MAX_LIMITS.merged(v)

    @field_validator("allowed_networks")
    @classmethod
    def _allowed_networks(cls, v: list[str]) -> list[str]:
        for name in v:
            ResourceLimits(network=name)  # host and container:<id> stay impossible whatever is configured
        return v

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> Settings:
        # The operator's own defaults must respect the operator's caps: a clear error at start-up
        # beats every run of every pack being refused.
        try:
            check_within_caps(self.limits, self.max_limits, self.allowed_networks, "limits")
        except InvalidSpecError as exc:
            raise ValueError(f"{exc.field}: {exc}") from None
        return self

    def run_limits(
        self, *, pack: ResourceLimits | None = None, action: ResourceLimits | None = None, request: ResourceLimits | None = None
    ) -> ResourceLimits:
        """The limits of one run: these defaults, then the pack's, the action's and the request's,
        each only within ``max_limits`` and ``allowed_networks`` (InvalidSpecError otherwise)."""
        return effective_limits(
            self.limits,
            self.max_limits,
            self.allowed_networks,
            [("meta.container_limits", pack), ("action", action), ("limits", request)],
        )

    def requirement_policy(self) -> RequirementPolicy:
        return RequirementPolicy(
            allow_pip_options=self.allow_pip_options,
            allow_direct_urls=self.allow_direct_urls,
            strict=self.strict,
        )

    def build_options(self) -> BuildOptions:
        ca = self.ca_bundle.read_text(encoding="utf-8") if self.ca_bundle else None
        return BuildOptions(
            installer=self.installer,
            index_url=self.pip_index_url,
            extra_index_urls=tuple(self.pip_extra_index_urls),
            ca_bundle=ca,
            npm_scripts=self.allow_npm_scripts,
            npm_registry=self.npm_registry_url,
        )

    def npm_token(self) -> str | None:
        """The npm registry token from ``npm_token_file``, read at each call (each fetch), so
        replacing the file rotates it with no restart; None when no file is configured."""
        path = self.npm_token_file
        if path is None:
            return None
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BuildError(f"cannot read npm_token_file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise BuildError(f"npm_token_file {path} is not UTF-8 text") from None
        # It becomes one line of an .npmrc, where a newline would add settings and ${...} would
        # be expanded: only the characters tokens are made of. The message never quotes it.
        if not _NPM_TOKEN.fullmatch(token):
            raise BuildError(f"npm_token_file {path} does not hold one token (letters, digits and ._~+/=- only, at most 4096)")
        return token
