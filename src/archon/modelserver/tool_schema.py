"""Each tool's parameter schema made to work inside the one combined tool-answer schema.

The generic tool format (tool_calls.py) embeds every tool's schema under
``anyOf[i].properties.arguments`` of a bigger schema, where the tool's own local references
(``#/$defs/Address``, ``#/definitions/Address``, ``#`` for the tool's root) no longer point at
what they meant. Pydantic writes such references for every nested or recursive model, so tools
from ``openai.pydantic_function_tool``, the Agents SDK or instructor carry them.

Every local reference of a tool is resolved against that tool's own schema, and each target is
hoisted to the combined schema's root ``$defs`` under a name unique to the tool; the reference is
rewritten to point there. References keep their meaning (recursion included: the grammar
converter turns a recursive reference into a recursive rule) and two tools may both have an
``Address``.

The names contain only letters and digits and start with ``tool<index>def``: llama.cpp's
converter names a reference's grammar rule after the reference's last path segment, and reuses
any rule that already has that name, so names must be unique and free of characters it would
rewrite.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import unquote

from archon.errors import InvalidRequestError

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_ROOT_DEFINITION_KEYS = ("$defs", "definitions")


class HoistedDefinitions:
    """The root ``$defs`` of the combined schema, filled one tool at a time."""

    def __init__(self) -> None:
        self.definitions: dict[str, Any] = {}

    def add_tool(self, index: int, schema: dict[str, Any], *, param: str) -> dict[str, Any]:
        """The tool's schema with its local references pointing at hoisted definitions."""
        names: dict[str, str] = {}  # the tool's reference -> its hoisted name
        pending: list[str] = []

        def name_for(ref: str) -> str:
            if ref not in names:
                last = unquote(ref.rsplit("/", 1)[-1]) if ref != "#" else "self"
                names[ref] = f"tool{index}def{len(names)}{_NOT_ALNUM.sub('', last)}"
                pending.append(ref)
            return names[ref]

        def rewrite(node: Any, *, at_root: bool = False) -> Any:
            if isinstance(node, list):
                return [rewrite(item) for item in node]
            if not isinstance(node, dict):
                return node
            out: dict[str, Any] = {}
            for key, value in node.items():
                if at_root and key in _ROOT_DEFINITION_KEYS:
                    continue  # hoisted one by one as they are referenced
                if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                    out[key] = f"#/$defs/{name_for(value)}"
                else:
                    out[key] = rewrite(value)
            return out

        rewritten: dict[str, Any] = rewrite(schema, at_root=True)
        while pending:
            ref = pending.pop()
            target = _resolve(schema, ref, param=param)
            self.definitions[names[ref]] = rewrite(target, at_root=target is schema)
        return rewritten

    def into(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with the hoisted definitions at its root (unchanged if there are none)."""
        if not self.definitions:
            return schema
        return {**schema, "$defs": copy.deepcopy(self.definitions)}


def _resolve(schema: dict[str, Any], ref: str, *, param: str) -> Any:
    """The part of ``schema`` a local reference (a JSON pointer after ``#``) points at."""
    target: Any = schema
    pointer = ref[1:]
    if pointer and not pointer.startswith("/"):
        raise InvalidRequestError(
            f"Unsupported reference {ref!r}: only local JSON pointers ('#/...') are supported",
            param=param,
        )
    for raw in pointer.split("/")[1:] if pointer else []:
        step = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and step in target:
            target = target[step]
        elif isinstance(target, list) and step.isdigit() and int(step) < len(target):
            target = target[int(step)]
        else:
            raise InvalidRequestError(
                f"The reference {ref!r} does not point at anything in this tool's schema",
                param=param,
            )
    return target
