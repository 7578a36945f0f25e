"""OpenAI requests in, engine requests through, OpenAI responses out; metrics on the way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from archon.errors import (
    ArchonError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from archon.modelserver.engines.base import (
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from archon.modelserver.metrics import ModelServerMetrics
from archon.modelserver.runtime import ModelRuntime
from archon.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from archon.openai.sse import DONE, sse_event

Kind = Literal["chat", "text"]


@dataclass
class Prepared:
    kind: Kind
    request_id: str
    created: int
    generation: GenerationRequest
    stream: bool
    include_usage: bool

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_tokens)


class CompletionService:
    def __init__(self, runtime: ModelRuntime, metrics: ModelServerMetrics):
        self.runtime = runtime
        self.metrics = metrics
        self.served_name = runtime.served_name

    # ---- request -> engine request ----

    def _check_model(self, name: str) -> None:
        if name != self.served_name:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist; this server serves '{self.served_name}'",
                param="model",
            )

    async def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        self._check_model(req.model)
        req.check_supported()
        engine = self.runtime.require_engine()
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
            for i, m in enumerate(req.messages)
        ]
        prompt = engine.apply_chat_template(messages)
        tokens = await asyncio.to_thread(engine.tokenize, prompt, add_special=True)
        return self._prepare("chat", "chatcmpl", req, tokens, req.output_limit(), "messages")

    async def prepare_completion(self, req: CompletionRequest) -> Prepared:
        self._check_model(req.model)
        req.check_supported()
        engine = self.runtime.require_engine()
        prompt = req.single_prompt()
        if isinstance(prompt, list):
            vocab = getattr(engine, "n_vocab", None)
            bad = [t for t in prompt if t < 0 or (vocab is not None and t >= vocab)]
            if bad:
                raise InvalidRequestError(
                    f"Token id {bad[0]} is out of range for this model's vocabulary",
                    param="prompt",
                )
            tokens = prompt
        else:
            tokens = await asyncio.to_thread(engine.tokenize, prompt, add_special=True)
        if not tokens:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return self._prepare("text", "cmpl", req, tokens, req.output_limit(), "prompt")

    def _check_queue(self) -> None:
        limit = self.runtime.settings.max_waiting
        waiting = self.runtime.require_engine().stats().waiting
        if limit and waiting >= limit:
            raise ServiceUnavailableError(
                f"Server overloaded: {waiting} requests already wait for a slot; retry later",
                code="queue_full",
            )

    def _prepare(
        self,
        kind: Kind,
        prefix: str,
        req: SamplingFields,
        tokens: list[int],
        limit: int | None,
        prompt_param: str,
    ) -> Prepared:
        self._check_queue()
        max_len = self.runtime.require_engine().max_model_len
        n = len(tokens)
        if n >= max_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"{prompt_param} resulted in {n} tokens, leaving no room for output. "
                f"Please reduce the length of the {prompt_param}.",
                param=prompt_param,
            )
        if limit is not None and n + limit > max_len:
            param = (
                "max_completion_tokens"
                if getattr(req, "max_completion_tokens", None)
                else ("max_tokens")
            )
            raise InvalidRequestError(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{n + limit} tokens ({n} in the {prompt_param}, {limit} for the completion). "
                f"Please reduce the length of the {prompt_param} or {param}.",
                param=param,
            )
        params = SamplingParams(
            max_tokens=limit if limit is not None else max_len - n,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(req.top_k or 0, 0),
            min_p=req.min_p or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            seed=req.seed,
            stop=tuple(req.stop_list()),
            ignore_eos=req.ignore_eos,
        )
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        return Prepared(
            kind=kind,
            request_id=request_id,
            created=int(time.time()),
            generation=GenerationRequest(request_id, tokens, params),
            stream=req.stream,
            include_usage=include_usage,
        )

    # ---- engine outputs, with metrics ----

    async def _outputs(self, prepared: Prepared) -> AsyncIterator[GenerationOutput]:
        engine = self.runtime.require_engine()
        start = time.monotonic()
        last = start
        ttft: float | None = None
        queued: float | None = None
        gaps: list[float] = []
        tokens = 0
        finish = "abort"
        try:
            async for out in engine.generate(prepared.generation):
                now = time.monotonic()
                if out.queued_s is not None:
                    queued = out.queued_s
                new_tokens = out.completion_tokens - tokens
                if ttft is None:
                    ttft = now - start
                elif new_tokens > 0:
                    gaps.extend([(now - last) / new_tokens] * new_tokens)
                last = now
                tokens = out.completion_tokens
                if out.finish_reason is not None:
                    finish = out.finish_reason
                yield out
        finally:
            self.metrics.observe_request(
                ttft=ttft,
                itl=gaps,
                e2e=time.monotonic() - start,
                queued=queued,
                prompt_tokens=prepared.prompt_tokens,
                generation_tokens=tokens,
                finish_reason=finish,
            )

    def _usage(self, prepared: Prepared, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prepared.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prepared.prompt_tokens + completion_tokens,
        }

    async def complete(self, prepared: Prepared) -> dict[str, Any]:
        parts: list[str] = []
        finish = "stop"
        tokens = 0
        async for out in self._outputs(prepared):
            parts.append(out.text)
            tokens = out.completion_tokens
            finish = out.finish_reason or finish
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if prepared.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
            obj = "chat.completion"
        else:
            choice["text"] = text
            obj = "text_completion"
        return {
            "id": prepared.request_id,
            "object": obj,
            "created": prepared.created,
            "model": self.served_name,
            "choices": [choice],
            "usage": self._usage(prepared, tokens),
        }

    async def stream(self, prepared: Prepared) -> AsyncIterator[bytes]:
        chat = prepared.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any] | None, usage: Any = None) -> bytes:
            payload: dict[str, Any] = {
                "id": prepared.request_id,
                "object": obj,
                "created": prepared.created,
                "model": self.served_name,
                "choices": [choice] if choice is not None else [],
            }
            if prepared.include_usage:
                payload["usage"] = usage
            return sse_event(payload)

        def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                c["delta"] = (
                    {"role": "assistant", "content": text}
                    if first
                    else ({"content": text} if text or finish is None else {})
                )
            else:
                c["text"] = text
            return c

        tokens = 0
        if chat:
            yield chunk(choice("", None, first=True))
        try:
            async for out in self._outputs(prepared):
                tokens = out.completion_tokens
                if out.text or out.finish_reason:
                    yield chunk(choice(out.text, out.finish_reason))
        except ArchonError as exc:  # headers are sent: the error travels as an event
            yield sse_event(exc.body())
            yield DONE
            return
        if prepared.include_usage:
            yield chunk(None, self._usage(prepared, tokens))
        yield DONE
