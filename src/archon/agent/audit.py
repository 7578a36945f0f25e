"""One audit line per answered request, for an operator's log stack.

The ``archon.audit`` logger writes, at INFO, one JSON object a line: who asked (the key's name
and groups, never the key), the route, the status, whether retrieval was used, and which
sources the answer was given (source, path and lines: where, never what). No question, answer
or excerpt text is logged, so the line may be shipped anywhere the key names may go.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from archon.agent.auth import ApiKey

log = logging.getLogger("archon.audit")


def answered(
    route: str,
    key: ApiKey | None,
    status: int,
    outcome: str,
    sources: list[dict[str, Any]],
) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    line = {
        "event": "answered",
        "time": round(time.time(), 3),
        "route": route,
        "key": key.name if key is not None else None,
        "groups": list(key.groups) if key is not None else [],
        "status": status,
        "rag": outcome,
        "sources": [
            {
                "source": s.get("source"),
                "path": s.get("path"),
                "start_line": s.get("start_line"),
                "end_line": s.get("end_line"),
            }
            for s in sources
        ],
    }
    log.info("%s", json.dumps(line, ensure_ascii=False, separators=(",", ":")))
