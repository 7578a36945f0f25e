"""Full-sync time and retrieval quality of the embedding backends, in one run on one machine.

Syncs the three real corpora (../shared/corpora, 553 Markdown files) once per backend (torch =
sentence-transformers fp32, the reference; torch-bf16; onnx; onnx-int8), then scores each store
on the judged sets (benchmarks/data/kb_judged/*.jsonl by split, and
benchmarks/data/kb_queries.jsonl).

    .venv/bin/python benchmarks/kb_embed_bench.py [--backends torch-bf16 onnx-int8 torch]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_bench import QUERIES, make_repos

JUDGED = Path(__file__).resolve().parent / "data" / "kb_judged"


def query_sets() -> dict[str, list]:
    from archon.kb.evaluate import load_queries

    sets = {"kb_queries (52)": load_queries(QUERIES)}
    files = sorted(JUDGED.glob("*.jsonl"))
    if files:
        merged = JUDGED.parent / "kb_judged.merged.tmp"
        merged.write_text("".join(f.read_text() for f in files))
        try:
            everything = load_queries(merged)
        finally:
            merged.unlink()
        for split in sorted({j.split for j in everything}, key=str):
            chosen = [j for j in everything if j.split == split]
            sets[f"judged {split or 'all'} ({len(chosen)})"] = chosen
    return sets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["torch-bf16", "onnx-int8", "torch"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from archon.kb.evaluate import evaluate
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings

    tmp = Path(tempfile.mkdtemp(prefix="kb-embed-bench-"))
    sources = make_repos(tmp)
    results = {}
    for backend in args.backends:
        settings = KnowledgeBaseSettings(
            sources=sources, data_dir=tmp / backend, embedding_backend=backend
        )
        began = time.perf_counter()
        kb = KnowledgeBase(settings)
        kb.embedder.embed_documents(["warm-up: load the model and export the graph"])
        load = time.perf_counter() - began
        began = time.perf_counter()
        report = kb.sync()
        seconds = time.perf_counter() - began
        began = time.perf_counter()
        kb.sync()
        nochange = time.perf_counter() - began
        chunks = sum(s.chunks_written for s in report.sources)
        row = {
            "load_s": round(load, 1),  # model load (and ONNX export), before the sync
            "sync_s": round(seconds, 1),
            "chunks": chunks,
            "chunks_per_s": round(chunks / seconds, 1),
            "nochange_s": round(nochange, 2),
            "quality": {},
        }
        print(backend, row, flush=True)
        for name, judged in query_sets().items():
            scores = evaluate(kb, judged)
            row["quality"][name] = {s.mode: round(s.ndcg_at_10, 3) for s in scores}
            print(f"  {name}: {row['quality'][name]}", flush=True)
        results[backend] = row
        kb.close()
    base = results.get("torch")
    if base:
        for backend, row in results.items():
            print(
                f"{backend}: sync {row['sync_s']} s, "
                f"{base['sync_s'] / row['sync_s']:.2f}x torch's speed"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
