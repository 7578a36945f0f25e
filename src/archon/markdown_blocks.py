"""Markdown blocks as CommonMark reads them (markdown-it-py), with their line ranges.

One parser for every part that cuts Markdown: the knowledge base's chunker (top-level blocks),
the agent's passages and snippets (leaf blocks: a paragraph, a list item's paragraph, a table
row, a code block). Setext headings, indented code, HTML blocks, lazy continuation lines and
GFM tables are what CommonMark says they are, not what a line-by-line regex guesses. YAML front
matter (``---`` ... ``---`` on the first lines) is metadata: it is read apart and never parsed
as Markdown (CommonMark would see a rule and a setext heading).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

BlockKind = Literal[
    "heading", "paragraph", "fence", "code", "html", "table", "row", "list", "quote", "rule"
]
# Blocks that a chunker must never cut: a code listing, an HTML block, a table.
ATOMIC: frozenset[str] = frozenset({"fence", "code", "html", "table"})

_TOP = {
    "heading_open": "heading",
    "paragraph_open": "paragraph",
    "fence": "fence",
    "code_block": "code",
    "html_block": "html",
    "table_open": "table",
    "bullet_list_open": "list",
    "ordered_list_open": "list",
    "blockquote_open": "quote",
    "hr": "rule",
}
_LEAF = {
    "heading_open": "heading",
    "paragraph_open": "paragraph",
    "fence": "fence",
    "code_block": "code",
    "html_block": "html",
    "tr_open": "row",
    "hr": "rule",
}
_TITLE = re.compile(r"^title:\s*[\"']?(.*?)[\"']?\s*$")


@dataclass(frozen=True)
class MarkdownBlock:
    kind: BlockKind
    first_line: int  # 0-based, in text.splitlines()
    last_line: int  # inclusive; trailing blank lines left out
    level: int = 0  # a heading's level, 1-6
    title: str = ""  # a heading's text, inline Markdown as written


def front_matter_lines(lines: list[str]) -> int:
    """How many lines YAML front matter takes at the top (0 when there is none)."""
    if not lines or lines[0].strip() != "---":
        return 0
    for n in range(1, len(lines)):
        if lines[n].strip() in ("---", "..."):
            return n + 1
    return 0  # never closed: not front matter


def front_matter_title(markdown: str) -> str | None:
    lines = markdown.splitlines()
    for line in lines[1 : front_matter_lines(lines)]:
        match = _TITLE.match(line)
        if match:
            return match.group(1) or None
    return None


def _tokens(lines: list[str]) -> list[Any]:
    from markdown_it import MarkdownIt

    skipped = front_matter_lines(lines)
    # Front matter becomes blank lines: the tokens' line numbers stay the file's.
    source = "\n".join([""] * skipped + lines[skipped:])
    # Block structure only: the core rule that parses inline Markdown (half the time) is off,
    # so an inline token's content is its source text.
    return MarkdownIt("commonmark").enable("table").disable("inline").parse(source)


def _blocks(text: str, kinds: dict[str, str], top_only: bool) -> list[MarkdownBlock]:
    lines = text.splitlines()
    tokens = _tokens(lines)
    out: list[MarkdownBlock] = []
    for n, token in enumerate(tokens):
        kind = kinds.get(token.type)
        if kind is None or token.map is None or (top_only and token.level != 0):
            continue
        first, end = token.map
        last = min(end, len(lines)) - 1
        while last > first and not lines[last].strip():
            last -= 1
        level, title = 0, ""
        if kind == "heading":
            level = int(token.tag[1])
            title = tokens[n + 1].content if n + 1 < len(tokens) else ""
        out.append(MarkdownBlock(kind, first, last, level, title))  # type: ignore[arg-type]
    return out


def top_level_blocks(text: str) -> list[MarkdownBlock]:
    """The document's blocks in order: a heading, a paragraph, a whole list, a whole table, a
    code block, an HTML block, a block quote, a rule."""
    return _blocks(text, _TOP, top_only=True)


def leaf_blocks(text: str) -> list[MarkdownBlock]:
    """The smallest blocks in order: headings, paragraphs (a list item's or a quote's too),
    code blocks, HTML blocks, table rows (the header and body rows; the delimiter row is not
    content), rules. A code block inside a list item is a block of its own."""
    return _blocks(text, _LEAF, top_only=False)


def heading_or_fence_lines(text: str) -> set[int]:
    """The lines a flat snippet leaves out: headings (an ATX line; a setext heading's text and
    underline: the heading trail shows them) and the opening and closing lines of fences."""
    lines = text.splitlines()
    out: set[int] = set()
    for block in leaf_blocks(text):
        if block.kind == "heading":
            out.update(range(block.first_line, block.last_line + 1))
        elif block.kind == "fence":
            out.add(block.first_line)
            if block.last_line > block.first_line and lines[block.last_line].strip()[:3] in (
                "```",
                "~~~",
            ):
                out.add(block.last_line)
    return out
