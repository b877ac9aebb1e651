"""The main job end to end: each example pack becomes an image, and its action runs inside it, in a
fresh container and then in a warm one.

Run by `make demo` once the engine and the base images are set up. The Python packs pin different
versions of one library (requests) and ask for different Pythons; the Node.js packs pin different
versions of lodash and ask for different Node.js majors; a mixed pack has a Python and a Node.js
action, and an image for each; each action reports what it saw.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from attune_containers.core.actions import discover_packs, load_action
from attune_containers.core.packs import load_pack
from attune_containers.core.spec import DependencySpec
from attune_containers.runtimes import get_runtime, runner_types
from attune_containers.services.runner import ActionRunner

PACKS = Path(__file__).resolve().parent / "packs"


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def action_of(pack_ref: str, directory: Path, runtime: str) -> str:
    """The pack's first action (by file name) that runs in ``runtime``'s image."""
    for path in sorted((directory / "actions").glob("*.yaml")):
        action = load_action(PACKS, f"{pack_ref}.{path.stem}")
        if runner_types()[action.runner_type].name == runtime:
            return action.action_ref
    raise SystemExit(f"{pack_ref} has no {runtime} action")


def main() -> int:
    runner = ActionRunner(PACKS)
    failures = 0
    for pack_ref, directory in discover_packs(PACKS).items():
        pack = load_pack(directory)
        # One image per runtime of the pack (a mixed pack has two), each with its own action.
        for runtime, spec in pack.specs.items():
            failures += demo_image(runner, pack.pack_ref, spec, action_of(pack_ref, directory, runtime))
    runner.close()
    return 1 if failures else 0


def demo_image(runner: ActionRunner, pack_ref: str, spec: DependencySpec, action_ref: str) -> int:
    """Ensure one image of the pack (twice: the second from memory) and run its action cold and warm."""
    started = time.perf_counter()
    info = runner.manager.ensure_environment(pack_ref, spec)
    ensured = time.perf_counter() - started
    started = time.perf_counter()
    runner.manager.ensure_environment(pack_ref, spec)
    again = time.perf_counter() - started
    params = {"greeting": f"hello from {pack_ref}"}
    cold = timed(runner.run, action_ref, params, warm=False)
    runner.run(action_ref, params, warm=True)  # starts the image's warm container
    warm = timed(runner.run, action_ref, params, warm=True)
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
    return int(not (cold[0].succeeded and warm[0].succeeded))


if __name__ == "__main__":
    sys.exit(main())
