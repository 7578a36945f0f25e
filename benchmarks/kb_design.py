"""Retrieval design space, offline: chunkings x what is embedded x how files are ranked, scored on
one split of the judged set without a sync (vectors cached per text under --data).

Each design is a chunker, the text each chunk is indexed with, and a ranking of files from the
dense and BM25 scores of the chunks. Used to choose Archon's defaults on the tuning half
(docs/benchmarks.md, "Retrieval against the plain reference").

    .venv/bin/python benchmarks/kb_design.py --data /tmp/kb-design [--split tune]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_bench import CORPORA, SOURCES
from kb_reference import chunks as reference_chunks
from kb_tune import judged


def files() -> list[tuple[str, str, str]]:
    out = []
    for name, folder in SOURCES.items():
        root = CORPORA / folder
        for file in sorted((root / "docs").rglob("*.md")):
            out.append((name, file.relative_to(root).as_posix(), file.read_text(errors="replace")))
    return out


class Vectors:
    """MiniLM vectors by text, cached on disk."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.known: dict[str, np.ndarray] = {}
        if cache.exists():
            saved = np.load(cache)
            self.known = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
        self.model = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self.known}.items()
        )
        if missing:
            import torch
            from sentence_transformers import SentenceTransformer

            from archon.kb.embeddings import bundled_model_path

            if self.model is None:
                self.model = SentenceTransformer(
                    bundled_model_path("all-MiniLM-L6-v2"), device="cpu"
                )
            began = time.perf_counter()
            step = 512  # saved after each step: a run that is cut keeps what it embedded
            for start in range(0, len(missing), step):
                part = missing[start : start + step]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    vectors = self.model.encode(
                        [t for _, t in part], batch_size=32, normalize_embeddings=True
                    )
                for (key, _), vector in zip(part, vectors, strict=True):
                    self.known[key] = np.asarray(vector, np.float32)
                np.savez(
                    self.cache,
                    keys=np.array(list(self.known)),
                    vectors=np.stack(list(self.known.values())),
                )
                print(
                    f"  embedded {start + len(part)}/{len(missing)} texts in "
                    f"{time.perf_counter() - began:.0f} s",
                    flush=True,
                )
        return np.stack([self.known[k] for k in keys])

    def query(self, texts: list[str]) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        from archon.kb.embeddings import bundled_model_path

        if self.model is None:
            self.model = SentenceTransformer(bundled_model_path("all-MiniLM-L6-v2"), device="cpu")
        return np.asarray(self.model.encode(texts, normalize_embeddings=True), np.float32)


def path_words(path: str) -> str:
    return re.sub(r"[/_.\-]+", " ", path.removesuffix(".md")).strip()


def file_ranks(scores: np.ndarray, docs: np.ndarray, n_docs: int) -> np.ndarray:
    """Each file's best chunk score."""
    best = np.full(n_docs, -np.inf, np.float32)
    np.maximum.at(best, docs, scores)
    return best


def rank_of(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), np.int64)
    ranks[order] = np.arange(len(scores))
    return ranks


def evaluate(ranking: Callable[[int], list[int]], queries, doc_names) -> tuple[float, dict]:
    from archon.kb.evaluate import ndcg

    values, kinds = [], {}
    for n, q in enumerate(queries):
        ranked = [doc_names[d] for d in ranking(n)[:10]]
        value = ndcg(ranked, q.relevant)
        values.append(value)
        kinds.setdefault(q.kind, []).append(value)
    return float(np.mean(values)), {k: float(np.mean(v)) for k, v in sorted(kinds.items())}


def chunk_rows(corpus, chunker: str, count) -> list[tuple[int, str, str]]:
    """(file, indexed text, heading trail) per chunk."""
    from archon.kb.chunking import chunk_markdown

    rows: list[tuple[int, str, str]] = []
    for d, (source, path, text) in enumerate(corpus):
        if chunker == "reference":
            rows.extend((d, f"{path}\n\n{c}", "") for c in reference_chunks(text))
            continue
        high = int(chunker.split("-")[1])
        for c in chunk_markdown(text, max_tokens=high, min_tokens=high // 2, count=count):
            trail = " > ".join(c.heading_path)
            head = f"{source}: {path_words(path)}" + (f"\n{trail}" if trail else "")
            rows.append((d, f"{head}\n\n{c.text}", trail))
    return rows


def outline(source: str, path: str, text: str) -> str:
    """A file's title, path words and headings: what the page is about, in a few words."""
    from archon.markdown_blocks import front_matter_title, top_level_blocks

    titles = [b.title for b in top_level_blocks(text) if b.level and b.level <= 3]
    head = front_matter_title(text)
    return f"{source}: {path_words(path)}\n" + "\n".join(([head] if head else []) + titles)


def signals(corpus, rows, vectors: Vectors, queries) -> dict[str, np.ndarray]:
    """Per question and file, one score per signal (higher is better)."""
    import bm25s

    docs = np.array([r[0] for r in rows])
    n_docs = len(corpus)
    qv = vectors.query([q.query for q in queries])
    dense_chunks = vectors([r[1] for r in rows])
    outlines = vectors([outline(*f) for f in corpus])
    centroid = np.zeros((n_docs, dense_chunks.shape[1]), np.float32)
    np.add.at(centroid, docs, dense_chunks)
    centroid /= np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-9)

    def tokens(texts):
        return bm25s.tokenize(texts, stopwords="en", show_progress=False, return_ids=False)

    chunk_bm25 = bm25s.BM25()
    chunk_bm25.index(
        bm25s.tokenize([r[1] for r in rows], stopwords="en", show_progress=False),
        show_progress=False,
    )
    file_bm25 = bm25s.BM25()
    file_bm25.index(
        bm25s.tokenize(
            [f"{s} {path_words(p)}\n{t}" for s, p, t in corpus], stopwords="en", show_progress=False
        ),
        show_progress=False,
    )
    qt = tokens([q.query for q in queries])
    out: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "dense",
            "dense_top2",
            "centroid",
            "outline",
            "bm25",
            "bm25_file",
            "prf_dense",
            "prf_hybrid",
            "prf_hybrid_1",
            "bm25_prf",
        )
    }

    def best_of(scores: np.ndarray) -> np.ndarray:
        top = np.full(n_docs, -np.inf, np.float32)
        np.maximum.at(top, docs, scores)
        return top

    def feedback(query: np.ndarray, order: np.ndarray, m: int, beta: float) -> np.ndarray:
        moved = query + beta * dense_chunks[order[:m]].mean(axis=0)
        return moved / np.linalg.norm(moved)

    for n in range(len(queries)):
        ds = dense_chunks @ qv[n]
        best = np.full(n_docs, -np.inf, np.float32)
        np.maximum.at(best, docs, ds)
        second = np.full(n_docs, -np.inf, np.float32)
        is_best = ds >= best[docs]
        np.maximum.at(second, docs[~is_best], ds[~is_best])
        second = np.where(np.isfinite(second), second, best)
        out["dense"].append(best)
        out["dense_top2"].append((best + second) / 2)
        out["centroid"].append(centroid @ qv[n])
        out["outline"].append(outlines @ qv[n])
        bs = chunk_bm25.get_scores(qt[n]).astype(np.float32) if qt[n] else np.zeros(len(rows))
        bbest = np.zeros(n_docs, np.float32)
        np.maximum.at(bbest, docs, bs)
        out["bm25"].append(bbest)
        out["bm25_file"].append(
            file_bm25.get_scores(qt[n]).astype(np.float32) if qt[n] else np.zeros(n_docs)
        )
        # Pseudo-relevance feedback: the query vector moved toward its best chunks, by dense
        # alone or by the first round's fused (RRF) chunk ranking.
        out["prf_dense"].append(best_of(dense_chunks @ feedback(qv[n], np.argsort(-ds), 3, 0.7)))
        fused = 1 / (61 + rank_of(ds)) + 1 / (61 + rank_of(bs))
        order = np.argsort(-fused)
        out["prf_hybrid"].append(best_of(dense_chunks @ feedback(qv[n], order, 3, 0.7)))
        out["prf_hybrid_1"].append(best_of(dense_chunks @ feedback(qv[n], order, 1, 0.5)))
        # The same feedback for BM25: the fused top chunks' words added to the question.
        extra: list[str] = []
        for i in order[:3]:
            extra += tokens([rows[i][1]])[0][:40]
        more = chunk_bm25.get_scores(qt[n] + extra).astype(np.float32)
        out["bm25_prf"].append(np.maximum(bbest, 0) + 0.3 * best_of(more))
    return {k: np.stack(v) for k, v in out.items()}


def rrf(sig: dict[str, np.ndarray], weights: dict[str, float], k: int) -> np.ndarray:
    total = None
    for name, weight in weights.items():
        ranks = np.apply_along_axis(rank_of, 1, sig[name])
        part = weight / (k + ranks + 1)
        total = part if total is None else total + part
    assert total is not None
    return total


def zscore(scores: np.ndarray, top: int = 100) -> np.ndarray:
    """Per question: scores standardised by the mean and spread of the best ``top`` files."""
    best = -np.sort(-scores, axis=1)[:, :top]
    mean = best.mean(axis=1, keepdims=True)
    spread = best.std(axis=1, keepdims=True) + 1e-9
    return (scores - mean) / spread


def coherent(scores: np.ndarray, source_of: np.ndarray, weight: float, top: int = 20):
    """Each file's score lifted by its source's share of the best ``top`` files' scores: a
    question is usually about one product, so a file from the source that dominates the
    results beats an equally scored one from another."""
    out = np.empty_like(scores)
    for n, row in enumerate(scores):
        best = np.argsort(-row)[:top]
        positive = row[best] - row[best].min()
        total = positive.sum() or 1.0
        share = np.zeros(source_of.max() + 1)
        np.add.at(share, source_of[best], positive / total)
        out[n] = row + weight * (row[best[0]] - row[best[-1]]) * share[source_of]
    return out


def grid(sig: dict[str, np.ndarray], source_of: np.ndarray | None = None) -> dict[str, np.ndarray]:
    designs: dict[str, np.ndarray] = {
        name: sig[name] for name in ("dense", "bm25", "prf_dense", "prf_hybrid", "prf_hybrid_1")
    }
    for name in ("prf_dense", "prf_hybrid", "prf_hybrid_1"):
        designs[f"rrf {name}+bm25 w.6"] = rrf(sig, {name: 0.6, "bm25": 0.4}, 60)
        designs[f"rrf {name}+bm25 w.5"] = rrf(sig, {name: 0.5, "bm25": 0.5}, 60)
    designs["rrf dense+prf_hybrid+bm25"] = rrf(
        sig, {"dense": 0.3, "prf_hybrid": 0.3, "bm25": 0.4}, 60
    )
    for w in (0.5, 0.6, 0.7):
        for k in (10, 30, 60):
            designs[f"rrf w{w} k{k}"] = rrf(sig, {"dense": w, "bm25": 1 - w}, k)
    designs["rrf +bm25_file .25"] = rrf(sig, {"dense": 1, "bm25": 1, "bm25_file": 0.25}, 60)
    designs["rrf +bm25_file .5"] = rrf(sig, {"dense": 1, "bm25": 1, "bm25_file": 0.5}, 60)
    designs["rrf .6 +bm25_file .5"] = rrf(sig, {"dense": 1.2, "bm25": 0.8, "bm25_file": 0.5}, 60)
    z = {name: zscore(sig[name]) for name in ("dense", "bm25", "bm25_file", "dense_top2")}
    for w in (0.4, 0.5, 0.6, 0.7):
        designs[f"z w{w}"] = w * z["dense"] + (1 - w) * z["bm25"]
    designs["z .5 +file .25"] = 0.5 * z["dense"] + 0.5 * z["bm25"] + 0.25 * z["bm25_file"]
    designs["z .6 +file .25"] = 0.6 * z["dense"] + 0.4 * z["bm25"] + 0.25 * z["bm25_file"]
    designs["z top2 .6"] = 0.6 * z["dense_top2"] + 0.4 * z["bm25"]
    if source_of is not None:
        base = rrf(sig, {"dense": 1, "bm25": 1}, 60)
        for weight in (0.25, 0.5, 1.0):
            designs[f"rrf source-coherent {weight}"] = coherent(base, source_of, weight)
            designs[f"z.6 source-coherent {weight}"] = coherent(
                designs["z w0.6"], source_of, weight
            )
    return designs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="tune")
    parser.add_argument("--chunkers", nargs="+", default=["reference", "archon-254"])
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    from archon.kb.embeddings import bundled_model_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path("all-MiniLM-L6-v2"))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    corpus = files()
    doc_names = [f"{s}:{p}" for s, p, _ in corpus]
    queries = judged(args.split)
    vectors = Vectors(args.data / "vectors.npz")
    seed = args.data / "reference-vectors.npz"  # kb_reference.py's, same --data: not embedded twice
    if seed.exists():
        from kb_reference import corpus as reference_corpus

        texts = reference_corpus()[1]
        for text, vector in zip(texts, np.load(seed)["vectors"], strict=True):
            vectors.known[hashlib.sha1(text.encode()).hexdigest()] = vector
    for chunker in args.chunkers:
        rows = chunk_rows(corpus, chunker, count)
        print(f"{chunker}: {len(rows)} chunks", flush=True)
        sig = signals(corpus, rows, vectors, queries)
        names = sorted({d.split(":")[0] for d in doc_names})
        source_of = np.array([names.index(d.split(":")[0]) for d in doc_names])
        designs = grid(sig, source_of)
        for label, scores in designs.items():
            score, kinds = evaluate(lambda n, s=scores: list(np.argsort(-s[n])), queries, doc_names)
            print(
                f"  {label:<18} {score:.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in kinds.items())
            )


if __name__ == "__main__":
    main()
