"""The passages of the retrieved chunks that best match a question.

A chunk is cut into Markdown blocks as CommonMark reads them (a paragraph with its wrapped lines
joined, a list item, a table row, a code block, glued to the line before it when that line ends
in ``:``); a
passage is up to three blocks in a row. Passages are scored by how much of the question's
vocabulary they hold, each term weighted by its IDF among the candidate passages, so a rare
word of the question ("sync", "SIGHUP") counts more than one every passage shares; for a "how
do I" question a passage with a command (a code block, or a code span with an argument) gets a
bonus.

Two uses: the excerpt of a long chunk put in the prompt is the window around its best passage
(so every retrieved source fits ``max_context_chars``, not the first two), and the lead quote,
the best passage verbatim at the top of an answer from a model too small to copy it itself
(``lead_quote`` in archon.agent.generation, archon.agent.rag.lead_quote).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from archon.kb.bm25 import terms
from archon.markdown_blocks import leaf_blocks

MAX_BLOCKS = 3  # a passage: this many blocks in a row at most
PART_WEIGHT = 0.5  # a question word found only as part of a path or a name counts this much
CODE_BONUS = 0.15  # a "how do I" question is best answered by a passage with a command in it
_HOW = re.compile(r"\s*(?:how\b|what (?:command|flag)|which (?:command|flag))", re.IGNORECASE)
# A command: a fenced code block, or a code span with an argument (`archon kb sync`, not a
# metric name like `archon_kb_documents`).
_COMMAND = re.compile(r"^\s*(```|~~~)|`[^`\n]*\w [^`\n]*\w[^`\n]*`", re.MULTILINE)
_WHOLE = re.compile(r"(?<![\w./-])[a-z0-9]+(?![\w/-]|\.\w)")  # a word not joined to another


@dataclass(frozen=True)
class Block:
    text: str  # wrapped lines joined: what is scored
    first_line: int  # its lines in the chunk's text.splitlines()
    last_line: int


@dataclass(frozen=True)
class Passage:
    chunk: int  # its chunk's position in the list given
    first_line: int  # its lines in that chunk's text, verbatim Markdown
    last_line: int
    text: str
    score: float


def blocks(text: str) -> list[Block]:
    """The chunk's Markdown blocks as CommonMark reads them (archon.markdown_blocks), in order;
    headings left out (the heading trail has them). A paragraph's, list item's or table row's
    lines are joined; a code block keeps its lines and is glued to the paragraph before it when
    that ends in ``:`` ("Run:" and the command it introduces are one block)."""
    lines = text.splitlines()
    out: list[Block] = []
    for block in leaf_blocks(text):
        if block.kind == "heading":
            continue
        verbatim = lines[block.first_line : block.last_line + 1]
        if block.kind in ("fence", "code", "html"):
            code = "\n".join(verbatim)
            last = out[-1] if out else None
            if (
                block.kind != "html"
                and last
                and last.text.endswith(":")
                and last.last_line >= block.first_line - 2
            ):
                out[-1] = Block(last.text + "\n" + code, last.first_line, block.last_line)
            else:
                out.append(Block(code, block.first_line, block.last_line))
            continue
        out.append(
            Block(" ".join(line.strip() for line in verbatim), block.first_line, block.last_line)
        )
    return out


def passages(question: str, texts: list[str], max_chars: int = 400) -> list[Passage]:
    """Every passage of ``texts`` of at most ``max_chars`` (a longer single block is cut),
    best first."""
    candidates: list[tuple[int, int, int, str]] = []
    for n, text in enumerate(texts):
        lines = text.splitlines()
        parts = blocks(text)
        for i, block in enumerate(parts):
            for j in range(i, min(len(parts), i + MAX_BLOCKS)):
                verbatim = "\n".join(lines[block.first_line : parts[j].last_line + 1])
                if j > i and len(verbatim) > max_chars:
                    break
                candidates.append(
                    (n, block.first_line, parts[j].last_line, _cut(verbatim, max_chars))
                )
    if not candidates:
        return []
    vocab = [set(terms(c[3])) for c in candidates]
    # Words standing alone, not inside a path or a name ("knowledge" in "manifests/knowledge-
    # base/", "sync" in "kb-sync"): a passage about the question says them in words.
    alone = [set(_WHOLE.findall(c[3].lower())) for c in candidates]
    frequency: dict[str, int] = {}
    for words in vocab:
        for word in words:
            frequency[word] = frequency.get(word, 0) + 1
    total = len(candidates)

    def idf(word: str) -> float:
        seen = frequency.get(word, 0)
        return math.log(1 + (total - seen + 0.5) / (seen + 0.5))

    asked = set(terms(question))
    weight = sum(idf(w) for w in asked) or 1.0
    how = _HOW.match(question) is not None
    scored = []
    for (n, first, last, text), words, free in zip(candidates, vocab, alone, strict=True):
        inside = (asked & words) - free
        score = (sum(idf(w) for w in asked & free) + PART_WEIGHT * sum(map(idf, inside))) / weight
        if how and score > 0 and _COMMAND.search(text):
            score += CODE_BONUS
        scored.append(Passage(n, first, last, text, score))
    # Between equal scores the better retrieved chunk wins, then the shorter passage: a block
    # that says it all beats the same block with its neighbours.
    return sorted(scored, key=lambda p: (-round(p.score, 9), p.chunk, len(p.text)))


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    cut = cut.rsplit(" ", 1)[0] if " " in cut else cut
    if cut.count("```") % 2:
        cut += "\n```"  # close a code block cut in the middle
    return cut + " …"


def best_passage(question: str, texts: list[str], max_chars: int = 400) -> Passage | None:
    """The best passage, or None when no passage shares a word with the question."""
    ranked = passages(question, texts, max_chars)
    return ranked[0] if ranked and ranked[0].score > 0 else None


def window(question: str, text: str, max_chars: int) -> tuple[str, int]:
    """``text`` if it fits ``max_chars``, else the lines around its best passage that fit,
    whole blocks at a time (the start of the chunk when nothing matches); with the index of
    its first line in ``text``."""
    if len(text) <= max_chars:
        return text, 0
    lines = text.splitlines()
    parts = blocks(text)
    if not parts:
        return _cut(text, max_chars), 0
    best = best_passage(question, [text], max_chars)
    first = last = 0
    if best is not None:
        first = next(i for i, b in enumerate(parts) if b.first_line == best.first_line)
        last = next(i for i, b in enumerate(parts) if b.last_line == best.last_line)

    def size(i: int, j: int) -> int:
        return len("\n".join(lines[parts[i].first_line : parts[j].last_line + 1]))

    grew = True
    while grew:  # one block at a time, after then before, while it fits
        grew = False
        if last + 1 < len(parts) and size(first, last + 1) <= max_chars:
            last += 1
            grew = True
        if first > 0 and size(first - 1, last) <= max_chars:
            first -= 1
            grew = True
    picked = "\n".join(lines[parts[first].first_line : parts[last].last_line + 1])
    return _cut(picked, max_chars), parts[first].first_line
