"""The knowledge base as one object: store, state, embedder, syncer; used by CLI and app."""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from archon.errors import SyncInProgressError
from archon.kb.access import AccessPolicy
from archon.kb.embeddings import (
    Embedder,
    SentenceTransformerEmbedder,
    bundled_model_path,
    cpu_has_native_bf16,
    resolve_backend,
)
from archon.kb.fusion import Fusion, FusionParams, Mode, Searcher
from archon.kb.index import MemoryIndex
from archon.kb.rerank import Reranker
from archon.kb.settings import KnowledgeBaseSettings
from archon.kb.sources import load_sources
from archon.kb.store import ChunkStore
from archon.kb.sync import State, Syncer, SyncReport, check_embedder


def make_embedder(settings: KnowledgeBaseSettings, recorded_model: str | None = None) -> Embedder:
    """The configured embedder; ``recorded_model`` is what the store was built with (the
    ``auto`` backend keeps to it)."""
    if settings.embedding_url:
        from archon.kb.embeddings_remote import OpenAIEmbedder

        key = settings.embedding_api_key
        return OpenAIEmbedder(
            settings.embedding_url,
            settings.embedding_model,
            api_key=key.get_secret_value() if key else None,
        )
    backend = resolve_backend(settings.embedding_backend, recorded_model, cpu_has_native_bf16())
    if backend in ("torch", "torch-bf16"):
        return SentenceTransformerEmbedder(settings.embedding_model, bf16=backend == "torch-bf16")
    from archon.kb.onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(
        settings.embedding_model,
        Path(bundled_model_path(settings.embedding_model)),
        settings.data_dir / "models",
        precision="int8" if backend == "onnx-int8" else "fp32",
    )


class KnowledgeBase:
    def __init__(
        self,
        settings: KnowledgeBaseSettings,
        embedder: Embedder | None = None,
        *,
        reindex: bool = False,
    ):
        self.settings = settings
        self.state = State(settings.data_dir / "state.db")
        if reindex:
            self._reset()
        self.embedder = embedder or make_embedder(settings, self.state.meta("embedding_model"))
        check_embedder(self.state, self.embedder)
        self.store = ChunkStore(settings.store_location, settings.collection, self.embedder.dim)
        self.syncer = Syncer(
            self.store,
            self.state,
            self.embedder,
            settings.data_dir / "repos",
            max_tokens=settings.chunk_max_tokens,
            min_tokens=settings.chunk_min_tokens,
            context=settings.chunk_context,
        )
        self.reranker = (
            Reranker(settings.rerank_url, settings.rerank_model, timeout=settings.rerank_timeout)
            if settings.rerank_url
            else None
        )
        self.access = AccessPolicy(settings.sources)
        self._sync_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._index: MemoryIndex | None = None
        self.last_report: SyncReport | None = None

    def _reset(self) -> None:
        location = self.settings.store_location
        store = ChunkStore(location, self.settings.collection, 1)
        store.client.delete_collection(self.settings.collection)
        store.close()
        self.state.clear()

    @property
    def syncing(self) -> bool:
        return self._sync_lock.locked()

    def sync(self, sources_file: Path | None = None, progress: Any = None) -> SyncReport:
        sources = load_sources(sources_file or self.settings.sources)
        if not self._sync_lock.acquire(blocking=False):
            raise SyncInProgressError("a sync is already running")
        try:
            self.last_report = self.syncer.sync(sources, progress)
            if self._index is not None:
                # Swap in a fresh index; queries keep the old one until it is ready.
                self._index = MemoryIndex(self.store)
            return self.last_report
        finally:
            self._sync_lock.release()

    def query(
        self,
        text: str,
        *,
        top_k: int,
        mode: Mode = "hybrid",
        sources: list[str] | None = None,
        path_prefix: str | None = None,
        score_threshold: float | None = None,
        fusion: Fusion = "rrf",
        dense_weight: float | None = None,
        groups: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The best chunks for ``text``; with ``groups`` (the caller's, archon.kb.access) only
        among the sources they may read: the search filters, so no other chunk is a
        candidate. ``sources`` and ``path_prefix`` narrow further."""
        readable = self.access.readable(groups)
        if readable is not None and not readable:
            return []
        dense = self.embedder.embed_query(text) if mode != "bm25" else None
        searcher: Searcher = self.store if self.settings.qdrant else self.index()
        candidates = max(top_k, self.settings.rerank_candidates) if self.reranker else top_k
        hits = searcher.search(
            dense,
            text,
            top_k=candidates,
            mode=mode,
            sources=sources,
            path_prefix=path_prefix,
            fusion=self.fusion(fusion, dense_weight),
            readable=readable,
        )
        if self.reranker is not None and len(hits) > 1:
            scores = self.reranker.scores(text, [_rerank_text(h.payload) for h in hits])
            if scores is not None:
                for hit, score in zip(hits, scores, strict=True):
                    hit.score = score
                hits.sort(key=lambda h: -h.score)
        out = []
        for hit in hits[:top_k]:
            if score_threshold is not None and hit.score < score_threshold:
                continue
            p = hit.payload
            out.append(
                {
                    "id": hit.id,
                    "score": hit.score,
                    "text": p.get("text"),
                    "heading_path": p.get("heading_path", []),
                    "source": p.get("source"),
                    "path": p.get("path"),
                    "start_line": p.get("start_line"),
                    "end_line": p.get("end_line"),
                    "url": p.get("url"),
                    "commit": p.get("commit"),
                    **_code_fields(p),
                }
            )
        return out

    def fusion(self, method: Fusion = "rrf", dense_weight: float | None = None) -> FusionParams:
        """The configured fusion, with a request's own method and weight."""
        s = self.settings
        return FusionParams(
            method=method,
            dense_weight=s.dense_weight if dense_weight is None else dense_weight,
            rrf_k=s.rrf_k,
            candidates=s.fusion_candidates,
            document_weight=s.document_weight,
        )

    def warm(self) -> None:
        """Build what the first query would otherwise wait for: the in-memory index, and the
        embedding model (loaded on first use: a sync with nothing to embed never loads it, and
        the first question then waited seconds, past the agent's kb_timeout)."""
        if not self.settings.qdrant:
            self.index()
        self.embedder.embed_query("warm up")

    def index(self) -> MemoryIndex:
        """The in-memory index of an embedded store, built on first use and after syncs."""
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = MemoryIndex(self.store)
        return self._index

    def sources_summary(self, groups: list[str] | None = None) -> list[dict[str, Any]]:
        """The synced sources, those ``groups`` may read when given (archon.kb.access)."""
        readable = self.access.readable(groups)
        rows = self.state.sources()
        return rows if readable is None else [r for r in rows if r.get("name") in readable]

    def report_dict(self) -> dict[str, Any] | None:
        return asdict(self.last_report) if self.last_report else None

    def close(self) -> None:
        if self.reranker is not None:
            self.reranker.close()
        self.store.close()


def _code_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """A code chunk's language, symbol and kind (archon.kb.code_chunking); none for docs."""
    return {k: payload[k] for k in ("language", "symbol", "symbol_kind") if k in payload}


def _rerank_text(payload: dict[str, Any]) -> str:
    """What the cross-encoder reads: where the chunk sits, then the chunk."""
    trail = " > ".join(payload.get("heading_path") or [])
    return f"{payload.get('path', '')}: {trail}\n\n{payload.get('text') or ''}".strip()
