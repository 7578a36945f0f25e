"""Server-Sent Events framing for OpenAI-style streams."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
# No caching, and no buffering by a proxy in front (nginx honours x-accel-buffering), so each
# event reaches the client when it is written.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_event(payload: dict[str, Any]) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        + (b"\n\n")
    )
