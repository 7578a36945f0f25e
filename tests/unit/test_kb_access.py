"""Who may read which source (archon.kb.access), and the search's filter on it: a filtered
search returns only readable chunks, scored and ordered exactly as the whole store's search
scores and orders them (the filter drops, never reorders; BM25's IDF is the store's, as
Qdrant's is)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archon.errors import AuthenticationError
from archon.kb.access import AccessPolicy, Policy, check_token, parse_groups_header
from archon.kb.fusion import FusionParams
from archon.kb.index import MemoryIndex
from archon.kb.store import ChunkStore, chunk_id

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
# Real text: paragraphs of three projects' docs in ../shared/corpora, one source each.
DOCS = {
    "prometheus": sorted((CORPORA / "prometheus" / "docs" / "querying").glob("*.md")),
    "argo-cd": sorted((CORPORA / "argo-cd" / "docs" / "operator-manual").glob("*.md"))[:8],
    "tekton": sorted((CORPORA / "tekton-pipeline" / "docs").glob("*.md"))[:8],
}
DIM = 16


def _paragraphs() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for source, files in DOCS.items():
        rows = []
        for path in files:
            parts = [p.strip() for p in path.read_text().split("\n\n") if len(p.strip()) > 80]
            rows += [(path.name, p) for p in parts[:12]]
        out[source] = rows
    return out


PARAGRAPHS = _paragraphs()


def _vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _store(path: Path, sources: list[str]) -> ChunkStore:
    store = ChunkStore(str(path), "test", DIM)
    for source in sources:
        rows = PARAGRAPHS[source]
        ids = [chunk_id(source, name, n) for n, (name, _) in enumerate(rows)]
        texts = [text for _, text in rows]
        payloads = [
            {"source": source, "path": name, "prefixes": [name], "text": text}
            for name, text in rows
        ]
        store.upsert(ids, np.stack([_vector(t) for t in texts]), texts, payloads)
    return store


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], MemoryIndex]:
    """The whole store's index, and one per subset of the sources built from that subset."""
    root = tmp_path_factory.mktemp("access")
    names = sorted(PARAGRAPHS)
    subsets = [tuple(names)] + [(n,) for n in names] + [tuple(names[:2]), tuple(names[1:])]
    out = {}
    for n, subset in enumerate(subsets):
        store = _store(root / str(n), list(subset))
        out[subset] = MemoryIndex(store)
        store.close()
    return out


def test_policy_reads_groups_per_source() -> None:
    policy = Policy(
        {"public": frozenset(), "a-docs": frozenset({"team-a"}), "ab": frozenset({"a", "b"})}
    )
    assert policy.readable(None) is None  # the service's own query: everything
    assert policy.readable([]) == ["public"]
    assert policy.readable(["team-a"]) == ["a-docs", "public"]
    assert policy.readable(["b", "nobody"]) == ["ab", "public"]


def test_policy_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - name: a\n    path: /tmp\n    groups: [team-a]\n")
    policy = AccessPolicy(path)
    assert policy.readable([]) == []
    assert policy.readable(["team-a"]) == ["a"]
    path.write_text("sources:\n  - name: a\n    path: /tmp\n")  # ungrouped: no re-index needed
    os.utime(path, ns=(1, 1))
    assert policy.readable([]) == ["a"]
    path.write_text("sources: [not valid")
    os.utime(path, ns=(2, 2))
    assert policy.readable([]) == ["a"]  # a broken edit keeps the last good policy


def test_a_policy_never_read_opens_nothing(tmp_path: Path) -> None:
    policy = AccessPolicy(tmp_path / "missing.yaml")
    assert policy.readable([]) == []
    assert policy.readable(["team-a"]) == []
    assert policy.readable(None) is None


def test_groups_header_and_token() -> None:
    assert parse_groups_header(None) is None
    assert parse_groups_header("") == []
    assert parse_groups_header("team-a, team-b,bad name") == ["team-a", "team-b"]
    check_token(None, None)  # no token configured: open
    check_token("s3cret", "Bearer s3cret")
    for header in (None, "Bearer wrong", "s3cret", "Basic s3cret"):
        with pytest.raises(AuthenticationError):
            check_token("s3cret", header)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subset=st.sampled_from(
        [
            ("argo-cd",),
            ("prometheus",),
            ("tekton",),
            ("argo-cd", "prometheus"),
            ("prometheus", "tekton"),
        ]
    ),
    pick=st.tuples(st.sampled_from(sorted(PARAGRAPHS)), st.integers(0, 10_000)),
    words=st.integers(2, 12),
    mode=st.sampled_from(["hybrid", "bm25", "dense"]),
)
def test_filtered_search_keeps_the_whole_stores_scores_and_order(
    indexes: dict[tuple[str, ...], MemoryIndex],
    subset: tuple[str, ...],
    pick: tuple[str, int],
    words: int,
    mode: str,
) -> None:
    source, n = pick
    rows = PARAGRAPHS[source]
    text = rows[n % len(rows)][1]
    query = " ".join(text.split()[:words])  # often copied from a source the caller cannot read
    whole = indexes[tuple(sorted(PARAGRAPHS))]
    dense = _vector(query)
    fusion = FusionParams()
    filtered = whole.search(dense, query, top_k=10, mode=mode, readable=list(subset), fusion=fusion)  # type: ignore[arg-type]
    assert all(h.payload["source"] in subset for h in filtered)
    if mode == "hybrid":
        return  # fused from the two lists checked below (ties may order differently)
    everything = whole.search(dense, query, top_k=len(whole), mode=mode, fusion=fusion)  # type: ignore[arg-type]
    expected = [h for h in everything if h.payload["source"] in subset][:10]
    score_of = {h.id: h.score for h in everything}
    # The whole store's scores, in its order, with the unreadable chunks dropped (equal
    # scores, from paragraphs that repeat, may list their chunks in another order).
    assert np.allclose([h.score for h in filtered], [h.score for h in expected], atol=1e-5)
    assert all(abs(score_of[h.id] - h.score) < 1e-5 for h in filtered)


def test_nothing_readable_finds_nothing(indexes: dict[tuple[str, ...], MemoryIndex]) -> None:
    whole = indexes[tuple(sorted(PARAGRAPHS))]
    query = PARAGRAPHS["prometheus"][0][1]
    assert whole.search(_vector(query), query, top_k=5, readable=[]) == []
    assert whole.search(_vector(query), query, top_k=5, readable=["no-such-source"]) == []
    # A request's own source filter narrows; it never widens what the caller may read.
    hits = whole.search(_vector(query), query, top_k=5, readable=["tekton"], sources=["prometheus"])
    assert hits == []


def test_qdrant_search_filters_in_the_payload_filter(tmp_path: Path) -> None:
    """The store's own search (a Qdrant server's path; here embedded Qdrant, same API): the
    readable sources are a payload condition of both the dense and the BM25 query."""
    store = _store(tmp_path / "q", sorted(PARAGRAPHS))
    try:
        query = PARAGRAPHS["argo-cd"][3][1]
        for mode in ("dense", "bm25", "hybrid"):
            hits = store.search(_vector(query), query, top_k=10, mode=mode, readable=["tekton"])  # type: ignore[arg-type]
            assert hits and {h.payload["source"] for h in hits} == {"tekton"}
            assert store.search(_vector(query), query, top_k=10, mode=mode, readable=[]) == []  # type: ignore[arg-type]
        narrowed = store.search(
            _vector(query), query, top_k=10, readable=["tekton", "argo-cd"], sources=["argo-cd"]
        )
        assert {h.payload["source"] for h in narrowed} == {"argo-cd"}
    finally:
        store.close()
