"""No request can stop the engine: failures of one sequence fail that request only.

The real engine on the bundled model, in-process, with faults injected into the sampler
(construction and sampling) and into llama_decode, while other streams run and must finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archon.errors import InternalError, InvalidRequestError
from archon.modelserver.engines import llamacpp
from archon.modelserver.engines.base import GenerationRequest, SamplingParams
from archon.modelserver.engines.llamacpp import LlamaCppEngine
from archon.modelserver.engines.llamacpp_sampling import Sampler

FAULTY_SEED = 666  # marks the request whose sampler misbehaves


@pytest.fixture(scope="module")
def engine(bundled_model_path: Path) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(bundled_model_path, max_model_len=1024, slots=3, threads=2, batch_size=64)
    yield eng
    eng.close()


def _wait_until_idle(engine: LlamaCppEngine) -> None:
    # The gauges are updated at the end of the engine's step, just after the last output.
    deadline = time.monotonic() + 5
    while engine.stats().running:
        if time.monotonic() > deadline:
            raise AssertionError(f"slots still busy: {engine.stats()}")
        time.sleep(0.02)


def _params(max_tokens: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


async def _collect(engine: LlamaCppEngine, rid: str, params: SamplingParams, n: int = 1):
    tokens = engine.tokenize("Write a long story about a cluster:", add_special=True)
    outs = [o async for o in engine.generate(GenerationRequest(rid, tokens, params, n=n))]
    return outs


async def _runs_beside_a_failing_request(engine: LlamaCppEngine) -> tuple[list, BaseException]:
    streams = [
        asyncio.ensure_future(_collect(engine, f"ok-{i}", _params(40, ignore_eos=True)))
        for i in range(2)
    ]
    await asyncio.sleep(0.3)  # both streams are generating
    bad = _params(5, seed=FAULTY_SEED)
    bad = SamplingParams(**{**bad.__dict__, "temperature": 0.7})
    with pytest.raises((InternalError, InvalidRequestError)) as info:
        await _collect(engine, "bad", bad)
    return await asyncio.gather(*streams), info.value


class _RaisingOnSample(Sampler):
    def sample(self, ctx: Any, index: int):
        if self.params.seed == FAULTY_SEED:
            raise RuntimeError("injected sampler fault")
        return super().sample(ctx, index)


class _RaisingOnBuild(Sampler):
    def __init__(self, vocab: Any, params: SamplingParams, seed_offset: int = 0):
        if params.seed == FAULTY_SEED:
            raise RuntimeError("injected sampler construction fault")
        super().__init__(vocab, params, seed_offset)


@pytest.mark.parametrize("faulty", [_RaisingOnSample, _RaisingOnBuild], ids=["sample", "build"])
def test_a_sampler_that_raises_fails_its_request_only(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch, faulty: type[Sampler]
) -> None:
    monkeypatch.setattr(llamacpp, "Sampler", faulty)
    finished, error = asyncio.run(_runs_beside_a_failing_request(engine))
    assert isinstance(error, InternalError) and error.status_code == 500
    for outs in finished:
        assert outs[-1].finish_reason == "length"
        assert outs[-1].completion_tokens == 40
    assert engine.alive
    _wait_until_idle(engine)  # every slot is free again
    after = asyncio.run(_collect(engine, "after", _params(3)))
    assert after[-1].finish_reason == "length"


class _DecodeFailsOnce:
    """llama_cpp with a llama_decode that fails the first time it is called."""

    def __init__(self, real: Any):
        self._real = real
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        if not self.failed:
            self.failed = True
            return -1
        return self._real.llama_decode(ctx, batch)


def test_a_failed_decode_fails_that_batch_and_the_engine_goes_on(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = _DecodeFailsOnce(engine._ll)
    monkeypatch.setattr(engine, "_ll", proxy)
    with pytest.raises(InternalError):
        asyncio.run(_collect(engine, "unlucky", _params(5)))
    assert proxy.failed and engine.alive
    outs = asyncio.run(_collect(engine, "next", _params(5)))
    assert outs[-1].completion_tokens == 5


def test_n_choices_share_one_prefill(engine: LlamaCppEngine) -> None:
    before = engine.stats()
    params = SamplingParams(max_tokens=8, temperature=0.0)
    outs = asyncio.run(_collect(engine, "n3", params, n=3))
    after = engine.stats()
    texts = {i: "".join(o.text for o in outs if o.index == i) for i in range(3)}
    assert all(texts.values())
    # Greedy choices from the same prompt KV are the same text: the copy is exact.
    assert len(set(texts.values())) == 1
    single = asyncio.run(_collect(engine, "n1", params))
    assert "".join(o.text for o in single) == texts[0]
    prompt_len = len(engine.tokenize("Write a long story about a cluster:", add_special=True))
    # The two followers' prompts were copied, not evaluated.
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    assert hits >= 2 * prompt_len


def test_n_above_the_slots_is_refused(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(_collect(engine, "n4", _params(2), n=4))
    assert info.value.param == "n"
