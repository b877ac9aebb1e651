"""Node.js per-action overhead (issue 13), in one run: a warm Node.js execution through the local
service against a bare ``node -e 0`` on the host, and the cold path against
``docker run --rm IMAGE node -e 0``. Also a warm execution right after another ("back to back"):
each execution gets a fresh node process, started ahead while the container is idle; back to back
there is no idle time, so that figure includes a node start. Rounds are interleaved so a noisy machine slows every method
alike; figures are medians and p95s, verdicts are ratios of this run.

    .venv/bin/python benchmarks/node.py [--rounds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from attune_containers.services.runner import ActionRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import check, start_service, summary, timed  # noqa: E402  (the Python benchmark's helpers)

PACK = Path(__file__).resolve().parent.parent / "tests" / "packs" / "contract" / "nodejs" / "contract"
ACTION = "contract.echo"
PARAMS = {"n": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None:
        raise SystemExit("benchmark skipped: no node on this host to compare with")
    tree = Path(tempfile.mkdtemp(prefix="attune-bench-node-"))
    shutil.copytree(PACK, tree / "contract")
    runner = ActionRunner(tree)
    image = runner.ensure_pack("contract").image
    socket = Path(tempfile.mkdtemp()) / "bench.sock"
    service, client = start_service(socket, tree)

    def node_start() -> None:
        subprocess.run([node, "-e", "0"], check=True)

    def cold() -> None:
        result = runner.run(ACTION, PARAMS, warm=False)
        check(result.result == PARAMS, f"cold result {result.status} {result.error}")

    def via_service() -> None:
        answer = client.post("/v1/executions", json={"action_ref": ACTION, "parameters": PARAMS}).json()
        check(answer["result"] == PARAMS, f"service result {answer}")

    def back_to_back() -> None:
        # The second of two executions in a row: its node had no idle time to start ahead.
        via_service()
        samples["warm, back to back"].append(timed(via_service))

    def docker_run() -> None:
        subprocess.run(["docker", "run", "--rm", "--network", "none", image, "node", "-e", "0"], check=True, capture_output=True)

    methods = {"node -e 0": node_start, "warm, service": via_service, "cold path": cold, "docker run --rm": docker_run}
    samples: dict[str, list[float]] = {name: [] for name in [*methods, "warm, back to back"]}
    try:
        for fn in methods.values():  # warm-up: image, pool ready
            fn()
        for _ in range(args.rounds):
            for name, fn in methods.items():
                samples[name].append(timed(fn))
            back_to_back()
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
            "warm service / node -e 0 (goal <= 1.5)": med["warm, service"] / med["node -e 0"],
            "warm back to back / node -e 0": med["warm, back to back"] / med["node -e 0"],
            "cold / docker run --rm node -e 0 (goal <= 1)": med["cold path"] / med["docker run --rm"],
        },
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.rounds} interleaved rounds; Node.js action {ACTION} {PARAMS} in {image}")
    print(f"{'method':<24} {'median ms':>10} {'p95 ms':>10}")
    for name, r in results.items():
        print(f"{name:<24} {r['median_ms']:>10.1f} {r['p95_ms']:>10.1f}")
    for name, value in report["ratios"].items():
        print(f"{name:<52} {value:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
