"""The small protocol every inference engine implements, and the values it exchanges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

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


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams


@dataclass
class GenerationOutput:
    """One step of a request's output: new text, and a finish reason on the last one."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    queued_s: float | None = None  # set on the first output: time spent waiting for a slot


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0  # prompt tokens admitted
    prefix_cache_hits: int = 0  # of those, tokens whose KV was reused from the slot


class EngineDead(ServiceUnavailableError):
    """The engine loop has stopped; the server can no longer generate."""

    code = "engine_dead"


class Engine(Protocol):
    """What the HTTP layer needs from an inference engine."""

    max_model_len: int
    slots: int

    def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Yield outputs until one carries a finish reason; closing the iterator aborts."""
        ...

    def stats(self) -> EngineStats: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...
