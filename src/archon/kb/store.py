"""The chunk store: one Qdrant collection with a dense and a BM25 sparse vector per chunk.

Qdrant runs embedded (a local path, one process) by default, or as a server (a URL) when a team
outgrows one machine; the code path is the same.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from archon.errors import StoreInUse
from archon.kb import bm25
from archon.kb.fusion import FusionParams, Hit, Mode, by_document, fuse

DENSE = "dense"
SPARSE = "bm25"
ID_NAMESPACE = uuid.UUID("6f1c2b0e-9a4d-4e55-8c3a-2f7b1d0e9c41")


def chunk_id(source: str, path: str, position: int) -> str:
    """Stable per (source, path, position): a re-sync overwrites in place, never duplicates."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{source}\0{path}\0{position}"))


def path_prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class ChunkStore:
    def __init__(self, location: str, collection: str, dim: int):
        self.collection = collection
        self.dim = dim
        # Embedded Qdrant is not made for concurrent calls: syncs and queries take turns per call.
        self._lock = threading.RLock()
        try:
            if location.startswith(("http://", "https://")):
                self.client = QdrantClient(url=location, timeout=30)
            else:
                self.client = QdrantClient(path=location)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreInUse(
                    f"the store at {location} is open in another process (archon kb serve?): "
                    "trigger a sync with `archon kb sync --server URL` or POST /sync instead"
                ) from None
            raise
        if not self.client.collection_exists(collection):
            self.client.create_collection(
                collection,
                vectors_config={
                    DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                },
                sparse_vectors_config={
                    SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
            if not location.startswith(("http://", "https://")):
                return  # embedded Qdrant filters without payload indexes
            for field, schema in (
                ("source", models.PayloadSchemaType.KEYWORD),
                ("path", models.PayloadSchemaType.KEYWORD),
                ("prefixes", models.PayloadSchemaType.KEYWORD),
                ("position", models.PayloadSchemaType.INTEGER),
            ):
                self.client.create_payload_index(collection, field, field_schema=schema)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(*args, **kwargs)

    def upsert(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], payloads: list[dict[str, Any]]
    ) -> None:
        points = []
        for point_id, vector, text, payload in zip(ids, vectors, texts, payloads, strict=True):
            indices, values = bm25.document_vector(text)
            points.append(
                models.PointStruct(
                    id=point_id,
                    vector={
                        DENSE: vector.tolist(),
                        SPARSE: models.SparseVector(indices=indices, values=values),
                    },
                    payload=payload,
                )
            )
        for start in range(0, len(points), 256):
            self._call(self.client.upsert, self.collection, points[start : start + 256], wait=True)

    def delete_positions(self, source: str, path: str, positions: range) -> None:
        """Delete one file's chunks at these positions, by their ids. Embedded Qdrant answers a
        payload filter by reading every point's payload in Python, once per file of a sync: a
        full sync of the 553 docs files took 208.7 s with the filter, 190.6 s by id."""
        if not positions:
            return
        ids: list[models.ExtendedPointId] = [chunk_id(source, path, i) for i in positions]
        selector = models.PointIdsList(points=ids)
        self._call(self.client.delete, self.collection, points_selector=selector, wait=True)

    def delete_from(self, source: str, path: str, position: int = 0) -> None:
        """Delete the chunks of one file at positions >= position (all of them by default)."""
        self._delete(
            models.FieldCondition(key="source", match=models.MatchValue(value=source)),
            models.FieldCondition(key="path", match=models.MatchValue(value=path)),
            models.FieldCondition(key="position", range=models.Range(gte=position)),
        )

    def delete_source(self, source: str) -> None:
        self._delete(models.FieldCondition(key="source", match=models.MatchValue(value=source)))

    def _delete(self, *conditions: models.FieldCondition) -> None:
        selector = models.FilterSelector(filter=models.Filter(must=list(conditions)))
        self._call(self.client.delete, self.collection, points_selector=selector, wait=True)

    def count(self, source: str | None = None) -> int:
        flt = None
        if source:
            flt = models.Filter(
                must=[models.FieldCondition(key="source", match=models.MatchValue(value=source))]
            )
        return self._call(self.client.count, self.collection, count_filter=flt, exact=True).count

    def all_points(self) -> list[tuple[str, dict[str, Any]]]:
        out, offset = [], None
        while True:
            points, offset = self._call(
                self.client.scroll,
                self.collection,
                limit=1024,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            out += [(str(p.id), p.payload or {}) for p in points]
            if offset is None:
                return out

    def search(
        self,
        dense: np.ndarray | None,
        query_text: str,
        *,
        top_k: int,
        mode: Mode = "hybrid",
        sources: list[str] | None = None,
        path_prefix: str | None = None,
        fusion: FusionParams = FusionParams(),
        readable: list[str] | None = None,
    ) -> list[Hit]:
        must = []
        if readable is not None:
            # The caller's readable sources (archon.kb.access), in the payload filter of both
            # searches. Qdrant's IDF stays collection-wide (docs/knowledge-base.md, Access).
            if not readable:
                return []
            must.append(models.FieldCondition(key="source", match=models.MatchAny(any=readable)))
        if sources:
            must.append(models.FieldCondition(key="source", match=models.MatchAny(any=sources)))
        if path_prefix:
            must.append(
                models.FieldCondition(
                    key="prefixes", match=models.MatchValue(value=path_prefix.rstrip("/"))
                )
            )
        flt = models.Filter(must=must) if must else None
        indices, values = bm25.query_vector(query_text)
        sparse = models.SparseVector(indices=indices, values=values)
        if mode == "dense":
            assert dense is not None, "the dense and hybrid modes need the query's vector"
            result = self._call(
                self.client.query_points,
                self.collection,
                query=dense.tolist(),
                using=DENSE,
                limit=top_k,
                query_filter=flt,
                with_payload=True,
            )
        elif mode == "bm25":
            if not indices:
                return []
            result = self._call(
                self.client.query_points,
                self.collection,
                query=sparse,
                using=SPARSE,
                limit=top_k,
                query_filter=flt,
                with_payload=True,
            )
        else:
            # Both candidate lists, fused here: the same scores as the in-memory index, and the
            # weighted fusion Qdrant does not offer.
            assert dense is not None, "the dense and hybrid modes need the query's vector"
            rankings, payloads = [], {}
            queries = [(dense.tolist(), DENSE)] + ([(sparse, SPARSE)] if indices else [])
            for query, using in queries:
                points = self._call(
                    self.client.query_points,
                    self.collection,
                    query=query,
                    using=using,
                    limit=fusion.depth(top_k),
                    query_filter=flt,
                    with_payload=True,
                ).points
                rankings.append([(str(p.id), float(p.score)) for p in points])
                payloads.update({str(p.id): p.payload or {} for p in points})
            fused = by_document(
                fuse(rankings, fusion),
                lambda i: (payloads[i].get("source"), payloads[i].get("path")),
                fusion.document_weight,
            )
            return [Hit(i, score, payloads[i]) for i, score in fused[:top_k]]
        return [Hit(str(p.id), float(p.score), p.payload or {}) for p in result.points]

    def close(self) -> None:
        self.client.close()
