"""The plain reference recipe of issue 25 applied to code, beside Archon on the judged code set.

The same files Archon indexes in benchmarks/kb_code_bench.py (Prometheus's Go code and docs,
client_python's library, tests and docs; generated files left out as Archon leaves them out).
Markdown is split as benchmarks/kb_reference.py splits it; a source file is plain text: its
paragraphs (runs of lines between blank lines) packed into chunks of at most ~1200 characters,
a longer paragraph a chunk of its own. Then the reference as the issue states it: the file's path
prepended to each chunk, BM25 with ``bm25s`` (English stopwords), all-MiniLM-L6-v2 on the whole
chunk (one vector), reciprocal-rank fusion with k = 60 over the top 100 of each, a file scored by
its best chunk.

    .venv/bin/python benchmarks/kb_reference_code.py --data /tmp/kb-ref-code [--split tune test]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_code_bench import CODE_SOURCES, CORPORA, JUDGED
from kb_reference import DEPTH, MAX_CHARS, RRF_K, chunks, embed, file_ranking


def plain_chunks(text: str) -> list[str]:
    paragraphs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    out: list[str] = []
    piece = ""
    for paragraph in paragraphs:
        if piece and len(piece) + 2 + len(paragraph) > MAX_CHARS:
            out.append(piece)
            piece = ""
        piece = f"{piece}\n\n{paragraph}" if piece else paragraph
    if piece:
        out.append(piece)
    return out


def corpus() -> tuple[list[str], list[str]]:
    from archon.kb.sources import Source
    from archon.kb.sync import is_markdown, skip_file

    docs, texts = [], []
    for entry in CODE_SOURCES:
        root = CORPORA / entry["path"]
        source = Source(name=entry["name"], path=str(root), include=entry["include"])
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            path = file.relative_to(root).as_posix()
            data = file.read_bytes()
            if not source.selects(path) or (not is_markdown(path) and skip_file(path, data)):
                continue
            text = data.decode("utf-8", "replace")
            for chunk in chunks(text) if is_markdown(path) else plain_chunks(text):
                docs.append(f"{entry['name']}:{path}")
                texts.append(f"{path}\n\n{chunk}")
    return docs, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cache of the chunk vectors")
    parser.add_argument("--split", nargs="+", default=["tune", "test"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import bm25s
    from sentence_transformers import SentenceTransformer

    from archon.kb.embeddings import bundled_model_path
    from archon.kb.evaluate import load_queries, ndcg

    args.data.mkdir(parents=True, exist_ok=True)
    docs, texts = corpus()
    began = time.perf_counter()
    vectors = embed(texts, args.data / "reference-code-vectors.npz")
    seconds = time.perf_counter() - began
    print(f"{len(texts)} chunks of {len(set(docs))} files, embedded in {seconds:.0f} s")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    model = SentenceTransformer(bundled_model_path("all-MiniLM-L6-v2"), device="cpu")
    judged = [j for f in sorted(JUDGED.glob("*.jsonl")) for j in load_queries(f)]

    results = {}
    for split in args.split:
        queries = [j for j in judged if j.split == split]
        query_vectors = model.encode([q.query for q in queries], normalize_embeddings=True)
        lexical, lexical_scores = retriever.retrieve(
            bm25s.tokenize([q.query for q in queries], stopwords="en", show_progress=False),
            k=DEPTH,
            show_progress=False,
        )
        totals: dict[str, list[float]] = {"bm25": [], "dense": [], "hybrid": []}
        kinds: dict[str, dict[str, list[float]]] = {m: {} for m in totals}
        for n, judged_query in enumerate(queries):
            semantic = np.argsort(-(vectors @ query_vectors[n]))[:DEPTH].tolist()
            words = [int(i) for i, s in zip(lexical[n], lexical_scores[n], strict=True) if s > 0]
            fused: dict[int, float] = {}
            for ranking in (semantic, words):
                for rank, i in enumerate(ranking):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
            orders = {
                "bm25": words,
                "dense": semantic,
                "hybrid": sorted(fused, key=lambda i: -fused[i]),
            }
            for mode, order in orders.items():
                value = ndcg(file_ranking(order, docs), judged_query.relevant)
                totals[mode].append(value)
                kinds[mode].setdefault(judged_query.kind or "-", []).append(value)
        results[split] = {
            mode: {
                "ndcg_at_10": float(np.mean(values)),
                "by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds[mode].items())},
            }
            for mode, values in totals.items()
        }
        print(f"{split} ({len(queries)} questions):")
        for mode, row in results[split].items():
            by_kind = "  ".join(f"{k} {v:.3f}" for k, v in row["by_kind"].items())
            print(f"  {mode:<6} nDCG@10 {row['ndcg_at_10']:.3f}   {by_kind}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
