"""Logging of the service: one JSON object per line on stderr.

``configure(level)`` sets the root logger up once (``serve --log-level``). Every record becomes
``{"time", "level", "logger", "message", ...}`` with the record's ``extra`` fields (the access log's
``method``, ``path``, ``status``, ``duration_ms`` and ``execution_id``; an execution's ``status``,
``warm``, ``queued_ms``) and, for an error, its ``exception``. Request bodies, and so parameters and
secrets, are never logged; neither is the token.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
# The attributes every LogRecord has: anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}  # uvicorn's, with ANSI


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def configure(level: str = "info", stream: Any = None) -> None:
    """JSON lines at ``level`` and above on ``stream`` (stderr) for every logger, uvicorn's too."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The docker SDK and urllib3 speak at debug for every engine call: only their warnings.
    for name in ("docker", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
