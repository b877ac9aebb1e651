"""The main job end to end: each example pack becomes an image, and its action runs inside it, in a
fresh container and then in a warm one.

Run by `make demo` once the engine and the base images are set up. The Python packs pin different
versions of one library (requests) and ask for different Pythons; the Node.js packs pin different
versions of lodash and ask for different Node.js majors; each action reports what it saw.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from attune_containers.core.actions import discover_packs
from attune_containers.core.packs import load_pack
from attune_containers.runtimes import get_runtime
from attune_containers.services.runner import ActionRunner

PACKS = Path(__file__).resolve().parent / "packs"


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def main() -> int:
    runner = ActionRunner(PACKS)
    failures = 0
    for pack_ref, directory in discover_packs(PACKS).items():
        pack = load_pack(directory)
        spec = pack.spec
        started = time.perf_counter()
        info = runner.manager.ensure_environment(pack.pack_ref, spec)
        ensured = time.perf_counter() - started
        started = time.perf_counter()
        runner.manager.ensure_environment(pack.pack_ref, spec)
        again = time.perf_counter() - started
        params = {"greeting": f"hello from {pack_ref}"}
        cold = timed(runner.run, f"{pack_ref}.versions", params, warm=False)
        runner.run(f"{pack_ref}.versions", params, warm=True)  # starts the pack's warm container
        warm = timed(runner.run, f"{pack_ref}.versions", params, warm=True)
        name = get_runtime(spec.runtime).display_name
        print(
            f"{pack_ref}: {name} range [{spec.min_version or 'any'}, {spec.max_version or 'any'}] "
            f"-> {info.image} ({name} {info.runtime_version})"
        )
        print(f"  image ready in {ensured:.2f} s; ensured again in {again * 1000:.2f} ms")
        print(f"  result: {cold[0].result}")
        print(
            f"  cold run {cold[0].status.value} in {cold[1] * 1000:.0f} ms; warm run {warm[0].status.value} "
            f"in {warm[1] * 1000:.0f} ms, same result: {warm[0].result == cold[0].result}"
        )
        failures += not (cold[0].succeeded and warm[0].succeeded)
    runner.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
