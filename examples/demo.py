"""The main job end to end: the example packs become images, and code runs inside each.

Run by `make demo` after the engine and the base images are set up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from attune_containers.core.packs import load_pack
from attune_containers.services.manager import ContainerDependencyManager

PACKS = Path(__file__).resolve().parent / "packs"


def main() -> int:
    manager = ContainerDependencyManager()
    for directory in sorted(p for p in PACKS.iterdir() if (p / "pack.yaml").exists()):
        pack = load_pack(directory)
        spec = pack.spec
        started = time.perf_counter()
        info = manager.ensure_environment(pack.pack_ref, spec)
        first = time.perf_counter() - started
        started = time.perf_counter()
        manager.ensure_environment(pack.pack_ref, spec)
        again = time.perf_counter() - started
        code, output = manager.engine.run_once(
            info.image,
            [info.executable_path, "-c",
             "import sys, requests; print(f'Python {sys.version.split()[0]}, requests {requests.__version__}')"],
        )
        print(f"{pack.pack_ref}: range [{spec.min_version or 'any'}, {spec.max_version or 'any'}] -> {info.image}")
        print(f"  ensure: {first:.2f} s, again: {again * 1000:.1f} ms; inside the image: {output.strip()}")
        if code != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
