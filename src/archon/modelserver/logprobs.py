"""Log-probabilities in OpenAI's two shapes: chat's ``content`` list and completions' columns."""

from __future__ import annotations

from typing import Any, Literal

from archon.modelserver.engines.base import TokenLogprob


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

    def text(self, entries: list[TokenLogprob], *, offset: int) -> dict[str, Any]:
        """Completions' columns; ``offset`` is where the first token starts in the text."""
        tokens, offsets = [], []
        for e in entries:
            tokens.append(_text(e.token))
            offsets.append(offset)
            offset += len(tokens[-1])
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            # As vLLM: the alternatives plus the sampled token itself.
            "top_logprobs": [
                {**{_text(t.token): t.logprob for t in e.top}, _text(e.token): e.logprob}
                for e in entries
            ],
            "text_offset": offsets,
        }
