"""Per-action overhead, side by side, in one run: a bare process, the cold path, a warm container,
the local service, and `docker run --rm` as the engine's own baseline; then a real action (imports
requests and pydantic, validates one model) warm through the service against the seed's way (a fresh
venv interpreter per execution importing the same libraries); then throughput.

    .venv/bin/python benchmarks/run.py [--rounds 30] [--json]

Rounds are interleaved (one of each per round) so that a noisy, shared machine slows every method
alike; figures are medians and p95s, and the verdicts are ratios against baselines of this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
REAL_PACK = HERE / "packs" / "realworld"
REAL_ACTION = "realworld.validate"
REAL_PARAMS = {"id": 7, "item": "book"}
REAL_RESULT = {"order": {"id": 7, "item": "book", "quantity": 1}, "bytes": 40}
# The seed's way keeps one host venv per pack with the pack's own pins.
SEED_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attune-containers-bench" / "seed-venv"


def seed_venv() -> Path:
    """A host venv with the real action's libraries, as the seed's design keeps per pack."""
    python = SEED_VENV / "bin" / "python"
    stamp = SEED_VENV / ".requirements"
    pins = "requests==2.32.3 pydantic==2.9.2"
    if not (python.exists() and stamp.exists() and stamp.read_text() == pins):
        shutil.rmtree(SEED_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(SEED_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins.split()], check=True)
        stamp.write_text(pins)
    return python


def packs_tree() -> Path:
    """The probe pack and the real action's pack side by side (the service serves one tree)."""
    tree = Path(tempfile.mkdtemp(prefix="attune-bench-packs-"))
    shutil.copytree(PACKS / "probe", tree / "probe")
    shutil.copytree(REAL_PACK, tree / "realworld")
    return tree


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


def start_service(socket: Path, packs: Path) -> tuple[subprocess.Popen, httpx.Client]:
    process = subprocess.Popen(
        [sys.executable, "-m", "attune_containers.cli", "serve", "--packs-dir", str(packs), "--socket", str(socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    tree = packs_tree()
    runner = ActionRunner(tree, ContainerDependencyManager(settings))
    image = runner.manager.ensure_environment("probe", runner._pack_at("probe", tree / "probe").spec).image
    runner.ensure_pack("realworld")
    seed_python = seed_venv()
    socket = Path(tempfile.mkdtemp()) / "bench.sock"
    service, client = start_service(socket, tree)

    def bare() -> None:
        out = subprocess.run(
            [sys.executable, "-I", str(HERE / "bare_action.py"), str(ACTION_FILE), json.dumps(PARAMS)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        check(json.loads(out) == PARAMS, "bare result")

    def bare_start() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    def cold() -> None:
        result = runner.run(ACTION, PARAMS, warm=False)
        check(result.result == PARAMS, f"cold result {result.status} {result.error}")

    def warm() -> None:
        check(runner.run(ACTION, PARAMS, warm=True).result == PARAMS, "warm result")

    def via_service() -> None:
        check(
            client.post("/v1/executions", json={"action_ref": ACTION, "parameters": PARAMS}).json()["result"] == PARAMS,
            "service result",
        )

    def real_service() -> None:
        answer = client.post("/v1/executions", json={"action_ref": REAL_ACTION, "parameters": REAL_PARAMS}).json()
        check(answer["result"] == REAL_RESULT, f"real action result {answer}")

    def real_seed() -> None:
        out = subprocess.run(
            [
                str(seed_python),
                "-I",
                str(HERE / "bare_action.py"),
                str(tree / "realworld" / "actions" / "validate.py"),
                json.dumps(REAL_PARAMS),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        check(json.loads(out) == REAL_RESULT, "seed's way result")

    def docker_run() -> None:
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", image, "python", "-c", "pass"], check=True, capture_output=True
        )

    methods = {
        "python -c pass": bare_start,
        "bare process": bare,
        "cold path": cold,
        "warm container": warm,
        "service": via_service,
        "docker run --rm": docker_run,
        "real action, service": real_service,
        "real action, seed's way": real_seed,
    }
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
        shutil.rmtree(tree, ignore_errors=True)

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
            "real action, service / python start (goal <= 1.5)": med["real action, service"] / med["python -c pass"],
            "real action, service / seed's way (goal <= 0.2)": med["real action, service"] / med["real action, seed's way"],
        },
        "throughput": {
            "workers": workers,
            "executions": args.throughput,
            "warm_per_s": args.throughput / t_warm,
            "bare_per_s": args.throughput / t_bare,
            "warm / bare": (args.throughput / t_warm) / (args.throughput / t_bare),
        },
        "cores": os.cpu_count(),
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.rounds} interleaved rounds on {os.cpu_count()} cores; action {ACTION} {PARAMS}")
    print(f"{'method':<24} {'median ms':>10} {'p95 ms':>10}")
    for name, r in results.items():
        print(f"{name:<24} {r['median_ms']:>10.1f} {r['p95_ms']:>10.1f}")
    for name, value in report["ratios"].items():
        print(f"{name:<52} {value:6.2f}")
    t = report["throughput"]
    print(
        f"throughput, {t['workers']} workers, {t['executions']} executions: warm {t['warm_per_s']:.0f}/s, "
        f"bare processes {t['bare_per_s']:.0f}/s (warm / bare {t['warm / bare']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
