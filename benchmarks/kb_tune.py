"""Retrieval tuning on the judged set's tuning half: chunk sizes, then fusion, in one run.

Syncs the three real corpora (../shared/corpora, 553 Markdown files) once per chunk-size setting
(cached under --data, so a rerun only re-scores), scores dense, BM25 and hybrid with every fusion
setting in the grid on the chosen split, and prints the best settings. Tune on `tune`; run once
more with `--split test --only CONFIG` to report the held-out half.

    .venv/bin/python benchmarks/kb_tune.py --data /tmp/kb-tune [--split tune] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_bench import make_repos

JUDGED = Path(__file__).resolve().parent / "data" / "kb_judged"
CHUNKS = ["800:400", "400:200", "224:112"]  # chunk_max_tokens:chunk_min_tokens
GRID = {
    "rrf_k": [10, 30, 60],
    "dense_weight": [0.4, 0.5, 0.6, 0.7],
    "fusion_candidates": [2, 4, 8],
    "document_weight": [0.0, 0.25, 0.5],
}
SMALL_GRID = {  # --small: around the defaults, for a slow machine
    "rrf_k": [30, 60],
    "dense_weight": [0.5, 0.6],
    "fusion_candidates": [4],
    "document_weight": [0.0],
}


def judged(split: str) -> list:
    from archon.kb.evaluate import Judged, _grades

    out = []
    for file in sorted(JUDGED.glob("*.jsonl")):
        for line in file.read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                if item.get("split") == split:
                    out.append(
                        Judged(item["query"], _grades(item["relevant"]), split, item.get("kind"))
                    )
    return out


def cached_embedder(cache: Path):
    """The default embedder, looking each text up in a kb_design.py cache first."""
    import hashlib

    import numpy as np

    from archon.kb.embeddings import SentenceTransformerEmbedder, cpu_has_native_bf16

    embedder = SentenceTransformerEmbedder(bf16=cpu_has_native_bf16())
    saved = np.load(cache)
    known = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
    embed = embedder.embed_documents
    added = {"n": 0}

    def embed_documents(texts: list[str]) -> np.ndarray:
        # The cache holds one vector per text, of the text's first window: only a text that fits
        # one window is looked up; a longer one gets Archon's own vector (its windows' mean).
        # (The mean of windows is kept under "w" + the hash.)
        keys = [
            ("" if len(embedder.windows(t)) == 1 else "w") + hashlib.sha1(t.encode()).hexdigest()
            for t in texts
        ]
        out = [known.get(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            for i, vector in zip(missing, embed([texts[i] for i in missing]), strict=True):
                out[i] = known[keys[i]] = vector
                added["n"] += 1
            if added["n"] >= 256:  # kept for the next run
                np.savez(cache, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
                added["n"] = 0
        return np.stack(out)

    embedder.embed_documents = embed_documents  # type: ignore[method-assign]
    return embedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="cache of synced stores")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--chunks", nargs="+", default=CHUNKS)
    parser.add_argument("--only", help="score one fusion setting: k=..,w=..,c=..,d=..")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--small", action="store_true", help="the small fusion grid")
    parser.add_argument(
        "--vectors",
        type=Path,
        help="kb_design.py's vector cache: chunks whose indexed text it holds are not embedded "
        "again (the same model and texts give the same vectors); the rest are",
    )
    parser.add_argument(
        "--bm25-avg", type=float, help="BM25's assumed chunk length (archon.kb.bm25.AVG_DOC_TOKENS)"
    )
    args = parser.parse_args()
    if args.bm25_avg:
        from archon.kb import bm25

        bm25.AVG_DOC_TOKENS = args.bm25_avg

    from archon.kb.evaluate import evaluate
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings

    queries = judged(args.split)
    args.data.mkdir(parents=True, exist_ok=True)
    sources = args.data / "sources.yaml"
    if not sources.exists():
        sources = make_repos(args.data)
    if args.only:
        values = dict(part.split("=") for part in args.only.split(","))
        grid = [
            {
                "rrf_k": int(values["k"]),
                "dense_weight": float(values["w"]),
                "fusion_candidates": int(values["c"]),
                "document_weight": float(values["d"]),
            }
        ]
    else:
        space = SMALL_GRID if args.small else GRID
        grid = [dict(zip(space, c, strict=True)) for c in itertools.product(*space.values())]
    results = []
    for chunks in args.chunks:
        high, low = (int(x) for x in chunks.split(":"))
        settings = KnowledgeBaseSettings(
            sources=sources,
            data_dir=args.data / f"chunks-{high}-{low}" / f"bm25-{args.bm25_avg or 'default'}",
            chunk_max_tokens=high,
            chunk_min_tokens=low,
        )
        kb = KnowledgeBase(settings, cached_embedder(args.vectors) if args.vectors else None)
        began = time.perf_counter()
        report = kb.sync()
        chunk_count = kb.store.count()
        print(f"chunks {chunks}: {chunk_count} chunks, sync {time.perf_counter() - began:.1f}s")
        assert report.ok, report
        scored = evaluate(kb, queries, ("dense", "bm25"))
        singles = {s.mode: s.ndcg_at_10 for s in scored}
        for s in scored:
            kinds = "  ".join(f"{k} {v:.3f}" for k, v in s.by_kind.items())
            print(f"  {s.mode} {s.ndcg_at_10:.3f}  ({kinds})", flush=True)
        for params in grid:
            kb.settings = settings.model_copy(update=params)
            (score,) = evaluate(kb, queries, ("hybrid",))
            kinds = "  ".join(f"{k} {v:.3f}" for k, v in score.by_kind.items())
            print(f"  hybrid {score.ndcg_at_10:.3f} {params}  ({kinds})", flush=True)
            row = {"chunks": chunks, **params, "hybrid": score.ndcg_at_10, **singles}
            row["recall"] = score.recall_at_10
            results.append(row)
        best = max((r for r in results if r["chunks"] == chunks), key=lambda r: r["hybrid"])
        print(f"  best hybrid {best['hybrid']:.3f} with {best}", flush=True)
        kb.close()
        if args.json:  # after each setting: a long run that is cut keeps what it measured
            args.json.write_text(json.dumps(results, indent=1))
    results.sort(key=lambda r: -r["hybrid"])
    print(f"\ntop settings on {args.split} ({len(queries)} questions):")
    for row in results[:15]:
        print(
            "  "
            + "  ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )


if __name__ == "__main__":
    main()
