"""Build speed against the Dockerfile a user would write by hand (issue 11), interleaved in one run.

    .venv/bin/python benchmarks/build_speed.py [--rounds 2] [--json]

Same base image (the configured 3.11 one, attune-base/python:3.11 here), same requirements
(requests, pydantic, boto3), no layer cache anywhere, in each round:

- naive: a one-stage Dockerfile, ``FROM`` the base, ``python3 -m venv`` + ``pip install`` of the
  requirements (pip compiles bytecode), built with ``docker build --no-cache`` and given the
  configured CA bundle the same way our fetch step gets it (a build-context file + PIP_CERT);
- cold: ``ensure`` with an empty shared wheel cache (a fresh cache_dir each round);
- warm: the same cache, now warm, and an image that does not exist yet (a fresh image prefix);
  the cold build's resolution is reused (``resolution_max_age``, 600 s by default);
- warm-new: a new pack over the same projects (another requirement set: no resolution to reuse),
  resolved from the index pages the cold build fetched into uv's host cache, with no index access;
- warm-resolve: the same, resolving again (``resolution_max_age = 0``): a new pack whose
  distributions are all cached but whose requirements were not resolved in the last 10 minutes;
- lock: a pack whose requirements are the complete hash-pinned lock ``inspect --lock`` prints
  (from the cold build's image), fresh prefix, same cache.

A benchmark, not a timed test: it prints medians and each case's ratio to the naive build of the
same run, with the goals of issue 11 (cold at most 0.7x, warm at most 0.3x).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
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

REQUIREMENTS = ["requests", "pydantic", "boto3"]
SPEC = DependencySpec(dependencies=REQUIREMENTS, min_version="3.11", max_version="3.11")
GOALS = {"cold": 0.7, "warm": 0.3, "warm-new": 0.3, "warm-resolve": 0.3}
CASES = ("naive", "cold", "warm", "warm-new", "warm-resolve", "lock")
# A new pack over the same projects: another requirement set, so no resolution to reuse, but
# every index page it needs was fetched by this round's cold build.
NEW_SPEC = DependencySpec(dependencies=[*REQUIREMENTS, "urllib3"], min_version="3.11", max_version="3.11")


def naive(base: str, ca_bundle: Path | None, work: Path, tags: list[str]) -> float:
    context = work / f"naive-{uuid.uuid4().hex[:8]}"
    context.mkdir()
    lines = [f"FROM {base}"]
    if ca_bundle is not None:
        shutil.copyfile(ca_bundle, context / "ca.pem")
        lines += ["COPY ca.pem /tmp/ca.pem", "ENV PIP_CERT=/tmp/ca.pem"]
    lines += ["RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install " + " ".join(REQUIREMENTS)]
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = f"attune-bench-naive:{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    result = subprocess.run(
        ["docker", "build", "--no-cache", "-q", "-t", tag, str(context)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.perf_counter() - started
    tags.append(tag)
    if result.returncode != 0:
        raise SystemExit(f"the naive build failed:\n{result.stdout[-3000:]}")
    return elapsed


def ensure(settings: Settings, pack_ref: str, spec: DependencySpec, log: list[tuple[float, str]]):
    manager = ContainerDependencyManager(settings)
    started = time.perf_counter()
    ensured = manager.ensure(pack_ref, spec, on_log=lambda line: log.append((time.perf_counter() - started, line)), pull=False)
    elapsed = time.perf_counter() - started
    if ensured.outcome != "built":
        raise SystemExit(f"{pack_ref}: expected a build, got {ensured.outcome}")
    return elapsed, manager, ensured.info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", action="store_true", help="print each build's log with timestamps")
    args = parser.parse_args()
    base_settings = Settings()
    base = base_settings.base_images["3.11"]
    run_id = uuid.uuid4().hex[:6]
    prefixes: list[str] = []
    naive_tags: list[str] = []
    times: dict[str, list[float]] = {case: [] for case in CASES}
    notes: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="attune-bench-speed-"))
    engine = Engine()

    def settings(cache: Path, **more: object) -> Settings:
        prefix = f"attune-bench-{run_id}-{len(prefixes)}"
        prefixes.append(prefix)
        return base_settings.model_copy(
            update={"image_prefix": prefix, "cache_dir": cache, "build_no_cache": True, "state_dir": work / "state", **more}
        )

    try:
        for number in range(args.rounds):
            # cold, warm and lock need each other in that order; the naive build moves through the
            # round so a machine that drifts during a round slows every case alike.
            order = ["cold", "warm", "warm-new", "warm-resolve", "lock"]
            order.insert(number % 6, "naive")
            cache = work / f"cache-{number}"  # empty: every distribution is downloaded
            lock_lines: list[str] = []
            for case in order:
                log: list[tuple[float, str]] = []
                if case == "naive":
                    times[case].append(naive(base, base_settings.ca_bundle, work, naive_tags))
                    continue
                if case == "cold":
                    elapsed, manager, info = ensure(settings(cache), "bench_speed", SPEC, log)
                    lock_lines = manager.lock_lines(info)
                elif case == "warm":
                    elapsed, _, _ = ensure(settings(cache), "bench_speed", SPEC, log)
                elif case == "warm-new":
                    elapsed, _, _ = ensure(settings(cache), "bench_speed_new", NEW_SPEC, log)
                elif case == "warm-resolve":
                    elapsed, _, _ = ensure(settings(cache, resolution_max_age=0), "bench_speed", SPEC, log)
                else:
                    locked = DependencySpec(dependencies=lock_lines, min_version="3.11", max_version="3.11")
                    elapsed, _, _ = ensure(settings(cache), "bench_speed_lock", locked, log)
                    notes["lock"] = f"{len(lock_lines)} hash-pinned lines"
                times[case].append(elapsed)
                downloads = sum(1 for _, line in log if line.startswith("fetch: downloaded"))
                cached = sum(1 for _, line in log if line.startswith("fetch: cached"))
                notes.setdefault(case, f"{downloads} downloaded, {cached} from the cache")
                if case == "lock" and any("lock complete" in line for _, line in log) and "no resolution" not in notes[case]:
                    notes["lock"] += ", no resolution"
                if any("resolution reused" in line for _, line in log) and "reused" not in notes[case]:
                    notes[case] += ", resolution reused"
                if any("no index access" in line for _, line in log) and "pages" not in notes[case]:
                    notes[case] += ", resolved from cached index pages"
                if args.log:
                    print(f"--- round {number + 1}, {case}", file=sys.stderr)
                    for at, line in log:
                        print(f"{at:7.2f} {line}", file=sys.stderr)
    finally:
        for tag in naive_tags:
            subprocess.run(["docker", "rmi", "-f", tag], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for summary in engine.list_images({L.MANAGED: "true"}):
            if any(t.split("/")[0] in prefixes for t in summary.tags):
                engine.remove_image(summary.id, force=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {case: statistics.median(values) for case, values in times.items() if values}
    ratios = {case: med[case] / med["naive"] for case in CASES if case != "naive" and case in med}
    report = {
        "rounds": args.rounds,
        "base_image": base,
        "requirements": REQUIREMENTS,
        "seconds_median": med,
        "seconds": times,
        "ratios_vs_naive": ratios,
        "goals": GOALS,
        "notes": notes,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.rounds} interleaved rounds on {base}; requirements: {', '.join(REQUIREMENTS)}; no layer cache")
    print(f"{'case':<44} {'median s':>9} {'vs naive':>9}  goal")
    labels = {
        "naive": "naive Dockerfile (venv + pip install)",
        "cold": "attune build, empty shared cache",
        "warm": "attune build, shared cache warm, new image",
        "warm-new": "  new requirement set, index pages cached",
        "warm-resolve": "  same, resolving again (max_age 0)",
        "lock": "attune build, complete hash-pinned lock",
    }
    for case in CASES:
        if case not in med:
            continue
        ratio = 1.0 if case == "naive" else ratios[case]
        goal = f"<= {GOALS[case]}" if case in GOALS else ""
        mark = ("met" if ratio <= GOALS[case] else "NOT met") if case in GOALS else ""
        print(f"{labels[case]:<44} {med[case]:9.1f} {ratio:9.2f}  {goal} {mark}".rstrip())
    for case, note in notes.items():
        print(f"  {case}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
