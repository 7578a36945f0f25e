"""The small protocol every inference engine implements, and the values it exchanges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from archon.errors import ServiceUnavailableError

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # GBNF the output must match (structured output, tool calls)
    logprobs: int | None = None  # None: none; k: the sampled token's plus the k most likely
    # None: none; k: every prompt token's logprob (as the logprobs of the prefill's logits, so
    # its KV is computed afresh, never reused from a slot's cache) plus the k most likely.
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability under the model (raw logits), and its alternatives."""

    token_id: int
    token: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's tokens under the model. The first token has no logprob (nothing precedes
    it; OpenAI and vLLM give null); every later one's is from the logits of the position before
    it, like a generated token's."""

    first_token: bytes
    rest: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    n: int = 1  # choices; they share the prompt's KV (one prefill)


@dataclass
class GenerationOutput:
    """One step of a request's output: new text, and a finish reason on the last one."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    queued_s: float | None = None  # set on the first output: time spent waiting for a slot
    index: int = 0  # which of the request's n choices
    logprobs: list[TokenLogprob] | None = None  # one per token generated since the last output
    prompt_logprobs: PromptLogprobs | None = None  # on a choice's first output, when asked for


@dataclass
class SpecDecodeStats:
    """Speculative decoding's counters, with vLLM's meaning: a draft is one verification that
    had draft tokens; ``accepted_per_position[i]``: drafts whose token i was accepted."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    def record(self, drafted: int, accepted: int) -> None:
        self.drafts += 1
        self.draft_tokens += drafted
        self.accepted_tokens += accepted
        for i in range(accepted):
            self.accepted_per_position[i] += 1


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0  # prompt tokens admitted
    prefix_cache_hits: int = 0  # of those, tokens whose KV was reused from the slot
    spec_decode: SpecDecodeStats | None = None  # None: speculation is off


class EngineDead(ServiceUnavailableError):
    """The engine loop has stopped; the server can no longer generate."""

    code = "engine_dead"


class Engine(Protocol):
    """What the HTTP layer needs from an inference engine."""

    max_model_len: int
    slots: int

    def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes: ...

    def tokenizer_info(self) -> dict[str, Any]:
        """The tokenizer's settings as vLLM's ``/tokenizer_info`` gives them."""
        ...

    def check_grammar(self, grammar: str) -> None:
        """Raise InvalidRequestError if llama.cpp cannot parse the grammar."""
        ...

    n_vocab: int

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> str: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Yield outputs until one carries a finish reason; closing the iterator aborts."""
        ...

    def stats(self) -> EngineStats: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...
