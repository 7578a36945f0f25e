from __future__ import annotations

import pytest
from pydantic import ValidationError

from archon.errors import InvalidRequestError
from archon.modelserver.schemas import ChatCompletionRequest, CompletionRequest

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
    assert req.messages[0].text(0) == "a\nb"  # as vLLM joins them (archon.openai.messages)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest(model="m", messages=MSG, temprature=0.2)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_unsupported_uses_name_their_param(extra: dict, param: str) -> None:
    req = ChatCompletionRequest(model="m", messages=MSG, **extra)
    with pytest.raises(InvalidRequestError) as info:
        req.check_supported()
    assert info.value.param == param


@pytest.mark.parametrize(
    "extra",
    [
        {"store": True},
        {"metadata": {"team": "platform"}},
        {"service_tier": "auto"},
        {"user": "u-1"},
        {"prompt_cache_key": "k"},
        {"safety_identifier": "s"},
        {"parallel_tool_calls": False},
        {"verbosity": "low"},
        {"reasoning_effort": "low"},
        {"prediction": {"type": "content", "content": "x"}},
    ],
)
def test_spec_fields_without_effect_are_accepted(extra: dict) -> None:
    req = ChatCompletionRequest(model="m", messages=MSG, **extra)
    req.check_supported()
    if "parallel_tool_calls" not in extra:
        assert req.ignored_fields() == list(extra)


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", "yes"), ("stream", 1), ("max_tokens", 2.0), ("max_tokens", "2"), ("n", True)],
)
def test_types_are_strict(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=MSG, **{field: value})


def test_logit_bias_keys_and_values_are_checked() -> None:
    req = ChatCompletionRequest(model="m", messages=MSG, logit_bias={"5": -100, "7": 2.5})
    assert req.logit_bias_pairs(10) == ((5, -100.0), (7, 2.5))
    for bias in ({"10": 1}, {"x": 1}, {"-1": 1}, {"3": -101}):
        with pytest.raises(InvalidRequestError) as info:
            ChatCompletionRequest(model="m", messages=MSG, logit_bias=bias).logit_bias_pairs(10)
        assert info.value.param == "logit_bias"


def test_accepted_defaults_pass() -> None:
    ChatCompletionRequest(
        model="m",
        messages=MSG,
        n=2,
        logprobs=True,
        top_logprobs=3,
        tool_choice="none",
        response_format={"type": "json_object"},
        stream=True,
        stream_options={"include_usage": True},
        stop=["a", ""],
    ).check_supported()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("abc", ["abc"]),
        (["abc", "d"], ["abc", "d"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[4, 5], [6]], [[4, 5], [6]]),
    ],
)
def test_prompt_forms(prompt, expected) -> None:
    assert CompletionRequest(model="m", prompt=prompt).prompts() == expected


def test_completion_default_max_tokens_is_16() -> None:
    assert CompletionRequest(model="m", prompt="x").output_limit() == 16
    assert ChatCompletionRequest(model="m", messages=MSG).output_limit() is None


@pytest.mark.parametrize(
    ("loc", "kind", "param"),
    [
        (("body", "Foo"), "extra_forbidden", "Foo"),
        (("body", "str"), "extra_forbidden", "str"),
        (("body", "tool_choice", "NamedToolChoice", "type"), "string_type", "tool_choice.type"),
        (("body", "stop", "list[str]", 2), "string_type", "stop[2]"),
        (("body", "messages", 0, "content", "str"), "string_type", "messages[0].content"),
    ],
)
def test_param_names_the_request_field(loc: tuple, kind: str, param: str) -> None:
    from archon.errors import _param_from_loc

    assert _param_from_loc(loc, kind) == param


def test_best_of_only_as_n() -> None:
    CompletionRequest(model="m", prompt="x", n=2, best_of=2).check_supported()
    CompletionRequest(model="m", prompt="x", best_of=1).check_supported()
    with pytest.raises(InvalidRequestError) as info:
        CompletionRequest(model="m", prompt="x", best_of=3).check_supported()
    assert info.value.param == "best_of"
