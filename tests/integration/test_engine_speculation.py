"""Prompt-lookup speculation in the CPU engine, on the real bundled model: drafts are made and
accepted on text that quotes its prompt, and the request's limits hold across a multi-token
step (max_tokens, stop strings, logprobs, a grammar, a seed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from archon.modelserver.engines.base import GenerationOutput, GenerationRequest, SamplingParams
from archon.modelserver.engines.llamacpp import LlamaCppEngine
from archon.modelserver.engines.llamacpp_speculation import SpeculationConfig

# A passage the answer can copy: Prometheus's querying documentation
# (../shared/corpora/prometheus/docs/querying/basics.md, prometheus/prometheus d15adb9).
CORPUS = Path(__file__).resolve().parents[3] / "shared/corpora/prometheus/docs/querying/basics.md"


@pytest.fixture(scope="module")
def engine(bundled_model_path: Path) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(
        bundled_model_path,
        max_model_len=2048,
        slots=2,
        threads=2,
        batch_size=256,
        speculation=SpeculationConfig(tokens=4, ngram_max=3, ngram_min=1),
    )
    yield eng
    eng.close()


def quoting_prompt(engine: LlamaCppEngine) -> list[int]:
    excerpt = CORPUS.read_text()[:1500] if CORPUS.exists() else "Instant vector selectors " * 40
    text = engine.apply_chat_template(
        [
            {
                "role": "user",
                "content": f"Documentation excerpt:\n\n{excerpt}\n\nRepeat the excerpt word "
                "for word.",
            }
        ]
    )
    return engine.tokenize(text, add_special=False)


def run(
    engine: LlamaCppEngine, prompt: list[int], params: SamplingParams
) -> list[GenerationOutput]:
    async def go() -> list[GenerationOutput]:
        return [o async for o in engine.generate(GenerationRequest("spec", prompt, params))]

    return asyncio.run(go())


def test_drafts_are_accepted_and_max_tokens_holds(engine: LlamaCppEngine) -> None:
    before = engine.stats().spec_decode
    assert before is not None
    drafts, accepted = before.drafts, before.accepted_tokens
    outputs = run(engine, quoting_prompt(engine), SamplingParams(max_tokens=61, temperature=0))
    stats = engine.stats().spec_decode
    assert stats is not None and stats.drafts > drafts
    assert stats.accepted_tokens > accepted  # a copied passage is guessed right
    assert sum(stats.accepted_per_position) == stats.accepted_tokens
    last = outputs[-1]
    if last.finish_reason == "length":
        assert last.completion_tokens == 61  # a multi-token step never overshoots


def test_same_request_gives_the_same_text_twice(engine: LlamaCppEngine) -> None:
    """Rejected drafts leave nothing behind in the slot's KV (a reused prefix included)."""
    prompt = quoting_prompt(engine)
    texts = [
        "".join(o.text for o in run(engine, prompt, SamplingParams(max_tokens=40, temperature=0)))
        for _ in range(2)
    ]
    assert texts[0] == texts[1] and texts[0]


def test_seeded_sampling_is_repeatable(engine: LlamaCppEngine) -> None:
    prompt = quoting_prompt(engine)
    params = SamplingParams(max_tokens=40, temperature=0.8, seed=11)
    texts = ["".join(o.text for o in run(engine, prompt, params)) for _ in range(2)]
    assert texts[0] == texts[1]


def test_logprobs_one_per_token_and_stop_string_cuts(engine: LlamaCppEngine) -> None:
    prompt = quoting_prompt(engine)
    outputs = run(engine, prompt, SamplingParams(max_tokens=40, temperature=0, logprobs=2))
    logprobs = [lp for o in outputs for lp in (o.logprobs or [])]
    assert len(logprobs) == outputs[-1].completion_tokens
    full = "".join(o.text for o in outputs)
    words = full.split()
    if len(words) > 4:
        stop = words[3]
        cut = run(engine, prompt, SamplingParams(max_tokens=40, temperature=0, stop=(stop,)))
        text = "".join(o.text for o in cut)
        assert cut[-1].finish_reason == "stop" and stop not in text
        assert full.startswith(text)


def test_grammar_output_still_parses(engine: LlamaCppEngine) -> None:
    grammar = 'root ::= "{" ws "\\"name\\"" ws ":" ws "\\"" [a-z ]{1,20} "\\"" ws "}"\nws ::= [ ]?'
    outputs = run(
        engine,
        quoting_prompt(engine),
        SamplingParams(max_tokens=60, temperature=0, grammar=grammar),
    )
    assert outputs[-1].finish_reason == "stop"
    json.loads("".join(o.text for o in outputs))


@pytest.mark.xfail(
    reason="llama.cpp's CPU kernels pick their path by the batch's shape: a position's logits "
    "differ when its row is decoded with others of its sequence (flash attention on, the "
    "default: at any context, max |logit difference| 0.73 at 256 tokens; off: past ~512 "
    "tokens of context, 0.44 at 1024; benchmarks/spec_bound.py, docs/benchmarks.md), so "
    "greedy output with verified drafts can leave the one-token-at-a-time output at a near-tie",
    strict=False,
)
def test_greedy_output_is_the_same_with_speculation_off(
    engine: LlamaCppEngine, bundled_model_path: Path
) -> None:
    prompt = quoting_prompt(engine)
    params = SamplingParams(max_tokens=120, temperature=0)
    plain_engine = LlamaCppEngine(
        bundled_model_path, max_model_len=2048, slots=1, threads=2, batch_size=256
    )
    try:
        plain = "".join(o.text for o in run(plain_engine, prompt, params))
    finally:
        plain_engine.close()
    assert "".join(o.text for o in run(engine, prompt, params)) == plain
