"""Retrieval-augmented prompts: what to ask the knowledge base, and how to show the model.

The retrieved chunks go into the last user turn as numbered blocks, before the question; the
model is asked to cite them as ``[n]``, and the response lists them as ``sources`` (cited when
named or quoted) so a client can link the citations.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from archon.agent.highlights import Passage, best_passage, window
from archon.errors import InvalidRequestError
from archon.kb.bm25 import terms
from archon.kb.query import Filters
from archon.markdown_blocks import heading_or_fence_lines
from archon.openai.messages import content_text
from archon.service import Lifecycle

log = logging.getLogger("archon.agent")

Outcome = Literal["used", "none", "degraded", "off"]

# The prompt layout that the bundled 135M model followed best on the tuning half of
# benchmarks/data/answers.jsonl (docs/benchmarks.md, "Answers"): a one-line role in the system
# message; the numbered excerpts, the rules and then the question in the last user turn, where
# a small model attends most (fact recall 9% -> 13%, answers that cite 4% -> 52%, against the
# same excerpts in the system message, with or without a worked example).
PREAMBLE = (
    "You answer questions about software from its documentation. "
    "Use only the documentation excerpts below."
)
REFUSAL = "The documentation does not cover this."
RULES = (
    "Rules:\n"
    "- Answer in a few short sentences, from the excerpts only.\n"
    "- When an excerpt gives a command, setting or flag, quote it exactly in backticks.\n"
    "- Cite the excerpt you used by its number in square brackets, like [1].\n"
    f'- If the excerpts do not answer the question, say: "{REFUSAL}"'
)
HEADING_SEPARATOR = " \u203a "  # a single right-pointing angle quote
_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")  # [2] or [1, 3]
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_WORD = re.compile(r"\w+")
QUOTE_WORDS = 8  # this many words in a row, the same as the excerpt's, are a quote
EXCERPT = "_excerpt"  # a source's text in the prompt; never sent to the client
EXCERPT_LINE = "_excerpt_line"  # the file line it starts on; likewise
MIN_EXCERPT = 200  # characters: a shorter piece of a chunk helps less than it confuses
QUOTE_CHARS = 400  # the lead quote's length at most (tuning half: 300 -> 400, facts 39% -> 48%)
SNIPPET_CHARS = 200  # the sources' "snippet": what a client shows of each chunk


class ArchonOptions(BaseModel):
    """Archon's per-request options: the ``archon`` key of the body (``extra_body``)."""

    model_config = ConfigDict(extra="forbid")
    rag: bool = True
    top_k: int | None = Field(None, ge=1, le=50)
    filters: Filters | None = None

    @classmethod
    def parse(cls, value: Any) -> ArchonOptions:
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise InvalidRequestError("'archon' must be an object", param="archon")
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(["archon", *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                message = (
                    f"Unrecognized Archon option: {param} (known: rag, top_k, "
                    "filters.source, filters.path_prefix)"
                )
            else:
                message = f"Invalid value for '{param}': {err['msg']}"
            raise InvalidRequestError(message, param=param) from None


def message_text(message: Any) -> str:
    """The text of a chat message (archon.openai.messages: the one rule for parts)."""
    return content_text(message.get("content")) if isinstance(message, dict) else ""


def retrieval_query(messages: list[Any], history_turns: int, max_chars: int = 1000) -> str:
    """The last user turn, preceded by up to ``history_turns`` earlier ones (follow-ups such as
    "and how do I roll it back?" need the earlier question to find anything)."""
    turns = [
        text
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user" and (text := message_text(m).strip())
    ]
    if not turns:
        return ""
    picked = turns[-(history_turns + 1) :]
    query = "\n".join(picked)
    while len(query) > max_chars and len(picked) > 1:
        picked = picked[1:]  # drop the oldest first: the last question matters most
        query = "\n".join(picked)
    return query[-max_chars:]


def conversation_key(model: Any, messages: list[Any]) -> str | None:
    """Identifies a conversation by its opening: the system prompt and the first user turn,
    the same in every later turn of it."""
    system = next(
        (m for m in messages[:1] if isinstance(m, dict) and m.get("role") == "system"), None
    )
    first_user = next(
        (m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None
    )
    if first_user is None:
        return None
    return f"{model}\x00{message_text(system)[:500]}\x00{message_text(first_user)[:500]}"


def source_entry(n: int, chunk: dict[str, Any]) -> dict[str, Any]:
    heading_path = chunk.get("heading_path") or []
    return {
        "index": n,
        "source": chunk.get("source"),
        "path": chunk.get("path"),
        "title": HEADING_SEPARATOR.join(heading_path) if heading_path else chunk.get("path"),
        "heading_path": heading_path,
        "url": chunk.get("url"),
        "start_line": chunk.get("start_line"),
        "end_line": chunk.get("end_line"),
        "score": chunk.get("score"),
        # A code chunk: shown as code, with its language, symbol and line range.
        **{k: chunk[k] for k in ("language", "symbol", "symbol_kind") if chunk.get(k)},
    }


def code_snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The first whole lines of a code excerpt within ``limit``, indentation kept."""
    lines = str(text or "").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    out: list[str] = []
    for line in lines:
        if out and sum(len(x) + 1 for x in out) + len(line) > limit:
            return "\n".join(out) + "\n…"
        out.append(line.rstrip())
    return "\n".join(out)


def snippet(text: Any, limit: int = SNIPPET_CHARS) -> str:
    """The start of a chunk's text, whitespace collapsed, cut at a word within ``limit``.
    Heading lines are left out (the heading trail shows them), and code fences (a flat
    snippet cannot show a code block; its lines stay)."""
    lines = str(text or "").splitlines()
    syntax = heading_or_fence_lines(str(text or ""))  # CommonMark's reading (markdown-it-py)
    prose = [line for n, line in enumerate(lines) if n not in syntax]
    flat = " ".join(" ".join(prose or lines).split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] if " " in flat[:limit] else flat[:limit]
    return cut.rstrip(" ,;:") + " …"


def augment(
    messages: list[Any], chunks: list[dict[str, Any]], max_chars: int, query: str = ""
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Messages with the context block added, and the sources actually put in it.

    Each chunk gets an equal share of ``max_chars``; a longer one is cut to the window around
    its passage that best matches ``query`` (archon.agent.highlights), so every retrieved
    source is shown, not only the first long ones. A share a chunk leaves unused goes to the
    chunks after it."""
    blocks: list[str] = []
    sources: list[dict[str, Any]] = []
    usable = [(c, t) for c in chunks if (t := str(c.get("text") or "").strip())]
    while len(usable) > 1 and max_chars // len(usable) < MIN_EXCERPT + 80:
        usable.pop()  # fewer excerpts rather than slivers (80: about a header's length)
    room = max_chars
    for left, (chunk, text) in enumerate(usable):
        entry = source_entry(len(sources) + 1, chunk)
        header = f"[{entry['index']}] {entry['source']}: {entry['path']} — {entry['title']}\n"
        share = room // (len(usable) - left) - len(header) - 2
        if share < MIN_EXCERPT:
            break  # a sliver of a chunk helps less than it confuses
        excerpt, skipped = window(query, text, share)
        blocks.append(header + excerpt)
        entry[EXCERPT] = excerpt  # what the model read: a quote of it marks the source cited
        # The part that matched, not the chunk's start; code keeps its lines.
        entry["snippet"] = code_snippet(excerpt) if entry.get("language") else snippet(excerpt)
        start = chunk.get("start_line")
        entry[EXCERPT_LINE] = start + skipped if isinstance(start, int) else None
        sources.append(entry)
        room -= len(header) + len(excerpt) + 2
    if not sources:
        return messages, []
    last = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
        default=None,
    )
    out = [
        {**m, "content": without_lead_quote(m["content"])}
        if i < (last or 0)
        and isinstance(m, dict)
        and m.get("role") == "assistant"
        and isinstance(m.get("content"), str)
        else m
        for i, m in enumerate(messages)
    ]
    if last is not None:
        question = message_text(out[last]).strip()
        context = "Documentation excerpts:\n\n" + "\n\n".join(blocks) + "\n\n" + RULES
        out[last] = {**out[last], "content": f"{context}\n\nQuestion: {question}"}
    first = out[0] if out else None
    if isinstance(first, dict) and first.get("role") == "system":
        # One system message: many chat templates accept only one, and only first.
        out[0] = {**first, "content": message_text(first).rstrip() + "\n\n" + PREAMBLE}
        return out, sources
    return [{"role": "system", "content": PREAMBLE}, *out], sources


def lead_passage(query: str, sources: list[dict[str, Any]]) -> Passage | None:
    """The passage of the excerpts that best matches the question (None: none shares a word
    with it). Picked among the excerpts, not the whole chunks: on the tuning half that found
    the fact 9 times in 23 against 7."""
    excerpts = [str(s.get(EXCERPT) or "") for s in sources]
    return best_passage(query, excerpts, QUOTE_CHARS)


MIN_ASKED = 3  # a question of fewer words (stop words left out) is short: see relevance()
MIN_HELD = 2  # a passage holding fewer of the question's words is not about it


def relevance(question: str, passage: Passage | None) -> float:
    """How much of the question the best passage holds: the share of the question's distinct
    words (stop words left out, archon.kb.bm25.terms, a plural as its singular) found in it.
    0 for a passage holding fewer than MIN_HELD of them, or none. A short question (fewer than
    MIN_ASKED words) counts only when the passage holds every one of its words: "What does
    histogram_quantile do?" is about the passage that names it, while "Thanks!", "Say hi." or
    "Good morning!" are not about one that holds only "say" or "good" (some passage of a large
    corpus holds one word of any greeting). Not the passage scorer's IDF weights: those are
    relative to the retrieved passages, so a word every excerpt shares, the question's topic,
    weighs almost nothing there (docs/benchmarks.md, "Relevance")."""
    asked = _asked(question)
    if passage is None or not asked:
        return 0.0
    held = asked & _words(passage.text)
    if len(asked) < MIN_ASKED:
        return 1.0 if held == asked else 0.0
    return len(held) / len(asked) if len(held) >= MIN_HELD else 0.0


QUOTE_HELD = 3  # a lead quote holds this many of the question's words, or QUOTE_SHARE of them
QUOTE_SHARE = 0.6


def quotable(question: str, passage: Passage | None) -> bool:
    """Whether the best passage holds enough of the question to be quoted as the answer's
    start: QUOTE_HELD of its words, or QUOTE_SHARE of a longer question's, or every word of a
    short one. Stricter than the context's bar (min_relevance): excerpts that share two common
    words with the question ("model", "back") cost little in the prompt, but quoted they read
    as the answer."""
    asked = _asked(question)
    if passage is None or not asked:
        return False
    held = asked & _words(passage.text)
    if len(asked) < MIN_ASKED:
        return held == asked
    return len(held) >= QUOTE_HELD or len(held) / len(asked) >= QUOTE_SHARE


# Words of greetings and chit-chat: they name no topic, and a large corpus holds each of them
# somewhere ("hello world", "say", "good"), so a short greeting would find a passage that holds
# all its words. Left out of what a question asks (not of the stop words: BM25 keeps them).
_CHAT_WORDS = frozenset(
    [
        "hi",
        "hello",
        "hey",
        "hiya",
        "thank",
        "thanks",
        "cheer",
        "bye",
        "goodbye",
        "please",
        "ok",
        "okay",
        "yes",
        "no",
        "sure",
        "great",
        "cool",
        "nice",
        "good",
        "morning",
        "afternoon",
        "evening",
        "night",
        "today",
        "tell",
        "say",
        "joke",
        "how",
        "you",
        "who",
        "doing",
        "fine",
        "welcome",
        "sorry",
        "me",
    ]
)


def _asked(question: str) -> set[str]:
    return _words(question) - _CHAT_WORDS


def _words(text: str) -> set[str]:
    # A plural's "s" dropped, so that "probes" asks for "probe" (the KB's terms keep it).
    return {t[:-1] if len(t) > 3 and t.endswith("s") else t for t in terms(text)}


def lead_quote(
    query: str, sources: list[dict[str, Any]], best: Passage | None = None
) -> str | None:
    """The best passage (``lead_passage``, given or found) verbatim, with its source and line:
    what an answer from a model too small to quote the docs itself starts with."""
    best = best if best is not None else lead_passage(query, sources)
    if best is None:
        return None
    entry = sources[best.chunk]
    where = str(entry.get("path") or entry.get("source") or "")
    line = entry.get(EXCERPT_LINE)
    if isinstance(line, int):
        where += f", line {line + best.first_line}"
    return f"From [{entry['index']}] {where}:\n\n{best.text}\n\n"


LEAD_HEADER = re.compile(r"\AFrom \[\d+\] [^\n]*:\n\n")


def without_lead_quote(content: str) -> str:
    """An earlier answer without the header of the lead quote the agent put before it
    (``lead_quote``'s "From [2] docs/x.md, line 44:"): its number names that turn's excerpts,
    not this one's, and a small model shown it copies the header with a source it makes up.
    The quoted text stays: it is what that answer said (and where it ends is not marked)."""
    return LEAD_HEADER.sub("", content, count=1)


def echo_stops(sources: list[dict[str, Any]]) -> list[str]:
    """Stop sequences that end an answer where the model starts copying an excerpt's header
    (``[n] source: path — title``): one per source name, then capitalised as the model also
    writes them ("[2] Archon: README.md"), at most OpenAI's four."""
    names = [str(s.get("source")) for s in sources if s.get("source")]
    stops = dict.fromkeys([f"] {n}: " for n in names] + [f"] {n.capitalize()}: " for n in names])
    return list(stops)[:4]


def mark_cited(sources: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    """The sources as a client gets them, each ``cited`` when the answer names it as ``[n]`` or
    quotes it: a code span of the answer found in its excerpt, or a run of QUOTE_WORDS words.
    Small models copy the command they were given far more often than they write ``[n]``."""
    numbered = {int(n) for group in _CITATION.findall(answer) for n in group.split(",")}
    spans = [span.strip() for span in _CODE_SPAN.findall(answer) if len(span.strip()) >= 3]
    runs = _word_runs(answer)
    out = []
    for entry in sources:
        excerpt = entry.get(EXCERPT) or ""
        quoted = any(span in excerpt for span in spans) or bool(runs & _word_runs(excerpt))
        public = {k: v for k, v in entry.items() if not k.startswith("_")}
        public["cited"] = entry["index"] in numbered or quoted
        out.append(public)
    return out


def _word_runs(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + QUOTE_WORDS]) for i in range(len(words) - QUOTE_WORDS + 1)}


class RetrievalError(Exception):
    """The knowledge base could not answer in time; the agent answers without context."""


@dataclass
class KnowledgeBaseClient:
    url: str
    timeout: float
    http: Lifecycle[aiohttp.ClientSession]  # the agent's session, open once it serves
    retry_after: float = 5.0  # after a failure, answer without context this long, then retry
    up: bool | None = None  # last seen state, for /ready
    error: str | None = None
    failed_at: float = 0.0
    token: str | None = None  # the knowledge base's service token (archon.kb.access)

    async def query(
        self, text: str, top_k: int, filters: Filters | None, groups: list[str] | None = None
    ) -> tuple[list[dict[str, Any]], float]:
        """The chunks for ``text``, searched only among the sources ``groups`` may read (the
        knowledge base filters inside its search; None: every source)."""
        if self.up is False and time.monotonic() - self.failed_at < self.retry_after:
            # A knowledge base that just failed would make every question wait for kb_timeout.
            raise RetrievalError(self.error)
        body: dict[str, Any] = {"query": text[:4000], "top_k": top_k}
        if filters is not None:
            body["filters"] = filters.model_dump(exclude_none=True)
        if groups is not None:
            body["groups"] = groups
        headers = {"authorization": f"Bearer {self.token}"} if self.token else None
        began = time.perf_counter()
        try:
            async with self._session().post(
                self.url + "/query",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:300].strip()
                    raise RetrievalError(f"the knowledge base answered {resp.status}: {detail}")
                data = await resp.json(content_type=None)
        except TimeoutError:
            self._down(f"no answer within kb_timeout ({self.timeout:g}s)")
            raise RetrievalError(self.error) from None
        except aiohttp.ClientError as exc:
            self._down(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise RetrievalError(self.error) from None
        except RetrievalError as exc:
            self._down(str(exc))
            raise
        self._up()
        chunks = data.get("chunks") if isinstance(data, dict) else None
        return (chunks if isinstance(chunks, list) else []), time.perf_counter() - began

    async def check(self) -> None:
        try:
            async with self._session().get(
                self.url + "/ready", timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                if resp.status == 200:
                    self._up()
                else:
                    self._down(f"/ready answered {resp.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._down(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _session(self) -> aiohttp.ClientSession:
        return self.http.require("the agent is starting", "agent_starting")

    def _up(self) -> None:
        if self.up is False:
            log.info("knowledge base %s is back: answers use it again", self.url)
        self.up, self.error = True, None

    def _down(self, error: str) -> None:
        if self.up is not False:
            log.warning(
                "knowledge base %s unavailable, answering without context: %s", self.url, error
            )
        self.up, self.error, self.failed_at = False, error, time.monotonic()
