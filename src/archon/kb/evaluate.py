"""Retrieval quality on a judged query set: graded nDCG@10 and recall@10 per search mode.

A query set is JSON lines. Relevance is judged per document, graded or binary:

    {"query": "...", "relevant": {"source:path": 2, "source:other.md": 1}, "split": "test"}
    {"query": "...", "relevant": ["source:path"]}          # binary: every listed file is 1

Grade 2 answers the question, 1 helps; unlisted files are 0. nDCG uses the gain 2^grade - 1
(the usual graded form), recall counts the files graded 2 (or all listed ones when no file is).
Chunks are ranked, and each document counts at its first chunk's rank. ``split`` (tune/test)
lets a set be tuned on one half and reported on the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.jsonl import BadRow, read_split

MODES = ("dense", "bm25", "hybrid")


@dataclass
class Judged:
    query: str
    relevant: dict[str, int]
    split: str | None = None
    kind: str | None = None
    id: str | None = None


@dataclass
class ModeScore:
    mode: str
    ndcg_at_10: float
    recall_at_10: float
    queries: int
    by_kind: dict[str, float] = field(default_factory=dict)  # nDCG@10 per question kind


def _grades(value: Any) -> dict[str, int]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return dict.fromkeys(value, 1)
    if isinstance(value, dict) and all(g in (0, 1, 2) for g in value.values()):
        return {doc: int(g) for doc, g in value.items() if g > 0}
    raise TypeError


def load_queries(path: Path, split: str | None = None) -> list[Judged]:
    return read_split(
        path,
        "query set",
        _judged,
        '{"query": ..., "relevant": {"source:path": 0-2}} or {"query": ..., "relevant": '
        '["source:path"]}',
        split,
        f"{path}: no queries" + (f" in split {split!r}" if split else ""),
    )


def _judged(item: dict[str, Any], _number: int) -> Judged:
    judged = Judged(item["query"], _grades(item["relevant"]), item.get("split"), item.get("kind"))
    judged.id = item.get("id")
    if not judged.relevant:
        raise BadRow("no relevant document")
    return judged


def ranked_documents(kb: Any, query: str, mode: str, depth: int = 10) -> list[str]:
    docs: list[str] = []
    for chunk in kb.query(query, top_k=depth * 4, mode=mode):
        doc = f"{chunk['source']}:{chunk['path']}"
        if doc not in docs:
            docs.append(doc)
    return docs[:depth]


def ndcg(ranked: list[str], grades: dict[str, int], k: int = 10) -> float:
    gain = sum((2 ** grades.get(doc, 0) - 1) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal_grades = sorted(grades.values(), reverse=True)[:k]
    ideal = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal_grades))
    return gain / ideal if ideal else 0.0


def recall(ranked: list[str], grades: dict[str, int], k: int = 10) -> float:
    top = max(grades.values())
    wanted = {doc for doc, g in grades.items() if g == top}
    return len(wanted & set(ranked[:k])) / len(wanted)


def evaluate(kb: Any, queries: list[Judged], modes: tuple[str, ...] = MODES) -> list[ModeScore]:
    scores = []
    for mode in modes:
        n_total = r_total = 0.0
        kinds: dict[str, list[float]] = {}
        for judged in queries:
            ranked = ranked_documents(kb, judged.query, mode)
            value = ndcg(ranked, judged.relevant)
            n_total += value
            r_total += recall(ranked, judged.relevant)
            kinds.setdefault(judged.kind or "-", []).append(value)
        by_kind = {kind: sum(v) / len(v) for kind, v in sorted(kinds.items())}
        scores.append(
            ModeScore(mode, n_total / len(queries), r_total / len(queries), len(queries), by_kind)
        )
    return scores
