"""Fleet figures (issue 14): CI builds a generated packs tree once and pushes it; a worker on another
engine pulls by digest. Not a timed test: figures of one run on this machine.

    .venv/bin/python benchmarks/fleet.py [--packs 30] [--local 5] [--json]

1. N packs with overlapping pinned dependencies (Python 3.13), a fresh wheel cache and image prefix:
   `build --all --jobs 2 --push --manifest` on engine A to a loopback registry; wall time, bytes the
   registry stored, and how many blob uploads it completed per distinct layer (the base's layers,
   shared by every pack, must be uploaded once, not per pack).
2. Engine B, a second dockerd on this machine (tests/engine/hosts.py) holding only the base image, is
   the worker (allow_build=false, the manifest): its first `ensure` of each pack is a pull; the
   bytes B's image store grew by.
3. Building the same image locally instead, same run: the first --local packs built again on A
   under a second prefix with an empty cache (B has no network for builds: no bridge).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/engine/hosts.py: the second engine and the registry

from attune_containers.core import labels as L  # noqa: E402
from attune_containers.core.packs import scan_pack_tree  # noqa: E402
from attune_containers.engine import Engine  # noqa: E402
from attune_containers.services.manager import ContainerDependencyManager  # noqa: E402
from attune_containers.services.prebuild import build_all  # noqa: E402
from attune_containers.settings import Settings  # noqa: E402
from tests.engine.hosts import copy_image, start_registry, start_second_engine  # noqa: E402

BASE = "3.13"
# Pure-Python wheels, pinned: packs draw 1 to 3 of them, so most share some with others.
POOL = [
    "six==1.16.0",
    "idna==3.7",
    "attrs==23.2.0",
    "certifi==2024.7.4",
    "packaging==24.1",
    "pyparsing==3.1.2",
    "typing_extensions==4.12.2",
    "click==8.1.7",
    "urllib3==2.2.2",
    "zipp==3.19.2",
]


def generate(tree: Path, count: int, seed: int = 14) -> list[str]:
    rng = random.Random(seed)
    refs = []
    for number in range(count):
        pack_ref = f"fleet{number:02d}"
        folder = tree / pack_ref
        folder.mkdir(parents=True)
        dependencies = sorted(rng.sample(POOL, rng.randint(1, 3)))
        (folder / "pack.yaml").write_text(
            yaml.safe_dump(
                {"ref": pack_ref, "meta": {"python_dependencies": {"dependencies": dependencies, "min_version": BASE}}}
            )
        )
        refs.append(pack_ref)
    return refs


def blob_transfers(log: str) -> tuple[list[str], int]:
    """The blobs whose upload completed (a PUT with its digest), and the cross-repository mounts
    (a POST with mount=: the registry links a blob it has, nothing is sent), from the access log."""
    uploads, mounts = [], 0
    for line in log.splitlines():
        if 'msg="response completed"' not in line or "/blobs/uploads/" not in line:
            continue
        if "http.request.method=PUT" in line:
            found = re.search(r"digest=sha256(?:%3A|:)([0-9a-f]{64})", line)
            if found:
                uploads.append(found.group(1))
        elif "http.request.method=POST" in line and "mount=sha256" in line:
            mounts += 1
    return uploads, mounts


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=int, default=30)
    parser.add_argument("--local", type=int, default=5, help="packs also built locally, for the comparison")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    configured = Settings()
    run_id = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="attune-bench-fleet-"))
    tree = work / "packs"
    refs = generate(tree, args.packs)
    engine = Engine()
    base = configured.base_images[BASE]
    registry = start_registry(work / "registry", "127.0.0.1")
    # The registry's access log (info level) records each completed blob upload (a PUT with its digest).
    config = yaml.safe_load((registry.root / "config.yml").read_text())
    registry.stop()
    config["log"] = {"level": "info", "accesslog": {"disabled": False}}
    (registry.root / "config.yml").write_text(yaml.safe_dump(config))
    log_path = registry.root / "registry.log"
    registry.process = subprocess.Popen(
        ["docker-registry", "serve", str(registry.root / "config.yml")], stdout=subprocess.DEVNULL, stderr=open(log_path, "wb")
    )
    time.sleep(1)
    second = None
    prefixes = [f"attune-bench-fleet-{run_id}", f"attune-bench-fleet-{run_id}-local"]
    try:
        ci = configured.model_copy(
            update={
                "image_prefix": prefixes[0],
                "registry": registry.address,
                "cache_dir": work / "cache-ci",
                "state_dir": work / "state-ci",
            }
        )
        manifest = work / "trusted.json"
        started = time.perf_counter()
        report = build_all(ContainerDependencyManager(ci, engine), tree, jobs=args.jobs, push=True, manifest=manifest)
        build_push_s = time.perf_counter() - started
        if not report.ok:
            raise SystemExit("builds failed: " + "; ".join(f"{p.pack_ref}: {p.error}" for p in report.failed))
        stored = du(registry.root / "data")
        uploads, mounts = blob_transfers(log_path.read_text(errors="replace"))

        second = start_second_engine()
        copy_image(base, None, second.url)
        b = second.engine
        before = b.disk_usage().layers_size or 0
        worker = ContainerDependencyManager(
            ci.model_copy(
                update={
                    "allow_build": False,
                    "trusted_manifest": manifest,
                    "state_dir": work / "state-worker",
                    "cache_dir": work / "cache-worker",
                }
            ),
            b,
        )
        pulls: dict[str, float] = {}
        entries = {e.pack_ref: e.pack for e in scan_pack_tree(tree)}
        for pack_ref in refs:
            t = time.perf_counter()
            ensured = worker.ensure(pack_ref, entries[pack_ref].spec)
            pulls[pack_ref] = time.perf_counter() - t
            if ensured.outcome != "pulled":
                raise SystemExit(f"{pack_ref}: the worker got {ensured.outcome}, not a pull")
        pulled_bytes = (b.disk_usage().layers_size or 0) - before

        local = configured.model_copy(
            update={"image_prefix": prefixes[1], "cache_dir": work / "cache-local", "state_dir": work / "state-local"}
        )
        local_manager = ContainerDependencyManager(local, engine)
        builds: dict[str, float] = {}
        for pack_ref in refs[: args.local]:
            t = time.perf_counter()
            local_manager.ensure(pack_ref, entries[pack_ref].spec, pull=False)
            builds[pack_ref] = time.perf_counter() - t

        figures = {
            "packs": len(refs),
            "jobs": args.jobs,
            "build_all_push_seconds": round(build_push_s, 1),
            "registry_stored_bytes": stored,
            "blob_uploads": len(uploads),
            "distinct_blobs_uploaded": len(set(uploads)),
            "blob_mounts": mounts,
            "image_sizes_sum_bytes": sum(p.size_bytes or 0 for p in report.packs),
            "worker_pull_seconds_median": round(statistics.median(pulls.values()), 2),
            "worker_pull_seconds_max": round(max(pulls.values()), 2),
            "worker_store_growth_bytes": pulled_bytes,
            "local_build_seconds_median": round(statistics.median(builds.values()), 2) if builds else None,
            "local_builds": len(builds),
            "pull_vs_build_same_packs": round(statistics.median(builds.values()) / statistics.median(pulls[r] for r in builds), 1)
            if builds
            else None,
        }
    finally:
        if second is not None:
            second.stop()
        registry.stop()
        for image in engine.list_images({L.MANAGED: "true"}):
            if any(tag.split("/")[0] in prefixes for tag in image.tags):
                try:
                    engine.remove_image(image.id, force=True)
                except Exception:  # noqa: BLE001 - shared parents go with the last child
                    pass
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        mb = 1e6
        print(
            f"{figures['packs']} packs, build --all --jobs {args.jobs} --push: {figures['build_all_push_seconds']} s; "
            f"registry stored {figures['registry_stored_bytes'] / mb:.0f} MB for images summing "
            f"{figures['image_sizes_sum_bytes'] / mb:.0f} MB; {figures['blob_uploads']} blob uploads, "
            f"{figures['distinct_blobs_uploaded']} distinct, {figures['blob_mounts']} cross-repository mounts"
        )
        print(
            f"worker (engine B) first ensure = pull by digest: median {figures['worker_pull_seconds_median']} s, "
            f"max {figures['worker_pull_seconds_max']} s; its store grew {figures['worker_store_growth_bytes'] / mb:.0f} MB"
        )
        if builds:
            print(
                f"building the same image locally (cold cache, {len(builds)} packs): median "
                f"{figures['local_build_seconds_median']} s = {figures['pull_vs_build_same_packs']}x the pull"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
