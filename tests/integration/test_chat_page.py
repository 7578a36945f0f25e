"""The agent's chat page in a real headless Chromium, against a real agent, model server
and knowledge base: streamed answers with their sources, the retrieval notices, the
API-key prompt, and errors shown inline. What needs an exact answer (Markdown, HTML that must
not run, citations) comes from a stand-in model server behind a real agent and knowledge base.

With ARCHON_SCREENSHOTS=DIR set, test_source_cards writes DIR/chat-page.png and
test_the_make_run_question_on_archons_own_docs DIR/make-run.png (the ones in docs/images come
from there)."""

from __future__ import annotations

import json
import os
import re
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
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import Server, free_port
from tests.support.stack import start_kb, wait_agent_ready

CHROMIUM = "/usr/bin/chromium"  # Debian's, from scripts/install-system-deps.sh
ANSWER_TIMEOUT_MS = 180_000  # the CPU is shared; the 135M model usually needs a few seconds
# The page sends no max_tokens (the agent's per-model default applies); the test adds one to
# the requests the page sends (see ChatPage) to keep the small model's rambles short.
MAX_TOKENS = 48
DOC_URL = "https://docs.example.test/"
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'

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
    # Markup in a doc: it reaches the page in a source card's snippet and must stay text.
    "docs/zorblax/glaze-labels.md": f"""# Glaze labels

A Zorblax glaze label may hold markup such as {XSS_SCRIPT} or {XSS_IMG} and Zorblax prints
glaze labels as they are, markup and all.

## Glaze label length

A glaze label holds at most 40 characters.
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
    # One chunk per section (these docs are far below the default minimum), so the cards
    # show heading trails of two levels.
    server = start_kb(tmp, sources, env={"ARCHON_KB_CHUNK_MIN_TOKENS": "0"})
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
        self.max_tokens: int | None = MAX_TOKENS  # None: as the page sent it (none)
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
            **({"max_tokens": self.max_tokens} if self.max_tokens is not None else {}),
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


@pytest.fixture(scope="module")
def standin() -> Iterator[FakeUpstream]:
    """A stand-in model server that answers what a test sets in ``reply``."""
    fake = FakeUpstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def standin_agent(tmp_path_factory, standin: FakeUpstream, kb: str) -> Iterator[Server]:
    agent = start_agent(tmp_path_factory.mktemp("standin-agent"), standin.url, kb)
    yield agent
    agent.stop()


@pytest.fixture
def clipboard_chat(browser: Browser) -> Iterator[ChatPage]:
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        yield ChatPage(context.new_page())
    finally:
        context.close()


def sources_of(answer: Locator) -> list[dict]:
    """Each source card: its text, parts and links."""
    return answer.get_by_test_id("source").evaluate_all(
        """items => items.map(li => {
            const part = (id) => li.querySelector(`[data-testid="${id}"]`)?.textContent ?? null;
            return {
                text: li.textContent,
                name: part("source-name"),
                trail: part("source-trail"),
                snippet: part("source-snippet"),
                where: part("source-link"),
                cited: li.dataset.cited === "true",
                badge: part("cited-badge"),
                hrefs: [...li.querySelectorAll('a')].map(a => a.href),
            };
        })"""
    )


def markup_in(locator: Locator) -> dict:
    """What in this part of the page could run: script/img/iframe/object elements, on*
    attributes, and links that are not http(s)."""
    return locator.evaluate(
        """root => {
            const all = [...root.querySelectorAll('*')];
            return {
                elements: all.filter(e => /^(SCRIPT|IMG|IFRAME|OBJECT|EMBED|SVG|STYLE)$/i
                    .test(e.tagName)).map(e => e.outerHTML),
                handlers: all.flatMap(e => [...e.attributes].filter(a => /^on/i.test(a.name))
                    .map(a => `${e.tagName} ${a.name}`)),
                hrefs: all.filter(e => e.hasAttribute('href')).map(e => e.getAttribute('href'))
                    .filter(h => !/^(https?:|#)/.test(h)),
            };
        }"""
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
    assert all(s["name"] == "zorblax" for s in sources), sources
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


def test_no_html_from_the_model_or_the_docs_runs(standin_agent: Server, standin, chat: ChatPage):
    standin.reply = (
        f"A glaze label may hold {XSS_SCRIPT} or {XSS_IMG} [1].\n\n"
        f"{XSS_IMG}\n\n"
        '<b onmouseover="window.__xss=1">**bold**</b> and '
        "[a javascript: link](javascript:window.__xss=1), "
        "[a data: link](data:text/html,<script>window.__xss=1</script>) and "
        "![an image](https://docs.example.test/x.png)\n\n"
        f"```html\n{XSS_SCRIPT}\n```\n"
    )
    page = chat.page
    page.goto(f"{standin_agent.url}/")
    answer, state = chat.ask("What markup may a Zorblax glaze label hold?")
    assert state == "done", answer.inner_text()

    # The payload is shown, as text, in the answer and in the doc's source card.
    text = answer.get_by_test_id("answer-text")
    expect(text).to_contain_text(f"may hold {XSS_SCRIPT} or {XSS_IMG}")
    expect(text.locator("strong")).to_have_text("bold")
    expect(text.locator("pre code")).to_have_text(XSS_SCRIPT)
    expect(text).to_contain_text("a javascript: link")
    glaze = [s for s in sources_of(answer) if "glaze-labels.md" in (s["where"] or "")]
    assert glaze, sources_of(answer)
    assert any(XSS_SCRIPT in s["snippet"] and XSS_IMG in s["snippet"] for s in glaze), glaze

    for part in (text, answer.get_by_test_id("sources")):
        assert markup_in(part) == {"elements": [], "handlers": [], "hrefs": []}, part
    text.locator("b, strong").first.hover()
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert chat.unexpected_errors() == []


MARKDOWN_CODE = "flux_governor:\n  max_steep_rate: 9\n  enabled: true"
MARKDOWN_ANSWER = f"""## Raising the steep rate

Set `flux_governor.max_steep_rate` to **the largest number** of teapots a kettle node may
steep per minute [2]; the *default* is 7 [1, 2].

1. Open the Zorblax config.
2. Raise the rate:

```yaml
{MARKDOWN_CODE}
```

- Each kettle node follows the same limit.
- To lift it, see [the flux governor](https://docs.example.test/flux) docs [9].
"""


def test_markdown_renders_and_code_copies(
    standin_agent: Server, standin: FakeUpstream, clipboard_chat: ChatPage
):
    standin.reply = MARKDOWN_ANSWER
    chat = clipboard_chat
    page = chat.page
    page.goto(f"{standin_agent.url}/")
    expect(page.get_by_label("Model").locator("option")).to_have_text(["fake-model"])
    expect(page.get_by_test_id("model-note")).to_be_hidden()  # not the bundled model
    answer, state = chat.ask("How do I raise the Zorblax steep rate?")
    assert state == "done", answer.inner_text()
    text = answer.get_by_test_id("answer-text")
    expect(text.locator("h4")).to_have_text("Raising the steep rate")
    expect(text.locator("strong")).to_have_text("the largest number")
    expect(text.locator("em")).to_have_text("default")
    expect(text.locator("p code").first).to_have_text("flux_governor.max_steep_rate")
    expect(text.locator("ol > li")).to_have_count(2)
    expect(text.locator("ul > li")).to_have_count(2)
    expect(text.locator("ul a[href='https://docs.example.test/flux']")).to_have_text(
        "the flux governor"
    )
    # [1] and [2] link to their sources; [9] names none and stays text.
    expect(answer.get_by_test_id("citation")).to_have_text(["[2]", "[1]", "[2]"])
    expect(text).to_contain_text("docs [9]")
    assert "**" not in text.inner_text() and "```" not in text.inner_text()
    expect(answer.get_by_test_id("cap-notice")).to_be_hidden()  # finish_reason "stop"

    block = text.get_by_test_id("code-block")
    expect(block.locator("pre code")).to_have_text(MARKDOWN_CODE)
    copy = block.get_by_test_id("copy-code")
    expect(copy).to_have_text("Copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN_CODE
    expect(copy).to_have_text("Copy", timeout=10_000)  # and back

    # Without navigator.clipboard (plain http on a host name), the fallback copies too.
    page.evaluate("navigator.clipboard.writeText('')")
    page.evaluate("Object.defineProperty(window, 'isSecureContext', {value: false})")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN_CODE
    assert chat.unexpected_errors() == []


SCREENSHOT_ANSWER = """To switch the flux governor off, set `flux_governor.enabled` to `false` \
in the Zorblax config [1]:

```yaml
flux_governor:
  enabled: false
```

Kettle nodes then steep **without limit**. To keep a limit instead, lower \
`flux_governor.max_steep_rate` (default 7) [1, 2].
"""


def test_source_cards(standin_agent: Server, standin: FakeUpstream, chat: ChatPage):
    standin.reply = SCREENSHOT_ANSWER
    page = chat.page
    page.set_viewport_size({"width": 1000, "height": 720})
    page.goto(f"{standin_agent.url}/")
    answer, state = chat.ask("How do I turn the Zorblax flux governor off?")
    assert state == "done", answer.inner_text()
    cards = sources_of(answer)
    assert len(cards) >= 2, cards
    # The agent marks what the answer cites: [1] and [2], no other.
    assert [c["cited"] for c in cards] == [i in (0, 1) for i in range(len(cards))], cards
    assert [c["badge"] for c in cards] == [("cited" if c["cited"] else None) for c in cards]
    trail = "The flux governor \u203a Turning the flux governor off"
    off = [c for c in cards if c["trail"] == trail]
    assert off, cards
    card = off[0]
    assert card["name"] == "zorblax"
    path, line = card["where"].rsplit(":", 1)
    assert path == "docs/zorblax/flux-governor.md" and int(line) > 1, card
    assert card["hrefs"] == [f"{DOC_URL}{path}#L{line}"], card
    assert "Set `flux_governor.enabled: false` to let kettle nodes steep" in card["snippet"], card
    assert len(card["snippet"]) <= 210 and "\n" not in card["snippet"], card
    # A citation links to its source's file and line, like the card.
    first = answer.get_by_test_id("citation").first
    assert first.get_attribute("href") == cards[0]["hrefs"][0]
    assert chat.unexpected_errors() == []
    if folder := os.environ.get("ARCHON_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / "chat-page.png"))


def test_small_model_note_and_cap_notice(agent: Server, chat: ChatPage):
    """The bundled model: the note under the input says how to use a bigger one; an answer
    cut by max_tokens says so."""
    chat.max_tokens, chat.ignore_eos = 8, True  # surely cut at 8 tokens
    page = chat.page
    page.goto(f"{agent.url}/")
    note = page.get_by_test_id("model-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("tiny")
    expect(note).to_contain_text("archon up --llm-model PATH_OR_REPO")
    expect(note).to_contain_text("vLLM: docs/configuration.md")
    doc = note.get_by_test_id("model-note-doc")
    expect(doc).to_have_attribute("title", re.compile(r"--engine vllm.*archon agent --upstream"))
    # One line, not cut short.
    assert note.evaluate("p => p.scrollWidth <= p.clientWidth && p.clientHeight < 30")

    answer, state = chat.ask("What is a wobble queue in Zorblax?")
    assert state == "done", answer.inner_text()
    assert answer.get_attribute("data-finish") == "length"
    expect(answer.get_by_test_id("cap-notice")).to_be_visible()
    expect(answer.get_by_test_id("cap-notice")).to_contain_text("Answer cut at 8 tokens")
    sent = chat.requests[0]
    assert "max_tokens" not in sent  # the agent's default for the model decides
    assert sent["stream_options"] == {"include_usage": True}
    assert chat.unexpected_errors() == []


def test_a_key_with_a_lower_cap_gets_its_default(
    tmp_path: Path, standin: FakeUpstream, kb: str, chat: ChatPage
):
    """The key may ask for at most 64 tokens: the page asks for no length of its own, so the
    agent applies the key's default in one request (no 400, no retry); the cut is told."""
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - name: capped\n    key: capkey\n    max_tokens: 64\n")
    standin.reply = None  # "tok " until max_tokens, finish_reason "length"
    agent = start_agent(tmp_path, standin.url, kb, ARCHON_AGENT_API_KEYS_FILE=str(keys))
    chat.max_tokens = None
    try:
        chat.page.add_init_script("localStorage.setItem('archon.apiKey', 'capkey')")
        chat.page.goto(f"{agent.url}/")
        answer, state = chat.ask("What is Zorblax?")
        assert state == "done", answer.inner_text()
        expect(answer.get_by_test_id("cap-notice")).to_have_text(
            "Answer cut at 64 tokens (max_tokens)."
        )
        assert [r.get("max_tokens") for r in chat.requests] == [None]
        assert standin.bodies[-1]["max_tokens"] == 64
        assert chat.unexpected_errors("status of 400") == []
    finally:
        agent.stop()


UI = Path(__file__).resolve().parents[2] / "src" / "archon" / "agent" / "ui"
A = 'target="_blank" rel="noopener noreferrer"'
UNSAFE = '<span class="unsafe-link" title="link removed: only http and https links are kept">'
RENDERED = [
    ("*a **b** c* and snake_case", "<p><em>a <strong>b</strong> c</em> and snake_case</p>"),
    ("5 * 3 * 2 and **open", "<p>5 * 3 * 2 and **open</p>"),
    ("\\*not em\\* `x **y**` ``a ` b``", "<p>*not em* <code>x **y**</code> <code>a ` b</code></p>"),
    ("~~gone~~ line\nnext", "<p><del>gone</del> line<br>next</p>"),
    ("# H\n### Sub ###\n---", "<h3>H</h3><h5>Sub</h5><hr>"),
    (
        "Steps:\n1. one\n2. two\n   - a\n   - b",
        "<p>Steps:</p><ol><li>one</li><li>two<ul><li>a</li><li>b</li></ul></li></ol>",
    ),
    ("3. c\n\n4. d", '<ol start="3"><li>c</li><li>d</li></ol>'),
    ("> **q**", "<blockquote><p><strong>q</strong></p></blockquote>"),
    (
        "see https://a.test/x_y. or <https://b.test>",
        f'<p>see <a href="https://a.test/x_y" {A}>https://a.test/x_y</a>. or '
        f'<a href="https://b.test" {A}>https://b.test</a></p>',
    ),
    (
        "[ok](https://c.test/a(b)) [no](javascript:x()) ![img](https://d.test/i.png)",
        f'<p><a href="https://c.test/a(b)" {A}>ok</a> {UNSAFE}no</span> '
        f'<a href="https://d.test/i.png" {A}>img</a></p>',
    ),
    ("<b>x</b> &amp;", "<p>&lt;b&gt;x&lt;/b&gt; &amp;amp;</p>"),
    ("a [1] [1, 2] [3]", "<p>a <a>[1]</a> <a>[1]</a><a>[2]</a> [3]</p>"),
]


def test_markdown_renderer(browser: Browser):
    """The renderer alone, case by case (no agent: markdown.js in a blank page)."""
    page = browser.new_page()
    try:
        page.set_content("<body></body>")
        page.add_script_tag(path=str(UI / "markdown.js"))
        got = page.evaluate(
            """cases => cases.map(text => {
                const box = document.createElement('div');
                const citation = ns => ns.every(n => n <= 2) ? ns.map(n => {
                    const a = document.createElement('a');
                    a.textContent = `[${n}]`;
                    return a;
                }) : null;
                box.append(...ArchonMarkdown.render(text, {citation}));
                return box.innerHTML;
            })""",
            [text for text, _ in RENDERED],
        )
        assert got == [html for _, html in RENDERED]
        # A fence still streaming (not closed yet) is a code block already.
        code = page.evaluate(
            "() => ArchonMarkdown.render('```sh\\necho hi')[0].querySelector('code').textContent"
        )
        assert code == "echo hi"
    finally:
        page.close()


def test_the_make_run_question_on_archons_own_docs(
    tmp_path: Path, server: Server, chat: ChatPage
) -> None:
    """The first question of a newcomer, as `make run` serves it: Archon's own docs, the bundled
    model, the page's own request. The answer's first lines are the docs' `archon kb sync`,
    docs/knowledge-base.md is a cited card. With ARCHON_SCREENSHOTS=DIR: DIR/make-run.png."""
    docs = Path(__file__).resolve().parents[2]
    sources = tmp_path / "sources.yaml"
    entry = {"name": "archon", "path": str(docs), "include": ["docs/**/*.md", "README.md"]}
    sources.write_text(json.dumps({"sources": [entry]}))
    kb = start_kb(tmp_path, sources)
    try:
        agent = start_agent(tmp_path, server.url, kb.url)
        try:
            chat.max_tokens = None  # as the page sends it: the agent's default applies
            page = chat.page
            page.goto(f"{agent.url}/")
            answer, state = chat.ask("How do I sync the knowledge base?")
            assert state == "done", answer.inner_text()
            text = answer.get_by_test_id("answer-text")
            first_lines = "\n".join(text.inner_text().splitlines()[:8])  # with "bash", "Copy"
            assert "docs/knowledge-base.md" in first_lines and "archon kb sync" in first_lines
            code = text.locator("pre code").first
            assert code.inner_text().startswith("archon kb sync")  # a code block, with Copy
            cited = [s for s in sources_of(answer) if s["cited"]]
            assert any("archon:docs/knowledge-base.md:" in s["text"] for s in cited), cited
            assert chat.unexpected_errors() == []
            if folder := os.environ.get("ARCHON_SCREENSHOTS"):
                Path(folder).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(folder) / "make-run.png"))

            # Small talk after it: no quote from the docs, no cards (the earlier question is
            # in the retrieval query, but the last one is what must be about the docs).
            answer, state = chat.ask("Say hi.")
            assert state == "done", answer.inner_text()
            assert not answer.get_by_test_id("answer-text").inner_text().startswith("From [")
            assert answer.get_attribute("data-rag") == "none"
            expect(answer.get_by_test_id("source")).to_have_count(0)
            # The chat-page report's second question: docs/operations.md is retrieved first
            # but no Archon doc is about it, so no quote (or, should one appear, that file's).
            page.reload()
            answer, state = chat.ask("How do I roll back a model update?")
            assert state == "done", answer.inner_text()
            first = answer.get_by_test_id("answer-text").inner_text().splitlines()[0]
            assert not first.startswith("From [") or "docs/operations.md" in first, first
            assert chat.unexpected_errors() == []
        finally:
            agent.stop()
    finally:
        kb.stop()
