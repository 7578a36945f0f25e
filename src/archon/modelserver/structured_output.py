"""Output constraints as llama.cpp grammars: ``response_format`` and tool calls.

JSON schemas become GBNF through llama-cpp-python's port of llama.cpp's own converter
(``json_schema_to_gbnf``), so the CPU engine accepts the schemas llama-server accepts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from archon.errors import InvalidRequestError

# The converter's string rule lets raw control characters into strings, which strict JSON
# parsers (the openai SDK's among them) refuse; this is the rule of llama.cpp's newer converter.
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)
_STRICT_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def grammar_for_schema(schema: dict[str, Any], *, param: str) -> str:
    """GBNF whose sentences are exactly the JSON documents valid against ``schema``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise InvalidRequestError("The JSON schema is nested too deeply", param=param) from None
    except Exception as exc:  # the converter reports unsupported schemas with any exception
        raise InvalidRequestError(
            f"The JSON schema cannot be used to constrain the output: {exc}", param=param
        ) from None
    return _CHAR_RULE.sub(lambda _: _STRICT_CHAR, grammar)
