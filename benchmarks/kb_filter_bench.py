"""What the access filter (archon.kb.access) costs in ranking quality and in query time.

Quality: for each team of a two-team layout over the three judged corpora, the judged queries
whose relevant files the team may read, ranked (a) by the filtered search (``groups`` given:
only the readable sources are candidates, BM25's IDF over them) and (b) by the whole store's
search with the other sources' documents dropped afterwards (deep enough that ten readable
documents remain). nDCG@10 per mode, and the difference.

Overhead: every chunk copied until the store holds --min-chunks (each copy its own source,
as kb_bench does), then hybrid queries through the in-memory index `kb serve` uses, the query
embedding included, with and without a group filter that reads about half the sources,
interleaved so that a busy machine slows both alike.

    .venv/bin/python benchmarks/kb_filter_bench.py [--data DIR] [--json out.json]

--data: a synced data dir whose store holds the sources tekton, prometheus and argo-cd (the
corpora's docs/**/*.md, as benchmarks/kb_bench.py syncs them); without it they are synced
into a temp dir first (minutes on two cores).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from kb_bench import copy_points

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
JUDGED = ROOT / "benchmarks" / "data" / "kb_judged"
FOLDERS = {"tekton": "tekton-pipeline", "prometheus": "prometheus", "argo-cd": "argo-cd"}
# Two teams and a key of both: team-a reads Prometheus, team-b Argo CD and Tekton.
GROUPS = {"prometheus": ["team-a"], "argo-cd": ["team-b"], "tekton": ["team-b"]}
CALLERS = {"team-a": ["team-a"], "team-b": ["team-b"], "both": ["team-a", "team-b"]}
MODES = ("hybrid", "dense", "bm25")
DEPTH = 400  # chunks ranked per question, filtered or not


def sources_file(path: Path, with_groups: bool = True) -> Path:
    entries = []
    for name, folder in FOLDERS.items():
        entry: dict[str, Any] = {
            "name": name,
            "path": str(CORPORA / folder),
            "include": ["docs/**/*.md"],
        }
        if with_groups:
            entry["groups"] = GROUPS[name]
        entries.append(entry)
    path.write_text(json.dumps({"sources": entries}))
    return path


def ranked(chunks: list[dict[str, Any]], readable: set[str], depth: int = 10) -> list[str]:
    docs: list[str] = []
    for chunk in chunks:
        doc = f"{chunk['source']}:{chunk['path']}"
        if chunk["source"] in readable and doc not in docs:
            docs.append(doc)
    return docs[:depth]


def quality(kb: Any) -> dict[str, Any]:
    from archon.kb.evaluate import load_queries, ndcg

    judged = [q for f in sorted(JUDGED.glob("*.jsonl")) for q in load_queries(f)]
    out: dict[str, Any] = {}
    for caller, groups in CALLERS.items():
        readable = set(kb.access.readable(groups) or [])
        queries = [q for q in judged if all(d.split(":")[0] in readable for d in q.relevant)]
        row: dict[str, Any] = {"readable": sorted(readable), "queries": len(queries)}
        for mode in MODES:
            filtered, after = [], []
            for q in queries:
                # The same depth both ways: ten documents need many chunks of small files.
                mine = kb.query(q.query, top_k=DEPTH, mode=mode, groups=groups)
                filtered.append(ndcg(ranked(mine, readable), q.relevant))
                whole = kb.query(q.query, top_k=DEPTH, mode=mode)
                after.append(ndcg(ranked(whole, readable), q.relevant))
            f, a = statistics.fmean(filtered), statistics.fmean(after)
            row[mode] = {
                "filtered": round(f, 4),
                "restricted_after": round(a, 4),
                "delta": round(f - a, 4),
                "largest_query_delta": round(
                    max(abs(x - y) for x, y in zip(filtered, after, strict=True)), 4
                ),
            }
        out[caller] = row
    return out


def overhead(kb: Any, tmp: Path, min_chunks: int, runs: int) -> dict[str, Any]:

    from archon.kb.access import AccessPolicy
    from archon.kb.evaluate import load_queries
    from archon.kb.index import MemoryIndex
    from archon.kb.store import ChunkStore

    base = kb.store.count()
    replicate = max(1, -(-min_chunks // base))
    big = ChunkStore(str(tmp / "bench-20k"), "bench", kb.embedder.dim)
    copies: list[dict[str, Any]] = []
    if big.count() == 0:  # a --work dir from an earlier run keeps its copies
        copy_points(kb, big, replicate)
    names = sorted({f"{s}-{c}" for s in FOLDERS for c in range(replicate)})
    # The copies of each source: team-a reads the first half of them, the rest are team-b's.
    for name in names:
        copy = int(name.rsplit("-", 1)[1])
        team = "team-a" if copy < replicate / 2 else "team-b"
        copies.append({"name": name, "path": str(tmp), "groups": [team]})
    policy_file = tmp / "bench-sources.json"
    policy_file.write_text(json.dumps({"sources": copies}))
    access = AccessPolicy(policy_file)
    index = MemoryIndex(big)
    chunks = len(index)
    readable = access.readable(["team-a"]) or []
    share = float(np.isin(index.sources, readable).mean())
    queries = [q.query for f in sorted(JUDGED.glob("*.jsonl")) for q in load_queries(f)]

    gc.freeze()  # as `kb serve` does once its index is built
    kb.embedder.set_threads(1)  # as `kb serve` runs (serve_threads)

    def one(text: str, groups: list[str] | None) -> tuple[float, float, float]:
        began = time.perf_counter()
        dense = kb.embedder.embed_query(text)
        searched = time.perf_counter()
        cpu = time.process_time()
        index.search(dense, text, top_k=5, mode="hybrid", readable=access.readable(groups))
        done = time.perf_counter()
        # CPU time as well: on a shared machine the wall clock mostly measures the neighbours.
        return done - began, done - searched, time.process_time() - cpu

    for text in queries[:10]:  # warm-up, as a running service is
        one(text, None)
        one(text, ["team-a"])
    timings: dict[str, list[float]] = {"none": [], "team-a": []}
    search: dict[str, list[float]] = {"none": [], "team-a": []}
    cpu: dict[str, list[float]] = {"none": [], "team-a": []}
    for i in range(runs):
        text = queries[i % len(queries)]
        order = [None, ["team-a"]] if i % 2 == 0 else [["team-a"], None]
        for groups in order:
            total, searched, used = one(text, groups)
            label = "none" if groups is None else "team-a"
            timings[label].append(total)
            search[label].append(searched)
            cpu[label].append(used)
    big.close()

    def p(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(1000 * values[max(int(q * len(values)) - 1, 0)], 2)

    result: dict[str, Any] = {"chunks": chunks, "readable_share": round(share, 3), "runs": runs}
    for label in timings:
        result[label] = {
            "query_p50_ms": p(timings[label], 0.5),
            "query_p95_ms": p(timings[label], 0.95),
            "search_p50_ms": p(search[label], 0.5),
            "search_p95_ms": p(search[label], 0.95),
            "search_cpu_p50_ms": p(cpu[label], 0.5),
            "search_cpu_p95_ms": p(cpu[label], 0.95),
        }
    result["query_p95_ratio"] = round(
        result["team-a"]["query_p95_ms"] / result["none"]["query_p95_ms"], 3
    )
    for name in ("search_p95", "search_cpu_p95"):
        result[f"{name}_ratio"] = round(
            result["team-a"][f"{name}_ms"] / result["none"][f"{name}_ms"], 3
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a synced data dir (see the docstring)")
    parser.add_argument("--min-chunks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, help="scratch dir (kept: its 20k store is reused)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()

    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings

    tmp = args.work or Path(tempfile.mkdtemp(prefix="kb-filter-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = args.data or tmp / "data"
    sources = sources_file(tmp / "sources.json")
    kb = KnowledgeBase(KnowledgeBaseSettings(sources=sources, data_dir=data))
    if args.data is None:
        print("syncing the three corpora ...", file=sys.stderr)
        kb.sync()
    kb.embedder.set_threads(1)  # as `kb serve` runs (serve_threads); steadier on a busy host
    embed = functools.lru_cache(maxsize=1024)(kb.embedder.embed_query)
    kb.embedder.embed_query = embed  # each question is embedded once for both rankings
    result: dict[str, Any] = {"store_chunks": kb.store.count()}
    if not args.skip_quality:
        result["quality"] = quality(kb)
        print(json.dumps(result["quality"], indent=1), file=sys.stderr)
    kb.embedder.embed_query = embed.__wrapped__  # the overhead part times real embeddings
    if not args.skip_overhead:
        result["overhead"] = overhead(kb, tmp, args.min_chunks, args.runs)
    kb.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
