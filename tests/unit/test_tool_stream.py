"""The generic tool answer read piece by piece (tool_stream.py): the deltas a stream sends and
the message a whole answer becomes, for whole and cut answers, escapes and multi-byte text.

The texts are in the shape the grammar lets the model write (any JSON whitespace between
tokens); the pieces are split at every character and at random places, as tokens split them.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from archon.modelserver.tool_stream import ToolAnswerReader, read_answer

TWO_CALLS = (
    '{ "tool_calls": [ {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},'
    '\n {"name": "get_time", "arguments": {"zone": "CET"} } ] }'
)
TRICKY_ARGUMENTS = (
    '{"tool_calls": [{"name": "search", "arguments": {"q": "a}]\\"{[, \\\\", "n": -1.5e3, '
    '"ok": true, "none": null, "list": [1, {"x": [2, 3]}], "empty": {}}}]}'
)
RESPONSE = '{"response": "Caf\\u00e9 \\"ok\\"\\n\\ud83d\\ude00 na\\u00efve \\\\ end ✓ 日本"}'


def _pieces(text: str, how: str) -> list[str]:
    if how == "chars":
        return list(text)
    if how == "whole":
        return [text]
    rng = random.Random(how)
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, len(text) // 4)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def _stream(text: str, how: str) -> list[dict[str, Any]]:
    reader = ToolAnswerReader()
    deltas = [d for piece in _pieces(text, how) for d in reader.feed(piece)]
    return deltas


def _accumulate(deltas: list[dict[str, Any]]) -> tuple[str | None, dict[int, dict[str, Any]]]:
    """What a client builds from the deltas, as the openai SDK's stream helper does."""
    content: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        if "content" in delta:
            content = (content or "") + delta["content"]
        for call in delta.get("tool_calls", []):
            if call["index"] not in calls:
                assert set(call) == {"index", "id", "type", "function"}
                assert call["type"] == "function" and call["id"].startswith("call_")
                assert call["function"]["arguments"] == "" and call["function"]["name"]
                calls[call["index"]] = {"id": call["id"], "name": call["function"]["name"]}
                calls[call["index"]]["arguments"] = ""
            else:
                assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
                calls[call["index"]]["arguments"] += call["function"]["arguments"]
    return content, calls


HOWS = ["chars", "whole", "seed-1", "seed-2", "seed-3"]


@pytest.mark.parametrize("how", HOWS)
def test_tool_calls_stream_as_header_then_argument_fragments(how: str) -> None:
    deltas = _stream(TWO_CALLS, how)
    content, calls = _accumulate(deltas)
    assert content is None
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert calls[0]["arguments"] == '{"city": "Paris", "unit": "celsius"}'
    assert calls[1]["arguments"] == '{"zone": "CET"}'
    if how == "chars":
        fragments = [d for d in deltas if "arguments" in d["tool_calls"][0]["function"]]
        assert len(fragments) > 10  # streamed as written, not in one piece at the end
    whole = read_answer(TWO_CALLS)
    assert whole.complete and whole.content is None and whole.finish_reason("stop") == "tool_calls"
    assert [c["function"]["arguments"] for c in whole.tool_calls or []] == [
        calls[0]["arguments"],
        calls[1]["arguments"],
    ]


@pytest.mark.parametrize("how", HOWS)
def test_arguments_with_brackets_and_quotes_inside_strings(how: str) -> None:
    _, calls = _accumulate(_stream(TRICKY_ARGUMENTS, how))
    arguments = json.loads(calls[0]["arguments"])
    assert arguments == json.loads(TRICKY_ARGUMENTS)["tool_calls"][0]["arguments"]


@pytest.mark.parametrize("how", HOWS)
def test_response_text_streams_unescaped(how: str) -> None:
    deltas = _stream(RESPONSE, how)
    content, calls = _accumulate(deltas)
    expected = json.loads(RESPONSE)["response"]
    assert content == expected and not calls
    assert "\ufffd" not in content  # no half of a surrogate pair was decoded alone
    if how == "chars":
        assert len(deltas) > 10
        for i in range(1, len(deltas)):  # every step is a prefix of the final text
            assert expected.startswith("".join(d["content"] for d in deltas[:i]))
    answer = read_answer(RESPONSE)
    assert answer.content == expected and answer.tool_calls is None
    assert answer.finish_reason("stop") == "stop"


@pytest.mark.parametrize(
    ("cut", "content"),
    [
        ('{"response": "You\'re welcome, I', "You're welcome, I"),
        ('{"response": "a \\"quoted\\', 'a "quoted'),
        ('{"response": "caf\\u00', "caf"),
        ('{"response": "C:\\\\', "C:\\"),
        ('{"response": "C:\\\\\\', "C:\\"),
        ('{"response": "smile \\ud83d', "smile "),
        ('{"response": "smile \\ud83d\\ude', "smile "),
        ('{"response": "', ""),
        ('{"respo', None),
        ("", None),
    ],
)
def test_cut_response_is_the_text_so_far(cut: str, content: str | None) -> None:
    answer = read_answer(cut)
    assert answer.content == content and answer.tool_calls is None and not answer.complete
    assert answer.finish_reason("length") == "length"
    streamed, _ = _accumulate(_stream(cut, "chars"))
    assert (streamed or "") == (content or "")


def test_cut_tool_call_is_reported_as_far_as_it_got() -> None:
    cut = '{ "tool_calls": [{"name": "get_weather", "arguments": {"city": "Par'
    answer = read_answer(cut)
    assert answer.content is None and not answer.complete
    assert answer.finish_reason("length") == "length"
    assert answer.tool_calls is not None and len(answer.tool_calls) == 1
    function = answer.tool_calls[0]["function"]
    assert function == {"name": "get_weather", "arguments": '{"city": "Par'}
    _, calls = _accumulate(_stream(cut, "chars"))
    assert calls[0]["arguments"] == function["arguments"]


@pytest.mark.parametrize(
    "cut",
    ['{"tool_calls": [{"name": "get_w', '{"tool_calls": [', '{"tool_calls"', "{"],
)
def test_cut_before_a_call_has_its_name_shows_nothing(cut: str) -> None:
    answer = read_answer(cut)
    assert answer.content is None and answer.tool_calls is None
    assert _stream(cut, "chars") == []


def test_a_call_cut_after_its_name_has_empty_arguments() -> None:
    answer = read_answer('{"tool_calls": [{"name": "get_time", "argu')
    assert answer.tool_calls is not None
    assert answer.tool_calls[0]["function"] == {"name": "get_time", "arguments": ""}


def test_ids_are_the_same_in_the_stream_and_the_answer() -> None:
    reader = ToolAnswerReader()
    deltas = reader.feed(TWO_CALLS)
    answer = reader.answer()
    ids = [d["tool_calls"][0]["id"] for d in deltas if "id" in d["tool_calls"][0]]
    assert ids == [c["id"] for c in answer.tool_calls or []]
    assert len(set(ids)) == 2
