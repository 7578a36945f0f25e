"""The access filter does not degrade ranking (issue 26): for each team, the judged queries whose
relevant files it may read rank as well with the filter inside the search as with the whole
store's ranking restricted afterwards, nDCG@10 within 0.01 per search mode.

A real knowledge base (KnowledgeBase: the store, the embedder, the in-memory index `kb serve`
queries) synced from the Prometheus and Tekton docs of ../shared/corpora, judged with
benchmarks/data/kb_judged/{prometheus,tekton}.jsonl; team-a reads Prometheus, team-b Tekton.
benchmarks/kb_filter_bench.py measures the same on all three corpora (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archon.kb.evaluate import load_queries, ndcg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"
JUDGED = ROOT / "benchmarks" / "data" / "kb_judged"
TEAMS = {"team-a": ("prometheus", "prometheus"), "team-b": ("tekton", "tekton-pipeline")}


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings

    tmp = tmp_path_factory.mktemp("access-quality")
    sources = {
        "sources": [
            {
                "name": name,
                "path": str(CORPORA / folder),
                "include": ["docs/**/*.md"],
                "groups": [team],
            }
            for team, (name, folder) in TEAMS.items()
        ]
    }
    path = tmp / "sources.json"
    path.write_text(json.dumps(sources))
    kb = KnowledgeBase(KnowledgeBaseSettings(sources=path, data_dir=tmp / "data"))
    report = kb.sync()
    assert report.ok, report
    try:
        yield kb
    finally:
        kb.close()


def _documents(chunks: list[dict[str, Any]], readable: set[str]) -> list[str]:
    docs: list[str] = []
    for chunk in chunks:
        doc = f"{chunk['source']}:{chunk['path']}"
        if chunk["source"] in readable and doc not in docs:
            docs.append(doc)
    return docs[:10]


@pytest.mark.parametrize("team", sorted(TEAMS))
@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_filtered_ranking_is_as_good_as_restricting_afterwards(
    kb: Any, team: str, mode: str
) -> None:
    name = TEAMS[team][0]
    readable = set(kb.access.readable([team]))
    assert readable == {name}
    queries = load_queries(JUDGED / f"{name}.jsonl")
    filtered, after = [], []
    for judged in queries:
        # The same depth both ways: ten documents of small chunks need many chunks.
        mine = kb.query(judged.query, top_k=400, mode=mode, groups=[team])
        assert {c["source"] for c in mine} <= readable
        filtered.append(ndcg(_documents(mine, readable), judged.relevant))
        whole = kb.query(judged.query, top_k=400, mode=mode)
        after.append(ndcg(_documents(whole, readable), judged.relevant))
    delta = statistics.fmean(filtered) - statistics.fmean(after)
    assert abs(delta) <= 0.01, (team, mode, statistics.fmean(filtered), statistics.fmean(after))
