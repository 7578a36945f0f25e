"""`archon up`'s readiness of the agent: ready once it has seen its knowledge base up, so the
first question after the banner is answered with the docs (a stand-in /ready, the agent's
real body shape from archon.agent.app)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from archon.stack import Part, _ready


def agent_ready(kb_status: str) -> httpx.Client:
    body = {
        "status": "ready",
        "upstreams": [{"url": "http://127.0.0.1:8000", "healthy": True}],
        "knowledge_base": {"url": "http://127.0.0.1:8100", "status": kb_status, "error": None},
        "auth": False,
    }
    return httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=body)))


@pytest.mark.parametrize(
    ("kb_status", "ready"), [("up", True), ("off", True), ("down", False), ("unknown", False)]
)
def test_the_agent_is_ready_once_its_knowledge_base_is_up_or_off(
    kb_status: str, ready: bool
) -> None:
    part = Part("agent", [], "http://127.0.0.1:8080", Path("agent.log"))
    ok, state = _ready(part, agent_ready(kb_status))
    assert ok is ready
    assert state == ("" if ready else "waiting to see the knowledge base up")
