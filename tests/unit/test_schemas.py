from __future__ import annotations

import pytest
from pydantic import ValidationError

from archon.errors import InvalidRequestError
from archon.openai.schemas import ChatCompletionRequest, CompletionRequest

MSG = [{"role": "user", "content": "hi"}]


def test_text_parts_are_joined() -> None:
    req = ChatCompletionRequest(
        model="m",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],
    )
    assert req.messages[0].text(0) == "ab"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest(model="m", messages=MSG, temprature=0.2)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_known_but_unsupported_fields_name_their_param(extra: dict, param: str) -> None:
    req = ChatCompletionRequest(model="m", messages=MSG, **extra)
    with pytest.raises(InvalidRequestError) as info:
        req.check_supported()
    assert info.value.param == param


def test_accepted_defaults_pass() -> None:
    ChatCompletionRequest(
        model="m",
        messages=MSG,
        n=1,
        logprobs=False,
        tool_choice="none",
        response_format={"type": "text"},
        stream=True,
        stream_options={"include_usage": True},
    ).check_supported()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("abc", "abc"), (["abc"], "abc"), ([1, 2, 3], [1, 2, 3]), ([[4, 5]], [4, 5])],
)
def test_single_prompt_forms(prompt, expected) -> None:
    assert CompletionRequest(model="m", prompt=prompt).single_prompt() == expected


def test_completion_default_max_tokens_is_16() -> None:
    assert CompletionRequest(model="m", prompt="x").output_limit() == 16
    assert ChatCompletionRequest(model="m", messages=MSG).output_limit() is None
