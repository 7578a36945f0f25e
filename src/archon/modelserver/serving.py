"""OpenAI requests in, engine requests through, OpenAI responses out; metrics on the way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from archon.errors import (
    ArchonError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from archon.modelserver import tool_calls
from archon.modelserver.engines.base import (
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from archon.modelserver.logprobs import LogprobFormatter
from archon.modelserver.metrics import ModelServerMetrics
from archon.modelserver.runtime import ModelRuntime
from archon.modelserver.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from archon.modelserver.structured_output import ANY_JSON_OBJECT, grammar_for_schema
from archon.openai.sse import DONE, sse_event

log = logging.getLogger("archon.modelserver")

Kind = Literal["chat", "text"]


@dataclass
class Prepared:
    kind: Kind
    request_id: str
    created: int
    generations: list[GenerationRequest]  # one per prompt; each has n choices
    stream: bool
    include_usage: bool
    logprobs: LogprobFormatter | None = None
    tools: bool = False  # the answer is the generic tool-call JSON, parsed at the end
    echo: list[str] = field(default_factory=list)  # text put before each prompt's choices

    @property
    def n(self) -> int:
        return self.generations[0].n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(g.prompt_tokens) for g in self.generations)


class CompletionService:
    def __init__(self, runtime: ModelRuntime, metrics: ModelServerMetrics):
        self.runtime = runtime
        self.metrics = metrics
        self.served_name = runtime.served_name
        self._ignored_logged: set[str] = set()

    # ---- request -> engine request ----

    def _check_model(self, name: str) -> None:
        if name != self.served_name:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist; this server serves '{self.served_name}'",
                param="model",
            )

    def _log_ignored(self, req: SamplingFields) -> None:
        for name in req.ignored_fields():
            if name not in self._ignored_logged:
                self._ignored_logged.add(name)
                log.info("request field %r is accepted and ignored by this server", name)

    async def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        self._check_model(req.model)
        req.check_supported()
        self._log_ignored(req)
        engine = self.runtime.require_engine()
        plan = tool_calls.plan(req)
        grammar = plan.grammar if plan else self._response_grammar(req)
        if grammar is not None:
            await asyncio.to_thread(engine.check_grammar, grammar)
        texts = [m.text(i) for i, m in enumerate(req.messages)]
        messages = tool_calls.render_messages(req.messages, texts, plan)
        prompt = engine.apply_chat_template(messages)
        tokens = await asyncio.to_thread(engine.tokenize, prompt, add_special=True)
        top = req.top_logprobs_count()
        prepared = self._prepare(
            "chat", "chatcmpl", req, [tokens], req.output_limit(), "messages", grammar, top
        )
        prepared.tools = plan is not None
        if top is not None:
            prepared.logprobs = LogprobFormatter("chat")
        return prepared

    @staticmethod
    def _response_grammar(req: ChatCompletionRequest) -> str | None:
        fmt = req.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return grammar_for_schema(ANY_JSON_OBJECT, param="response_format")
        assert fmt.json_schema is not None  # check_supported
        schema = fmt.json_schema.schema_ or ANY_JSON_OBJECT
        return grammar_for_schema(schema, param="response_format.json_schema.schema")

    async def prepare_completion(self, req: CompletionRequest) -> Prepared:
        self._check_model(req.model)
        req.check_supported()
        self._log_ignored(req)
        engine = self.runtime.require_engine()
        prompts: list[list[int]] = []
        echo: list[str] = []
        all_prompts = req.prompts()
        for i, prompt in enumerate(all_prompts):
            param = "prompt" if len(all_prompts) == 1 else f"prompt[{i}]"
            if isinstance(prompt, list):
                bad = [t for t in prompt if t < 0 or t >= engine.n_vocab]
                if bad:
                    raise InvalidRequestError(
                        f"Token id {bad[0]} is out of range for this model's vocabulary",
                        param=param,
                    )
                tokens = prompt
                text = engine.detokenize(prompt) if req.echo else ""
            else:
                tokens = await asyncio.to_thread(engine.tokenize, prompt, add_special=True)
                text = prompt
            if not tokens:
                raise InvalidRequestError("prompt must not be empty", param=param)
            prompts.append(tokens)
            echo.append(text if req.echo else "")
        prepared = self._prepare(
            "text", "cmpl", req, prompts, req.output_limit(), "prompt", None, req.logprobs
        )
        prepared.echo = echo
        if req.logprobs is not None:
            prepared.logprobs = LogprobFormatter("text")
        return prepared

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
        prompts: list[list[int]],
        limit: int | None,
        prompt_param: str,
        grammar: str | None,
        logprobs: int | None,
    ) -> Prepared:
        self._check_queue()
        engine = self.runtime.require_engine()
        max_len = engine.max_model_len
        n = req.choices()
        if n > engine.slots:
            raise InvalidRequestError(
                f"n={n} is more than this server's {engine.slots} parallel slots; lower n or "
                "start the server with a larger --parallel (ARCHON_PARALLEL)",
                param="n",
            )
        longest = max(len(p) for p in prompts)
        if longest >= max_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"{prompt_param} resulted in {longest} tokens, leaving no room for output. "
                f"Please reduce the length of the {prompt_param}.",
                param=prompt_param,
            )
        if limit is not None and longest + limit > max_len:
            param = (
                "max_completion_tokens"
                if getattr(req, "max_completion_tokens", None)
                else ("max_tokens")
            )
            raise InvalidRequestError(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{longest + limit} tokens ({longest} in the {prompt_param}, {limit} for the "
                f"completion). Please reduce the length of the {prompt_param} or {param}.",
                param=param,
            )
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        generations = []
        for i, tokens in enumerate(prompts):
            params = SamplingParams(
                max_tokens=limit if limit is not None else max_len - len(tokens),
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=max(req.top_k or 0, 0),
                min_p=req.min_p or 0.0,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                repetition_penalty=req.repetition_penalty or 1.0,
                seed=req.seed,
                stop=tuple(req.stop_list()),
                ignore_eos=bool(req.ignore_eos),
                logit_bias=req.logit_bias_pairs(engine.n_vocab),
                grammar=grammar,
                logprobs=logprobs,
            )
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            generations.append(GenerationRequest(rid, tokens, params, n=n))
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        return Prepared(
            kind=kind,
            request_id=request_id,
            created=int(time.time()),
            generations=generations,
            stream=req.streaming,
            include_usage=include_usage,
        )

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
        async for index, out in self._outputs(prepared):
            texts[index].append(out.text)
            tokens[index] = out.completion_tokens
            finish[index] = out.finish_reason or finish[index]
            if out.logprobs:
                logprobs[index].extend(out.logprobs)
        choices = []
        for index in range(count):
            text = "".join(texts[index])
            choice: dict[str, Any] = {"index": index, "finish_reason": finish[index]}
            fmt = prepared.logprobs
            if prepared.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                if prepared.tools:
                    answer = tool_calls.parse(text)
                    message["content"] = answer.content
                    if answer.tool_calls:
                        message["tool_calls"] = answer.tool_calls
                        choice["finish_reason"] = "tool_calls"
                choice["message"] = message
                choice["logprobs"] = fmt.chat(logprobs[index]) if fmt else None
            else:
                echo = prepared.echo[index // prepared.n] if prepared.echo else ""
                choice["text"] = echo + text
                choice["logprobs"] = fmt.text(logprobs[index], offset=len(echo)) if fmt else None
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
        held: list[list[str]] = [[] for _ in range(count)]  # tool answers: parsed at the end

        def text_choice(index: int, out: GenerationOutput) -> dict[str, Any]:
            lps = fmt.text(out.logprobs or [], offset=offsets[index]) if fmt else None
            offsets[index] += len(out.text)
            return {
                "index": index,
                "text": out.text,
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
            elif prepared.echo:
                for index in range(count):
                    echo = prepared.echo[index // prepared.n]
                    if echo:
                        yield chunk(
                            {"index": index, "text": echo, "logprobs": None, "finish_reason": None}
                        )
            async for index, out in self._outputs(prepared):
                tokens[index] = out.completion_tokens
                if not chat:
                    if out.text or out.finish_reason or out.logprobs:
                        yield chunk(text_choice(index, out))
                    continue
                if prepared.tools:
                    held[index].append(out.text)
                    if out.finish_reason is None:
                        continue
                    for piece in self._tool_deltas(index, "".join(held[index]), out):
                        yield chunk(piece)
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

    @staticmethod
    def _tool_deltas(index: int, text: str, last: GenerationOutput) -> list[dict[str, Any]]:
        answer = tool_calls.parse(text)
        finish = last.finish_reason
        if answer.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(answer.tool_calls)]
            return [
                {
                    "index": index,
                    "delta": {"tool_calls": calls},
                    "logprobs": None,
                    "finish_reason": None,
                },
                {"index": index, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"},
            ]
        return [
            {
                "index": index,
                "delta": {"content": answer.content or ""},
                "logprobs": None,
                "finish_reason": finish,
            },
        ]
