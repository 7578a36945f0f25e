"""Retrieval variants that need no new sync, scored on a judged split over a store that
kb_tune.py synced: BM25 field weights (the heading trail and the path words counted several
times), Snowball stemming, and dense scores from a chunk's best window instead of the mean of
its windows. BM25 is recomputed from the stored payloads, the windows embedded once and cached.

    .venv/bin/python benchmarks/kb_variants.py --data /tmp/kb-tune [--split tune]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_tune import judged

# (label, heading-trail weight, path weight, stemming)
BM25_VARIANTS = [
    ("as shipped", 1, 1, False),
    ("fields x2", 2, 2, False),
    ("fields x3", 3, 3, False),
    ("trail x3", 3, 1, False),
    ("path x3", 1, 3, False),
    ("stemming", 1, 1, True),
    ("stemming, fields x3", 3, 3, True),
]
DENSE_VARIANTS = ["mean of windows", "best window", "best window or trail", "mean and best"]


def bm25_matrix(index, trail_weight: float, path_weight: float, stem: bool):
    """The index's term matrix rebuilt with field weights (BM25F-style: weighted term counts,
    one length normalisation), and the analyser queries must then use."""
    from archon.kb import bm25

    analyse = bm25.terms
    if stem:
        import Stemmer  # PyStemmer: bm25s's stemmer

        stemmer = Stemmer.Stemmer("english")
        plain = bm25.terms

        def analyse(text: str) -> list[str]:
            return stemmer.stemWords(plain(text))

    rows, cols, values, columns = [], [], [], {}
    for row, p in enumerate(index.payloads):
        where = re.sub(r"[/_.\-]+", " ", p["path"].removesuffix(".md"))
        fields = [
            (Counter(analyse(p.get("text") or "")), 1.0),
            (Counter(analyse(" ".join(p.get("heading_path") or []))), trail_weight),
            (Counter(analyse(f"{p['source']} {where}")), path_weight),
        ]
        tf: Counter = Counter()
        for counts, weight in fields:
            for term, n in counts.items():
                tf[term] += weight * n
        length = sum(sum(c.values()) for c, _ in fields) or 1
        norm = bm25.K1 * (1 - bm25.B + bm25.B * length / bm25.AVG_DOC_TOKENS)
        for term, f in tf.items():
            cols.append(columns.setdefault(bm25._index(term), len(columns)))
            rows.append(row)
            values.append(f * (bm25.K1 + 1) / (f + norm))
    n = len(index.ids)
    terms = sp.csr_matrix((np.array(values, np.float32), (rows, cols)), (n, len(columns))).tocsc()
    df = np.diff(terms.indptr)
    return terms, columns, np.log((n - df + 0.5) / (df + 0.5) + 1.0), analyse


class DenseScores:
    """Stands in for the index's dense matrix: ``matrix @ query`` gives one score per chunk."""

    def __init__(self, how: str, mean, windows, owner, trails):
        self.how, self.mean, self.windows, self.owner, self.trails = (
            how,
            mean,
            windows,
            owner,
            trails,
        )

    def __matmul__(self, query):
        if self.how == "mean of windows":
            return self.mean @ query
        best = np.full(len(self.mean), -np.inf, dtype=np.float32)
        np.maximum.at(best, self.owner, self.windows @ query)
        if self.how == "best window or trail":
            return np.maximum(best, self.trails @ query)
        if self.how == "mean and best":
            return (best + self.mean @ query) / 2
        return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="kb_tune.py's --data")
    parser.add_argument("--chunks", default="800:400")
    parser.add_argument("--split", default="tune")
    args = parser.parse_args()

    from archon.kb import bm25
    from archon.kb.chunking import Chunk
    from archon.kb.evaluate import evaluate
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings
    from archon.kb.sync import indexed_text

    high, low = args.chunks.split(":")
    data_dir = args.data / f"chunks-{high}-{low}"
    kb = KnowledgeBase(KnowledgeBaseSettings(sources=args.data / "sources.yaml", data_dir=data_dir))
    index = kb.index()
    queries = judged(args.split)
    print(f"{len(index)} chunks, {len(queries)} {args.split} questions")

    original = (index.terms, index.columns, index.idf, bm25.terms)
    for label, trail, path, stem in BM25_VARIANTS:
        index.terms, index.columns, index.idf, bm25.terms = bm25_matrix(index, trail, path, stem)
        scores = {s.mode: s.ndcg_at_10 for s in evaluate(kb, queries, ("bm25", "hybrid"))}
        print(f"BM25 {label:<22} bm25 {scores['bm25']:.3f}  hybrid {scores['hybrid']:.3f}")
    index.terms, index.columns, index.idf, bm25.terms = original

    cache = data_dir / "windows.npz"
    if cache.exists():
        saved = np.load(cache)
        windows, owner, trails = saved["windows"], saved["owner"], saved["trails"]
    else:
        texts = [
            indexed_text(
                p["source"], p["path"], Chunk(p["text"], p.get("heading_path") or [], 0, 0, 0), True
            )
            for p in index.payloads
        ]
        pieces = [(i, w) for i, t in enumerate(texts) for w in kb.embedder.windows(t)]
        windows = kb.embedder.embed_documents([w for _, w in pieces])
        owner = np.array([i for i, _ in pieces])
        trails = kb.embedder.embed_documents([t.split("\n\n", 1)[0] for t in texts])
        np.savez(cache, windows=windows, owner=owner, trails=trails)
    mean = index.dense
    for how in DENSE_VARIANTS:
        index.dense = DenseScores(how, mean, windows, owner, trails)
        scores = {s.mode: s.ndcg_at_10 for s in evaluate(kb, queries, ("dense", "hybrid"))}
        print(f"dense {how:<22} dense {scores['dense']:.3f}  hybrid {scores['hybrid']:.3f}")
    index.dense = mean
    kb.close()


if __name__ == "__main__":
    main()
