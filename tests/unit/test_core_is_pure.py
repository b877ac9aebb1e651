"""The core (and the runtimes' pure parts) must stay pure: importing them never pulls in the Docker SDK
or the engine layer."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = r"""
import importlib, json, pkgutil, sys
import attune_containers.core as core
import attune_containers.runtimes as runtimes
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, core.__name__ + "."))
# The runtimes' pure parts too (each runtime's fetcher reaches the engine only when called).
names += sorted(m.name for m in pkgutil.walk_packages(runtimes.__path__, runtimes.__name__ + "."))
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "modules": names,
    "docker": sorted(m for m in sys.modules if m == "docker" or m.startswith("docker.")),
    "engine": "attune_containers.engine" in sys.modules,
    "services": sorted(m for m in sys.modules if m.startswith("attune_containers.services")),
}))
"""


def test_core_imports_no_docker():
    """Run in a fresh interpreter so nothing imported by other tests (or conftest) can hide it."""
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60)
    found = json.loads(result.stdout)
    expected = {
        f"attune_containers.core.{m}"
        for m in ("classify", "labels", "pack_ref", "packs", "plan", "protocol", "render", "spec", "versions")
    }
    assert expected <= set(found["modules"])
    assert {
        "attune_containers.runtimes.base",
        "attune_containers.runtimes.python.runtime",
        "attune_containers.runtimes.python.preload",
    } <= set(found["modules"])
    assert found["docker"] == []
    assert found["engine"] is False
    assert found["services"] == []
