"""A request in the engine: its sequences (one per choice), the slots they run in, the queue
that carries their outputs to the caller's event loop, and the pure rules the engine loop
applies to them (which slot's cached prefix a prompt reuses, what text may be sent while a stop
string could still be completing).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from archon.errors import ArchonError, InternalError
from archon.modelserver.engines.base import (
    EngineDead,
    GenerationOutput,
    GenerationRequest,
    PromptLogprobs,
    TokenLogprob,
)
from archon.modelserver.engines.llamacpp_sampling import Sampler
from archon.modelserver.engines.llamacpp_speculation import NgramDrafter

log = logging.getLogger("archon.engine")

Sink = Callable[[GenerationOutput | BaseException], None]


@dataclass
class Sequence:
    """One choice of a request, from arrival until it finishes or fails."""

    request: GenerationRequest
    sink: Sink
    arrived: float
    index: int = 0  # which choice of its request
    group: list[Sequence] = field(default_factory=list)  # all choices of the request
    sampler: Sampler | None = None
    slot: Slot | None = None
    prefilled: int = 0  # prompt tokens whose KV is in the slot
    pending: int | None = None  # sampled token not yet decoded
    drafter: NgramDrafter | None = None  # with speculation on
    draft: list[int] = field(default_factory=list)  # in this step's batch after ``pending``
    generated: int = 0
    held: str = ""  # text held back because it may be the start of a stop string
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    first_output_sent: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent
    prompt_head: bytes = b""  # the prompt's first token, when its logprobs are asked for
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # prompt tokens 1..
    finished: bool = False

    @property
    def follower(self) -> bool:
        """A choice that takes its prompt KV from the group's first sequence."""
        return self.index > 0

    def emit(self, text: str, finish: str | None) -> None:
        """Send text (and the logprobs gathered since the last output) to the request."""
        queued = None
        prompt = None
        if not self.first_output_sent:
            self.first_output_sent = True
            queued = max(0.0, self.slot.last_used - self.arrived) if self.slot else None
            if self.request.params.prompt_logprobs is not None:
                prompt = PromptLogprobs(self.prompt_head, tuple(self.prompt_logprobs))
                self.prompt_logprobs = []
        logprobs = None
        if self.request.params.logprobs is not None:
            logprobs, self.logprobs = self.logprobs, []
        self.sink(
            GenerationOutput(
                text,
                self.generated,
                finish,  # type: ignore[arg-type]
                queued_s=queued,
                index=self.index,
                logprobs=logprobs,
                prompt_logprobs=prompt,
            )
        )

    def rest_of_text(self) -> str:
        """What is left to send when the sequence ends: text held back as a possible stop
        string that never completed is ordinary output (a completed one was dropped)."""
        text = self.held + self.decoder.decode(b"", final=True)
        self.held = ""
        return text

    def fail(self, exc: BaseException) -> None:
        """Fail the request (every choice of it) and free its slots; the engine goes on."""
        if not isinstance(exc, ArchonError):
            log.error("request %s failed in the engine", self.request.request_id, exc_info=exc)
            exc = InternalError(f"the engine failed on this request: {type(exc).__name__}")
        reported = False
        for member in self.group or [self]:
            if member.slot is not None or not member.finished:
                member.release()
            if not reported:
                member.sink(exc)  # the request's one consumer gets the error once
                reported = True

    def release(self) -> None:
        """Mark the sequence finished and give back its slot and sampler."""
        self.finished = True
        slot = self.slot
        if slot is not None:
            slot.active = None
            slot.last_used = time.monotonic()
        self.slot = None
        self.pending = None
        self.drafter = None
        if self.sampler is not None:
            self.sampler.free()
            self.sampler = None


def new_group(request: GenerationRequest, sink: Sink) -> list[Sequence]:
    """The sequences of a request's ``n`` choices, which start and share a prefill together."""
    arrived = time.monotonic()
    group = [
        Sequence(request=request, sink=sink, arrived=arrived, index=i) for i in range(request.n)
    ]
    for seq in group:
        seq.group = group
    return group


class RequestOutputs:
    """One request's outputs, handed from the engine thread to the caller's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[GenerationOutput | BaseException] = asyncio.Queue()

    def put(self, item: GenerationOutput | BaseException) -> None:
        """The sink of the request's sequences (called from the engine thread)."""
        # The caller's event loop may be gone (its client left and the loop closed);
        # that must never reach the engine thread.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self, alive: Callable[[], bool]) -> GenerationOutput | BaseException:
        """The next output; EngineDead when none comes and the engine has stopped."""
        while True:
            if not self._queue.empty():
                return self._queue.get_nowait()
            try:
                # Wake up now and then: an engine that died cannot answer any more.
                return await asyncio.wait_for(self._queue.get(), timeout=1.0)
            except TimeoutError:
                if not alive():
                    raise EngineDead("the engine loop has stopped") from None


@dataclass
class Slot:
    """One llama.cpp sequence (KV stream) of the context."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    active: Sequence | None = None
    last_used: float = 0.0


def split_stop(held: str, stops: tuple[str, ...]) -> tuple[str, str, str | None]:
    """``held`` text -> (text safe to send now, text to hold back, "stop" when a stop string
    completed). Held back is the longest tail that could be the start of a stop string."""
    if not stops:
        return held, "", None
    cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return held[:cut], "", "stop"
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(held)), keep, -1):
            if held.endswith(stop[:k]):
                keep = k
                break
    return held[: len(held) - keep], held[len(held) - keep :] if keep else "", None


# A slot's cache is reused when the prompt continues most of it (the next turn of its
# conversation, the same prompt again): the shared prefix is at least this share of the cached
# tokens, llama-server's --slot-prompt-similarity rule and default. A cache the prompt shares
# only a little with (another conversation under the same system prompt) is left for its own
# conversation's next turn, which would otherwise evaluate its whole history again.
SLOT_SIMILARITY = 0.5


def choose_slots(free: list[Slot], prompt: list[int]) -> tuple[Slot, list[Slot], int]:
    """Slots for a request: first the one whose cache the prompt continues (the longest shared
    prefix among those, the least recently used among equals), else an empty slot, else the
    least recently used one; then the others by age; and how many of the first one's cached
    tokens the prompt reuses (a shared system prompt, at least, where there is one)."""
    shared = {id(s): shared_prefix(s.cached, prompt) for s in free}
    continued = [
        s for s in free if shared[id(s)] and shared[id(s)] >= SLOT_SIMILARITY * len(s.cached)
    ]
    if continued:
        first = max(continued, key=lambda s: (shared[id(s)], -s.last_used))
    else:
        first = min(free, key=lambda s: (bool(s.cached), s.last_used))
    others = sorted((s for s in free if s is not first), key=lambda s: s.last_used)
    # Keep at least one prompt token to evaluate, for the logits of the first output.
    keep = min(shared[id(first)], len(prompt) - 1)
    return first, others, keep


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the common case of a whole earlier prompt being reused: one C compare
        return n
    lo, hi = 0, n
    while lo < hi:  # binary search on prefix equality, each probe a C-level list compare
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
