"""Completions' logprob columns with the prompt's tokens first (echo), as OpenAI and vLLM lay
them out and lm-evaluation-harness reads them (``token_logprobs[ctxlen:-1]``)."""

from __future__ import annotations

import pytest

from archon.errors import InvalidRequestError
from archon.modelserver.engines.base import PromptLogprobs, TokenLogprob, TopLogprob
from archon.modelserver.logprobs import LogprobFormatter
from archon.modelserver.schemas import CompletionRequest


def entry(token: bytes, logprob: float, *alternatives: tuple[bytes, float]) -> TokenLogprob:
    top = tuple(TopLogprob(i, t, lp) for i, (t, lp) in enumerate(alternatives))
    return TokenLogprob(0, token, logprob, top)


def test_prompt_tokens_come_first_the_first_without_a_logprob() -> None:
    prompt = PromptLogprobs(b"The", (entry(b" sky", -3.5, (b" cat", -1.0)), entry(b" is", -0.5)))
    columns = LogprobFormatter("text").text(
        [entry(b" blue", -0.25, (b" blue", -0.25))], offset=len("The sky is"), prompt=prompt
    )
    assert columns == {
        "tokens": ["The", " sky", " is", " blue"],
        "token_logprobs": [None, -3.5, -0.5, -0.25],
        "top_logprobs": [None, {" cat": -1.0, " sky": -3.5}, {" is": -0.5}, {" blue": -0.25}],
        "text_offset": [0, 3, 7, 10],
    }


def test_without_echo_only_the_generated_tokens() -> None:
    columns = LogprobFormatter("text").text([entry(b"!", -2.0)], offset=5)
    assert columns["tokens"] == ["!"] and columns["text_offset"] == [5]


def test_max_tokens_zero_only_with_echo() -> None:
    CompletionRequest(model="m", prompt="Hi", max_tokens=0, echo=True).check_supported()
    with pytest.raises(InvalidRequestError) as refused:
        CompletionRequest(model="m", prompt="Hi", max_tokens=0).check_supported()
    assert refused.value.param == "max_tokens"
