"""The agent's chat page in a real headless Chromium, against a real agent, model server
and knowledge base: streamed answers with their sources, the retrieval notices, the
API-key prompt, and errors shown inline."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from tests.support import stack
from tests.support.servers import Server, free_port
from tests.support.stack import start_kb, wait_agent_ready

CHROMIUM = "/usr/bin/chromium"  # Debian's, from scripts/install-system-deps.sh
ANSWER_TIMEOUT_MS = 180_000  # the CPU is shared; the 135M model usually needs a few seconds
# The page never sets max_tokens; the test adds it to the requests the page sends
# (see `page`) to keep the small model's rambles short.
MAX_TOKENS = 48
DOC_URL = "https://docs.example.test/"

DOCS = {
    "docs/zorblax/overview.md": """# Zorblax overview

Zorblax is a made-up batch scheduler for quantum teapots. It groups brewing jobs into
wobble queues and hands each queue to a kettle node.

## Wobble queues

A wobble queue holds at most 12 brewing jobs. Zorblax drains wobble queues in
steeping order, the oldest first.
""",
    "docs/zorblax/flux-governor.md": """# The flux governor

The Zorblax flux governor limits how fast kettle nodes may steep. Set
`flux_governor.max_steep_rate` to the largest number of teapots a kettle node may steep
per minute; the default is 7.

## Turning the flux governor off

Set `flux_governor.enabled: false` to let kettle nodes steep without limit.
""",
    "README.md": """# Zorblax docs

The documentation of Zorblax, the quantum-teapot scheduler.
""",
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A knowledge base over a few Markdown files about the made-up tool Zorblax."""
    tmp = tmp_path_factory.mktemp("chat-kb")
    folder = tmp / "zorblax"
    for rel, text in DOCS.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    sources = tmp / "sources.yaml"
    entry = {"name": "zorblax", "path": str(folder), "url_template": DOC_URL + "{path}#L{line}"}
    sources.write_text(json.dumps({"sources": [entry]}))  # JSON is YAML
    server = start_kb(tmp, sources)
    try:
        yield server.url
    finally:
        server.stop()


def start_agent(
    tmp: Path, upstream: str, kb_url: str, *, upstream_up: bool = True, **env: str
) -> Server:
    agent = stack.start_agent(tmp, [upstream], kb_url, env=env)
    if upstream_up:
        try:
            wait_agent_ready(agent)
        except BaseException:
            agent.stop()
            raise
    return agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory, server: Server, kb: str) -> Iterator[Server]:
    agent = start_agent(tmp_path_factory.mktemp("agent"), server.url, kb)
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


class ChatPage:
    """A fresh browser page, with what it logged and the chat requests it sent."""

    def __init__(self, page: Page):
        self.page = page
        self.max_tokens = MAX_TOKENS
        self.ignore_eos = False  # True: the answer surely runs its max_tokens
        self.errors: list[str] = []
        self.requests: list[dict] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.route("**/v1/chat/completions", self._limit_tokens)

    def _limit_tokens(self, route: Route, request: Request) -> None:
        body = request.post_data_json
        self.requests.append(body)
        limits = {
            "max_tokens": self.max_tokens,
            **({"ignore_eos": True} if self.ignore_eos else {}),
        }
        route.continue_(post_data=json.dumps({**body, **limits}))

    def send(self, question: str) -> Locator:
        """Types a question and sends it with Enter: the new answer."""
        answers = self.page.get_by_test_id("answer")
        before = answers.count()
        prompt = self.page.get_by_label("Message")
        prompt.fill(question)
        prompt.press("Enter")
        expect(answers).to_have_count(before + 1)
        return answers.nth(before)

    def ask(self, question: str) -> tuple[Locator, str]:
        """Sends a question and waits for the answer to end: the answer and how it ended."""
        answer = self.send(question)
        expect(answer).not_to_have_attribute("data-state", "streaming", timeout=ANSWER_TIMEOUT_MS)
        return answer, answer.get_attribute("data-state") or ""

    def unexpected_errors(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


@pytest.fixture
def chat(browser: Browser) -> Iterator[ChatPage]:
    context = browser.new_context()
    try:
        yield ChatPage(context.new_page())
    finally:
        context.close()


def sources_of(answer: Locator) -> list[dict]:
    return answer.get_by_test_id("source").evaluate_all(
        """items => items.map(li => ({
            text: li.textContent,
            hrefs: [...li.querySelectorAll('a')].map(a => a.href),
        }))"""
    )


def test_answers_with_sources_then_without_the_knowledge_base(agent: Server, chat: ChatPage):
    page = chat.page
    page.goto(f"{agent.url}/")
    expect(page.get_by_label("Model").locator("option")).to_contain_text(["smollm2-135m-instruct"])
    expect(page.get_by_label("Use knowledge base")).to_be_checked()

    answer, state = chat.ask("What does the Zorblax flux governor limit?")
    assert state == "done", answer.inner_text()
    assert answer.get_by_test_id("answer-text").inner_text().strip()
    assert answer.get_attribute("data-rag") == "used"
    expect(answer.get_by_test_id("rag-notice")).to_be_hidden()
    sources = sources_of(answer)
    assert sources, answer.inner_html()
    assert any("docs/zorblax/flux-governor.md:" in s["text"] for s in sources), sources
    assert all(s["text"].startswith("zorblax") for s in sources), sources
    hrefs = [h for s in sources for h in s["hrefs"]]
    assert hrefs and all(h.startswith(DOC_URL) for h in hrefs), hrefs
    for href in answer.get_by_test_id("citation").evaluate_all("links => links.map(a => a.href)"):
        assert href.startswith(DOC_URL), href

    page.get_by_label("Use knowledge base").uncheck()
    answer, state = chat.ask("And how do I turn it off?")
    assert state == "done", answer.inner_text()
    assert answer.get_by_test_id("answer-text").inner_text().strip()
    assert answer.get_attribute("data-rag") == "off"
    expect(answer.get_by_test_id("rag-notice")).to_be_visible()
    expect(answer.get_by_test_id("rag-notice")).to_contain_text("Knowledge base off")
    expect(answer.get_by_test_id("source")).to_have_count(0)

    # The page sent the conversation, and the retrieval switch, with each question.
    first, second = chat.requests
    assert first["stream"] is True and first["archon"] == {"rag": True}
    assert [m["role"] for m in first["messages"]] == ["user"]
    assert second["archon"] == {"rag": False}
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"].strip()
    assert chat.unexpected_errors() == []


def test_stop_ends_the_answer_early(agent: Server, chat: ChatPage):
    chat.max_tokens, chat.ignore_eos = 1000, True  # still streaming when Stop is clicked
    chat.page.goto(f"{agent.url}/")
    stop = chat.page.get_by_test_id("stop")
    expect(stop).to_be_disabled()
    answer = chat.send("Write a long story about a kettle node that steeps teapots.")
    expect(answer.get_by_test_id("answer-text")).not_to_be_empty(timeout=ANSWER_TIMEOUT_MS)
    stop.click()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer).to_contain_text("(stopped)")
    expect(stop).to_be_disabled()
    expect(chat.page.get_by_test_id("send")).to_be_enabled()
    assert chat.unexpected_errors() == []


def test_degraded_when_the_knowledge_base_is_down(tmp_path: Path, server: Server, chat: ChatPage):
    agent = start_agent(tmp_path, server.url, f"http://127.0.0.1:{free_port()}")
    try:
        chat.page.goto(f"{agent.url}/")
        answer, state = chat.ask("What is a wobble queue in Zorblax?")
        assert state == "done", answer.inner_text()
        assert answer.get_by_test_id("answer-text").inner_text().strip()
        assert answer.get_attribute("data-rag") == "degraded"
        notice = answer.get_by_test_id("rag-notice")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("knowledge base unavailable", ignore_case=True)
        expect(answer.get_by_test_id("source")).to_have_count(0)
        assert chat.unexpected_errors() == []
    finally:
        agent.stop()


def test_asks_for_the_api_key_and_keeps_it(tmp_path: Path, server: Server, kb: str, chat: ChatPage):
    agent = start_agent(tmp_path, server.url, kb, ARCHON_AGENT_API_KEYS="testkey")
    page = chat.page
    try:
        page.goto(f"{agent.url}/")
        key_form = page.get_by_test_id("key-form")
        expect(key_form).to_be_visible()  # listing the models got a 401

        page.get_by_label("API key").fill("wrong-key")
        page.get_by_label("API key").press("Enter")
        expect(key_form).to_be_visible()
        expect(page.get_by_test_id("key-message")).to_contain_text("rejected")

        page.get_by_label("API key").fill("testkey")
        page.get_by_test_id("save-key").click()
        expect(key_form).to_be_hidden()
        expect(page.get_by_label("Model").locator("option")).to_contain_text(
            ["smollm2-135m-instruct"]
        )

        answer, state = chat.ask("How many brewing jobs fit in a Zorblax wobble queue?")
        assert state == "done", answer.inner_text()
        assert answer.get_by_test_id("answer-text").inner_text().strip()
        expect(answer.get_by_test_id("source").first).to_be_visible()

        # The key is kept: a reload asks no more.
        assert page.evaluate("localStorage.getItem('archon.apiKey')") == "testkey"
        page.reload()
        expect(page.get_by_label("Model").locator("option")).to_contain_text(
            ["smollm2-135m-instruct"]
        )
        expect(key_form).to_be_hidden()
        # The browser logs each 401 response; nothing else may show up.
        assert chat.unexpected_errors("status of 401") == []
    finally:
        agent.stop()


def test_shows_the_agents_error_inline(tmp_path: Path, kb: str, chat: ChatPage):
    """No model server up: the agent answers 503 and the page shows its message."""
    agent = start_agent(tmp_path, f"http://127.0.0.1:{free_port()}", kb, upstream_up=False)
    try:
        chat.page.goto(f"{agent.url}/")
        answer, state = chat.ask("What is Zorblax?")
        assert state == "error"
        error = answer.get_by_test_id("error")
        expect(error).to_be_visible()
        assert error.inner_text().strip()
        # The question can be asked again (a failed turn is not kept in the conversation).
        chat.ask("What is Zorblax?")
        assert [m["role"] for m in chat.requests[-1]["messages"]] == ["user"]
        assert chat.unexpected_errors("status of 503", "status of 502") == []
    finally:
        agent.stop()
