"""Retrieval quality on a judged query set: nDCG@10 and recall@10 per search mode.

A query set is JSON lines: {"query": "...", "relevant": ["source:path", ...]}. Relevance is
judged per document; chunks are ranked, and each document counts at its first chunk's rank.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from archon.errors import ConfigError
from archon.kb.service import KnowledgeBase

MODES = ("dense", "bm25", "hybrid")


@dataclass
class ModeScore:
    mode: str
    ndcg_at_10: float
    recall_at_10: float
    queries: int


def load_queries(path: Path) -> list[tuple[str, set[str]]]:
    queries = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"query set {path} not found") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            queries.append((item["query"], set(item["relevant"])))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f'{path}:{number}: expected {{"query": ..., "relevant": ["source:path"]}}'
            ) from None
    return queries


def ranked_documents(kb: KnowledgeBase, query: str, mode: str, depth: int = 10) -> list[str]:
    docs: list[str] = []
    for chunk in kb.query(query, top_k=depth * 4, mode=mode):  # type: ignore[arg-type]
        doc = f"{chunk['source']}:{chunk['path']}"
        if doc not in docs:
            docs.append(doc)
    return docs[:depth]


def ndcg(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    gain = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return gain / ideal if ideal else 0.0


def evaluate(kb: KnowledgeBase, queries: list[tuple[str, set[str]]]) -> list[ModeScore]:
    scores = []
    for mode in MODES:
        n_total = r_total = 0.0
        for query, relevant in queries:
            ranked = ranked_documents(kb, query, mode)
            n_total += ndcg(ranked, relevant)
            r_total += len(relevant & set(ranked)) / len(relevant)
        scores.append(ModeScore(mode, n_total / len(queries), r_total / len(queries), len(queries)))
    return scores
