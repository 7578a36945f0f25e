"""The knowledge base on the real corpora (../shared/corpora), turned into local Git repos:
chunking, incremental sync, pruning, crash safety, and the query service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from archon.errors import SyncInProgressError
from archon.kb.embeddings import Embedder
from archon.kb.fusion import FusionParams
from archon.kb.service import KnowledgeBase, make_embedder
from archon.kb.settings import KnowledgeBaseSettings
from tests.support.servers import ARCHON
from tests.support.stack import start_kb

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"
pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is missing")

# A slice of the Prometheus docs keeps each full sync to seconds.
SUBSET = ["docs/querying", "docs/configuration/https.md", "docs/storage.md", "docs/federation.md"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=test", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(tmp: Path, corpus: str = "prometheus", subset: list[str] | None = SUBSET) -> Path:
    repo = tmp / f"{corpus}-repo"
    source = CORPORA / corpus
    for item in subset or ["docs"]:
        src = source / item
        if src.is_dir():
            shutil.copytree(src, repo / item)
        else:
            (repo / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, repo / item)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "import docs")
    return repo


def sources_file(tmp: Path, repo: Path, **extra: object) -> Path:
    entry = {
        "name": "prometheus",
        "git": str(repo),
        "branch": "main",
        "url_template": "https://github.com/prometheus/prometheus/blob/{commit}/{path}#L{line}",
        **extra,
    }
    path = tmp / "sources.yaml"
    path.write_text(json.dumps({"sources": [entry]}))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """The default backend's embedder, as `kb sync` and `kb serve` make it (the CLI tests share
    stores with these)."""
    return make_embedder(KnowledgeBaseSettings(data_dir=tmp_path_factory.mktemp("embedder")))


def kb_for(tmp: Path, embedder, sources: Path) -> KnowledgeBase:
    return KnowledgeBase(KnowledgeBaseSettings(sources=sources, data_dir=tmp / "data"), embedder)


def snapshot(kb: KnowledgeBase) -> dict[str, tuple]:
    return {
        pid: (p["source"], p["path"], p["position"], p["content_hash"], p["text"])
        for pid, p in kb.store.all_points()
    }


# ---- chunking ----


def test_windows_cover_a_long_chunk(embedder) -> None:
    text = " ".join(f"word{i}" for i in range(1200))
    windows = embedder.windows(text)
    assert len(windows) > 1
    assert windows[0].startswith("word0") and windows[-1].endswith("word1199")
    assert all(embedder.count_tokens(w) <= embedder.window - 2 for w in windows)


# ---- sync ----


def test_incremental_sync_edit_rename_delete(tmp_path: Path, embedder) -> None:
    repo = make_repo(tmp_path)
    sources = sources_file(tmp_path, repo)
    kb = kb_for(tmp_path, embedder, sources)
    try:
        first = kb.sync().sources[0]
        assert first.error is None and first.added > 5 and first.chunks_written > first.added
        before = snapshot(kb)
        assert len(before) == first.chunks_written
        assert kb.sync().sources[0].chunks_written == 0  # nothing changed, nothing written

        # Edit one file: only its chunks change.
        edited = repo / "docs/federation.md"
        edited.write_text(
            edited.read_text() + "\n\n## Archon test section\n\nFederation of "
            "Archon test clusters is described here for the sync test.\n"
        )
        git(repo, "commit", "-qam", "edit")
        report = kb.sync().sources[0]
        assert (report.changed, report.added, report.deleted) == (1, 0, 0)
        after = snapshot(kb)
        changed = {pid for pid in set(before) | set(after) if before.get(pid) != after.get(pid)}
        assert {after.get(pid, before.get(pid))[1] for pid in changed} == {"docs/federation.md"}

        # Rename: the old path's chunks go, the new path's come; nothing else moves.
        git(repo, "mv", "docs/storage.md", "docs/local-storage.md")
        git(repo, "commit", "-qm", "rename")
        report = kb.sync().sources[0]
        assert (report.added, report.deleted) == (1, 1)
        paths = {p[1] for p in snapshot(kb).values()}
        assert "docs/storage.md" not in paths and "docs/local-storage.md" in paths

        # Delete: no chunk of it stays searchable.
        git(repo, "rm", "-q", "docs/configuration/https.md")
        git(repo, "commit", "-qm", "delete")
        assert kb.sync().sources[0].deleted == 1
        hits = kb.query("TLS certificate key file for the web server", top_k=20, mode="bm25")
        assert "docs/configuration/https.md" not in {h["path"] for h in hits}
        assert len(snapshot(kb)) == sum(r["chunks"] for r in kb.sources_summary())
    finally:
        kb.close()


def test_exclude_prunes_and_one_bad_source_does_not_stop_the_others(
    tmp_path: Path, embedder
) -> None:
    repo = make_repo(tmp_path)
    good = {
        "name": "prometheus",
        "git": str(repo),
        "branch": "main",
        "exclude": ["docs/querying/**"],
    }
    bad = {"name": "missing", "git": str(tmp_path / "no-such-repo"), "branch": "main"}
    sources = tmp_path / "sources.yaml"
    sources.write_text(json.dumps({"sources": [bad, good]}))
    kb = kb_for(tmp_path, embedder, sources)
    try:
        report = kb.sync()
        assert not report.ok
        by_name = {s.name: s for s in report.sources}
        assert by_name["missing"].error and by_name["prometheus"].error is None
        paths = {p[1] for p in snapshot(kb).values()}
        assert paths and not any(p.startswith("docs/querying/") for p in paths)
    finally:
        kb.close()


def _run_sync(env: dict[str, str], sources: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*ARCHON, "kb", "sync", "--sources", str(sources), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_killed_sync_converges_to_a_clean_sync(tmp_path: Path, embedder) -> None:
    repo = make_repo(tmp_path)
    sources = sources_file(tmp_path, repo)
    clean = kb_for(tmp_path / "clean", embedder, sources)
    try:
        clean.sync()
        expected = snapshot(clean)
    finally:
        clean.close()
    env = {**os.environ, "ARCHON_KB_DATA_DIR": str(tmp_path / "killed" / "data")}
    for delay in (4.0, 7.0, 10.0):  # model load takes ~3 s: these land at different files
        proc = _run_sync(env, sources)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = _run_sync(env, sources)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err.decode()[-2000:]
    kb = kb_for(tmp_path / "killed", embedder, sources)
    try:
        assert snapshot(kb) == expected
    finally:
        kb.close()


class Killed(BaseException):
    """A kill between a file's upsert and its deletes, as SIGKILL would leave it."""


def test_a_sync_killed_before_its_deletes_leaves_no_stale_chunk(tmp_path: Path, embedder) -> None:
    """A file that shrank is killed between writing its new chunks and deleting its old tail:
    the pending row's recorded bound lets the next sync delete that tail by id."""
    repo = make_repo(tmp_path)
    sources = sources_file(tmp_path, repo)
    kb = kb_for(tmp_path, embedder, sources)
    try:
        kb.sync()
        target = repo / "docs/federation.md"
        old = [p for p in snapshot(kb).values() if p[1] == "docs/federation.md"]
        assert len(old) > 2
        target.write_text("# Federation\n\nNow one short section about federation.\n")
        git(repo, "commit", "-qam", "shrink")

        real = kb.store.delete_positions

        def killed(*args: object, **kwargs: object) -> None:
            raise Killed

        kb.store.delete_positions = killed  # type: ignore[method-assign]
        with pytest.raises(Killed):
            kb.sync()
        left = [p for p in snapshot(kb).values() if p[1] == "docs/federation.md"]
        assert len(left) == len(old)  # the new chunk 0 and the old tail: stale

        kb.store.delete_positions = real  # type: ignore[method-assign]
        assert kb.sync().ok
        now = [p for p in snapshot(kb).values() if p[1] == "docs/federation.md"]
        assert [p[2] for p in now] == [0] and "short section" in now[0][4]
        assert len(snapshot(kb)) == sum(r["chunks"] for r in kb.sources_summary())
    finally:
        kb.close()


def test_a_different_embedding_model_is_refused(tmp_path: Path, embedder) -> None:
    from archon.errors import ConfigError
    from archon.kb.sync import State, check_embedder

    state = State(tmp_path / "state.db")
    check_embedder(state, embedder)

    class Other:
        name, dim = "bge-small-en", 384

    with pytest.raises(ConfigError, match="re-index with `archon kb sync --reindex`"):
        check_embedder(state, Other())  # type: ignore[arg-type]


# ---- the query service ----


@pytest.fixture(scope="module")
def kb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict]]:
    tmp = tmp_path_factory.mktemp("kbserve")
    sources = sources_file(tmp, make_repo(tmp))
    env = {"ARCHON_KB_DATA_DIR": str(tmp / "data")}
    server = start_kb(tmp, sources, env=env)
    try:
        yield server.url, sources, {**os.environ, **env}
    finally:
        server.stop()


def test_query_finds_the_right_doc_with_its_source(kb_server) -> None:
    url, _, _ = kb_server
    response = httpx.post(
        f"{url}/query",
        json={
            "query": "range vector selectors: time durations appended in square brackets",
            "top_k": 5,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    chunks = response.json()["chunks"]
    paths = [c["path"] for c in chunks]
    assert "docs/querying/basics.md" in paths[:3], paths
    top = chunks[paths.index("docs/querying/basics.md")]
    assert top["heading_path"][0] == "Querying basics"
    assert top["url"].startswith("https://github.com/prometheus/prometheus/blob/")
    assert f"#L{top['start_line']}" in top["url"]


def test_query_filters_modes_and_threshold(kb_server) -> None:
    url, _, _ = kb_server
    body = {
        "query": "remote storage integrations",
        "top_k": 5,
        "filters": {"path_prefix": "docs/querying"},
    }
    for extra in (
        {"mode": "hybrid"},
        {"mode": "dense"},
        {"mode": "bm25"},
        {"fusion": "weighted", "dense_weight": 0.7},
    ):
        chunks = httpx.post(f"{url}/query", json={**body, **extra}, timeout=30).json()["chunks"]
        assert chunks and all(c["path"].startswith("docs/querying/") for c in chunks), extra
    empty = httpx.post(f"{url}/query", json={**body, "score_threshold": 99}, timeout=30).json()
    assert empty["chunks"] == [] and "score_threshold" in empty["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"query": ""},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 500},
        {"query": "x", "filters": {"repo": "a"}},
        {"query": "x", "mode": "magic"},
        {"q": "x"},
    ],
)
def test_bad_queries_are_400(kb_server, body) -> None:
    url, _, _ = kb_server
    response = httpx.post(f"{url}/query", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_the_service_owns_the_store(kb_server) -> None:
    url, sources, env = kb_server
    # A second process cannot open the embedded store; it is told how to sync instead...
    direct = subprocess.run(
        [*ARCHON, "kb", "sync", "--sources", str(sources)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert direct.returncode == 10, direct.stderr[-1000:]
    assert "--server" in direct.stderr
    # ...and through the service the sync runs.
    triggered = subprocess.run(
        [*ARCHON, "kb", "sync", "--server", url], capture_output=True, text=True, timeout=60
    )
    assert triggered.returncode == 0
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/sync").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.3)
    last = httpx.get(f"{url}/sync").json()["last"]
    assert last["sources"][0]["unchanged"] > 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'archon_kb_chunks{source="prometheus"}' in metrics
    assert "archon_kb_last_successful_sync_timestamp_seconds" in metrics
    assert "archon_kb_query_seconds_bucket" in metrics


def test_reindex_rebuilds_from_scratch(tmp_path: Path, embedder) -> None:
    repo = make_repo(tmp_path, subset=["docs/federation.md", "docs/storage.md"])
    sources = sources_file(tmp_path, repo)
    kb = kb_for(tmp_path, embedder, sources)
    try:
        kb.sync()
        before = snapshot(kb)
    finally:
        kb.close()
    rebuilt = KnowledgeBase(
        KnowledgeBaseSettings(sources=sources, data_dir=tmp_path / "data"), embedder, reindex=True
    )
    try:
        assert snapshot(rebuilt) == {}
        report = rebuilt.sync().sources[0]
        assert report.added == 2  # every file is new again
        assert snapshot(rebuilt) == before
    finally:
        rebuilt.close()


def test_a_second_sync_is_a_conflict_not_a_config_error(tmp_path: Path, embedder) -> None:
    repo = make_repo(tmp_path, subset=["docs/federation.md"])
    kb = kb_for(tmp_path, embedder, sources_file(tmp_path, repo))
    try:
        with kb._sync_lock:  # a sync in progress
            assert kb.syncing
            with pytest.raises(SyncInProgressError) as caught:
                kb.sync()
        assert caught.value.status_code == 409
        assert caught.value.body()["error"]["code"] == "sync_in_progress"
        assert kb.sync().ok  # and once it is over, the next one runs
    finally:
        kb.close()


def test_changed_chunking_rechunks_every_file(tmp_path: Path, embedder) -> None:
    """Chunk sizes and chunk_context are recorded: changing one re-chunks unchanged files too,
    so that one store never mixes two chunkings; the same settings again change nothing."""
    repo = make_repo(tmp_path, subset=["docs/federation.md", "docs/storage.md"])
    sources = sources_file(tmp_path, repo)

    def sync(**chunking: object) -> tuple[object, int]:
        settings = KnowledgeBaseSettings(sources=sources, data_dir=tmp_path / "data", **chunking)
        kb = KnowledgeBase(settings, embedder)
        try:
            return kb.sync().sources[0], kb.store.count()
        finally:
            kb.close()

    first, big = sync()
    assert first.added == 2
    again, _ = sync()
    assert (again.unchanged, again.chunks_written) == (2, 0)
    smaller, small = sync(chunk_max_tokens=160, chunk_min_tokens=64)
    assert (smaller.changed, smaller.unchanged) == (2, 0)
    assert small > big  # the stale, larger chunks are gone, not kept beside the new ones
    same, count = sync(chunk_max_tokens=160, chunk_min_tokens=64)
    assert (same.unchanged, same.chunks_written, count) == (2, 0, small)
    no_context, _ = sync(chunk_max_tokens=160, chunk_min_tokens=64, chunk_context=False)
    assert no_context.changed == 2


def test_fusion_settings_reach_the_query(tmp_path: Path, embedder) -> None:
    """dense_weight 1 leaves BM25 no share: hybrid ranks as dense does; a request's own
    dense_weight wins over the setting, and rrf_k / fusion_candidates go into FusionParams."""
    repo = make_repo(tmp_path, subset=["docs/federation.md", "docs/storage.md", "docs/querying"])
    settings = KnowledgeBaseSettings(
        sources=sources_file(tmp_path, repo),
        data_dir=tmp_path / "data",
        dense_weight=1.0,
        rrf_k=10,
        fusion_candidates=3,
    )
    kb = KnowledgeBase(settings, embedder)
    try:
        kb.sync()
        text = "retention of the local time series database"

        def ids(**kw: object) -> list[str]:
            return [c["id"] for c in kb.query(text, top_k=8, **kw)]

        assert ids(mode="hybrid") == ids(mode="dense")
        assert ids(mode="hybrid", dense_weight=0.0) == ids(mode="bm25")
        params = kb.fusion()
        assert (params.rrf_k, params.candidates, params.dense_weight) == (10, 3, 1.0)
    finally:
        kb.close()


def test_memory_index_ranks_like_qdrant(tmp_path: Path, embedder) -> None:
    """The in-memory index (used for embedded stores) agrees with Qdrant's own search."""
    from archon.kb.index import MemoryIndex

    repo = make_repo(tmp_path)
    kb = kb_for(tmp_path, embedder, sources_file(tmp_path, repo))
    try:
        kb.sync()
        index = MemoryIndex(kb.store)
        assert len(index) == kb.store.count()
        for text in (
            "rate of a counter over five minutes",
            "federation of Prometheus servers",
            "TSDB retention and compaction on local storage",
        ):
            dense = embedder.embed_query(text)
            for mode, fusion in (
                ("dense", FusionParams()),
                ("bm25", FusionParams()),
                ("hybrid", FusionParams()),
                ("hybrid", FusionParams(method="weighted")),
                ("hybrid", FusionParams(rrf_k=10, dense_weight=0.7, document_weight=0.5)),
            ):
                ours = index.search(dense, text, top_k=5, mode=mode, fusion=fusion)
                theirs = kb.store.search(dense, text, top_k=5, mode=mode, fusion=fusion)
                assert [h.id for h in ours] == [h.id for h in theirs], (text, mode)
                for a, b in zip(ours, theirs, strict=True):
                    assert a.score == pytest.approx(b.score, rel=1e-3)
            filtered = index.search(dense, text, top_k=5, path_prefix="docs/querying")
            assert all(h.payload["path"].startswith("docs/querying/") for h in filtered)
    finally:
        kb.close()


def test_warming_up_loads_what_the_first_query_needs(tmp_path: Path, embedder) -> None:
    """Before /ready: the index, and the embedding model, which loads on first use (a sync
    with nothing new never loads it, and the first question then waited past kb_timeout)."""
    calls: list[str] = []

    class Recording:
        def __getattr__(self, name: str) -> object:
            return getattr(embedder, name)

        def embed_query(self, text: str):
            calls.append(text)
            return embedder.embed_query(text)

    sources = sources_file(tmp_path, make_repo(tmp_path))
    kb = kb_for(tmp_path, Recording(), sources)
    try:
        kb.warm()
        assert calls == ["warm up"]
        assert kb._index is not None  # built now, not by the first query
    finally:
        kb.close()
