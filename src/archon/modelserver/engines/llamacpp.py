"""Continuous batching over llama.cpp's batch API.

One engine thread owns the llama.cpp context. Each step it builds one ``llama_batch`` holding the
next token of every sequence that is generating plus chunks of prompts still being prefilled
(bounded by ``batch_size``, so a long prompt never stalls running streams), runs one
``llama_decode`` and samples every sequence that produced logits. Requests beyond the slot count
wait in a FIFO queue. Each slot keeps the tokens whose KV it holds, so a request that shares a
prefix with a slot's previous request (a system prompt, a chat history) skips that prefill.

``llama_decode`` releases the GIL, so the asyncio server stays responsive while the model runs.

No request can stop the loop: whatever fails while admitting, sampling or detokenising one
sequence fails that request alone (a 4xx when the request caused it, a 500 otherwise) and frees
its slot. Only a context that keeps failing to decode is declared dead.

``n`` choices share one prefill: the first sequence of the group evaluates the prompt, its KV
stream is copied to the other slots, and every choice samples its first token from the same
logits.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.errors import ArchonError, InternalError, InvalidRequestError, ModelLoadError
from archon.modelserver.chat_template import ChatTemplate
from archon.modelserver.engines.base import (
    EngineDead,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    TokenLogprob,
)
from archon.modelserver.engines.llamacpp_sampling import Sampler, Vocabulary

log = logging.getLogger("archon.engine")

Sink = Callable[[GenerationOutput | BaseException], None]

# Decode failures in a row after which the context is taken for dead (one failure fails the
# sequences of that batch only).
DEAD_AFTER_DECODE_FAILURES = 3


@dataclass
class _Sequence:
    request: GenerationRequest
    sink: Sink
    arrived: float
    index: int = 0  # which choice of its request
    group: list[_Sequence] = field(default_factory=list)  # all choices of the request
    sampler: Sampler | None = None
    slot: _Slot | None = None
    prefilled: int = 0  # prompt tokens whose KV is in the slot
    pending: int | None = None  # sampled token not yet decoded
    generated: int = 0
    held: str = ""  # text held back because it may be the start of a stop string
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    first_output_sent: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent
    finished: bool = False

    @property
    def follower(self) -> bool:
        """A choice that takes its prompt KV from the group's first sequence."""
        return self.index > 0


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    active: _Sequence | None = None
    last_used: float = 0.0


class LlamaCppEngine:
    """A llama.cpp model served with N parallel slots and continuous batching."""

    def __init__(
        self,
        model_path: Path,
        *,
        max_model_len: int | None,
        slots: int,
        threads: int,
        batch_size: int,
    ):
        import llama_cpp
        import llama_cpp._logger as llama_logger

        llama_logger.set_verbose(False)
        self._ll = llama_cpp
        llama_cpp.llama_backend_init()

        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), model_params)
        if not model:
            raise ModelLoadError(f"llm_model: llama.cpp could not load {model_path}")
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        train_ctx = llama_cpp.llama_model_n_ctx_train(model)
        if max_model_len is None:
            max_model_len = min(train_ctx, 4096)
        elif max_model_len > train_ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(
                f"max_model_len {max_model_len} is larger than the model's context length "
                f"{train_ctx}; lower max_model_len"
            )
        max_parallel = llama_cpp.llama_max_parallel_sequences()
        if slots > max_parallel:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(f"parallel {slots} is above llama.cpp's limit of {max_parallel}")

        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = max_model_len * slots
        ctx_params.n_batch = batch_size
        ctx_params.n_ubatch = min(batch_size, 512)
        ctx_params.n_seq_max = slots
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        # One KV stream per sequence: attention cost does not grow with the other slots.
        ctx_params.kv_unified = False
        ctx = llama_cpp.llama_init_from_model(model, ctx_params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {max_model_len} x {slots} tokens; "
                "lower max_model_len or parallel"
            )
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self.max_model_len = min(max_model_len, llama_cpp.llama_n_ctx_seq(ctx))
        self.slots = slots
        self.batch_size = batch_size
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, 1)
        self._v = Vocabulary(llama_cpp, self._vocab, self.n_vocab)

        template_src = llama_cpp.llama_model_chat_template(model, None)
        self._template = (
            ChatTemplate(
                template_src.decode("utf-8", "replace"),
                bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
                eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            )
            if template_src
            else None
        )
        self._bos = llama_cpp.llama_vocab_bos(self._vocab)

        self._slots = [_Slot(i) for i in range(slots)]
        self._waiting: deque[_Sequence] = deque()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._running = 0
        self._waiting_count = 0
        self._kv_used = 0
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._decode_failures = 0
        self._alive = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    # ---- API used by the HTTP layer (any thread) ----

    @property
    def alive(self) -> bool:
        return self._alive and self._thread.is_alive()

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        if self._template is None:
            raise InvalidRequestError(
                "This model has no chat template; use /v1/completions with a plain prompt",
                param="messages",
            )
        return self._template.render(messages, add_generation_prompt=add_generation_prompt)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self._ll.llama_token * capacity)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            capacity = -n
            buf = (self._ll.llama_token * capacity)()
            n = self._ll.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, True
            )
        tokens = list(buf[:n])
        # Chat templates often write the BOS token themselves; do not feed it twice.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        return self._v.token_bytes(token, special=True, any_thread=True)

    def check_grammar(self, grammar: str) -> None:
        self._v.check_grammar(grammar)

    def stats(self) -> EngineStats:
        total = self.max_model_len * self.slots
        return EngineStats(
            running=self._running,
            waiting=self._waiting_count,
            kv_cache_usage=min(self._kv_used / total, 1.0) if total else 0.0,
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        if not self.alive:
            raise EngineDead("the engine loop has stopped")
        if request.n > self.slots:
            raise InvalidRequestError(
                f"n={request.n} is more than this server's {self.slots} parallel slots; "
                "lower n or start the server with a larger --parallel (ARCHON_PARALLEL)",
                param="n",
            )
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[GenerationOutput | BaseException] = asyncio.Queue()

        def sink(item: GenerationOutput | BaseException) -> None:
            # The caller's event loop may be gone (its client left and the loop closed);
            # that must never reach the engine thread.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(outputs.put_nowait, item)

        arrived = time.monotonic()
        group: list[_Sequence] = []
        for i in range(request.n):
            group.append(_Sequence(request=request, sink=sink, arrived=arrived, index=i))
        for seq in group:
            seq.group = group
        self._inbox.put(("add", group))
        open_choices = request.n
        try:
            while open_choices:
                if outputs.empty():
                    try:
                        # Wake up now and then: an engine that died cannot answer any more.
                        item = await asyncio.wait_for(outputs.get(), timeout=1.0)
                    except TimeoutError:
                        if not self.alive:
                            open_choices = 0
                            raise EngineDead("the engine loop has stopped") from None
                        continue
                else:
                    item = outputs.get_nowait()
                if isinstance(item, BaseException):
                    open_choices = 0
                    raise item
                if item.finish_reason is not None:
                    open_choices -= 1
                yield item
        finally:
            if open_choices:
                # The client went away (or the caller stopped reading): free the slots now.
                self._inbox.put(("abort", request.request_id))

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            return  # still decoding; leave the native objects to process exit
        for slot in self._slots:
            if slot.active is not None and slot.active.sampler:
                slot.active.sampler.free()
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)
        self._ll.llama_model_free(self._model)

    # ---- engine thread ----

    def _token_text(self, token: int) -> str:
        return self._v.token_bytes(token, special=True).decode("utf-8", "replace")

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox(block=not self._has_work())
                self._admit()
                if any(s.active is not None for s in self._slots):
                    try:
                        self._step()
                    except _ContextDead:
                        raise
                    except Exception as exc:  # a bug in building the batch: fail its requests
                        self._recover(exc, [s.active for s in self._slots if s.active])
                self._update_gauges()
        except BaseException as exc:  # the loop must never die silently
            log.exception("engine loop died")
            self._alive = False
            dead = EngineDead(f"the engine loop has stopped: {exc}")
            for group in self._waiting:
                group[0].sink(dead)
            for slot in self._slots:
                if slot.active is not None:
                    slot.active.sink(dead)
            self._drain_and_fail(dead)

    def _drain_and_fail(self, dead: EngineDead) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                payload[0].sink(dead)

    def _has_work(self) -> bool:
        return bool(self._waiting) or any(s.active is not None for s in self._slots)

    def _drain_inbox(self, *, block: bool) -> None:
        while True:
            try:
                kind, payload = self._inbox.get(timeout=None) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if kind == "add":
                self._waiting.append(payload)
            elif kind == "abort":
                self._abort(payload)

    def _abort(self, request_id: str) -> None:
        for group in list(self._waiting):
            if group[0].request.request_id == request_id:
                self._waiting.remove(group)
                for seq in group:
                    seq.sink(GenerationOutput("", 0, "abort", index=seq.index))
                return
        for slot in self._slots:
            seq = slot.active
            if seq is not None and seq.request.request_id == request_id:
                self._finish(seq, "abort")

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        """Fail one request (every choice of it) and free its slots; the loop goes on."""
        if not isinstance(exc, ArchonError):
            log.error("request %s failed in the engine", seq.request.request_id, exc_info=exc)
            exc = InternalError(f"the engine failed on this request: {type(exc).__name__}")
        reported = False
        for member in seq.group or [seq]:
            if member.slot is not None or not member.finished:
                self._release(member)
            if not reported:
                member.sink(exc)  # the request's one consumer gets the error once
                reported = True

    def _admit(self) -> None:
        while self._waiting:
            group = self._waiting[0]
            free = [s for s in self._slots if s.active is None]
            if len(free) < len(group):
                return  # a request's choices start together, on slots free at the same time
            self._waiting.popleft()
            try:
                self._admit_group(group, free)
            except Exception as exc:
                self._fail(group[0], exc)

    def _admit_group(self, group: list[_Sequence], free: list[_Slot]) -> None:
        prompt = group[0].request.prompt_tokens
        first = max(free, key=lambda s: (_shared_prefix(s.cached, prompt), -s.last_used))
        others = sorted((s for s in free if s is not first), key=lambda s: s.last_used)
        # Keep at least one prompt token to evaluate, for the logits of the first output.
        keep = min(_shared_prefix(first.cached, prompt), len(prompt) - 1)
        if keep < len(first.cached):
            if not self._ll.llama_memory_seq_rm(self._mem, first.seq_id, keep, -1):
                self._ll.llama_memory_seq_rm(self._mem, first.seq_id, -1, -1)
                keep = 0
            del first.cached[keep:]
        self._prefix_queries += len(prompt)
        self._prefix_hits += keep
        now = time.monotonic()
        for seq, slot in zip(group, [first, *others], strict=False):
            seq.sampler = Sampler(self._v, seq.request.params, seed_offset=seq.index)
            seq.sampler.accept_prompt(prompt)
            seq.slot = slot
            slot.active = seq
            slot.last_used = now
        group[0].prefilled = keep

    def _step(self) -> None:
        batch = self._batch
        n = 0
        to_sample: list[tuple[_Sequence, int]] = []
        in_batch: list[_Sequence] = []

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        active = [s.active for s in self._slots if s.active is not None]
        # Running sequences first: one token each keeps every stream moving.
        for seq in active:
            if seq.pending is not None:
                slot = seq.slot
                assert slot is not None
                add(seq.pending, len(slot.cached), slot.seq_id, True)
                slot.cached.append(seq.pending)
                seq.pending = None
                to_sample.append((seq, n - 1))
                in_batch.append(seq)
        # Then prompt chunks, oldest request first, within what is left of the batch.
        for seq in sorted(active, key=lambda s: s.arrived):
            prompt = seq.request.prompt_tokens
            if seq.follower or seq.prefilled >= len(prompt) or seq.pending is not None:
                continue
            room = self.batch_size - n
            if room <= 0:
                break
            slot = seq.slot
            assert slot is not None
            end = min(len(prompt), seq.prefilled + room)
            for i in range(seq.prefilled, end):
                add(prompt[i], i, slot.seq_id, i == len(prompt) - 1)
            slot.cached.extend(prompt[seq.prefilled : end])
            seq.prefilled = end
            in_batch.append(seq)
            if end == len(prompt):
                to_sample.append((seq, n - 1))
        if n == 0:
            return
        batch.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc != 0:
            self._recover(InternalError(f"llama.cpp failed to decode (code {rc})"), in_batch)
            return
        self._decode_failures = 0
        for seq, index in to_sample:
            if seq.slot is None:
                continue
            if seq.index == 0 and seq.prefilled == len(seq.request.prompt_tokens):
                self._start_followers(seq, index)
            self._sample(seq, index)

    def _start_followers(self, first: _Sequence, index: int) -> None:
        """The prompt of a group is evaluated: give every other choice the same KV."""
        for seq in first.group[1:]:
            if seq.slot is None or seq.prefilled:
                continue
            assert first.slot is not None
            # Slots live in separate KV streams: -1, -1 copies the whole stream (the only
            # cross-stream copy llama.cpp supports), done before the next decode.
            self._ll.llama_memory_seq_cp(self._mem, first.slot.seq_id, seq.slot.seq_id, -1, -1)
            seq.slot.cached = list(first.slot.cached)
            seq.prefilled = len(seq.request.prompt_tokens)
            self._prefix_hits += seq.prefilled
            self._prefix_queries += seq.prefilled
            self._sample(seq, index)

    def _sample(self, seq: _Sequence, index: int) -> None:
        try:
            assert seq.sampler is not None
            token, logprob = seq.sampler.sample(self._ctx, index)
            if logprob is not None:
                seq.logprobs.append(logprob)
            self._on_token(seq, token)
        except Exception as exc:
            self._fail(seq, exc)

    def _recover(self, exc: Exception, seqs: list[_Sequence]) -> None:
        """A step failed: fail the requests in it, drop their KV, and go on serving."""
        self._decode_failures += 1
        log.error("engine step failed (%d in a row): %s", self._decode_failures, exc)
        if self._decode_failures >= DEAD_AFTER_DECODE_FAILURES:
            raise _ContextDead(f"{self._decode_failures} engine steps failed in a row: {exc}")
        for seq in seqs:
            if seq.slot is not None:
                # What this step wrote to the slot is unknown: drop it.
                self._ll.llama_memory_seq_rm(self._mem, seq.slot.seq_id, -1, -1)
                seq.slot.cached.clear()
            if not seq.finished:
                self._fail(seq, exc)

    def _on_token(self, seq: _Sequence, token: int) -> None:
        params = seq.request.params
        seq.generated += 1
        # A grammar's end is an end-of-generation token: ignore_eos cannot go past it.
        eog = self._ll.llama_vocab_is_eog(self._vocab, token)
        if eog and (not params.ignore_eos or params.grammar is not None):
            self._finish(seq, "stop")
            return
        seq.held += seq.decoder.decode(self._v.token_bytes(token))
        text, finish = self._split_stop(seq, params.stop)
        if finish is None and seq.generated >= params.max_tokens:
            finish = "length"
        slot = seq.slot
        assert slot is not None
        if finish is None and len(slot.cached) + 1 >= self.max_model_len:
            finish = "length"
        if finish is not None:
            self._finish(seq, finish, text)
            return
        seq.pending = token
        if text or seq.logprobs:
            self._emit(seq, text, None)

    @staticmethod
    def _split_stop(seq: _Sequence, stops: tuple[str, ...]) -> tuple[str, str | None]:
        """Text safe to send now, and "stop" when a stop string completed."""
        held = seq.held
        if not stops:
            seq.held = ""
            return held, None
        cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            seq.held = ""
            return held[:cut], "stop"
        keep = 0
        for stop in stops:
            for k in range(min(len(stop) - 1, len(held)), keep, -1):
                if held.endswith(stop[:k]):
                    keep = k
                    break
        seq.held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep], None

    def _emit(self, seq: _Sequence, text: str, finish: str | None) -> None:
        queued = None
        if not seq.first_output_sent:
            seq.first_output_sent = True
            queued = max(0.0, seq.slot.last_used - seq.arrived) if seq.slot else None
        logprobs = None
        if seq.request.params.logprobs is not None:
            logprobs, seq.logprobs = seq.logprobs, []
        seq.sink(
            GenerationOutput(
                text,
                seq.generated,
                finish,  # type: ignore[arg-type]
                queued_s=queued,
                index=seq.index,
                logprobs=logprobs,
            )
        )

    def _finish(self, seq: _Sequence, reason: str, text: str = "") -> None:
        # Text held back as a possible stop string that never completed is ordinary output.
        # (_split_stop already dropped everything from a completed stop string on.)
        text += seq.held + seq.decoder.decode(b"", final=True)
        seq.held = ""
        self._emit(seq, text, reason)
        self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        seq.finished = True
        slot = seq.slot
        if slot is not None:
            slot.active = None
            slot.last_used = time.monotonic()
        seq.slot = None
        seq.pending = None
        if seq.sampler is not None:
            seq.sampler.free()
            seq.sampler = None

    def _update_gauges(self) -> None:
        active = [s for s in self._slots if s.active is not None]
        self._running = len(active)
        self._waiting_count = sum(len(g) for g in self._waiting)
        self._kv_used = sum(len(s.cached) for s in active)


class _ContextDead(RuntimeError):
    """The llama.cpp context keeps failing: the engine cannot serve any more."""


def _shared_prefix(a: list[int], b: list[int]) -> int:
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
