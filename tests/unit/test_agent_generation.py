"""The agent's generation defaults: how they merge with a request and a key (no servers)."""

from __future__ import annotations

import pytest

from archon.agent.auth import ApiKey
from archon.agent.generation import GenerationSettings, apply_generation, parse_generation
from archon.agent.settings import load_agent_settings
from archon.errors import ConfigError

SETTINGS = parse_generation(
    {
        "default": {"temperature": 0.3, "top_p": 0.8, "max_tokens": 200, "max_tokens_cap": 500},
        "models": {
            "smollm2-*": {"temperature": 0.1, "repetition_penalty": 1.2, "max_tokens": 100},
            "gpt-*": {"repetition_penalty": None, "frequency_penalty": 0.5},
            "*": {"temperature": 0.9},
        },
    }
)


def key(**kw) -> ApiKey:
    return ApiKey(name="k", digest=b"x", metered=True, **kw)


def test_unset_fields_are_filled_from_the_first_matching_glob_over_the_default() -> None:
    data = {"model": "smollm2-135m-instruct", "messages": []}
    assert apply_generation(SETTINGS, data)
    assert data["temperature"] == 0.1  # the glob's
    assert data["top_p"] == 0.8  # the default's
    assert data["repetition_penalty"] == 1.2
    assert data["max_tokens"] == 100
    assert "frequency_penalty" not in data  # unset everywhere: not sent


def test_the_first_glob_wins_and_null_unsets_a_default() -> None:
    data = {"model": "gpt-4o"}
    apply_generation(SETTINGS, data)
    assert data["frequency_penalty"] == 0.5
    assert data["temperature"] == 0.3  # "gpt-*" comes before "*", and sets no temperature
    # the measured default's repetition_penalty is unset for gpt-* (OpenAI would reject it)
    assert "repetition_penalty" not in data
    other = {"model": "llama-3"}
    apply_generation(SETTINGS, other)
    assert other["temperature"] == 0.9
    assert other["repetition_penalty"] == parse_generation({}).default.repetition_penalty


def test_a_requests_own_values_win() -> None:
    data = {"model": "smollm2-x", "temperature": 1.0, "top_p": 1.0, "max_tokens": 300}
    apply_generation(SETTINGS, data)
    assert (data["temperature"], data["top_p"], data["max_tokens"]) == (1.0, 1.0, 300)
    # null counts as left out, as in OpenAI's API
    nulls = {"model": "smollm2-x", "temperature": None}
    apply_generation(SETTINGS, nulls)
    assert nulls["temperature"] == 0.1


def test_max_tokens_above_the_cap_is_lowered_to_it() -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        data = {"model": "m", name: 4096}
        assert apply_generation(SETTINGS, data)
        assert data[name] == 500
        assert "max_tokens" not in data or name == "max_tokens"  # no second length field
    below = {"model": "m", "max_tokens": 20}
    apply_generation(SETTINGS, below)
    assert below["max_tokens"] == 20


def test_a_keys_own_default_wins_and_its_cap_bounds_the_agents_default() -> None:
    own = {"model": "m"}
    apply_generation(SETTINGS, own, key(default_max_tokens=50, max_tokens=60))
    assert "max_tokens" not in own  # left to the limits, which apply the key's default
    capped = {"model": "m"}
    apply_generation(SETTINGS, capped, key(max_tokens=120))
    assert capped["max_tokens"] == 120  # not the agent's 200, which the key would refuse
    loose = {"model": "m"}
    apply_generation(SETTINGS, loose, key(max_tokens=10_000))
    assert loose["max_tokens"] == 200
    unmetered = {"model": "m"}
    apply_generation(SETTINGS, unmetered, ApiKey(name="p", digest=b"y", max_tokens=5))
    assert unmetered["max_tokens"] == 200  # plain keys have no limits


def test_nothing_to_fill_changes_nothing() -> None:
    empty = parse_generation(
        {"default": dict.fromkeys(("temperature", "top_p", "repetition_penalty", "max_tokens"))}
    )
    data = {"model": "m", "max_tokens": 10}
    assert not apply_generation(empty, data)
    assert data == {"model": "m", "max_tokens": 10}


def test_the_built_in_default_is_the_measured_one() -> None:
    built_in = GenerationSettings()
    assert built_in.default.temperature is not None
    assert built_in.default.max_tokens is not None
    assert built_in.default.max_tokens <= (built_in.default.max_tokens_cap or 10**9)
    # a partial default keeps the measured values for the fields it does not name
    partial = parse_generation("{default: {temperature: 0.7}}")
    assert partial.default.temperature == 0.7
    assert partial.default.max_tokens == built_in.default.max_tokens


def test_the_setting_reads_yaml_or_json_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(
        "ARCHON_AGENT_GENERATION", '{"models": {"qwen*": {"temperature": 0.6, "top_p": 0.95}}}'
    )
    settings = load_agent_settings()
    assert settings.generation.for_model("qwen2.5-7b").top_p == 0.95
    monkeypatch.setenv("ARCHON_AGENT_GENERATION", "default:\n  max_tokens: 64\n")
    assert load_agent_settings().generation.default.max_tokens == 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{default: {temprature: 1}}", "default.temprature: Extra inputs are not permitted"),
        ("{models: {'smollm2-*': {temperature: 3}}}", "models.smollm2-*.temperature"),
        ("{default: {max_tokens: 5000}}", "default: max_tokens 5000 is above max_tokens_cap"),
        ("{default: {temperature: 0.2}", "not YAML or JSON"),
        ("[1, 2]", "Input should be a valid dictionary"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_field(monkeypatch, value, message) -> None:
    monkeypatch.setenv("ARCHON_AGENT_GENERATION", value)
    with pytest.raises(ConfigError) as err:
        load_agent_settings()
    text = str(err.value)
    assert "invalid setting generation (ARCHON_AGENT_GENERATION)" in text
    assert message in text
    assert "\n" not in text


def test_the_operators_default_wins_over_built_in_model_values() -> None:
    """A cap below the built-in smollm2 length, or an explicit default length, is the
    operator's choice: it starts, and the bundled model follows it."""
    from archon.agent.generation import GenerationSettings, parse_generation

    capped = parse_generation('{"default": {"max_tokens": 12, "max_tokens_cap": 20}}')
    assert isinstance(capped, GenerationSettings)
    assert capped.for_model("smollm2-135m-instruct").max_tokens == 12
    only_cap = parse_generation('{"default": {"max_tokens_cap": 20}}')
    assert only_cap.for_model("smollm2-135m-instruct").max_tokens == 20
    built_in = parse_generation("{}")
    assert built_in.for_model("smollm2-135m-instruct").max_tokens == 128
    assert built_in.for_model("llama-3-8b").max_tokens == 256


def test_the_lead_quote_is_on_for_the_bundled_model_only_and_the_operator_decides() -> None:
    built_in = parse_generation("{}")
    assert built_in.for_model("smollm2-135m-instruct").lead_quote is True
    assert built_in.for_model("llama-3-8b").lead_quote is False
    data = {"model": "smollm2-135m-instruct"}
    apply_generation(built_in, data)
    assert "lead_quote" not in data  # the agent's own choice, never sent to the model server
    off = parse_generation("{default: {lead_quote: false}}")  # an operator's default wins
    assert off.for_model("smollm2-135m-instruct").lead_quote is False
    on = parse_generation("{models: {'qwen*': {lead_quote: true}}}")
    assert on.for_model("qwen2.5-0.5b").lead_quote is True
    with pytest.raises(ValueError, match="lead_quote"):
        parse_generation("{default: {lead_quote: maybe}}")


def test_a_quoted_answer_has_a_shorter_default_length_unless_the_operator_chose_one() -> None:
    built_in = parse_generation("{}").for_model("smollm2-135m-instruct")
    assert (built_in.max_tokens, built_in.quoted_max_tokens) == (128, 32)
    chosen = parse_generation("{default: {max_tokens: 400}}").for_model("smollm2-x")
    assert (chosen.max_tokens, chosen.quoted_max_tokens) == (400, None)
    capped = parse_generation("{default: {max_tokens_cap: 20}}").for_model("smollm2-x")
    assert (capped.max_tokens, capped.quoted_max_tokens) == (20, 20)
    assert parse_generation("{}").for_model("llama-3").quoted_max_tokens is None
