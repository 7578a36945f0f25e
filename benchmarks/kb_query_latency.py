"""/query latency at 20k+ chunks with the default embedder (query embedding included), and the
full-sync and no-change re-sync times of the 553 files with the default settings.

Syncs the three real corpora with the defaults (`archon kb sync` as shipped), re-syncs with
nothing changed, then copies every chunk until the store holds --min-chunks and times hybrid
queries through the in-memory index `kb serve` uses (one embedding thread, as `kb serve` runs).

    .venv/bin/python benchmarks/kb_query_latency.py [--data DIR] [--min-chunks 20000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_bench import QUERIES, make_repos, query_latency


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, help="keep the store here (default: a temp dir)")
    parser.add_argument("--min-chunks", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from archon.kb.evaluate import load_queries
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings

    tmp = args.data or Path(tempfile.mkdtemp(prefix="kb-latency-"))
    tmp.mkdir(parents=True, exist_ok=True)
    sources = tmp / "sources.yaml" if (tmp / "sources.yaml").exists() else make_repos(tmp)
    settings = KnowledgeBaseSettings(sources=sources, data_dir=tmp / "defaults")
    kb = KnowledgeBase(settings)
    kb.embedder.embed_documents(["warm-up: load the model"])
    began = time.perf_counter()
    report = kb.sync()
    full_s = time.perf_counter() - began
    began = time.perf_counter()
    kb.sync()
    nochange_s = time.perf_counter() - began
    chunks = kb.store.count()
    files = sum(s.added + s.changed + s.unchanged for s in report.sources)
    print(f"sync: {files} files, {chunks} chunks, {full_s:.1f}s; no change {nochange_s:.2f}s")
    queries = [j.query for j in load_queries(QUERIES)]
    replicate = max(1, math.ceil(args.min_chunks / chunks))
    latency = query_latency(kb, queries, replicate, tmp)
    print(f"query latency ({kb.embedder.name}): {latency}")
    kb.close()
    result = {
        "embedder": settings.embedding_backend,
        "files": files,
        "chunks": chunks,
        "full_sync_s": round(full_s, 1),
        "nochange_s": round(nochange_s, 2),
        **latency,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
