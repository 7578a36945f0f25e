"""Engine outputs to OpenAI responses, whole or streamed; the per-request metrics on the way.

The request side (validation against the model, tokenizing, context checks) is preparation.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from archon.errors import ArchonError
from archon.modelserver import tool_stream
from archon.modelserver.engines.base import GenerationOutput, GenerationRequest, PromptLogprobs
from archon.modelserver.metrics import ModelServerMetrics
from archon.modelserver.preparation import Prepared
from archon.modelserver.runtime import ModelRuntime
from archon.openai.sse import DONE, sse_event


class CompletionService:
    """Runs a prepared request (preparation.py) on the engine and answers it in the OpenAI
    shape, whole or streamed, with the request's metrics."""

    def __init__(self, runtime: ModelRuntime, metrics: ModelServerMetrics):
        self.runtime = runtime
        self.metrics = metrics
        self.served_name = runtime.served_name

    # ---- engine outputs, with metrics ----

    async def _metered(self, generation: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        engine = self.runtime.require_engine()
        start = time.monotonic()
        last = start
        ttft: float | None = None
        queued: float | None = None
        gaps: list[float] = []
        per_choice: dict[int, int] = {}
        finish = "abort"
        try:
            async for out in engine.generate(generation):
                now = time.monotonic()
                if out.queued_s is not None:
                    queued = out.queued_s
                new_tokens = out.completion_tokens - per_choice.get(out.index, 0)
                if ttft is None:
                    ttft = now - start
                elif new_tokens > 0:
                    gaps.extend([(now - last) / new_tokens] * new_tokens)
                last = now
                per_choice[out.index] = out.completion_tokens
                if out.finish_reason is not None:
                    finish = out.finish_reason
                yield out
        finally:
            self.metrics.observe_request(
                ttft=ttft,
                itl=gaps,
                e2e=time.monotonic() - start,
                queued=queued,
                prompt_tokens=len(generation.prompt_tokens),
                generation_tokens=sum(per_choice.values()),
                finish_reason=finish,
            )

    async def _outputs(self, prepared: Prepared) -> AsyncIterator[tuple[int, GenerationOutput]]:
        """Every prompt's outputs, as (choice index, output): prompt i's choices are i*n+j."""
        n = prepared.n
        if len(prepared.generations) == 1:
            async for out in self._metered(prepared.generations[0]):
                yield out.index, out
            return
        merged: asyncio.Queue[tuple[int, GenerationOutput | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, generation: GenerationRequest) -> None:
            try:
                async for out in self._metered(generation):
                    await merged.put((i, out))
            except Exception as exc:
                await merged.put((i, exc))
            finally:
                await merged.put((i, None))

        tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(prepared.generations)]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await merged.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i * n + item.index, item
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    def _usage(self, prepared: Prepared, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prepared.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prepared.prompt_tokens + completion_tokens,
        }

    def _choice_count(self, prepared: Prepared) -> int:
        return len(prepared.generations) * prepared.n

    async def complete(self, prepared: Prepared) -> dict[str, Any]:
        count = self._choice_count(prepared)
        texts: list[list[str]] = [[] for _ in range(count)]
        tokens = [0] * count
        finish: list[str] = ["stop"] * count
        logprobs: list[list[Any]] = [[] for _ in range(count)]
        prompt_logprobs: list[PromptLogprobs | None] = [None] * count
        async for index, out in self._outputs(prepared):
            texts[index].append(out.text)
            tokens[index] = out.completion_tokens
            finish[index] = out.finish_reason or finish[index]
            if out.logprobs:
                logprobs[index].extend(out.logprobs)
            if out.prompt_logprobs is not None:
                prompt_logprobs[index] = out.prompt_logprobs
        choices = []
        for index in range(count):
            text = "".join(texts[index])
            choice: dict[str, Any] = {"index": index, "finish_reason": finish[index]}
            fmt = prepared.logprobs
            if prepared.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                if prepared.tools:
                    answer = tool_stream.read_answer(text)
                    message["content"] = answer.content
                    if answer.tool_calls:
                        message["tool_calls"] = answer.tool_calls
                    choice["finish_reason"] = answer.finish_reason(finish[index])
                choice["message"] = message
                choice["logprobs"] = fmt.chat(logprobs[index]) if fmt else None
            else:
                echo = prepared.echo[index // prepared.n] if prepared.echo else ""
                choice["text"] = echo + text
                choice["logprobs"] = (
                    fmt.text(logprobs[index], offset=len(echo), prompt=prompt_logprobs[index])
                    if fmt
                    else None
                )
            choices.append(choice)
        return {
            "id": prepared.request_id,
            "object": "chat.completion" if prepared.kind == "chat" else "text_completion",
            "created": prepared.created,
            "model": self.served_name,
            "choices": choices,
            "usage": self._usage(prepared, sum(tokens)),
        }

    async def stream(self, prepared: Prepared) -> AsyncIterator[bytes]:
        chat = prepared.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        fmt = prepared.logprobs
        count = self._choice_count(prepared)

        def chunk(choice: dict[str, Any] | None, usage: Any = None) -> bytes:
            payload: dict[str, Any] = {
                "id": prepared.request_id,
                "object": obj,
                "created": prepared.created,
                "model": self.served_name,
                "choices": [choice] if choice is not None else [],
            }
            # Chat chunks carry "usage": null until the last (OpenAI's spec); the legacy
            # completions schema has no null usage, so its chunks leave it out instead.
            if prepared.include_usage and (usage is not None or obj == "chat.completion.chunk"):
                payload["usage"] = usage
            return sse_event(payload)

        # Where each choice's next token starts in its text (after any echoed prompt).
        offsets = [
            len(prepared.echo[i // prepared.n]) if prepared.echo else 0 for i in range(count)
        ]
        tokens = [0] * count
        # Tool answers: the wrapper JSON read as it comes, as content and tool-call deltas.
        readers = [tool_stream.ToolAnswerReader() for _ in range(count if prepared.tools else 0)]

        # With echo and logprobs the echo waits for the choice's first output, which carries
        # the prompt's logprobs, and goes out in one chunk with them (as vLLM sends it).
        echo_with_logprobs = bool(prepared.echo) and fmt is not None
        echo_due = [echo_with_logprobs] * count

        def text_choice(index: int, out: GenerationOutput) -> dict[str, Any]:
            head = ""
            if echo_due[index]:
                echo_due[index] = False
                head = prepared.echo[index // prepared.n]
            lps = (
                fmt.text(out.logprobs or [], offset=offsets[index], prompt=out.prompt_logprobs)
                if fmt
                else None
            )
            offsets[index] += len(out.text)
            return {
                "index": index,
                "text": head + out.text,
                "logprobs": lps,
                "finish_reason": out.finish_reason,
            }

        def chat_choice(
            index: int, delta: dict[str, Any], finish: str | None, lps: Any
        ) -> dict[str, Any]:
            return {
                "index": index,
                "delta": delta,
                "logprobs": fmt.chat(lps) if fmt and lps else None,
                "finish_reason": finish,
            }

        try:
            if chat:
                for index in range(count):
                    yield chunk(chat_choice(index, {"role": "assistant", "content": ""}, None, []))
            elif prepared.echo and not echo_with_logprobs:
                for index in range(count):
                    echo = prepared.echo[index // prepared.n]
                    if echo:
                        yield chunk(
                            {"index": index, "text": echo, "logprobs": None, "finish_reason": None}
                        )
            async for index, out in self._outputs(prepared):
                tokens[index] = out.completion_tokens
                if not chat:
                    if out.text or out.finish_reason or out.logprobs or echo_due[index]:
                        yield chunk(text_choice(index, out))
                    continue
                if prepared.tools:
                    deltas = readers[index].feed(out.text)
                    if not deltas and out.logprobs:
                        deltas = [{}]  # the wrapper's tokens: their logprobs still go out
                    for position, delta in enumerate(deltas):
                        lps = out.logprobs if position == 0 else None
                        yield chunk(chat_choice(index, delta, None, lps))
                    if out.finish_reason is not None:
                        finish = readers[index].answer().finish_reason(out.finish_reason)
                        yield chunk(chat_choice(index, {}, finish, None))
                    continue
                if out.text or out.finish_reason or out.logprobs:
                    delta = {"content": out.text} if out.text else {}
                    yield chunk(chat_choice(index, delta, out.finish_reason, out.logprobs))
        except ArchonError as exc:  # headers are sent: the error travels as an event
            yield sse_event(exc.body())
            yield DONE
            return
        if prepared.include_usage:
            yield chunk(None, self._usage(prepared, sum(tokens)))
        yield DONE
