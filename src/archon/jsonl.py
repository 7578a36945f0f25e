"""Judged sets as JSON lines (the knowledge base's queries, the agent's answers): one reader.

Blank lines are skipped; a file that cannot be read, or a line that does not build (or that its
builder refuses with `BadRow`), is one `ConfigError` line naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from archon.errors import ConfigError


class BadRow(Exception):
    """A line that parses but does not make sense; the message says why (its place is added)."""


class InSplit(Protocol):
    @property
    def split(self) -> str | None: ...


T = TypeVar("T")
S = TypeVar("S", bound=InSplit)


def read_jsonl(
    path: Path, what: str, build: Callable[[Any, int], T], expected: str
) -> Iterator[tuple[int, T]]:
    """(line number, ``build(row, number)``) for each line of ``path``; ``what`` names the file
    in the error when it cannot be read, ``expected`` says what a line should be when one
    cannot be built."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = build(json.loads(line), number)
        except BadRow as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{path}:{number}: expected {expected}") from None
        yield number, item


def read_split(
    path: Path,
    what: str,
    build: Callable[[Any, int], S],
    expected: str,
    split: str | None,
    nothing: str,
) -> list[S]:
    """The items of ``path`` in ``split`` (every one with None); none at all is the ConfigError
    ``nothing``."""
    items = [i for _, i in read_jsonl(path, what, build, expected) if split in (None, i.split)]
    if not items:
        raise ConfigError(nothing)
    return items
