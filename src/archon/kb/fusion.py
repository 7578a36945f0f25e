"""How the two retrievers' candidates become one ranking, and the one search interface that the
embedded index and a Qdrant server both offer.

Each retriever (dense MiniLM, BM25) contributes its best ``top_k * candidates`` chunks; the lists
are fused by weighted reciprocal rank (w / (rrf_k + rank)) or by a weighted sum of min-max
normalised scores. With ``document_weight`` > 0 a chunk also gains that share of the fused score
of its file's other candidates, so that a file that matches in several places ranks above a
file with one lucky chunk. The defaults were chosen on the tuning half of the judged set
(docs/benchmarks.md, "Retrieval tuning").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

Mode = Literal["hybrid", "dense", "bm25"]
Fusion = Literal["rrf", "weighted"]
K = TypeVar("K", str, int)


@dataclass(frozen=True)
class FusionParams:
    method: Fusion = "rrf"
    dense_weight: float = 0.5  # the dense list's share; BM25 gets the rest
    rrf_k: int = 60
    candidates: int = 4  # each retriever contributes top_k * candidates chunks
    document_weight: float = 0.0

    def depth(self, top_k: int) -> int:
        return top_k * self.candidates


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class Searcher(Protocol):
    """The embedded in-memory index and the Qdrant store answer the same call."""

    def search(
        self,
        dense: np.ndarray | None,
        text: str,
        *,
        top_k: int,
        mode: Mode = "hybrid",
        sources: list[str] | None = None,
        path_prefix: str | None = None,
        fusion: FusionParams = FusionParams(),
        readable: list[str] | None = None,  # the caller's sources (archon.kb.access)
    ) -> list[Hit]: ...


def fuse(
    rankings: list[list[tuple[K, float]]],
    params: FusionParams,
    ranks: list[list[int]] | None = None,
) -> list[tuple[K, float]]:
    """Combine ranked (id, score) lists, dense first. ``ranks``: each entry's 0-based rank
    where it is not its place in its list (a filtered search: its rank in the whole store)."""
    fused: dict[K, float] = {}
    for n, ranking in enumerate(rankings):
        weight = params.dense_weight if n == 0 else 1.0 - params.dense_weight
        if params.method == "rrf":
            places = ranks[n] if ranks is not None else range(len(ranking))
            # Scaled so that equal weights give the textbook 1 / (k + rank).
            for rank, (point_id, _) in zip(places, ranking, strict=True):
                fused[point_id] = fused.get(point_id, 0.0) + 2 * weight / (params.rrf_k + rank + 1)
            continue
        if not ranking:
            continue
        scores = [s for _, s in ranking]
        low, high = min(scores), max(scores)
        for point_id, score in ranking:
            normalised = (score - low) / (high - low) if high > low else 1.0
            fused[point_id] = fused.get(point_id, 0.0) + weight * normalised
    return sorted(fused.items(), key=lambda item: -item[1])


def by_document(
    fused: list[tuple[K, float]], document_of: Callable[[K], Any], weight: float
) -> list[tuple[K, float]]:
    """Lift each chunk by ``weight`` times the fused score of its file's other candidates."""
    if weight <= 0 or not fused:
        return fused
    totals: dict[Any, float] = {}
    for point_id, score in fused:
        doc = document_of(point_id)
        totals[doc] = totals.get(doc, 0.0) + score
    lifted = [
        (point_id, score + weight * (totals[document_of(point_id)] - score))
        for point_id, score in fused
    ]
    return sorted(lifted, key=lambda item: -item[1])
