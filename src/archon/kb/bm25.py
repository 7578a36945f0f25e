"""BM25 as Qdrant sparse vectors: the term-frequency part is computed here, the IDF part by
Qdrant from the collection (``Modifier.IDF``), so the index stays exact as documents come and go
and nothing is rebuilt per query."""

from __future__ import annotations

import re
import zlib
from collections import Counter

K1 = 1.2
B = 0.75
# A typical chunk's length in BM25 terms, fixed so that stored weights stay valid: a 200-piece
# chunk (the default chunk_max_tokens) with its path and trail holds ~80 (300 fitted the old
# 800-piece chunks). A change re-weights every chunk: it is part of the recorded chunking.
AVG_DOC_TOKENS = 80.0

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "you",
        "your",
        "we",
        "our",
        "not",
        "can",
        "if",
        "then",
        "than",
        "so",
        "do",
        "does",
        "how",
        "what",
        "when",
        "which",
        "who",
        "into",
        "also",
        "may",
        "should",
        "would",
        "could",
        "these",
        "those",
        "there",
        "their",
        "they",
        "them",
        "been",
        "being",
    ]
)
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_]*")


def terms(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if len(t) > 1 and t not in STOPWORDS]


def _index(term: str) -> int:
    return zlib.crc32(term.encode())


def document_vector(text: str) -> tuple[list[int], list[float]]:
    counts = Counter(terms(text))
    length = sum(counts.values()) or 1
    norm = K1 * (1 - B + B * length / AVG_DOC_TOKENS)
    merged: dict[int, float] = {}
    for term, tf in counts.items():
        index = _index(term)
        merged[index] = merged.get(index, 0.0) + tf * (K1 + 1) / (tf + norm)
    return list(merged), list(merged.values())


def query_vector(text: str) -> tuple[list[int], list[float]]:
    indices = sorted({_index(t) for t in terms(text)})
    return indices, [1.0] * len(indices)
