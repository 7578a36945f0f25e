"""Continuous batching over llama.cpp's batch API.

One engine thread owns the llama.cpp context. Each step it builds one ``llama_batch`` holding the
next token of every sequence that is generating plus chunks of prompts still being prefilled
(bounded by ``batch_size``, so a long prompt never stalls running streams), runs one
``llama_decode`` and samples every sequence that produced logits. Requests beyond the slot count
wait in a FIFO queue. Each slot keeps the tokens whose KV it holds, so a request that shares a
prefix with a slot's previous request (a system prompt, a chat history) skips that prefill.

``llama_decode`` releases the GIL, so the asyncio server stays responsive while the model runs.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.errors import InvalidRequestError, ModelLoadError
from archon.modelserver.chat_template import ChatTemplate
from archon.modelserver.engines.base import (
    EngineDead,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)

log = logging.getLogger("archon.engine")

Sink = Callable[[GenerationOutput | BaseException], None]


@dataclass
class _Sequence:
    request: GenerationRequest
    sink: Sink
    arrived: float
    sampler: Any = None
    slot: _Slot | None = None
    prefilled: int = 0  # prompt tokens whose KV is in the slot
    pending: int | None = None  # sampled token not yet decoded
    generated: int = 0
    held: str = ""  # text held back because it may be the start of a stop string
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    first_output_sent: bool = False


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
        self._piece_buf = ctypes.create_string_buffer(256)

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
        self._alive = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    # ---- API used by the HTTP layer (any thread) ----

    @property
    def alive(self) -> bool:
        return self._alive and self._thread.is_alive()

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            raise InvalidRequestError(
                "This model has no chat template; use /v1/completions with a plain prompt",
                param="messages",
            )
        return self._template.render(messages)

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
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[GenerationOutput | BaseException] = asyncio.Queue()

        def sink(item: GenerationOutput | BaseException) -> None:
            # The caller's event loop may be gone (its client left and the loop closed);
            # that must never reach the engine thread.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(outputs.put_nowait, item)

        seq = _Sequence(request=request, sink=sink, arrived=time.monotonic())
        self._inbox.put(("add", seq))
        finished = False
        try:
            while True:
                if outputs.empty():
                    try:
                        # Wake up now and then: an engine that died cannot answer any more.
                        item = await asyncio.wait_for(outputs.get(), timeout=1.0)
                    except TimeoutError:
                        if not self.alive:
                            finished = True
                            raise EngineDead("the engine loop has stopped") from None
                        continue
                else:
                    item = outputs.get_nowait()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                # The client went away (or the caller stopped reading): free the slot now.
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
                self._ll.llama_sampler_free(slot.active.sampler)
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)
        self._ll.llama_model_free(self._model)

    # ---- engine thread ----

    def _token_text(self, token: int) -> str:
        return self._piece(token, special=True).decode("utf-8", "replace")

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        n = self._ll.llama_token_to_piece(
            self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special
        )
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(
                self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special
            )
        return self._piece_buf.raw[:n]

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox(block=not self._has_work())
                self._admit()
                if any(s.active is not None for s in self._slots):
                    self._step()
                self._update_gauges()
        except BaseException as exc:  # the loop must never die silently
            log.exception("engine loop died")
            self._alive = False
            dead = EngineDead(f"the engine loop has stopped: {exc}")
            for seq in [*self._waiting, *(s.active for s in self._slots if s.active)]:
                seq.sink(dead)
            self._drain_and_fail(dead)

    def _drain_and_fail(self, dead: EngineDead) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                payload.sink(dead)

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
        for seq in list(self._waiting):
            if seq.request.request_id == request_id:
                self._waiting.remove(seq)
                seq.sink(GenerationOutput("", 0, "abort", queued_s=None))
                return
        for slot in self._slots:
            seq = slot.active
            if seq is not None and seq.request.request_id == request_id:
                self._finish(seq, "abort")
                return

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self._slots if s.active is None]
            if not free:
                return
            seq = self._waiting.popleft()
            prompt = seq.request.prompt_tokens

            slot = max(free, key=lambda s: (_shared_prefix(s.cached, prompt), -s.last_used))
            # Keep at least one prompt token to evaluate, for the logits of the first output.
            keep = min(_shared_prefix(slot.cached, prompt), len(prompt) - 1)
            if keep < len(slot.cached):
                if not self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
                    self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                    keep = 0
                del slot.cached[keep:]
            self._prefix_queries += len(prompt)
            self._prefix_hits += keep
            seq.slot = slot
            seq.prefilled = keep
            seq.sampler = self._make_sampler(seq.request.params)
            slot.active = seq
            slot.last_used = time.monotonic()

    def _make_sampler(self, p: SamplingParams) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    64, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
                ),
            )
        if p.temperature <= 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else random.getrandbits(32)
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _step(self) -> None:
        batch = self._batch
        n = 0
        to_sample: list[tuple[_Sequence, int]] = []

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
        # Then prompt chunks, oldest request first, within what is left of the batch.
        for seq in sorted(active, key=lambda s: s.arrived):
            prompt = seq.request.prompt_tokens
            if seq.prefilled >= len(prompt) or seq.pending is not None:
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
            if end == len(prompt):
                to_sample.append((seq, n - 1))
        if n == 0:
            return
        batch.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for seq, index in to_sample:
            if seq.slot is None:
                continue
            token = self._ll.llama_sampler_sample(seq.sampler, self._ctx, index)
            self._on_token(seq, token)

    def _on_token(self, seq: _Sequence, token: int) -> None:
        params = seq.request.params
        seq.generated += 1
        if not params.ignore_eos and self._ll.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.held += seq.decoder.decode(self._piece(token))
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
        if text:
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
        seq.sink(GenerationOutput(text, seq.generated, finish, queued_s=queued))  # type: ignore[arg-type]

    def _finish(self, seq: _Sequence, reason: str, text: str = "") -> None:
        # Text held back as a possible stop string that never completed is ordinary output.
        # (_split_stop already dropped everything from a completed stop string on.)
        text += seq.held + seq.decoder.decode(b"", final=True)
        seq.held = ""
        self._emit(seq, text, reason)
        slot = seq.slot
        if slot is not None:
            slot.active = None
            slot.last_used = time.monotonic()
        seq.slot = None
        if seq.sampler:
            self._ll.llama_sampler_free(seq.sampler)
            seq.sampler = None

    def _update_gauges(self) -> None:
        active = [s for s in self._slots if s.active is not None]
        self._running = len(active)
        self._waiting_count = len(self._waiting)
        self._kv_used = sum(len(s.cached) for s in active)


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
