"""``/tokenize``, ``/detokenize`` and ``/tokenizer_info``, with vLLM's request and response
fields (what lm-evaluation-harness's remote tokenizer calls)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from archon.errors import InvalidRequestError, ModelNotFoundError
from archon.modelserver.engines.base import Engine
from archon.modelserver.schemas import ChatMessage
from archon.modelserver.tool_calls import render_messages


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


def _check_model(name: str | None, served: str) -> None:
    if name is not None and name != served:
        raise ModelNotFoundError(
            f"The model '{name}' does not exist; this server serves '{served}'", param="model"
        )


async def tokenize(req: TokenizeRequest, engine: Engine, served: str) -> dict[str, Any]:
    _check_model(req.model, served)
    if (req.prompt is None) == (req.messages is None):
        raise InvalidRequestError("Send either 'prompt' or 'messages'", param="prompt")
    if req.messages is not None:
        texts = [m.text(i) for i, m in enumerate(req.messages)]
        text = engine.apply_chat_template(
            render_messages(req.messages, texts, None),
            add_generation_prompt=req.add_generation_prompt,
        )
        # The template writes the special tokens itself, as vLLM assumes for chat.
        add_special = bool(req.add_special_tokens)
    else:
        text = req.prompt or ""
        add_special = req.add_special_tokens is not False
    tokens = await asyncio.to_thread(engine.tokenize, text, add_special=add_special)
    return {
        "count": len(tokens),
        "max_model_len": engine.max_model_len,
        "tokens": tokens,
        "token_strs": (
            [engine.token_bytes(t).decode("utf-8", "replace") for t in tokens]
            if req.return_token_strs
            else None
        ),
    }


def detokenize(req: DetokenizeRequest, engine: Engine, served: str) -> dict[str, Any]:
    _check_model(req.model, served)
    bad = [t for t in req.tokens if not 0 <= t < engine.n_vocab]
    if bad:
        raise InvalidRequestError(
            f"Token id {bad[0]} is out of range for this model's vocabulary", param="tokens"
        )
    return {"prompt": engine.detokenize(req.tokens)}


def tokenizer_info(engine: Engine) -> dict[str, Any]:
    """vLLM's ``GET /tokenizer_info``: the tokenizer's ``tokenizer_config.json`` settings
    (special tokens, chat template). lm-eval's ``tokenizer_backend=remote`` reads ``eos_token``,
    ``bos_token`` and ``chat_template`` from it."""
    return engine.tokenizer_info()
