"""The agent's answer shaping (archon.agent.shaping): when it may touch the text, and that a
whole answer and the same answer streamed come out the same."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from archon.agent.shaping import NOTHING, Shaping, StreamShaper, may_rewrite, shape_answer

SOURCES = [
    {"index": 1, "source": "archon", "path": "docs/a.md", "_excerpt": "Run `archon kb sync`."},
    {"index": 2, "source": "archon", "path": "docs/b.md", "_excerpt": "Unrelated text here."},
]
LEAD = "From [1] docs/a.md, line 3:\n\nRun `archon kb sync`.\n\n"


def streamed(parts: list[tuple[str, str | None]], shaping: Shaping, usage: bool = False) -> Any:
    """Feed one choice's deltas through a StreamShaper: (the text, the events sent)."""
    shaper = StreamShaper(shaping, include_usage=usage)
    events = [{"id": "c1", "object": "chat.completion.chunk", "choices": []}]
    events[0]["choices"] = [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    for content, finish in parts:
        choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        events.append({"id": "c1", "object": "chat.completion.chunk", "choices": [choice]})
    if usage:
        events.append({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3}})
    for event in events:
        shaper.feed(event)
    closing = shaper.closing()
    if closing is not None:
        events.append(closing)
    text = "".join(
        str(c["delta"].get("content") or "") for e in events for c in e.get("choices", [])
    )
    return text, events


def whole(content: str, finish: str, shaping: Shaping) -> dict[str, Any]:
    data = {
        "id": "c1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
    }
    return shape_answer(data, shaping)


@pytest.mark.parametrize(
    "body",
    [
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
        {"logprobs": True},
        {"logprobs": False, "top_logprobs": 0},
        {"n": 2},
        {"echo": True},
    ],
)
def test_no_words_are_added_to_json_tools_logprobs_or_several_choices(body: Any) -> None:
    assert may_rewrite({"messages": [], **body}) is False


def test_plain_text_answers_may_be_shaped() -> None:
    assert may_rewrite({"messages": []})
    assert may_rewrite({"response_format": {"type": "text"}, "n": 1, "logprobs": False})
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert may_rewrite({"tools": tools, "tool_choice": "none"})


def test_a_citation_split_across_deltas_comes_through_whole() -> None:
    stops = Shaping(echo_stops=True)
    assert streamed([("Run it [", None), ("1] now.", None), ("", "stop")], stops)[0] == (
        "Run it [1] now."
    )
    assert streamed([("See [2", None), ("].", "length")], stops)[0] == "See [2]."


def test_the_start_of_an_echoed_header_is_dropped_at_the_stop() -> None:
    # "[5] archon: docs/..." ended by the stop "] archon: ": the model server sent "[5".
    stops = Shaping(echo_stops=True)
    parts = [("Use the command.\n\n[", None), ("5", None), ("", "stop")]
    assert streamed(parts, stops)[0] == "Use the command.\n\n"
    assert streamed([("[5", "stop")], stops)[0] == ""
    # Cut by the length limit instead, the text is the model's: kept.
    assert streamed([("Try [", None), ("3", "length")], stops)[0] == "Try [3"
    assert whole("Run `archon kb sync`.\n\n[5", "stop", stops)["choices"][0]["message"][
        "content"
    ] == ("Run `archon kb sync`.\n\n")
    assert whole("Try [3", "length", stops)["choices"][0]["message"]["content"] == "Try [3"


@pytest.mark.parametrize(
    "parts",
    [
        [("It is ", None), ("done [", None), ("1].", None), ("", "stop")],
        [("Copy: ", None), ("\n\n[", None), ("2", None), ("", "stop")],
        [("Cut ", None), ("here [", "length")],
        [("", "stop")],
    ],
)
@pytest.mark.parametrize("usage", [False, True])
def test_a_stream_and_a_whole_answer_are_shaped_the_same(
    parts: list[tuple[str, str | None]], usage: bool
) -> None:
    shaping = Shaping(True, SOURCES, LEAD, echo_stops=True)
    text, events = streamed(parts, shaping, usage)
    answer = whole("".join(p for p, _ in parts), str(parts[-1][1]), shaping)
    assert text == answer["choices"][0]["message"]["content"]
    assert text.startswith(LEAD)
    carrying = [e for e in events if "sources" in e]
    assert len(carrying) == 1  # once, on the last event
    assert carrying[0] is events[-1]
    assert carrying[0]["sources"] == answer["sources"]
    assert [s["cited"] for s in answer["sources"]] == [True, False]  # the lead quotes [1]
    assert all("_excerpt" not in s for s in answer["sources"])


def test_sources_only_leaves_the_content_and_tool_calls_as_they_came() -> None:
    shaping = Shaping(True, SOURCES)
    message = {
        "role": "assistant",
        "content": '{"name": "Alice", "age": 31} [5',
        "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f"}}],
    }
    data = {"choices": [{"index": 0, "message": copy.deepcopy(message), "finish_reason": "stop"}]}
    shaped = shape_answer(data, shaping)
    assert shaped["choices"][0]["message"] == message
    assert [s["index"] for s in shaped["sources"]] == [1, 2]
    text, events = streamed([('{"a": ', None), ("1} [5", "stop")], shaping)
    assert text == '{"a": 1} [5'
    assert "sources" in events[-1]


def test_nothing_to_add_changes_nothing() -> None:
    assert not NOTHING.active
    data = {"choices": [{"index": 0, "message": {"content": "Hi [5"}, "finish_reason": "stop"}]}
    assert shape_answer(copy.deepcopy(data), NOTHING) == data
    shaper = StreamShaper(NOTHING, include_usage=False)
    event = {"choices": [{"index": 0, "delta": {"content": "Hi [5"}, "finish_reason": "stop"}]}
    assert shaper.feed(event) is False and shaper.closing() is None


def test_the_sources_come_before_done_when_no_event_carried_them() -> None:
    shaper = StreamShaper(Shaping(True, SOURCES), include_usage=True)
    shaper.feed({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "x"}}]})
    closing = shaper.closing()
    assert closing is not None
    assert closing["id"] == "c1" and closing["choices"] == [] and len(closing["sources"]) == 2
    assert shaper.closing() is None
