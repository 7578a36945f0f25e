"""Code as knowledge on the chat page, in a real headless Chromium: a knowledge base syncing a
real Go file (../shared/corpora/prometheus-code/scrape/target.go, prometheus/prometheus at
d15adb9ad7e5d9fbde3a9a8f30200593a5a14d86) behind a real agent, a stand-in model server
answering with a citation. A code source is shown as code: its language, symbol and line range,
its lines in a code block; the agent's `sources` carry the same fields."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration import test_chat_page as chat_page
from tests.integration.test_chat_page import ChatPage, sources_of
from tests.support import stack
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import Server
from tests.support.stack import start_kb, wait_agent_ready

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "prometheus-code"
CODE_URL = "https://code.example.test/"
QUESTION = "How is the offset of a scrape target computed from the interval and offset seed?"
browser = chat_page.browser  # the chat page tests' fixtures: one Chromium, a page per test
chat = chat_page.chat
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/corpora")


@pytest.fixture(scope="module")
def standin() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.reply = "The target's hash, mixed with the offset seed, picks its offset [1]."
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def code_agent(tmp_path_factory, standin: FakeUpstream) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("code-chat")
    sources = tmp / "sources.yaml"
    entry = {
        "name": "prometheus-code",
        "path": str(CORPUS),
        "include": ["scrape/target.go"],
        "url_template": CODE_URL + "{path}#L{line}",
    }
    sources.write_text(json.dumps({"sources": [entry]}))
    kb = start_kb(tmp, sources)
    agent = stack.start_agent(tmp, [standin.url], kb.url, env={})
    try:
        wait_agent_ready(agent)
        yield agent
    finally:
        agent.stop()
        kb.stop()


def test_agent_sources_describe_code(code_agent: Server, standin: FakeUpstream):
    body = {"model": standin.model, "messages": [{"role": "user", "content": QUESTION}]}
    resp = httpx.post(f"{code_agent.url}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    sources = resp.json()["sources"]
    assert sources and all(s["language"] == "go" for s in sources), sources
    offset = [s for s in sources if s.get("symbol") == "Target.offset"]
    assert offset, sources
    # The exact lines of the method (doc comment through its closing brace) in target.go.
    assert (offset[0]["start_line"], offset[0]["end_line"]) == (168, 184)
    assert offset[0]["symbol_kind"] == "method"
    assert offset[0]["heading_path"] == ["target.go", "Target", "offset"]
    assert "\n" in offset[0]["snippet"]  # code keeps its lines


def test_code_source_card_shows_language_symbol_lines_and_code(code_agent: Server, chat: ChatPage):
    page = chat.page
    page.goto(f"{code_agent.url}/")
    answer, state = chat.ask(QUESTION)
    assert state == "done", answer.inner_text()
    cards = sources_of(answer)
    card = next((c for c in cards if c["trail"] == "target.go \u203a Target \u203a offset"), None)
    assert card is not None, cards
    assert card["name"] == "prometheus-code"
    assert card["where"] == "scrape/target.go:168-184", card
    assert card["hrefs"] == [f"{CODE_URL}scrape/target.go#L168"], card
    item = answer.get_by_test_id("source").filter(has_text="target.go:168-184")
    assert item.get_by_test_id("source-language").inner_text().lower() == "go"
    assert item.get_by_test_id("source-symbol").inner_text() == "method Target.offset"
    code = item.get_by_test_id("source-code")
    assert code.evaluate("e => e.tagName") == "PRE"
    assert code.locator("code").get_attribute("class") == "language-go"
    text = code.inner_text()
    assert "\n" in text and re.search(r"func \(t \*Target\) offset|offsetSeed|offset", text), text
    assert item.get_by_test_id("source-snippet").count() == 0
    assert chat.unexpected_errors() == []
