"""Per-action overhead, side by side, in one run: a bare process, the cold path, a warm container,
the local service, and `docker run --rm` as the engine's own baseline; then throughput.

    .venv/bin/python benchmarks/run.py [--rounds 30] [--json]

Rounds are interleaved (one of each per round) so that a noisy, shared machine slows every method
alike; figures are medians and p95s, and the verdicts are ratios against baselines of this run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from attune_containers.core.pooling import DEFAULT_POOL, PoolSettings
from attune_containers.services.manager import ContainerDependencyManager
from attune_containers.services.runner import ActionRunner
from attune_containers.settings import Settings

HERE = Path(__file__).resolve().parent
PACKS = HERE.parent / "tests" / "packs"
ACTION = "probe.echo"
ACTION_FILE = PACKS / "probe" / "actions" / "echo.py"
PARAMS = {"n": 1}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"benchmark aborted: {what}")


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000, "n": len(ordered)}


def start_service(socket: Path) -> tuple[subprocess.Popen, httpx.Client]:
    process = subprocess.Popen([sys.executable, "-m", "attune_containers.cli", "serve", "--packs-dir", str(PACKS),
                                "--socket", str(socket)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://attune", timeout=120)
    for _ in range(300):
        try:
            if client.get("/v1/health").status_code == 200:
                return process, client
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the service did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--throughput", type=int, default=200, help="executions in the throughput test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = Settings(pool=DEFAULT_POOL.merged(PoolSettings(reuse=True, max_size=os.cpu_count() or 2)))
    runner = ActionRunner(PACKS, ContainerDependencyManager(settings))
    image = runner.manager.ensure_environment("probe", runner._pack_at("probe", PACKS / "probe").spec).image
    socket = Path(tempfile.mkdtemp()) / "bench.sock"
    service, client = start_service(socket)

    def bare() -> None:
        out = subprocess.run([sys.executable, "-I", str(HERE / "bare_action.py"), str(ACTION_FILE), json.dumps(PARAMS)],
                             capture_output=True, text=True, check=True).stdout
        check(json.loads(out) == PARAMS, "bare result")

    def bare_start() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    def cold() -> None:
        result = runner.run(ACTION, PARAMS, warm=False)
        check(result.result == PARAMS, f"cold result {result.status} {result.error}")

    def warm() -> None:
        check(runner.run(ACTION, PARAMS, warm=True).result == PARAMS, "warm result")

    def via_service() -> None:
        check(client.post("/v1/executions", json={"action_ref": ACTION, "parameters": PARAMS}).json()["result"] == PARAMS,
              "service result")

    def docker_run() -> None:
        subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python", "-c", "pass"],
                       check=True, capture_output=True)

    methods = {"python -c pass": bare_start, "bare process": bare, "cold path": cold, "warm container": warm,
               "service": via_service, "docker run --rm": docker_run}
    samples: dict[str, list[float]] = {name: [] for name in methods}
    try:
        for fn in methods.values():  # warm-up: images, pools and caches ready
            fn()
        for _ in range(args.rounds):
            for name, fn in methods.items():
                samples[name].append(timed(fn))

        # Throughput: many short actions on all cores, warm pool vs bare processes.
        workers = 2 * (os.cpu_count() or 2)
        with ThreadPoolExecutor(workers) as pool:
            t_warm = timed(lambda: list(pool.map(lambda _: warm(), range(args.throughput))))
            t_bare = timed(lambda: list(pool.map(lambda _: bare(), range(args.throughput))))
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
        runner.close()

    results = {name: summary(values) for name, values in samples.items()}
    med = {name: r["median_ms"] for name, r in results.items()}
    report = {
        "methods": results,
        "ratios": {
            "warm / python start (goal <= 3)": med["warm container"] / med["python -c pass"],
            "warm / bare process": med["warm container"] / med["bare process"],
            "service / python start": med["service"] / med["python -c pass"],
            "cold / docker run --rm (goal <= 1)": med["cold path"] / med["docker run --rm"],
            "cold / warm": med["cold path"] / med["warm container"],
        },
        "throughput": {
            "workers": workers, "executions": args.throughput,
            "warm_per_s": args.throughput / t_warm, "bare_per_s": args.throughput / t_bare,
            "warm / bare": (args.throughput / t_warm) / (args.throughput / t_bare),
        },
        "cores": os.cpu_count(),
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.rounds} interleaved rounds on {os.cpu_count()} cores; action {ACTION} {PARAMS}")
    print(f"{'method':<18} {'median ms':>10} {'p95 ms':>10}")
    for name, r in results.items():
        print(f"{name:<18} {r['median_ms']:>10.1f} {r['p95_ms']:>10.1f}")
    for name, value in report["ratios"].items():
        print(f"{name:<36} {value:6.2f}")
    t = report["throughput"]
    print(f"throughput, {t['workers']} workers, {t['executions']} executions: warm {t['warm_per_s']:.0f}/s, "
          f"bare processes {t['bare_per_s']:.0f}/s (warm / bare {t['warm / bare']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
