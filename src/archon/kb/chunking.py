"""Markdown-aware chunking: split on headings, keep the heading path, never inside a code fence
or a table, merge tiny sections, and keep chunks between a minimum and a maximum token count.

Blocks (a heading, a paragraph, a list, a code fence, a table) are atomic: a chunk boundary only
ever falls between two blocks. A single block larger than the maximum (a long code listing)
becomes a chunk of its own rather than being cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
TABLE = re.compile(r"^\s*\|")

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


def front_matter_title(markdown: str) -> str | None:
    lines = markdown.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() in ("---", "..."):
            return None
        match = re.match(r"^title:\s*[\"']?(.*?)[\"']?\s*$", line)
        if match:
            return match.group(1) or None
    return None


def split_blocks(markdown: str) -> list[Block]:
    lines = markdown.splitlines()
    blocks: list[Block] = []
    i = 0
    # YAML front matter is metadata, not prose.
    if lines and lines[0].strip() == "---":
        for j in range(1, len(lines)):
            if lines[j].strip() in ("---", "..."):
                i = j + 1
                break
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            marker = fence.group(1)
            j = i + 1
            while j < len(lines):
                close = FENCE.match(lines[j])
                if (
                    close
                    and close.group(1)[0] == marker[0]
                    and len(close.group(1)) >= len(marker)
                    and not lines[j].strip()[len(close.group(1)) :].strip()
                ):
                    break
                j += 1
            end = min(j, len(lines) - 1)
            blocks.append(Block("\n".join(lines[i : end + 1]), i + 1, end + 1))
            i = end + 1
            continue
        heading = HEADING.match(line)
        if heading:
            blocks.append(Block(line, i + 1, i + 1, heading_level=len(heading.group(1))))
            i += 1
            continue
        if TABLE.match(line):
            j = i
            while j + 1 < len(lines) and TABLE.match(lines[j + 1]):
                j += 1
            blocks.append(Block("\n".join(lines[i : j + 1]), i + 1, j + 1))
            i = j + 1
            continue
        j = i
        while (
            j + 1 < len(lines)
            and lines[j + 1].strip()
            and not FENCE.match(lines[j + 1])
            and not HEADING.match(lines[j + 1])
            and not TABLE.match(lines[j + 1])
        ):
            j += 1
        blocks.append(Block("\n".join(lines[i : j + 1]), i + 1, j + 1))
        i = j + 1
    return blocks


def _sections(blocks: list[Block], title: str | None) -> list[_Section]:
    root = [title] if title else []
    sections = [_Section(list(root))]
    stack: list[tuple[int, str]] = []
    for block in blocks:
        if block.heading_level:
            heading = HEADING.match(block.text.splitlines()[0]).group(2)  # type: ignore[union-attr]
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
    """Split an oversized paragraph or list at line boundaries; fences and tables stay whole."""
    out: list[Block] = []
    for block in blocks:
        first = block.text.lstrip()
        if (
            block.heading_level
            or FENCE.match(first)
            or TABLE.match(first)
            or count(block.text) <= max_tokens
        ):
            out.append(block)
            continue
        lines = block.text.splitlines()
        start = 0
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and (end == start or size + count(lines[end]) <= max_tokens):
                size += count(lines[end])
                end += 1
            out.append(
                Block(
                    "\n".join(lines[start:end]),
                    block.start_line + start,
                    block.start_line + end - 1,
                )
            )
            start = end
    return out


def chunk_markdown(
    markdown: str,
    *,
    max_tokens: int = 800,
    min_tokens: int = 400,
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
