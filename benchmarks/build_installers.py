"""Build times: a reference pack built cold with pip and with uv, and a second pack that overlaps
the first built with the wheel cache warm; reported as ratios of the same run.

    .venv/bin/python benchmarks/build_installers.py [--rounds 2] [--json]

"Cold" means an empty wheel cache and no layer cache (every download and install really happens);
the base images are local. Rounds alternate pip and uv so a drifting machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from attune_containers.core import labels as L
from attune_containers.core.spec import DependencySpec
from attune_containers.engine import Engine
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.settings import Settings

REFERENCE = DependencySpec(dependencies=["requests", "pydantic", "boto3"], min_version="3.11", max_version="3.11")
OVERLAPPING = DependencySpec(dependencies=["requests", "boto3", "attrs"], min_version="3.11", max_version="3.11")


def build(settings: Settings, spec: DependencySpec, downloads: list[str]) -> float:
    manager = ContainerDependencyManager(settings)
    started = time.perf_counter()
    manager.ensure_environment(
        f"bench{uuid.uuid4().hex[:8]}", spec, on_log=lambda line: line.startswith("fetch: downloaded") and downloads.append(line)
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    prefix = f"attune-bench-{uuid.uuid4().hex[:6]}"
    times: dict[str, list[float]] = {"pip cold": [], "uv cold": [], "pip overlap (cache warm)": []}
    downloaded: dict[str, int] = {}
    work = Path(tempfile.mkdtemp(prefix="attune-bench-"))
    try:
        for _ in range(args.rounds):
            for installer in ("pip", "uv"):
                cache = work / uuid.uuid4().hex  # an empty wheel cache: everything is downloaded
                settings = Settings(
                    image_prefix=prefix, installer=installer, cache_dir=cache, build_no_cache=True, state_dir=work / "state"
                )
                got: list[str] = []
                times[f"{installer} cold"].append(build(settings, REFERENCE, got))
                downloaded[f"{installer} cold"] = len(got)
                if installer == "pip":
                    got = []
                    times["pip overlap (cache warm)"].append(build(settings, OVERLAPPING, got))
                    downloaded["pip overlap (cache warm)"] = len(got)
    finally:
        engine = Engine()
        for summary in engine.list_images({L.MANAGED: "true"}):
            if any(t.startswith(prefix + "/") for t in summary.tags):
                engine.remove_image(summary.id, force=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "seconds_median": med,
        "downloads": downloaded,
        "ratios": {
            "uv cold / pip cold": med["uv cold"] / med["pip cold"],
            "overlapping pack / cold pack (pip)": med["pip overlap (cache warm)"] / med["pip cold"],
        },
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.rounds} rounds; reference pack: {', '.join(REFERENCE.dependencies)}; overlapping: "
        f"{', '.join(OVERLAPPING.dependencies)}"
    )
    for name, value in med.items():
        print(f"{name:<26} {value:6.1f} s median, {downloaded[name]} distributions downloaded")
    for name, value in report["ratios"].items():
        print(f"{name:<36} {value:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
