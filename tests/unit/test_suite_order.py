"""The test that restarts the engine runs last because it is marked so, not because of its name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESTART = "tests/engine/test_engine_restart.py"


def collected(*paths: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_engine_restart_is_collected_after_everything_else_given_first():
    items = collected(RESTART, "tests/engine/test_builds.py", "tests/unit/test_pack_ref.py")
    restarts = [i for i, item in enumerate(items) if item.startswith(RESTART)]
    assert restarts and restarts == list(range(len(items) - len(restarts), len(items))), items
    # Everything else keeps its order.
    others = [item for item in items if not item.startswith(RESTART)]
    assert others == [item for item in collected("tests/engine/test_builds.py", "tests/unit/test_pack_ref.py")]
