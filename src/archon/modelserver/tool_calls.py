"""Tool calling on models whose chat template does not render tools (the generic format).

The tools are described in the system message, and the answer is constrained by a grammar to
one JSON object: ``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` to call tools, or
``{"response": "..."}`` to answer in text (llama-server's generic format follows the same idea).
The grammar is built from each tool's parameter schema, so arguments always validate.
``tool_choice`` narrows the grammar: ``required`` drops the text answer, a named function keeps
only that function; ``parallel_tool_calls: false`` allows one call.

The answer is read back into OpenAI's message fields, whole or streamed, by tool_stream.py, and
each tool's own ``$defs``/``$ref`` are made to work inside the combined schema by tool_schema.py.

Earlier turns are rendered in the same format: an assistant turn with ``tool_calls`` becomes
that JSON, and a ``tool`` turn becomes a user turn holding ``{"tool_response": ...}``, which
every chat template can render.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from archon.modelserver.schemas import ChatCompletionRequest, ChatMessage, NamedToolChoice
from archon.modelserver.structured_output import grammar_for_schema
from archon.modelserver.tool_schema import HoistedDefinitions

_INSTRUCTIONS = (
    "You can call the following tools. Each is given with a JSON schema of its arguments.\n"
    "{tools}\n\n"
    "Reply with one JSON object and nothing else. {choices}"
)
_CALL = 'To call tools: {"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}.'
_ANSWER = ' To answer without a tool: {"response": "<your answer>"}.'


@dataclass(frozen=True)
class ToolPlan:
    """How one request's tools shape the prompt and the output."""

    grammar: str
    instructions: str
    schema: dict[str, Any]  # the JSON schema the grammar was built from


def plan(req: ChatCompletionRequest) -> ToolPlan | None:
    """The tool format for this request, or None when its answer is plain text."""
    if not req.tools or req.tool_choice == "none":
        return None
    functions = [(i, t.function) for i, t in enumerate(req.tools) if t.function is not None]
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function is not None:
        chosen = req.tool_choice.function.name
        functions = [(i, f) for i, f in functions if f.name == chosen]
    # Each tool's own $defs/$ref, hoisted to the combined schema's root (tool_schema.py).
    definitions = HoistedDefinitions()
    calls: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        "arguments": definitions.add_tool(
                            i,
                            f.parameters or {"type": "object"},
                            param=f"tools[{i}].function.parameters",
                        ),
                    },
                    "required": ["name", "arguments"],
                }
                for i, f in functions
            ]
        },
    }
    if req.parallel_tool_calls is False:
        calls["maxItems"] = 1
    call_object = {
        "type": "object",
        "properties": {"tool_calls": calls},
        "required": ["tool_calls"],
    }
    text_allowed = req.tool_choice in (None, "auto")
    schema: dict[str, Any] = call_object
    if text_allowed:
        answer = {
            "type": "object",
            "properties": {"response": {"type": "string"}},
            "required": ["response"],
        }
        schema = {"anyOf": [call_object, answer]}
    described = json.dumps(
        [
            {
                "name": f.name,
                "description": f.description or "",
                "parameters": f.parameters or {"type": "object"},
            }
            for _, f in functions
        ],
        ensure_ascii=False,
    )
    instructions = _INSTRUCTIONS.format(
        tools=described, choices=_CALL + (_ANSWER if text_allowed else "")
    )
    schema = definitions.into(schema)
    return ToolPlan(grammar_for_schema(schema, param="tools"), instructions, schema)


def render_messages(
    messages: list[ChatMessage], texts: list[str], tool_plan: ToolPlan | None
) -> list[dict[str, Any]]:
    """Messages as the chat template takes them: plain strings, tool turns in the generic form."""
    names = {
        call.id: call.function.name
        for m in messages
        for call in m.tool_calls or []
        if call.function is not None
    }
    out: list[dict[str, Any]] = []
    for message, text in zip(messages, texts, strict=True):
        role = "system" if message.role == "developer" else message.role
        if role == "assistant" and message.tool_calls:
            calls = [
                {"name": c.function.name, "arguments": _arguments(c.function.arguments)}
                for c in message.tool_calls
                if c.function is not None
            ]
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls})})
        elif role == "tool":
            response = {"name": names.get(message.tool_call_id or ""), "content": text}
            out.append({"role": "user", "content": json.dumps({"tool_response": response})})
        else:
            out.append({"role": role, "content": text})
    if tool_plan is not None:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{tool_plan.instructions}"}
        else:
            out.insert(0, {"role": "system", "content": tool_plan.instructions})
    return out


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
