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

With speculation on, a running sequence's pending token is followed in the batch by a draft
of its next tokens, guessed by n-gram lookup over its own prompt and output, and verified in the
same decode (``llamacpp_speculation``).

Here: the engine thread's loop and the API the HTTP layer calls. The llama.cpp objects are in
``llamacpp_native``, a request's sequences and the rules applied to them in
``llamacpp_sequence``, one sequence's sampling in ``llamacpp_sampling``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from archon.errors import InternalError, InvalidRequestError
from archon.modelserver.engines import llamacpp_native
from archon.modelserver.engines.base import (
    EngineDead,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    SpecDecodeStats,
)
from archon.modelserver.engines.llamacpp_sampling import Sampler, prompt_token_logprob
from archon.modelserver.engines.llamacpp_sequence import (
    RequestOutputs,
    Sequence,
    Slot,
    choose_slots,
    new_group,
    split_stop,
)
from archon.modelserver.engines.llamacpp_speculation import (
    NgramDrafter,
    SpeculationConfig,
    verify,
)
from archon.modelserver.settings import CpuRepack

log = logging.getLogger("archon.engine")

# Decode failures in a row after which the context is taken for dead (one failure fails the
# sequences of that batch only).
DEAD_AFTER_DECODE_FAILURES = 3


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
        cpu_repack: CpuRepack = "auto",
        speculation: SpeculationConfig | None = None,
    ):
        native = llamacpp_native.load(
            model_path,
            max_model_len=max_model_len,
            slots=slots,
            threads=threads,
            batch_size=batch_size,
            cpu_repack=cpu_repack,
        )
        self._native = native
        self._ctx = native.ctx
        self._mem = native.mem
        self._ll = native.ll
        self.n_vocab = native.n_vocab
        self.max_model_len = native.max_model_len
        self.slots = slots
        self.batch_size = batch_size

        self._slots = [Slot(i) for i in range(slots)]
        self._waiting: deque[list[Sequence]] = deque()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._running = 0
        self._waiting_count = 0
        self._kv_used = 0
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._decode_failures = 0
        self._speculation = speculation
        self._spec_stats = (
            SpecDecodeStats(accepted_per_position=[0] * speculation.tokens) if speculation else None
        )
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
        return self._native.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt
        )

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self._native.tokenize(text, add_special=add_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._native.detokenize(tokens)

    def token_bytes(self, token: int) -> bytes:
        return self._native.token_bytes(token)

    def tokenizer_info(self) -> dict[str, Any]:
        return self._native.tokenizer_info()

    def check_grammar(self, grammar: str) -> None:
        self._native.vocabulary.check_grammar(grammar)

    def stats(self) -> EngineStats:
        total = self.max_model_len * self.slots
        return EngineStats(
            running=self._running,
            waiting=self._waiting_count,
            kv_cache_usage=min(self._kv_used / total, 1.0) if total else 0.0,
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            spec_decode=self._spec_stats,
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
        outputs = RequestOutputs()
        self._inbox.put(("add", new_group(request, outputs.put)))
        open_choices = request.n
        try:
            while open_choices:
                try:
                    item = await outputs.get(lambda: self.alive)
                except EngineDead:
                    open_choices = 0
                    raise
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
        self._native.free()

    # ---- engine thread ----

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
            active = slot.active
            if active is not None and active.request.request_id == request_id:
                self._finish(active, "abort")

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
                group[0].fail(exc)

    def _admit_group(self, group: list[Sequence], free: list[Slot]) -> None:
        prompt = group[0].request.prompt_tokens
        first, others, keep = choose_slots(free, prompt)
        scoring = group[0].request.params.prompt_logprobs is not None
        if scoring:
            # The prompt's logprobs need the logits of every prompt position: a reused KV
            # prefix has none, so the whole prompt is evaluated again.
            keep = 0
        if keep < len(first.cached):
            if not self._ll.llama_memory_seq_rm(self._mem, first.seq_id, keep, -1):
                self._ll.llama_memory_seq_rm(self._mem, first.seq_id, -1, -1)
                keep = 0
            del first.cached[keep:]
        self._prefix_queries += len(prompt)
        self._prefix_hits += keep
        now = time.monotonic()
        for seq, slot in zip(group, [first, *others], strict=False):
            seq.sampler = Sampler(
                self._native.vocabulary, seq.request.params, seed_offset=seq.index
            )
            seq.sampler.accept_prompt(prompt)
            if self._speculation is not None:
                seq.drafter = NgramDrafter(self._speculation, prompt)
            if scoring:
                seq.prompt_head = self._native.vocabulary.token_bytes(prompt[0], special=True)
            seq.slot = slot
            slot.active = seq
            slot.last_used = now
        group[0].prefilled = keep

    def _step(self) -> None:
        batch = self._native.batch
        n = 0
        to_sample: list[tuple[Sequence, int]] = []
        to_score: list[tuple[Sequence, int, int]] = []  # (sequence, batch index, prompt position)
        in_batch: list[Sequence] = []

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        active = [s.active for s in self._slots if s.active is not None]
        running = sum(1 for seq in active if seq.pending is not None)
        # What a draft may take of the batch: every running sequence still gets its token.
        draft_room = (self.batch_size - running) // running if running else 0
        # Running sequences first: one token each keeps every stream moving.
        for seq in active:
            if seq.pending is not None:
                slot = seq.slot
                assert slot is not None
                pos = len(slot.cached)
                add(seq.pending, pos, slot.seq_id, True)
                slot.cached.append(seq.pending)
                seq.pending = None
                to_sample.append((seq, n - 1))
                in_batch.append(seq)
                if seq.drafter is not None:
                    seq.draft = seq.drafter.draft(self._draft_limit(seq, pos, draft_room))
                    for j, token in enumerate(seq.draft):
                        add(token, pos + 1 + j, slot.seq_id, True)
                    slot.cached.extend(seq.draft)
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
            scoring = seq.request.params.prompt_logprobs is not None
            for i in range(seq.prefilled, end):
                last = i == len(prompt) - 1
                add(prompt[i], i, slot.seq_id, last or scoring)
                if scoring and not last:
                    to_score.append((seq, n - 1, i))
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
        for seq, index, pos in to_score:
            self._score(seq, index, pos)
        for seq, index in to_sample:
            if seq.slot is None:
                continue
            if seq.draft:
                self._verify(seq, index)
                continue
            if seq.index == 0 and seq.prefilled == len(seq.request.prompt_tokens):
                self._start_followers(seq, index)
            self._sample(seq, index)

    def _draft_limit(self, seq: Sequence, pos: int, room: int) -> int:
        """Draft tokens a sequence may add after its pending token at ``pos``: within its batch
        share, its KV stream, and what ``max_tokens`` leaves (one step outputs draft + 1)."""
        left = seq.request.params.max_tokens - seq.generated
        return min(room, self.max_model_len - pos - 2, left - 1)

    def _verify(self, seq: Sequence, index: int) -> None:
        """Sample the pending token's position and the draft's, in order, while the draft
        holds; keep the KV of the accepted draft tokens and remove the rest."""
        draft, seq.draft = seq.draft, []
        slot = seq.slot
        assert slot is not None and self._spec_stats is not None
        first = len(slot.cached) - len(draft)  # the position of draft[0]

        def sample_at(i: int) -> int | None:
            return self._sample(seq, index + i) if seq.slot is not None else None

        _, accepted = verify(draft, sample_at)
        keep = first + accepted
        if not self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
            # Cannot happen with a transformer's KV cache; never let a stale draft stay.
            self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            keep = 0
            if seq.slot is not None:
                seq.fail(InternalError("llama.cpp could not remove a rejected draft"))
        del slot.cached[keep:]
        self._spec_stats.record(len(draft), accepted)
        if seq.drafter is not None:
            seq.drafter.verdict(len(draft), accepted)

    def _start_followers(self, first: Sequence, index: int) -> None:
        """The prompt of a group is evaluated: give every other choice the same KV."""
        for seq in first.group[1:]:
            if seq.slot is None or seq.prefilled:
                continue
            assert first.slot is not None
            # Slots live in separate KV streams: -1, -1 copies the whole stream (the only
            # cross-stream copy llama.cpp supports), done before the next decode.
            self._ll.llama_memory_seq_cp(self._mem, first.slot.seq_id, seq.slot.seq_id, -1, -1)
            seq.slot.cached = list(first.slot.cached)
            seq.prompt_logprobs = list(first.prompt_logprobs)
            seq.prefilled = len(seq.request.prompt_tokens)
            self._prefix_hits += seq.prefilled
            self._prefix_queries += seq.prefilled
            self._sample(seq, index)

    def _score(self, seq: Sequence, index: int, pos: int) -> None:
        """Record the logprob of prompt token ``pos + 1`` from the logits at ``pos``."""
        if seq.slot is None:
            return  # failed earlier in this step
        try:
            top = seq.request.params.prompt_logprobs
            assert top is not None
            token = seq.request.prompt_tokens[pos + 1]
            entry = prompt_token_logprob(self._native.vocabulary, self._ctx, index, token, top)
            seq.prompt_logprobs.append(entry)
        except Exception as exc:
            seq.fail(exc)

    def _sample(self, seq: Sequence, index: int) -> int | None:
        """Sample the sequence's next token from the logits at ``index`` and output it; the
        token, or None when the request failed."""
        if seq.request.params.max_tokens == 0:
            # An echo of the prompt alone (its logprobs): the prefill was the whole request.
            self._finish(seq, "length")
            return None
        try:
            assert seq.sampler is not None
            token, logprob = seq.sampler.sample(self._ctx, index)
            if logprob is not None:
                seq.logprobs.append(logprob)
            self._on_token(seq, token)
            return token
        except Exception as exc:
            seq.fail(exc)
            return None

    def _recover(self, exc: Exception, seqs: list[Sequence]) -> None:
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
                seq.fail(exc)

    def _on_token(self, seq: Sequence, token: int) -> None:
        params = seq.request.params
        seq.generated += 1
        if seq.drafter is not None:
            seq.drafter.append(token)
        # A grammar's end is an end-of-generation token: ignore_eos cannot go past it.
        eog = self._ll.llama_vocab_is_eog(self._native.vocab, token)
        if eog and (not params.ignore_eos or params.grammar is not None):
            self._finish(seq, "stop")
            return
        seq.held += seq.decoder.decode(self._native.vocabulary.token_bytes(token))
        text, seq.held, finish = split_stop(seq.held, params.stop)
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
            seq.emit(text, None)

    def _finish(self, seq: Sequence, reason: str, text: str = "") -> None:
        seq.emit(text + seq.rest_of_text(), reason)
        seq.release()

    def _update_gauges(self) -> None:
        active = [s for s in self._slots if s.active is not None]
        self._running = len(active)
        self._waiting_count = sum(len(g) for g in self._waiting)
        self._kv_used = sum(len(s.cached) for s in active)


class _ContextDead(RuntimeError):
    """The llama.cpp context keeps failing: the engine cannot serve any more."""
