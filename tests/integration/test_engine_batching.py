"""The continuous-batching engine in-process, on the real bundled model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from archon.modelserver.engines.base import GenerationRequest, SamplingParams
from archon.modelserver.engines.llamacpp import LlamaCppEngine


@pytest.fixture(scope="module")
def engine(bundled_model_path: Path) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(bundled_model_path, max_model_len=2048, slots=2, threads=2, batch_size=64)
    yield eng
    eng.close()


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


def test_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_going(
    engine: LlamaCppEngine,
) -> None:
    long_prompt = engine.tokenize("The cluster has many nodes. " * 160, add_special=True)
    assert len(long_prompt) > 10 * engine.batch_size

    async def main() -> tuple[int, int]:
        running = engine.generate(
            GenerationRequest(
                "a", engine.tokenize("Count:", add_special=True), greedy(400, ignore_eos=True)
            )
        )
        tokens_of_a = 0
        first = await running.__anext__()
        tokens_of_a = first.completion_tokens
        at_submit = tokens_of_a
        long_req = engine.generate(GenerationRequest("b", long_prompt, greedy(1)))
        long_task = asyncio.ensure_future(long_req.__anext__())
        while not long_task.done():
            out = await running.__anext__()
            tokens_of_a = out.completion_tokens
        await running.aclose()
        await long_req.aclose()
        return at_submit, tokens_of_a

    at_submit, at_first_token_of_b = asyncio.run(main())
    # The long prompt needs len/64 steps; the running stream advanced in (nearly) each of them.
    steps = len(long_prompt) // engine.batch_size
    assert at_first_token_of_b - at_submit >= steps - 2


def test_prompt_prefix_is_reused_from_the_slot(engine: LlamaCppEngine) -> None:
    system = "You are the on-call assistant for the platform team. " * 20
    first = engine.tokenize(system + "Question one?", add_special=True)
    second = engine.tokenize(system + "Question two, longer?", add_special=True)

    async def run(tokens: list[int]) -> str:
        out = ""
        async for o in engine.generate(GenerationRequest("p", tokens, greedy(4))):
            out += o.text
        return out

    before = engine.stats()
    asyncio.run(run(first))
    mid = engine.stats()
    asyncio.run(run(second))
    after = engine.stats()
    shared = len(engine.tokenize(system, add_special=True)) - 2
    assert after.prefix_cache_queries - mid.prefix_cache_queries == len(second)
    assert after.prefix_cache_hits - mid.prefix_cache_hits >= shared
    assert mid.prefix_cache_queries - before.prefix_cache_queries == len(first)


def test_reused_prefix_gives_the_same_output_as_a_cold_slot(
    engine: LlamaCppEngine, bundled_model_path: Path
) -> None:
    prompt = engine.tokenize("Kubernetes is a system for " * 10, add_special=True)

    async def run(e: LlamaCppEngine, tokens: list[int]) -> str:
        return "".join(
            [o.text async for o in e.generate(GenerationRequest("x", tokens, greedy(16)))]
        )

    asyncio.run(run(engine, prompt))  # the slot now holds this prompt's KV
    hits_before = engine.stats().prefix_cache_hits
    warm = asyncio.run(run(engine, prompt))
    assert engine.stats().prefix_cache_hits - hits_before == len(prompt) - 1
    cold_engine = LlamaCppEngine(
        bundled_model_path, max_model_len=2048, slots=1, threads=2, batch_size=64
    )
    try:
        cold = asyncio.run(run(cold_engine, prompt))
        assert cold_engine.stats().prefix_cache_hits == 0
    finally:
        cold_engine.close()
    assert warm == cold
