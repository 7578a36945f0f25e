"""The generic tool answer (tool_calls.py) read as it is generated, as OpenAI's message fields.

The model writes ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}`` or
``{"response": "..."}``, one piece at a time. The reader turns each piece into the chat deltas
OpenAI and vLLM stream: a tool call's first delta carries its ``index``, ``id``, ``type``,
``function.name`` and ``arguments: ""``; later ones carry fragments of ``function.arguments``,
the arguments exactly as the model writes them; the text of ``response`` goes out as ``content``
deltas, unescaped. Whole answers are read by the same code, so a streamed answer's deltas add up
to the non-streamed message.

An answer cut short (``max_tokens``, a stop string) never shows the wrapper: ``content`` is the
``response`` text decoded so far, and a cut tool call is reported as far as it got (its
arguments an unfinished JSON text), as OpenAI does with ``finish_reason: "length"``.

jiter (pydantic's JSON parser, which the openai SDK uses for the same job) decodes the partial
``response`` string. What no partial parser gives is *where* a value starts and ends in the text,
which raw argument fragments need; ``_Scanner`` follows just enough of JSON's syntax (strings,
escapes, nesting) for that, on output the grammar has already made valid JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import jiter

Path = tuple[str | int, ...]

# Output paths the reader looks at: the wrapper, the answer text, each call, its name and arguments.
_DEEPEST = 3
_SCALAR_CHARS = frozenset("0123456789+-.eEtrufalsn")
# The end of an unfinished string that waits for its next piece before it is decoded: a lone
# backslash, a \u escape missing hex digits, or a high surrogate whose low half has not come
# (alone it would decode to a different character). Recent jiter holds these back itself
# (jiter#208); older releases, which other installs may have, raise or decode them alone.
_UNFINISHED_ESCAPE = re.compile(
    r"(?:^|[^\\])(?:\\\\)*"  # an even run of backslashes: whole escapes
    r"(\\(?:u[dD][89abAB][0-9a-fA-F]{2}(?:\\(?:u[0-9a-fA-F]{0,3})?)?|u[0-9a-fA-F]{0,3})?)$"
)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Frame:
    is_object: bool
    key: str | None = None
    index: int = 0
    expect_key: bool = False


class _Scanner:
    """Where the JSON values up to ``_DEEPEST`` levels down start and end, as text arrives."""

    def __init__(self) -> None:
        self.text = ""
        self.open: dict[Path, int] = {}  # values begun and not yet ended: their start
        self.closed: dict[Path, tuple[int, int]] = {}  # values ended: [start, end)
        self._stack: list[_Frame] = []
        self._string_start: int | None = None
        self._string_is_key = False
        self._escaped = False
        self._scalar_start: int | None = None

    def feed(self, piece: str) -> None:
        start = len(self.text)
        self.text += piece
        for i in range(start, len(self.text)):
            self._step(i, self.text[i])

    def span(self, path: Path) -> tuple[int, int, bool] | None:
        """(start, end so far, ended) of the value at ``path``, or None before it begins."""
        if path in self.closed:
            begin, end = self.closed[path]
            return begin, end, True
        if path in self.open:
            return self.open[path], len(self.text), False
        return None

    def _path(self) -> Path:
        return tuple((f.key or "") if f.is_object else f.index for f in self._stack)

    def _begin(self, i: int) -> None:
        path = self._path()
        if len(path) <= _DEEPEST:
            self.open[path] = i

    def _end(self, end: int) -> None:
        path = self._path()
        if path in self.open:
            self.closed[path] = (self.open.pop(path), end)

    def _step(self, i: int, c: str) -> None:
        if self._string_start is not None:
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                if self._string_is_key:
                    self._stack[-1].key = json.loads(self.text[self._string_start : i + 1])
                    self._stack[-1].expect_key = False
                else:
                    self._end(i + 1)
                self._string_start = None
            return
        if self._scalar_start is not None and c not in _SCALAR_CHARS:
            self._end(i)
            self._scalar_start = None
        if c in " \t\r\n:":
            return
        top = self._stack[-1] if self._stack else None
        if c == '"':
            self._string_start = i
            self._string_is_key = top is not None and top.is_object and top.expect_key
            if not self._string_is_key:
                self._begin(i)
        elif c in "{[":
            self._begin(i)
            self._stack.append(_Frame(is_object=c == "{", expect_key=c == "{"))
        elif c in "}]":
            if self._stack:
                self._stack.pop()
                self._end(i + 1)
        elif c == ",":
            if top is not None and top.is_object:
                top.expect_key, top.key = True, None
            elif top is not None:
                top.index += 1
        elif c in _SCALAR_CHARS and self._scalar_start is None:
            self._scalar_start = i
            self._begin(i)


def _decode_partial_string(raw: str) -> str:
    """The text of a JSON string's unfinished body ``raw`` (no quotes), as far as it is whole:
    every result is a prefix of the final text."""
    unfinished = _UNFINISHED_ESCAPE.search(raw)
    if unfinished and unfinished.group(1):
        raw = raw[: unfinished.start(1)]
    decoded = jiter.from_json(('"' + raw).encode(), partial_mode="trailing-strings")
    return decoded if isinstance(decoded, str) else ""


@dataclass
class _Call:
    id: str
    name: str
    arguments_sent: int = 0  # characters of the arguments text already sent


@dataclass
class ToolAnswer:
    """A tool-enabled answer as OpenAI's message fields."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    complete: bool  # the whole wrapper was written: the answer was not cut short

    def finish_reason(self, engine_finish: str) -> str:
        """``tool_calls`` for whole calls; a cut answer keeps the engine's reason (``length``)."""
        return "tool_calls" if self.tool_calls and self.complete else engine_finish


def read_answer(text: str) -> ToolAnswer:
    """A whole (or cut) generic tool answer as message fields."""
    reader = ToolAnswerReader()
    reader.feed(text)
    return reader.answer()


@dataclass
class ToolAnswerReader:
    """Reads one choice's generic tool answer, piece by piece (``feed``) or whole."""

    _scan: _Scanner = field(default_factory=_Scanner)
    _calls: list[_Call] = field(default_factory=list)
    _content_sent: int = 0
    _unrecognised_sent: bool = False

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """The chat deltas (``{"content": ...}`` or ``{"tool_calls": [...]}``) ``piece`` adds."""
        self._scan.feed(piece)
        deltas: list[dict[str, Any]] = []
        content = self._content()
        if content is not None and len(content) > self._content_sent:
            deltas.append({"content": content[self._content_sent :]})
            self._content_sent = len(content)
        for index in range(self._call_count()):
            if index == len(self._calls):
                name = self._name(index)
                if name is None:
                    break  # a call's header goes out whole, after its name is written
                self._calls.append(_Call(new_call_id(), name))
                deltas.append(
                    _call_delta(
                        index,
                        {"id": self._calls[index].id, "type": "function"},
                        {"name": name, "arguments": ""},
                    )
                )
            call = self._calls[index]
            arguments = self._arguments(index)
            if len(arguments) > call.arguments_sent:
                fragment = arguments[call.arguments_sent :]
                call.arguments_sent = len(arguments)
                deltas.append(_call_delta(index, {}, {"arguments": fragment}))
        if self._unrecognised() and not self._unrecognised_sent:
            self._unrecognised_sent = True
            deltas.append({"content": self._scan.text})
        return deltas

    def answer(self) -> ToolAnswer:
        """Everything read so far as message fields (a stream has sent all of it already)."""
        self.feed("")
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": self._arguments(index)},
            }
            for index, call in enumerate(self._calls)
        ]
        content = self._scan.text if self._unrecognised() else self._content()
        return ToolAnswer(content, calls or None, complete=() in self._scan.closed)

    def _unrecognised(self) -> bool:
        """A whole answer in neither form (the grammar rules it out): passed on as text."""
        return () in self._scan.closed and not self._calls and self._content() is None

    def _content(self) -> str | None:
        span = self._scan.span(("response",))
        if span is None or self._scan.text[span[0]] != '"':
            return None
        begin, end, ended = span
        raw = self._scan.text[begin + 1 : end - 1 if ended else end]
        if ended:
            return str(json.loads(f'"{raw}"', strict=False))
        return _decode_partial_string(raw)

    def _call_count(self) -> int:
        count = 0
        while self._scan.span(("tool_calls", count)) is not None:
            count += 1
        return count

    def _name(self, index: int) -> str | None:
        span = self._scan.span(("tool_calls", index, "name"))
        if span is None or not span[2]:
            return None
        name = json.loads(self._scan.text[span[0] : span[1]])
        return name if isinstance(name, str) else str(name)

    def _arguments(self, index: int) -> str:
        span = self._scan.span(("tool_calls", index, "arguments"))
        return "" if span is None else self._scan.text[span[0] : span[1]]


def _call_delta(index: int, fields: dict[str, Any], function: dict[str, Any]) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields, "function": function}]}
