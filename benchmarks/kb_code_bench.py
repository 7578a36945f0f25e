"""Code as knowledge: sync the code corpora and score the judged code set.

The knowledge base holds what an engineer's would: Prometheus's Go code (config/, scrape/,
rules/, notifier/, model/relabel/, discovery/kubernetes/, promql/parser/) beside its docs, and
client_python's library, tests and docs (../shared/corpora, one commit each). Questions:
benchmarks/data/kb_code_judged/*.jsonl, graded per file, split once into tune and test.

    .venv/bin/python benchmarks/kb_code_bench.py --data /tmp/kb-code [--split tune] [--resync]

The same store answers `archon kb eval` (ARCHON_KB_SOURCES=<data>/sources.yaml
ARCHON_KB_DATA_DIR=<data>). Prints the full sync's time and nDCG@10 / recall@10 per mode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
JUDGED = ROOT / "benchmarks" / "data" / "kb_code_judged"
CODE_SOURCES = [
    {"name": "prometheus", "path": "prometheus", "include": ["docs/**/*.md"]},
    {"name": "prometheus-code", "path": "prometheus-code", "include": ["**/*.go"]},
    {
        "name": "client_python",
        "path": "client_python",
        "include": ["**/*.py", "docs/content/**/*.md", "README.md"],
    },
]


def write_sources(data: Path) -> Path:
    entries = [{**s, "path": str(CORPORA / s["path"])} for s in CODE_SOURCES]
    sources = data / "sources.yaml"
    data.mkdir(parents=True, exist_ok=True)
    sources.write_text(json.dumps({"sources": entries}))
    return sources


class CachedEmbedder:
    """The configured embedder, with each text's vector kept on disk: a rerun that changes only
    some indexed texts (tuning) embeds only those. The vectors are the embedder's own."""

    def __init__(self, inner, path: Path):
        self.inner, self.path = inner, path
        self.name, self.dim = inner.name, inner.dim
        self.cache: dict[str, np.ndarray] = {}
        if path.exists():
            saved = np.load(path)
            self.cache = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            vectors = self.inner.embed_documents([texts[i] for i in missing])
            self.cache.update({keys[i]: v for i, v in zip(missing, vectors, strict=True)})
        return np.stack([self.cache[k] for k in keys])

    def save(self) -> None:
        keys = list(self.cache)
        np.savez(self.path, keys=np.array(keys), vectors=np.stack([self.cache[k] for k in keys]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", nargs="+", default=["tune"])
    parser.add_argument("--resync", action="store_true", help="drop the store and sync again")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--vectors", type=Path, help="keep each text's vector here (tuning reruns; not timed)"
    )
    args = parser.parse_args()

    from archon.kb.evaluate import evaluate, load_queries
    from archon.kb.service import KnowledgeBase, make_embedder
    from archon.kb.settings import KnowledgeBaseSettings

    if args.resync and args.data.exists():
        shutil.rmtree(args.data)
    sources = write_sources(args.data)
    settings = KnowledgeBaseSettings(sources=sources, data_dir=args.data)
    embedder = make_embedder(settings)
    if args.vectors:
        embedder = CachedEmbedder(embedder, args.vectors)
    kb = KnowledgeBase(settings, embedder)
    began = time.perf_counter()
    report = kb.sync()
    seconds = time.perf_counter() - began
    files = sum(s.added + s.changed for s in report.sources)
    chunks = sum(s.chunks_written for s in report.sources)
    skipped = {s.name: s.skipped for s in report.sources}
    if isinstance(embedder, CachedEmbedder):
        embedder.save()
    print(f"sync: {files} files, {chunks} chunks in {seconds:.1f} s (skipped: {skipped})")
    results: dict = {"sync": {"files": files, "chunks": chunks, "seconds": round(seconds, 1)}}
    judged = [j for f in sorted(JUDGED.glob("*.jsonl")) for j in load_queries(f)]
    for split in args.split:
        queries = [j for j in judged if j.split == split]
        if not queries:
            continue  # e.g. --split none: only the sync
        print(f"{split} ({len(queries)} questions):")
        results[split] = {}
        for score in evaluate(kb, queries):
            kinds = "  ".join(f"{k} {v:.3f}" for k, v in score.by_kind.items())
            print(
                f"  {score.mode:<6} nDCG@10 {score.ndcg_at_10:.3f}  "
                f"recall@10 {score.recall_at_10:.3f}   {kinds}"
            )
            results[split][score.mode] = {
                "ndcg_at_10": round(score.ndcg_at_10, 3),
                "recall_at_10": round(score.recall_at_10, 3),
                "by_kind": {k: round(v, 3) for k, v in score.by_kind.items()},
            }
    kb.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
