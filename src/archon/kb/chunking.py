"""Markdown-aware chunking: split on headings, keep the heading path, never inside a code block,
an HTML block or a table, merge tiny sections, and keep chunks between a minimum and a maximum
token count.

Blocks are CommonMark's (archon.markdown_blocks: markdown-it-py's tokens and their line ranges),
so setext headings, indented code and HTML blocks are what a Markdown reader sees. Blocks are
atomic: a chunk boundary only ever falls between two blocks, except inside an oversized
paragraph, list or quote, which is cut at line boundaries. A code block, HTML block or table
larger than the maximum becomes a chunk of its own rather than being cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from archon.markdown_blocks import ATOMIC, front_matter_title, leaf_blocks, top_level_blocks

__all__ = [
    "DOCS_CHUNKING",
    "Block",
    "Chunk",
    "approx_tokens",
    "chunk_markdown",
    "front_matter_title",
    "split_blocks",
]

# Recorded with the store's chunking settings (archon.kb.sync): a new value re-chunks every
# Markdown file at the next sync. commonmark-1: blocks from markdown-it-py, BM25 weights for
# 80-term chunks (archon.kb.bm25.AVG_DOC_TOKENS).
DOCS_CHUNKING = "commonmark-1"

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """Word pieces, roughly: words and punctuation marks (MiniLM's tokenizer is close to this)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class Block:
    text: str
    start_line: int  # 1-based, inclusive
    end_line: int
    heading_level: int = 0  # > 0 for a heading block
    kind: str = "paragraph"  # archon.markdown_blocks.BlockKind
    title: str = ""  # a heading's text


@dataclass
class Chunk:
    text: str
    heading_path: list[str]
    start_line: int
    end_line: int
    tokens: int


@dataclass
class _Section:
    path: list[str]
    blocks: list[Block] = field(default_factory=list)


def split_blocks(markdown: str) -> list[Block]:
    """The file's top-level blocks as CommonMark reads them (archon.markdown_blocks), front
    matter left out."""
    lines = markdown.splitlines()
    return [
        Block(
            "\n".join(lines[b.first_line : b.last_line + 1]),
            b.first_line + 1,
            b.last_line + 1,
            heading_level=b.level,
            kind=b.kind,
            title=b.title,
        )
        for b in top_level_blocks(markdown)
    ]


def _sections(blocks: list[Block], title: str | None) -> list[_Section]:
    root = [title] if title else []
    sections = [_Section(list(root))]
    stack: list[tuple[int, str]] = []
    for block in blocks:
        if block.heading_level:
            heading = block.title
            while stack and stack[-1][0] >= block.heading_level:
                stack.pop()
            stack.append((block.heading_level, heading))
            path = [t for _, t in stack]
            if root and path[0] != root[0]:
                path = root + path
            sections.append(_Section(path, [block]))
        else:
            sections[-1].blocks.append(block)
    return [s for s in sections if s.blocks]


def _fit(blocks: list[Block], max_tokens: int, count: TokenCounter) -> list[Block]:
    """Split an oversized paragraph, list or quote at line boundaries, never inside a code
    block, HTML block or table nested in it; those blocks at the top stay whole."""
    out: list[Block] = []
    for block in blocks:
        if block.heading_level or block.kind in ATOMIC or count(block.text) <= max_tokens:
            out.append(block)
            continue
        lines = block.text.splitlines()
        # Units of lines that stay together: a nested code block is one unit, other lines one each.
        units = [[n, n] for n in range(len(lines))]
        for nested in leaf_blocks(block.text):
            if nested.kind in ATOMIC:
                for n in range(nested.first_line, nested.last_line + 1):
                    units[n] = [nested.first_line, nested.last_line]
        spans = sorted({(a, b) for a, b in units})
        sizes = [count("\n".join(lines[a : b + 1])) for a, b in spans]
        i = 0
        while i < len(spans):
            j, size = i, 0
            while j < len(spans) and (j == i or size + sizes[j] <= max_tokens):
                size += sizes[j]
                j += 1
            first, last = spans[i][0], spans[j - 1][1]
            out.append(
                Block(
                    "\n".join(lines[first : last + 1]),
                    block.start_line + first,
                    block.start_line + last,
                    kind=block.kind,
                )
            )
            i = j
    return out


def chunk_markdown(
    markdown: str,
    *,
    max_tokens: int = 200,
    min_tokens: int = 100,
    count: TokenCounter = approx_tokens,
) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[Block] = []
    current_path: list[str] = []
    current_tokens = 0

    def flush() -> None:
        nonlocal current, current_tokens
        if current:
            chunks.append(
                Chunk(
                    "\n\n".join(b.text for b in current),
                    current_path,
                    current[0].start_line,
                    current[-1].end_line,
                    current_tokens,
                )
            )
        current, current_tokens = [], 0

    for section in _sections(split_blocks(markdown), front_matter_title(markdown)):
        # A new section starts a new chunk, unless what we hold is too small to stand alone:
        # then the sections merge and the chunk keeps the path they share.
        if current and current_tokens >= min_tokens:
            flush()
        if current and current_path:
            shared = []
            for a, b in zip(current_path, section.path, strict=False):
                if a != b:
                    break
                shared.append(a)
            current_path = shared or current_path
        else:
            # A preamble without a heading takes the path of the section it joins.
            current_path = section.path
        for block in _fit(section.blocks, max_tokens, count):
            size = count(block.text)
            if current and current_tokens + size > max_tokens:
                flush()
                current_path = section.path
            current.append(block)
            current_tokens += size
    flush()
    return chunks
