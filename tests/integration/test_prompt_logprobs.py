"""Prompt logprobs with ``echo`` on ``/v1/completions``, against llama.cpp's own logits.

lm-evaluation-harness scores a continuation by sending the context and the continuation as one
prompt with ``echo: true, logprobs: 1, max_tokens: 1`` (or 0) and summing the ``token_logprobs``
of the continuation's tokens; if those are missing or wrong every score is silently wrong. The
oracle is llama-cpp-python's high-level ``Llama(logits_all=True)`` evaluating the same token ids
in one batch, with the server's weight layout (``cpu_repack=auto``): the log-softmax of its
logits at position i is the logprob of token i+1. Equal within 1e-3 for every prompt token,
including a prompt the server prefills in several chunks (its batch is 128 tokens; the oracle
evaluates in the same chunks) and one whose prefix a slot already holds from an earlier
request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from archon.modelserver.engines.llamacpp_native import use_repack
from tests.support.servers import MODEL, Server

TOLERANCE = 1e-3
SHORT = "Kubernetes schedules pods onto nodes, and a Service gives them one stable address."
# Longer than the shared server's 128-token batch: prefilled in several steps.
LONG = " ".join(
    f"Step {i}: the operator checks the pods, restarts the failed ones and writes a note."
    for i in range(8)
)


@pytest.fixture(scope="module")
def oracle(bundled_model_path: Path) -> Iterator[Any]:
    import llama_cpp
    import llama_cpp.llama_cpp as native

    native.llama_backend_init()
    repack = use_repack("auto", native.llama_print_system_info())
    default_params = native.llama_model_default_params

    def params() -> Any:  # Llama() has no argument for it: the server's weight layout
        p = default_params()
        p.use_extra_bufts = repack
        return p

    native.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(
            str(bundled_model_path),
            n_ctx=2048,
            # The shared server's batch (ARCHON_BATCH_SIZE=128): a long prompt is evaluated
            # in the same chunks, and llama.cpp's sums differ by ~2e-3 between splittings.
            n_batch=128,
            n_threads=2,
            logits_all=True,
            # The server's attention: llama.cpp's default (auto) runs flash attention on
            # the CPU, Llama() turns it off; the two differ by up to 0.3 in a logprob here.
            flash_attn=True,
            verbose=False,
        )
    finally:
        native.llama_model_default_params = default_params
    yield llm
    llm.close()


def oracle_logprobs(llm: Any, tokens: list[int]) -> np.ndarray:
    """Row i: the log-softmax of llama.cpp's logits after tokens[: i + 1]."""
    llm.reset()
    llm.eval(tokens)
    x = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def tokenize(server: Server, text: str) -> list[int]:
    r = httpx.post(
        f"{server.url}/tokenize", json={"prompt": text, "add_special_tokens": False}, timeout=30
    )
    r.raise_for_status()
    tokens: list[int] = r.json()["tokens"]
    return tokens


def complete(server: Server, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, **body}, timeout=120)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def assert_matches_oracle(llm: Any, tokens: list[int], logprobs: dict[str, Any]) -> None:
    expected = oracle_logprobs(llm, tokens)
    got = logprobs["token_logprobs"]
    assert got[0] is None and logprobs["top_logprobs"][0] is None
    for i in range(1, len(tokens)):
        want = expected[i - 1, tokens[i]]
        assert abs(got[i] - want) < TOLERANCE, (i, got[i], want)
        # The alternatives include the model's most likely token at that position.
        assert abs(max(logprobs["top_logprobs"][i].values()) - expected[i - 1].max()) < TOLERANCE


@pytest.mark.parametrize("text", [SHORT, LONG], ids=["one-batch", "chunked-prefill"])
def test_prompt_logprobs_equal_llama_cpp(server: Server, oracle: Any, text: str) -> None:
    tokens = tokenize(server, text)
    if text is LONG:
        assert len(tokens) > 128  # the shared server's batch size
    reply = complete(server, prompt=tokens, echo=True, max_tokens=1, logprobs=1, temperature=0)
    choice = reply["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(tokens) + 1
    assert_matches_oracle(oracle, tokens, lp)
    # The one generated token: greedy, so the most likely after the whole prompt.
    last = oracle_logprobs(oracle, tokens)[-1]
    assert abs(lp["token_logprobs"][-1] - last.max()) < TOLERANCE
    assert choice["text"] == "".join(lp["tokens"])
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"] == [
        sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))
    ]


def test_lm_eval_request_after_a_cached_prefix(server: Server, oracle: Any) -> None:
    """lm-eval's choices share the context: the slot holds it from the previous request, yet
    every position's logprob must come from logits computed for this one."""
    context = tokenize(server, "Question: What does a Kubernetes Service give pods? Answer:")
    first = tokenize(server, " one stable address")
    second = tokenize(server, " a new disk")
    for continuation in (first, second, first):
        tokens = context + continuation
        body = {"prompt": tokens, "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0}
        lp = complete(server, **body)["choices"][0]["logprobs"]
        assert_matches_oracle(oracle, tokens, lp)


def test_max_tokens_zero_with_echo(server: Server, oracle: Any) -> None:
    tokens = tokenize(server, SHORT)
    reply = complete(server, prompt=tokens, echo=True, max_tokens=0, logprobs=2)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 0
    assert reply["usage"]["prompt_tokens"] == len(tokens)
    assert (
        choice["text"]
        == httpx.post(f"{server.url}/detokenize", json={"tokens": tokens}).json()["prompt"]
    )
    assert len(choice["logprobs"]["tokens"]) == len(tokens)
    assert_matches_oracle(oracle, tokens, choice["logprobs"])
    # Text prompt, no logprobs: the prompt back, nothing generated.
    plain = complete(server, prompt=SHORT, echo=True, max_tokens=0)
    assert plain["choices"][0]["text"] == SHORT and plain["choices"][0]["logprobs"] is None
    assert plain["usage"]["completion_tokens"] == 0


def test_max_tokens_zero_needs_echo(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 0},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0},
        timeout=30,
    )
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "max_tokens"


def test_echo_logprobs_with_n_and_a_prompt_list(server: Server) -> None:
    prompts = [tokenize(server, "Kubernetes is"), tokenize(server, "Prometheus scrapes")]
    reply = complete(
        server, prompt=prompts, n=2, echo=True, max_tokens=3, temperature=0, logprobs=1
    )
    choices = sorted(reply["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for c in choices:
        tokens = prompts[c["index"] // 2]
        lp = c["logprobs"]
        assert lp["token_logprobs"][0] is None
        assert len(lp["tokens"]) == len(tokens) + 3 == len(lp["text_offset"])
        assert c["text"] == "".join(lp["tokens"])
    # Both choices of a prompt share one prefill: the same prompt logprobs.
    for a, b in ((0, 1), (2, 3)):
        n = len(prompts[a // 2])
        la, lb = choices[a]["logprobs"], choices[b]["logprobs"]
        assert la["token_logprobs"][:n] == lb["token_logprobs"][:n]


def test_streamed_echo_carries_the_prompt_logprobs(server: Server) -> None:
    tokens = tokenize(server, SHORT)
    whole = complete(server, prompt=tokens, echo=True, max_tokens=4, logprobs=1, temperature=0)
    text, token_logprobs, offsets = "", [], []
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": tokens,
            "echo": True,
            "max_tokens": 4,
            "logprobs": 1,
            "temperature": 0,
            "stream": True,
        },
        timeout=60,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                text += c["text"]
                if c["logprobs"]:
                    token_logprobs += c["logprobs"]["token_logprobs"]
                    offsets += c["logprobs"]["text_offset"]
    expected = whole["choices"][0]
    assert text == expected["text"]
    assert token_logprobs == expected["logprobs"]["token_logprobs"]
    assert offsets == expected["logprobs"]["text_offset"]


def test_tokenizer_info_as_lm_eval_reads_it(server: Server) -> None:
    info = httpx.get(f"{server.url}/tokenizer_info", timeout=30).json()
    assert isinstance(info["tokenizer_class"], str)
    assert info["eos_token"] and "chat_template" in info
    assert info["model_max_length"] == 2048
    # lm-eval's remote tokenizer finds the EOS id by tokenizing its text without special tokens.
    (eos_id,) = tokenize(server, info["eos_token"])
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": [eos_id]}).json()["prompt"]
    assert back == info["eos_token"]
