"""Sync sources into the store: incremental, crash-safe, and never keeping deleted docs.

Per file, in this order, each step committed before the next:
1. the state row says "pending" with the new content hash (a write-ahead intent: every path that
   may have points in the store has a row, so deletions can always be found);
2. the new chunks are upserted under ids stable per (source, path, position): a query sees the
   old or the new version of each chunk, never a gap;
3. positions past the new chunk count are deleted, up to the most the file may hold: step 1
   records, as the row's chunk count, the larger of the old count and the new one, so the
   leftovers of an attempt killed after step 2 are known by position and deleted by id (a
   pending row from before this was recorded has 0 there: its file is cleaned by filter);
4. the row becomes "done" with the new count.
Killed at any point, the next run redoes "pending" rows and converges to a clean sync's state.
Files gone from the tree, or now excluded, are deleted on every sync.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from archon.errors import ConfigError
from archon.kb.chunking import DOCS_CHUNKING, Chunk, chunk_markdown
from archon.kb.code_chunking import (
    CODE_CHUNKING,
    CodeChunk,
    chunk_code,
    code_embedded_text,
    code_indexed_text,
)
from archon.kb.code_chunking import skip_reason as code_skip_reason
from archon.kb.embeddings import Embedder
from archon.kb.sources import Source, SourceError, checkout
from archon.kb.store import ChunkStore, chunk_id, path_prefixes

log = logging.getLogger("archon.kb.sync")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  source TEXT NOT NULL, path TEXT NOT NULL, content_hash TEXT NOT NULL,
  chunks INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, commit_id TEXT, synced_at REAL,
  PRIMARY KEY (source, path));
CREATE TABLE IF NOT EXISTS sources (
  name TEXT PRIMARY KEY, last_success REAL, last_attempt REAL, commit_id TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class State:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.db.commit()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def files(self, source: str) -> dict[str, tuple[str, int, str]]:
        rows = self.db.execute(
            "SELECT path, content_hash, chunks, status FROM files WHERE source=?", (source,)
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def mark(
        self, source: str, path: str, content_hash: str, chunks: int, status: str, commit: str
    ) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, path, content_hash, chunks, status, commit, time.time()),
            )

    def forget(self, source: str, path: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM files WHERE source=? AND path=?", (source, path))

    def forget_source(self, name: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM files WHERE source=?", (name,))
            self.db.execute("DELETE FROM sources WHERE name=?", (name,))

    def clear(self) -> None:
        """Forget every file and the recorded model: the next sync rebuilds everything."""
        with self.db:
            self.db.execute("DELETE FROM files")
            self.db.execute("DELETE FROM meta")

    def source_result(self, name: str, commit: str | None, error: str | None) -> None:
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO sources VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "last_attempt=excluded.last_attempt, error=excluded.error, "
                "commit_id=COALESCE(excluded.commit_id, sources.commit_id), "
                "last_success=COALESCE(excluded.last_success, sources.last_success)",
                (name, None if error else now, now, commit, error),
            )

    def sources(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT s.name, s.last_success, s.last_attempt, s.commit_id, s.error, "
            "COUNT(f.path), COALESCE(SUM(f.chunks), 0) FROM sources s "
            "LEFT JOIN files f ON f.source = s.name GROUP BY s.name ORDER BY s.name"
        )
        keys = ("name", "last_success", "last_attempt", "commit", "error", "files", "chunks")
        return [dict(zip(keys, r, strict=True)) for r in rows]


@dataclass
class SourceReport:
    name: str
    commit: str | None = None
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks_written: int = 0
    skipped: int = 0  # generated, vendored or binary files (archon.kb.code_chunking)
    error: str | None = None


@dataclass
class SyncReport:
    sources: list[SourceReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.error is None for s in self.sources)


Progress = Callable[[str, int, int], None]  # (source, files done, files total)


class Syncer:
    def __init__(
        self,
        store: ChunkStore,
        state: State,
        embedder: Embedder,
        cache: Path,
        *,
        max_tokens: int = 200,
        min_tokens: int = 100,
        context: bool = False,
    ):
        self.context = context
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.store = store
        self.state = state
        self.embedder = embedder
        self.cache = cache

    def sync(self, sources: list[Source], progress: Progress | None = None) -> SyncReport:
        began = time.monotonic()
        report = SyncReport()
        # A change of chunking settings re-chunks every file, not only the changed ones: a store
        # must not mix chunks of two sizes or two kinds of indexed text.
        recorded = self.state.meta("chunking")
        rechunk = recorded != self.chunking and any(self.state.sources())
        if recorded != self.chunking and not rechunk:
            self.state.set_meta("chunking", self.chunking)  # a new store: nothing to re-chunk
        if rechunk:
            log.info("chunking changed (%s -> %s): re-chunking every file", recorded, self.chunking)
        for source in sources:
            report.sources.append(self._sync_source(source, progress, rechunk))
        if report.ok:
            self.state.set_meta("chunking", self.chunking)
        # Sources removed from the sources file lose their chunks too.
        names = {s.name for s in sources}
        for row in self.state.sources():
            if row["name"] not in names:
                self.store.delete_source(row["name"])
                self.state.forget_source(row["name"])
        report.seconds = time.monotonic() - began
        return report

    @property
    def chunking(self) -> str:
        return (
            f"max_tokens={self.max_tokens} min_tokens={self.min_tokens} context={self.context}"
            f" code={CODE_CHUNKING} docs={DOCS_CHUNKING}"
        )

    def _sync_source(
        self, source: Source, progress: Progress | None, rechunk: bool = False
    ) -> SourceReport:
        result = SourceReport(source.name)
        try:
            tree = checkout(source, self.cache)
        except SourceError as exc:
            result.error = str(exc)
            log.error("source %s skipped: %s", source.name, exc)
            self.state.source_result(source.name, None, result.error)
            return result
        result.commit = tree.commit
        known = self.state.files(source.name)
        present = set(tree.files)
        for done, path in enumerate(tree.files):
            data = (tree.root / path).read_bytes()
            if not is_markdown(path) and skip_file(path, data):
                present.discard(path)  # indexed before? its chunks go below
                result.skipped += 1
                continue
            content_hash = hashlib.sha256(data).hexdigest()
            previous = known.get(path)
            if not rechunk and previous and previous[0] == content_hash and previous[2] == "done":
                result.unchanged += 1
            else:
                if previous is None:
                    result.added += 1
                else:
                    result.changed += 1
                result.chunks_written += self._write_file(
                    source,
                    tree.commit,
                    path,
                    data.decode("utf-8", "replace"),
                    content_hash,
                    held(previous),
                )
            if progress:
                progress(source.name, done + 1, len(tree.files))
        for path in set(known) - present:
            self._delete_file(source.name, path, 0, held(known[path]))
            self.state.forget(source.name, path)
            result.deleted += 1
        self.state.source_result(source.name, tree.commit, None)
        return result

    def _delete_file(self, source: str, path: str, start: int, held: int | None) -> None:
        """Delete a file's chunks from position ``start`` on: by id up to ``held``, the most it
        may hold; by filter where that is not known."""
        if held is None:
            self.store.delete_from(source, path, start)
        else:
            self.store.delete_positions(source, path, range(start, held))

    def _write_file(
        self,
        source: Source,
        commit: str,
        path: str,
        text: str,
        content_hash: str,
        held_before: int | None,
    ) -> int:
        chunks: list[Chunk | CodeChunk] = []
        if is_markdown(path):
            chunks += chunk_markdown(
                text,
                max_tokens=self.max_tokens,
                min_tokens=self.min_tokens,
                count=self.embedder.count_tokens,
            )
        else:
            chunks += chunk_code(path, text)
        bound = None if held_before is None else max(held_before, len(chunks))
        self.state.mark(source.name, path, content_hash, bound or 0, "pending", commit)
        if chunks:
            embed_texts = [
                code_indexed_text(source.name, path, c)
                if isinstance(c, CodeChunk)
                else indexed_text(source.name, path, c, self.context)
                for c in chunks
            ]
            # Code is embedded by its head (trail, signature, doc, first lines: one model
            # window); BM25 reads all of it (archon.kb.code_chunking).
            vectors = self.embedder.embed_documents(
                [
                    code_embedded_text(source.name, path, c, self.embedder.count_tokens)
                    if isinstance(c, CodeChunk)
                    else embed_texts[i]
                    for i, c in enumerate(chunks)
                ]
            )
            payloads = [
                {
                    "source": source.name,
                    "path": path,
                    "prefixes": path_prefixes(path),
                    "position": i,
                    "commit": commit,
                    "heading_path": c.heading_path,
                    "start_line": c.start_line,
                    "end_line": c.end_line,
                    "text": c.text,
                    "url": source.browse_url(path, commit, c.start_line),
                    "content_hash": content_hash,
                    **code_payload(c),
                }
                for i, c in enumerate(chunks)
            ]
            ids = [chunk_id(source.name, path, i) for i in range(len(chunks))]
            self.store.upsert(ids, vectors, embed_texts, payloads)
        self._delete_file(source.name, path, len(chunks), bound)
        self.state.mark(source.name, path, content_hash, len(chunks), "done", commit)
        return len(chunks)


def held(row: tuple[str, int, str] | None) -> int | None:
    """The most chunks a file's points may occupy, from its state row (content hash, chunks,
    status): none without a row (every path with points has one); the recorded count when
    done, or the bound a pending attempt recorded; unknown (None) for a pending row without
    one."""
    if row is None:
        return 0
    _, chunks, status = row
    if status == "done" or chunks > 0:
        return chunks
    return None


def is_markdown(path: str) -> bool:
    return path.lower().endswith((".md", ".markdown", ".mdx"))


def skip_file(path: str, data: bytes) -> bool:
    """Binary, generated and vendored files are not knowledge (code_chunking.skip_reason)."""
    if b"\0" in data[:8192]:
        return True
    return code_skip_reason(path, data.decode("utf-8", "replace")) is not None


def code_payload(chunk: Chunk | CodeChunk) -> dict[str, object]:
    """What a reader is shown of a code chunk: its language, symbol and kind."""
    if not isinstance(chunk, CodeChunk):
        return {}
    fields = {"language": chunk.language, "symbol": chunk.symbol, "symbol_kind": chunk.kind}
    return {k: v for k, v in fields.items() if v is not None}


def indexed_text(source: str, path: str, chunk: Chunk, context: bool) -> str:
    """What the retrievers see of a chunk: its heading trail, and with ``context`` also where it
    lives (repo and path, split into words so "auto_sync.md" matches "auto sync")."""
    trail = " > ".join(chunk.heading_path)
    head = trail
    if context:
        words = re.sub(r"[/_.\-]+", " ", path.removesuffix(".md")).strip()
        head = f"{source}: {words}" + (f"\n{trail}" if trail else "")
    return f"{head}\n\n{chunk.text}" if head else chunk.text


def check_embedder(state: State, embedder: Embedder) -> None:
    """A store built with one embedding model cannot be searched with another."""
    recorded = state.meta("embedding_model")
    if recorded is None:
        state.set_meta("embedding_model", embedder.name)
        state.set_meta("embedding_dim", str(embedder.dim))
        return
    if recorded != embedder.name or state.meta("embedding_dim") != str(embedder.dim):
        raise ConfigError(
            f"embedding_model: the store was built with {recorded} "
            f"(dim {state.meta('embedding_dim')}) but {embedder.name} (dim {embedder.dim}) is "
            "configured; re-index with `archon kb sync --reindex` (rebuilds every chunk) or set "
            f"embedding_model back to {recorded.split('@')[0]}"
            + (
                " and embedding_backend=onnx-int8 (or auto)"
                if recorded.endswith("@onnx-int8")
                else " and embedding_backend=auto (or torch-bf16, onnx, torch)"
            )
        )
