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


def test_up_hands_the_kb_service_token_to_the_agent_and_its_own_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ARCHON_KB_SERVICE_TOKEN_FILE set, the KB answers /sync only with the token
    (archon.kb.access.check_token, the KB's own check): `up` must send it, and give it to the
    agent, or it waits for a knowledge base that always says 401."""
    from archon.errors import AuthenticationError
    from archon.kb.access import check_token
    from archon.stack import StackOptions, plan

    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.delenv("ARCHON_KB_SERVICE_TOKEN", raising=False)
    monkeypatch.delenv("ARCHON_AGENT_KB_TOKEN", raising=False)
    monkeypatch.delenv("ARCHON_AGENT_KB_TOKEN_FILE", raising=False)
    monkeypatch.setenv("ARCHON_KB_SERVICE_TOKEN_FILE", str(tmp_path / "token"))
    parts = {p.name: p for p in plan(StackOptions(sources=tmp_path / "s.yaml", data_dir=tmp_path))}
    assert parts["agent"].env["ARCHON_AGENT_KB_TOKEN"] == "s3cret"

    def kb(request: httpx.Request) -> httpx.Response:
        try:
            check_token("s3cret", request.headers.get("authorization"))
        except AuthenticationError:
            return httpx.Response(401, json={"error": {"message": "token"}})
        return httpx.Response(200, json={"running": False, "last": {"ok": True}})

    client = httpx.Client(transport=httpx.MockTransport(kb))
    assert _ready(parts["knowledge base"], client) == (True, "")
    parts["knowledge base"].headers.clear()
    assert _ready(parts["knowledge base"], client) == (
        False,
        "refused without its service token (ARCHON_KB_SERVICE_TOKEN)",
    )


def test_a_token_file_that_cannot_be_read_is_one_line_naming_its_setting(tmp_path: Path) -> None:
    """`up` reads the KB's token as the KB does (archon.settings.secret_from): a missing or
    empty file stops it with the KB's own message, not a wait for a KB that cannot start."""
    from archon.errors import ConfigError
    from archon.kb.settings import KnowledgeBaseSettings
    from archon.stack import kb_service_token

    missing = tmp_path / "absent"
    with pytest.raises(
        ConfigError, match=r"service_token_file .*absent \(ARCHON_KB_SERVICE_TOKEN_FILE\)"
    ):
        kb_service_token({"ARCHON_KB_SERVICE_TOKEN_FILE": str(missing)})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        kb_service_token({"ARCHON_KB_SERVICE_TOKEN_FILE": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="is empty"):
        KnowledgeBaseSettings(service_token_file=tmp_path / "empty").token()
    # The inline token wins over the file, as in the KB's settings.
    env = {"ARCHON_KB_SERVICE_TOKEN": " t0k ", "ARCHON_KB_SERVICE_TOKEN_FILE": str(missing)}
    assert kb_service_token(env) == "t0k"
    assert kb_service_token({}) is None
