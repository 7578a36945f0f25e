"""Log-probabilities in OpenAI's two shapes: chat's ``content`` list and completions' columns."""

from __future__ import annotations

from typing import Any, Literal

from archon.modelserver.engines.base import PromptLogprobs, TokenLogprob


def _text(token: bytes) -> str:
    return token.decode("utf-8", "replace")


class LogprobFormatter:
    def __init__(self, kind: Literal["chat", "text"]):
        self.kind = kind

    def chat(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        return {
            "content": [
                {
                    "token": _text(e.token),
                    "logprob": e.logprob,
                    "bytes": list(e.token),
                    "top_logprobs": [
                        {"token": _text(t.token), "logprob": t.logprob, "bytes": list(t.token)}
                        for t in e.top
                    ],
                }
                for e in entries
            ],
            "refusal": None,
        }

    def text(
        self,
        entries: list[TokenLogprob],
        *,
        offset: int,
        prompt: PromptLogprobs | None = None,
    ) -> dict[str, Any]:
        """Completions' columns; ``offset`` is where the first generated token starts in the
        text. ``prompt`` (with echo) puts the prompt's tokens first, from offset 0: the first
        one with a null logprob and null alternatives, as OpenAI and vLLM give it."""
        tokens: list[str] = []
        offsets: list[int] = []
        token_logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        if prompt is not None:
            tokens.append(_text(prompt.first_token))
            offsets.append(0)
            token_logprobs.append(None)
            tops.append(None)
            at = len(tokens[-1])
            for e in prompt.rest:
                tokens.append(_text(e.token))
                offsets.append(at)
                at += len(tokens[-1])
                token_logprobs.append(e.logprob)
                tops.append(_alternatives(e))
        for e in entries:
            tokens.append(_text(e.token))
            offsets.append(offset)
            offset += len(tokens[-1])
            token_logprobs.append(e.logprob)
            tops.append(_alternatives(e))
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }


def _alternatives(e: TokenLogprob) -> dict[str, float]:
    # As vLLM: the alternatives plus the token itself.
    return {**{_text(t.token): t.logprob for t in e.top}, _text(e.token): e.logprob}
