"""The plain reference retriever of issue 25, measured on the judged set beside Archon.

The recipe, exactly as the issue states it (a measurement, not a feature; no Archon code):
split each Markdown file at headings of levels 1-4 (code fences kept whole) into chunks of at
most ~1200 characters, prepend the file's path to each chunk, BM25 with ``bm25s`` (English
stopwords), all-MiniLM-L6-v2 on the whole chunk (one vector, normalised; the model reads its
first 256 word pieces), reciprocal-rank fusion with k = 60 over the top 100 of each, a file
scored by its best chunk. Vectors are cached under --data (bf16 matrix products where the CPU
has them: the vectors are fp32's to a cosine of 0.9999, docs/benchmarks.md).

    .venv/bin/python benchmarks/kb_reference.py --data /tmp/kb-ref [--split tune test]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_bench import CORPORA, SOURCES
from kb_tune import judged

MAX_CHARS = 1200
HEADING = re.compile(r"^ {0,3}(#{1,4})\s")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
DEPTH = 100
RRF_K = 60


def blocks(markdown: str) -> list[tuple[bool, str]]:
    """(starts a section, text) per paragraph; a fenced block is one paragraph, whatever its
    blank lines."""
    out: list[tuple[bool, str]] = []
    current: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if current:
            out.append((bool(HEADING.match(current[0])), "\n".join(current)))
            current.clear()

    for line in markdown.splitlines():
        opened = FENCE.match(line)
        if fence is not None:
            current.append(line)
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            current.append(line)
            continue
        if HEADING.match(line):
            flush()
            current.append(line)
            flush()
            continue
        if not line.strip():
            flush()
            continue
        current.append(line)
    flush()
    return out


def chunks(markdown: str) -> list[str]:
    """Sections at headings 1-4, each packed into pieces of at most MAX_CHARS at paragraph
    boundaries (a longer paragraph or fence is a piece of its own)."""
    sections: list[list[str]] = [[]]
    for heading, text in blocks(markdown):
        if heading and sections[-1]:
            sections.append([])
        sections[-1].append(text)
    out: list[str] = []
    for section in sections:
        piece = ""
        for text in section:
            if piece and len(piece) + 2 + len(text) > MAX_CHARS:
                out.append(piece)
                piece = ""
            piece = f"{piece}\n\n{text}" if piece else text
        if piece:
            out.append(piece)
    return out


def corpus() -> tuple[list[str], list[str]]:
    """(document id, indexed text) per chunk over the 553 judged files."""
    docs, texts = [], []
    for name, folder in SOURCES.items():
        root = CORPORA / folder
        for file in sorted((root / "docs").rglob("*.md")):
            path = file.relative_to(root).as_posix()
            for chunk in chunks(file.read_text(errors="replace")):
                docs.append(f"{name}:{path}")
                texts.append(f"{path}\n\n{chunk}")
    return docs, texts


def embed(texts: list[str], cache: Path) -> np.ndarray:
    if cache.exists():
        saved = np.load(cache)
        if len(saved["vectors"]) == len(texts):
            return saved["vectors"]
    import torch
    from sentence_transformers import SentenceTransformer

    from archon.kb.embeddings import bundled_model_path, cpu_has_native_bf16

    model = SentenceTransformer(bundled_model_path("all-MiniLM-L6-v2"), device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16()):
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    np.savez(cache, vectors=vectors)
    return vectors


def file_ranking(order: list[int], docs: list[str], depth: int = 10) -> list[str]:
    ranked: list[str] = []
    for i in order:
        if docs[i] not in ranked:
            ranked.append(docs[i])
            if len(ranked) == depth:
                break
    return ranked


def evaluate(
    splits: dict[str, list[Any]], retriever: Any, model: Any, vectors: Any, docs: Any
) -> dict:
    """nDCG@10 per split for BM25, dense and their RRF fusion, by question kind; printed too."""
    import bm25s

    from archon.kb.evaluate import ndcg

    results: dict[str, dict[str, Any]] = {}
    for split, queries in splits.items():
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
    return results


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cache of the chunk vectors")
    parser.add_argument("--split", nargs="+", default=["tune", "test"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    return args


def run(
    docs: list[str], texts: list[str], cache: Path, splits: dict[str, list], out: Path | None
) -> None:
    """The recipe over one corpus: embed (cached), index for BM25, score every split."""
    import bm25s
    from sentence_transformers import SentenceTransformer

    from archon.kb.embeddings import bundled_model_path

    began = time.perf_counter()
    vectors = embed(texts, cache)
    seconds = time.perf_counter() - began
    print(f"{len(texts)} chunks of {len(set(docs))} files, embedded in {seconds:.0f} s")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    model = SentenceTransformer(bundled_model_path("all-MiniLM-L6-v2"), device="cpu")
    results = evaluate(splits, retriever, model, vectors, docs)
    if out:
        out.write_text(json.dumps(results, indent=1))


def main() -> None:
    args = arguments()
    docs, texts = corpus()
    run(
        docs,
        texts,
        args.data / "reference-vectors.npz",
        {s: judged(s) for s in args.split},
        args.json,
    )


if __name__ == "__main__":
    main()
