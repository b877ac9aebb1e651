"""Host resolutions reused within ``resolution_max_age`` (issue 11): keyed by everything that decides
a resolution and nothing else, reused only while young, forgotten with the cache, bounded."""

from __future__ import annotations

import os
import time

from attune_containers.core.plan import make_plan
from attune_containers.core.render import BuildOptions
from attune_containers.core.spec import DependencySpec, validate_spec
from attune_containers.core.versions import BaseImage
from attune_containers.services import host_resolve, wheels
from attune_containers.services.wheels import WheelCache
from attune_containers.settings import Settings

BASE = BaseImage(minor="3.11", reference="attune-base/python:3.11", python_version="3.11.2", image_id="sha256:aaa", present=True)
PYLOCK = """lock-version = "1.0"
created-by = "uv"

[[packages]]
name = "six"
version = "1.17.0"
wheels = [{ url = "https://files.example/six-1.17.0-py2.py3-none-any.whl", hashes = { sha256 = "%s" } }]
""" % ("a" * 64)
PRIORITY = host_resolve.tag_priority("3.11.2", 36, "x86_64")


def plan(*deps: str, base: BaseImage = BASE, options: BuildOptions = BuildOptions(), pack: str = "core.http"):
    return make_plan(pack, validate_spec(DependencySpec(dependencies=list(deps))), base, options, "attune-packs")


def cache(tmp_path, max_age: int = 600) -> WheelCache:
    settings = Settings(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state", resolution_max_age=max_age)
    (tmp_path / "cache").mkdir(exist_ok=True)
    return WheelCache(settings, engine=None)  # type: ignore[arg-type]


def keep(cache: WheelCache, key: str, tmp_path) -> None:
    output = tmp_path / "pylock.toml"
    output.write_text(PYLOCK)
    cache._keep_resolution(key, output)


def test_the_key_is_what_decides_the_resolution_and_not_the_pack(tmp_path):
    c = cache(tmp_path)
    key = c._resolution_key(plan("six", "requests"), 36, "x86_64")
    assert key == c._resolution_key(plan("requests", "six", pack="other.pack"), 36, "x86_64")  # order, pack: no
    different = [
        c._resolution_key(plan("six"), 36, "x86_64"),
        c._resolution_key(plan("six", "requests", base=BASE.model_copy(update={"python_version": "3.11.9"})), 36, "x86_64"),
        c._resolution_key(plan("six", "requests"), 31, "x86_64"),
        c._resolution_key(plan("six", "requests"), 36, "aarch64"),
        c._resolution_key(plan("six", "requests", options=BuildOptions(index_url="https://mirror.example/simple")), 36, "x86_64"),
        c._resolution_key(
            plan("six", "requests", options=BuildOptions(extra_index_urls=("https://extra.example/simple",))), 36, "x86_64"
        ),
    ]
    assert len({key, *different}) == len(different) + 1


def test_a_young_resolution_is_reused_and_says_so_an_old_one_is_not(tmp_path):
    c = cache(tmp_path)
    key = c._resolution_key(plan("six"), 36, "x86_64")
    assert c._reused_resolution(key, None, PRIORITY) is None
    keep(c, key, tmp_path)
    log: list[str] = []
    pinned = c._reused_resolution(key, log.append, PRIORITY)
    assert pinned is not None and [(p.name, p.version, p.sha256) for p in pinned] == [("six", "1.17.0", "a" * 64)]
    assert len(log) == 1 and log[0].startswith("fetch: resolution reused from 0 s ago"), log
    stored = c.resolutions / f"{key}.toml"
    assert stored.stat().st_mode & 0o777 == 0o600
    old = time.time() - 601
    os.utime(stored, (old, old))
    assert c._reused_resolution(key, None, PRIORITY) is None
    # Expired entries go with the next bound.
    c._bound_resolutions(keep_fresh=True)
    assert not stored.exists()


def test_zero_disables_reuse_and_emptying_the_cache_forgets_resolutions(tmp_path):
    off = cache(tmp_path, max_age=0)
    key = off._resolution_key(plan("six"), 36, "x86_64")
    keep(off, key, tmp_path)
    assert not (off.resolutions / f"{key}.toml").exists()
    on = cache(tmp_path)
    keep(on, key, tmp_path)
    assert on._reused_resolution(key, None, PRIORITY) is not None
    on.prune(on.settings.cache_max_bytes)  # the bound after every build keeps a young resolution
    assert on._reused_resolution(key, None, PRIORITY) is not None
    on.prune(0)
    assert on._reused_resolution(key, None, PRIORITY) is None


def test_a_link_or_an_unreadable_resolution_is_not_used(tmp_path):
    c = cache(tmp_path)
    key = c._resolution_key(plan("six"), 36, "x86_64")
    c.resolutions.mkdir()
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(PYLOCK)
    (c.resolutions / f"{key}.toml").symlink_to(elsewhere)
    assert c._reused_resolution(key, None, PRIORITY) is None
    (c.resolutions / f"{key}.toml").unlink()
    (c.resolutions / f"{key}.toml").write_text("not = [toml")
    assert c._reused_resolution(key, None, PRIORITY) is None


def test_resolutions_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(wheels, "_RESOLUTIONS_KEPT", 3)
    c = cache(tmp_path)
    keys = [c._resolution_key(plan(f"pkg{n}"), 36, "x86_64") for n in range(5)]
    for number, key in enumerate(keys):
        keep(c, key, tmp_path)
        moment = time.time() - 100 + number
        os.utime(c.resolutions / f"{key}.toml", (moment, moment))
    c._bound_resolutions(keep_fresh=True)
    assert sorted(p.name for p in c.resolutions.iterdir()) == sorted(f"{k}.toml" for k in keys[2:])
