"""Print the distributions installed in this venv as JSON, sorted: the image's record of itself."""

import json
import sys
from importlib import metadata

seen = {}
for dist in metadata.distributions(path=[p for p in sys.path if p.endswith("site-packages")]):
    name = dist.metadata["Name"]
    if name:
        seen[name.lower().replace("_", "-").replace(".", "-")] = dist.version
json.dump([{"name": n, "version": v} for n, v in sorted(seen.items())], sys.stdout)
