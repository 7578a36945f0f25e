"""OpenAI request -> engine requests: the model name, the fields this server accepts, the chat
template or prompts, tokenizing, grammars, and the checks of n, context length and queue."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from archon.errors import InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
from archon.modelserver import tool_calls
from archon.modelserver.engines.base import GenerationRequest, SamplingParams
from archon.modelserver.logprobs import LogprobFormatter
from archon.modelserver.runtime import ModelRuntime
from archon.modelserver.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from archon.modelserver.structured_output import ANY_JSON_OBJECT, grammar_for_schema

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


class RequestPreparer:
    """Turns a validated OpenAI request into the engine requests that answer it (one per
    prompt), or refuses it with the OpenAI error the client should see."""

    def __init__(self, runtime: ModelRuntime):
        self.runtime = runtime
        self.served_name = runtime.served_name
        self._ignored_logged: set[str] = set()

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
        # With echo, the logprobs cover the prompt's tokens too (as OpenAI's and vLLM's do):
        # what lm-evaluation-harness reads to score a continuation.
        prompt_logprobs = req.logprobs if req.echo else None
        prepared = self._prepare(
            "text",
            "cmpl",
            req,
            prompts,
            req.output_limit(),
            "prompt",
            None,
            req.logprobs,
            prompt_logprobs=prompt_logprobs,
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
        *,
        prompt_logprobs: int | None = None,
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
                prompt_logprobs=prompt_logprobs,
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
