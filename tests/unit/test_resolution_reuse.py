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


# -- the install step's tree in memory (same module, same cache fixture) --------------------------


def test_the_tree_goes_in_memory_only_when_it_fits_and_the_folder_is_safely_ours(tmp_path, monkeypatch):
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(wheels, "_SCRATCH_BASE", shm)
    c = cache(tmp_path)
    work = tmp_path / "cache" / "work" / ("a" * 32)
    scratch = c._scratch(work, 10 << 20)
    assert scratch is not None and scratch.parent == c._scratch_root() and scratch.name == work.name
    assert scratch.stat().st_mode & 0o777 == 0o700 and c._scratch_root().stat().st_mode & 0o777 == 0o700
    # Too large for it: the work folder on disk instead.
    monkeypatch.setattr(wheels, "_SCRATCH_MAX", 64 << 20)
    assert c._scratch(tmp_path / "b", 10 << 20) is None
    monkeypatch.setattr(wheels, "_SCRATCH_MAX", 1 << 30)
    # A folder of that name that is not ours to trust (a link someone planted, loose modes): unused.
    (c._scratch_root() / work.name).rmdir()
    c._scratch_root().rmdir()
    c._scratch_root().symlink_to(tmp_path)
    assert c._scratch(tmp_path / "c", 1) is None
    c._scratch_root().unlink()
    c._scratch_root().mkdir(mode=0o777)
    os.chmod(c._scratch_root(), 0o777)
    assert c._scratch(tmp_path / "d", 1) is None


def test_a_dead_builds_tree_in_memory_is_swept(tmp_path, monkeypatch):
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(wheels, "_SCRATCH_BASE", shm)
    c = cache(tmp_path)
    c.work_root.mkdir(parents=True)
    dead = c._scratch(c.work_root / ("d" * 32), 1)
    assert dead is not None
    (dead / "image").mkdir()
    (dead / "image" / "big").write_bytes(b"x" * 1024)
    # The sweep lists containers through the engine: none here.
    c.engine = type("NoEngine", (), {"list_containers": lambda *a, **k: [], "containers_named": lambda *a, **k: []})()
    assert dead.name in c.sweep()
    assert not dead.exists()


def pages(root, index: str, *names: str, age: float = 0.0):
    folder = root / "simple-v28" / index
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        page = folder / f"{name}.rkyv"
        page.write_bytes(b"page")
        os.utime(page, (time.time() - age, time.time() - age))


def test_a_resolution_from_cached_pages_is_as_old_as_its_oldest_page(tmp_path):
    now = time.time()
    pages(tmp_path, "pypi", "requests", age=10)
    pages(tmp_path, "pypi", "charset-normalizer", age=100)
    age = host_resolve.oldest_page_age(tmp_path, ["requests", "Charset_Normalizer"], now)  # names as PEP 503 has them
    assert age is not None and 99 < age < 102
    assert host_resolve.oldest_page_age(tmp_path, ["requests", "idna"], now) is None  # idna was never fetched
    assert host_resolve.oldest_page_age(tmp_path / "empty", ["requests"], now) is None


def test_a_stale_page_of_another_index_a_page_from_the_future_or_a_link_is_not_fresh(tmp_path):
    now = time.time()
    pages(tmp_path, "pypi", "six", age=5)
    pages(tmp_path, "index-abc", "six", age=5000)
    assert host_resolve.oldest_page_age(tmp_path, ["six"], now) > 4000  # every index's page counts
    pages(tmp_path, "pypi", "idna", age=-60)
    assert host_resolve.oldest_page_age(tmp_path, ["idna"], now) is None
    (tmp_path / "simple-v28" / "pypi" / "certifi.rkyv").symlink_to(tmp_path / "simple-v28" / "pypi" / "six.rkyv")
    assert host_resolve.oldest_page_age(tmp_path, ["certifi"], now) is None


def test_a_resolution_kept_from_cached_pages_is_dated_by_its_oldest_page(tmp_path):
    c = cache(tmp_path, max_age=600)
    key = c._resolution_key(plan("six"), 36, "x86_64")
    output = tmp_path / "pylock.toml"
    output.write_text(PYLOCK)
    c._keep_resolution(key, output, fetched=time.time() - 590)
    assert c._reused_resolution(key, None, PRIORITY) is not None  # 590 s old: still inside 600
    c._keep_resolution(key, output, fetched=time.time() - 601)
    assert c._reused_resolution(key, None, PRIORITY) is None  # reuse never stretches the window
