"""The text of a chat message's content, by one rule for the model server and the agent.

OpenAI's `content` is a string or a list of parts. The text is a string's own, or the parts'
texts joined by a newline, as vLLM does: a `text` part's `text`, and an assistant's `refusal`
part's `refusal`. Other parts (images, audio, files) have no text: the agent reads past them,
the model server refuses them (`unsupported_part`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TEXT_PART_TYPES = ("text", "refusal")


def part_text(part: Any) -> str | None:
    """A text or refusal part's text; None for any other part."""
    if not isinstance(part, Mapping):
        return None
    kind = part.get("type")
    if kind not in TEXT_PART_TYPES:
        return None
    value = part.get(kind)
    return value if isinstance(value, str) else ""


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, or a list of parts (see the module)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(text for part in content if (text := part_text(part)) is not None)


def unsupported_part(content: Any) -> int | None:
    """The index of the first part of `content` that is neither text nor refusal, if any."""
    if not isinstance(content, list):
        return None
    for index, part in enumerate(content):
        if part_text(part) is None:
            return index
    return None
