"""Tool schemas with ``$defs``/``$ref`` inside the combined tool-answer schema (tool_schema.py).

The schemas are generated here from real pydantic models, by ``openai.pydantic_function_tool``
and by pydantic's ``model_json_schema()``, exactly as the Agents SDK, instructor and the openai
SDK send them. The combined schema is checked with ``jsonschema`` (an independent resolver of
``$ref``) and converted to a grammar by llama.cpp's converter, as the server does.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, create_model

from archon.errors import InvalidRequestError
from archon.modelserver import tool_calls
from archon.modelserver.schemas import ChatCompletionRequest


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    home: Address
    work: Address | None = None


class Node(BaseModel):
    """A recursive model: pydantic refers to it from inside itself."""

    value: int
    children: list[Node] = []


def _request(tools: list[dict[str, Any]], tool_choice: Any = "required") -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
            "tool_choice": tool_choice,
        }
    )


def _plain_tool(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": schema}}


def _answer(name: str, arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def _plan(tools: list[dict[str, Any]]) -> tool_calls.ToolPlan:
    plan = tool_calls.plan(_request(tools))
    assert plan is not None
    return plan


def _valid(plan: tool_calls.ToolPlan, answer: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(answer, plan.schema)
    except jsonschema.ValidationError:
        return False
    return True


PERSON = {"name": "Ann", "home": {"street": "Main St 1", "city": "Oslo"}, "work": None}


def test_pydantic_function_tool_with_nested_model() -> None:
    tool = openai.pydantic_function_tool(Person)
    assert "$defs" in tool["function"]["parameters"]  # what the SDK really sends
    plan = _plan([tool])
    assert "root ::=" in plan.grammar
    assert _valid(plan, _answer("Person", PERSON))
    assert not _valid(plan, _answer("Person", {**PERSON, "home": {"street": "x"}}))


def test_model_json_schema_with_nested_model() -> None:
    plan = _plan([_plain_tool("person", Person.model_json_schema())])
    assert _valid(plan, _answer("person", {"name": "Ann", "home": PERSON["home"]}))
    assert not _valid(plan, _answer("person", {"name": "Ann", "home": {"city": 3}}))


@pytest.mark.parametrize("source", ["pydantic_function_tool", "model_json_schema"])
def test_recursive_model(source: str) -> None:
    if source == "pydantic_function_tool":
        tool = dict(openai.pydantic_function_tool(Node, name="tree"))
    else:
        tool = _plain_tool("tree", Node.model_json_schema())
    plan = _plan([tool])
    deep = {"value": 1, "children": [{"value": 2, "children": [{"value": 3, "children": []}]}]}
    assert _valid(plan, _answer("tree", deep))
    assert not _valid(plan, _answer("tree", {"value": 1, "children": [{"value": "x"}]}))
    # The converter writes the recursion as a rule that refers back to the hoisted Node.
    rules = dict(line.split(" ::= ", 1) for line in plan.grammar.splitlines() if " ::= " in line)
    node = next(name for name in rules if name.startswith("tool0def") and name.endswith("Node"))
    assert any(name.startswith(f"{node}-") and node in body.split() for name, body in rules.items())


def test_two_tools_each_with_their_own_address() -> None:
    # Two different models both called Address: each tool must keep its own.
    postal = create_model("Address", street=(str, ...), city=(str, ...))
    geo = create_model("Address", lat=(float, ...), lon=(float, ...))
    ship = create_model("Ship", to=(postal, ...))
    locate = create_model("Locate", where=(geo, ...))
    tools = [openai.pydantic_function_tool(ship), openai.pydantic_function_tool(locate)]
    for tool in tools:
        assert list(tool["function"]["parameters"]["$defs"]) == ["Address"]
    plan = _plan(tools)
    assert _valid(plan, _answer("Ship", {"to": {"street": "Main St 1", "city": "Oslo"}}))
    assert _valid(plan, _answer("Locate", {"where": {"lat": 59.9, "lon": 10.7}}))
    assert not _valid(plan, _answer("Ship", {"to": {"lat": 59.9, "lon": 10.7}}))
    assert not _valid(plan, _answer("Locate", {"where": {"street": "x", "city": "y"}}))
    # Two distinct grammar rules, one per Address.
    address_rules = [
        line for line in plan.grammar.splitlines() if line.split(" ::=")[0].endswith("Address")
    ]
    assert len(address_rules) == 2 and address_rules[0] != address_rules[1]


def test_definitions_and_self_reference() -> None:
    linked = {
        "type": "object",
        "properties": {
            "value": {"type": "integer"},
            "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
            "tag": {"$ref": "#/definitions/Tag"},
        },
        "required": ["value", "next", "tag"],
        "definitions": {"Tag": {"type": "string", "enum": ["a", "b"]}},
    }
    plan = _plan([_plain_tool("linked", linked)])
    chain = {"value": 1, "tag": "a", "next": {"value": 2, "tag": "b", "next": None}}
    assert _valid(plan, _answer("linked", chain))
    assert not _valid(plan, _answer("linked", {**chain, "next": {"value": 2}}))


def test_named_choice_keeps_the_tools_index_in_errors() -> None:
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}
    tools = [openai.pydantic_function_tool(Person), _plain_tool("broken", broken)]
    with pytest.raises(InvalidRequestError) as err:
        tool_calls.plan(_request(tools))
    assert err.value.param == "tools[1].function.parameters"
    assert "#/$defs/Missing" in str(err.value)
    named = {"type": "function", "function": {"name": "Person"}}
    plan = tool_calls.plan(_request(tools, named))  # the broken tool is not in the grammar
    assert plan is not None and _valid(plan, _answer("Person", PERSON))


def test_schema_without_refs_is_unchanged() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    plan = _plan([_plain_tool("weather", schema)])
    assert "$defs" not in plan.schema
    arguments = plan.schema["properties"]["tool_calls"]["items"]["anyOf"][0]["properties"]
    assert arguments["arguments"] == schema
