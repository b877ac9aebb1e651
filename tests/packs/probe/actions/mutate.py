"""Changes preloaded libraries' global state; the next execution must not see it."""

import decimal
import json
import sys


def run(mark="x"):
    seen = getattr(json, "ATTUNE_MARK", None)
    json.ATTUNE_MARK = mark
    json.dumps = lambda *a, **k: "patched"  # monkeypatch a library function
    precision = decimal.getcontext().prec
    decimal.getcontext().prec = 3
    return {"seen": seen, "precision_before": precision, "preloaded": "decimal" in sys.modules}
