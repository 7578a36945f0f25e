"""What every client driver shares: its command line, the test schema, Archon's contract checks
and one JSON line per case on stdout: {"library", "case", "ok", "error", "seconds"}.

The drivers run in the client venvs (scripts/setup-clients-venv.sh), not in Archon's: they import
only their library, pydantic and this module. They check Archon's contract (the call succeeds,
shapes parse, structured output validates, no internal wrapper text in content), never the tiny
model's wit: tools are called with `tool_choice` required or named, sampling is greedy, and
max_tokens leaves room for the schema.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

# Text that must never reach a client's content: the CPU engine's internal tool format and the
# agent's lead quote (only plain-text chat answers may carry a quote, and never on small talk).
WRAPPER_MARKS = ('{"response"', '"tool_calls"', "From [1]")

SMALL_TALK = "Say hi."
EXTRACT = "Extract the person: Alice is 31 years old and lives in Paris, France."
MAX_TOKENS = 128  # room for a chatty answer: an answer cut short is the model, not Archon
STRUCTURED_MAX_TOKENS = 160


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


class Person(BaseModel):
    """A person. A nested model, so its JSON schema has `$defs` and a `$ref`."""

    name: str = Field(max_length=40)
    age: int
    home: City


def clean(text: Any, *, allow_empty: bool = False) -> str:
    """Content text a client can show as it is: a string, without Archon's internal formats."""
    if not isinstance(text, str):
        raise AssertionError(f"content is {type(text).__name__}, not str: {text!r}"[:500])
    if not allow_empty and not text.strip():
        raise AssertionError("content is empty")
    for mark in WRAPPER_MARKS:
        if mark in text:
            raise AssertionError(f"content holds {mark!r}: {text!r}"[:800])
    return text


def person(value: Any) -> Person:
    """A Person from a JSON string, a dict or a model instance (validates the schema)."""
    if isinstance(value, Person):
        return value
    if isinstance(value, str):
        clean(value)
        return Person.model_validate_json(value)
    if isinstance(value, BaseModel):
        return Person.model_validate(value.model_dump())
    return Person.model_validate(value)


def vectors(rows: Any, count: int) -> None:
    """``count`` embedding vectors of one length > 0, all finite floats."""
    rows = list(rows)
    if len(rows) != count:
        raise AssertionError(f"{len(rows)} vectors for {count} inputs")
    dims = {len(r) for r in rows}
    if len(dims) != 1 or 0 in dims:
        raise AssertionError(f"vector lengths {sorted(dims)}")
    for row in rows:
        for x in row:
            if not isinstance(x, float) or x != x or abs(x) == float("inf"):
                raise AssertionError(f"not a finite float: {x!r}")


@dataclass
class Options:
    base_url: str  # ending in /v1
    model: str
    embedding_model: str
    target: str
    only: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")


class Driver:
    """Collects a library's cases and runs them, one JSON line each, whatever each one raises."""

    def __init__(self, library: str) -> None:
        self.library = library
        self.cases: list[tuple[str, Callable[[Options], None]]] = []

    def case(self, name: str) -> Callable[[Callable[[Options], None]], Callable[[Options], None]]:
        def register(fn: Callable[[Options], None]) -> Callable[[Options], None]:
            self.cases.append((name, fn))
            return fn

        return register

    def main(self) -> None:
        parser = argparse.ArgumentParser(description=f"Archon's contract through {self.library}")
        parser.add_argument("--base-url", required=True, help="http://HOST:PORT/v1")
        parser.add_argument("--model", required=True)
        parser.add_argument("--embedding-model", required=True)
        parser.add_argument("--target", default="", help="a label: server or agent")
        parser.add_argument("--only", nargs="*", default=[], help="run only these cases")
        parser.add_argument("--list", action="store_true", help="print the case names")
        ns = parser.parse_args()
        if ns.list:
            print("\n".join(name for name, _ in self.cases))
            return
        opts = Options(ns.base_url, ns.model, ns.embedding_model, ns.target, ns.only)
        for name, fn in self.cases:
            if opts.only and name not in opts.only:
                continue
            started = time.monotonic()
            error = None
            try:
                fn(opts)
            except BaseException as exc:  # every failure is a result line
                if isinstance(exc, KeyboardInterrupt):
                    raise
                error = f"{type(exc).__name__}: {exc}"[:3000]
            line = {
                "library": self.library,
                "case": name,
                "ok": error is None,
                "error": error,
                "seconds": round(time.monotonic() - started, 2),
            }
            print(json.dumps(line), flush=True)
        sys.stdout.flush()
