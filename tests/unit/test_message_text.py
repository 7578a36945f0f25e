"""One rule for a chat message's text (archon.openai.messages), read by the agent and the
model server alike."""

from __future__ import annotations

import pytest

from archon.agent.rag import message_text
from archon.errors import InvalidRequestError
from archon.modelserver.schemas import ChatMessage
from archon.openai.messages import content_text, unsupported_part

PARTS = [
    {"type": "text", "text": "How do I roll back"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "text", "text": "a release?"},
]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("plain", "plain"),
        (None, ""),
        ([], ""),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
        ([{"type": "refusal", "refusal": "I can't."}], "I can't."),
        (PARTS, "How do I roll back\na release?"),
        ([{"type": "text"}, "junk", {"text": "untyped"}], ""),
    ],
)
def test_content_text(content: object, text: str) -> None:
    assert content_text(content) == text


def test_the_agent_and_the_model_server_read_text_the_same_way() -> None:
    texts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    message = {"role": "user", "content": texts}
    assert message_text(message) == ChatMessage.model_validate(message).text(0) == "first\nsecond"


def test_other_parts_are_skipped_by_the_agent_and_refused_by_the_model_server() -> None:
    message = {"role": "user", "content": PARTS}
    assert unsupported_part(PARTS) == 1
    assert message_text(message) == "How do I roll back\na release?"
    with pytest.raises(InvalidRequestError) as info:
        ChatMessage.model_validate(message).text(3)
    assert info.value.param == "messages[3].content[1].type"
