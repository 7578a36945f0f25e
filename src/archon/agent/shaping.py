"""What the agent adds to an answer, in one place: the lead quote before the model's text, the
remnant of an echoed excerpt header dropped at the agent's stop sequence, and the ``sources``
(each marked ``cited`` or not).

Preparation decides once, per request, what may be done (a ``Shaping``); ``shape_answer`` does
it to a whole answer and ``StreamShaper`` to a stream, event by event, with the same result:
the streamed deltas joined are the whole answer's content.

The text is touched only for a plain-text chat answer (``may_rewrite``): a client that asked for
JSON, tool calls, logprobs, several choices or its prompt echoed gets the model server's
content and tool calls as they came, with at most the ``sources`` key added (an extra field the
OpenAI SDKs keep in ``model_extra``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from archon.agent.generation import copies_from_prompt
from archon.agent.rag import mark_cited

_ECHO_START = re.compile(r"\[\d{0,3}$")  # what an echoed "[5] archon: " leaves before its stop


def may_rewrite(data: dict[str, Any]) -> bool:
    """True for a request whose answer is plain text for a person to read, the only kind the
    agent may add words to. Not JSON or tool calls (archon.agent.generation.copies_from_prompt:
    the content must parse, the calls are the model server's), nor with ``logprobs`` (they
    must match the text), ``n`` > 1, or ``echo``."""
    if copies_from_prompt(data):
        return False
    if data.get("logprobs") or data.get("top_logprobs") is not None:
        return False
    n = data.get("n")
    if n is not None and n != 1:
        return False
    return not data.get("echo")


@dataclass(frozen=True)
class Shaping:
    """What may be added to one answer; decided in preparation (archon.agent.preparation)."""

    list_sources: bool = False  # add ``sources`` (retrieval ran, found something or not)
    sources: list[dict[str, Any]] = field(default_factory=list)
    lead: str | None = None  # put before each choice's content (archon.agent.rag.lead_quote)
    echo_stops: bool = False  # the agent set stop sequences (archon.agent.rag.echo_stops)

    @property
    def active(self) -> bool:
        """False: the answer goes to the client exactly as the model server sent it."""
        return self.list_sources or self.rewrites

    @property
    def rewrites(self) -> bool:
        return self.lead is not None or self.echo_stops


NOTHING = Shaping()


def shape_text(content: str, finish_reason: Any, shaping: Shaping) -> str:
    """One choice's whole content as the client gets it."""
    if shaping.echo_stops and finish_reason == "stop":
        content = _ECHO_START.sub("", content)
    if shaping.lead is not None:
        content = shaping.lead + content
    return content


def shape_answer(data: dict[str, Any], shaping: Shaping) -> dict[str, Any]:
    """A whole chat completion shaped in place (and returned)."""
    answer = []
    for choice in data.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if shaping.rewrites:
            shaped = shape_text(str(content or ""), choice.get("finish_reason"), shaping)
            if shaped != (content or ""):
                message["content"] = content = shaped
        answer.append(str(content or ""))
    if shaping.list_sources:
        data["sources"] = mark_cited(shaping.sources, "".join(answer))
    return data


class StreamShaper:
    """Shapes a chat stream's events as they pass (``feed``), with the same result as
    ``shape_answer``: the lead before each choice's first delta, a trailing ``[`` or ``[5``
    held until the next delta shows whether it was a citation or an echoed header's start, and
    ``sources`` on the last event: the one with the finish_reason, or with ``include_usage``
    the usage chunk after it; ``closing`` gives an event for them if neither came."""

    def __init__(self, shaping: Shaping, include_usage: bool):
        self.shaping = shaping
        self.include_usage = include_usage
        self.attached = False  # the sources went out
        self._answer: list[str] = []
        self._led: set[Any] = set()  # the choices whose text already starts with the lead
        self._held: dict[Any, str] = {}  # per choice, a "[5" that may start an echo
        self._template: dict[str, Any] = {}

    def feed(self, event: dict[str, Any]) -> bool:
        """Shape one parsed event in place; True if it changed."""
        if self.attached or "error" in event:
            return False
        self._template = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
        choices = [c for c in event.get("choices") or [] if isinstance(c, dict)]
        changed = False
        for choice in choices:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if self.shaping.rewrites:
                changed |= self._rewrite(choice, delta)
            if delta.get("content"):
                self._answer.append(str(delta["content"]))
        last = (
            not choices and event.get("usage") is not None
            if self.include_usage
            else any(c.get("finish_reason") for c in choices)
        )
        if last and self.shaping.list_sources:
            event["sources"] = mark_cited(self.shaping.sources, "".join(self._answer))
            self.attached = changed = True
        return changed

    def closing(self) -> dict[str, Any] | None:
        """The event to send before [DONE] when no event carried the sources."""
        if self.attached or not self.shaping.list_sources:
            return None
        self.attached = True
        sources = mark_cited(self.shaping.sources, "".join(self._answer))
        return {**self._template, "choices": [], "sources": sources}

    def _rewrite(self, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        index = choice.get("index", 0)
        original = delta.get("content")
        content = str(original or "")
        if self.shaping.echo_stops:
            content = self._held.pop(index, "") + content
            finish = choice.get("finish_reason")
            match = _ECHO_START.search(content)
            if match and finish is None:
                self._held[index] = match.group()
                content = content[: match.start()]
            elif match and finish == "stop":
                content = content[: match.start()]
        if self.shaping.lead is not None and index not in self._led:
            self._led.add(index)
            content = self.shaping.lead + content
        if content == (original or ""):
            return False
        delta["content"] = content
        return True
