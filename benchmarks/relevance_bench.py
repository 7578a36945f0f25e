"""Where to set the agent's ``min_relevance``: the relevance score (archon.agent.rag.relevance,
the best retrieved passage's IDF-weighted share of the question's words) of every judged
question, answerable or not, through a running knowledge base, exactly as the agent computes
it (same top_k, same excerpts within max_context_chars).

The questions: benchmarks/data/answers.jsonl (44 answerable, 4 the docs do not cover) and
benchmarks/data/off_topic.jsonl (small talk and general questions, written for this: 10 to
tune on, 8 held out). The threshold is chosen on the tuning half (most questions on the right
side of it; between equals, the highest) and reported on the test half too.

    .venv/bin/python benchmarks/relevance_bench.py --kb-url http://127.0.0.1:8100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from archon.agent.rag import augment, lead_passage, relevance  # noqa: E402
from archon.agent.settings import AgentSettings  # noqa: E402

FILES = [ROOT / "benchmarks/data/answers.jsonl", ROOT / "benchmarks/data/off_topic.jsonl"]


def score(kb_url: str, question: str, top_k: int, max_chars: int) -> dict[str, Any]:
    resp = httpx.post(kb_url + "/query", json={"query": question, "top_k": top_k}, timeout=60)
    resp.raise_for_status()
    chunks = resp.json()["chunks"]
    messages = [{"role": "user", "content": question}]
    _, sources = augment(messages, chunks, max_chars, question)
    best = lead_passage(question, sources)
    quoted = sources[best.chunk]["path"] if best is not None else None
    return {"relevance": round(relevance(question, best), 3), "quoted": quoted}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--kb-url", required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    defaults = AgentSettings()
    rows = []
    for path in FILES:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            got = score(args.kb_url, row["question"], defaults.top_k, defaults.max_context_chars)
            rows.append({**row, **got})
    for row in sorted(rows, key=lambda r: r["relevance"]):
        kind = "answerable" if row["answerable"] else "not covered"
        print(
            f"{row['relevance']:5.2f}  {row['split']:4s}  {kind:11s}  {row['question'][:60]:60s}"
            f"  {row['quoted']}"
        )

    def right(split: str, threshold: float) -> tuple[int, int, int, int]:
        part = [r for r in rows if r["split"] == split]
        kept = sum(r["relevance"] >= threshold for r in part if r["answerable"])
        dropped = sum(r["relevance"] < threshold for r in part if not r["answerable"])
        answerable = sum(r["answerable"] for r in part)
        return kept, answerable, dropped, len(part) - answerable

    grid = [round(0.05 * n, 2) for n in range(0, 21)]
    # Between equals, the highest: the same questions kept, the least chance of a stray quote.
    best = max(grid, key=lambda t: (sum(right("tune", t)[0::2]), t))
    print("\nthreshold  tune: answerable kept, not covered dropped | test: the same")
    for t in grid:
        tk, ta, td, tn = right("tune", t)
        sk, sa, sd, sn = right("test", t)
        mark = "  <- chosen on tune" if t == best else ""
        print(f"{t:9.2f}  {tk:2d}/{ta} {td:2d}/{tn}   |   {sk:2d}/{sa} {sd:2d}/{sn}{mark}")
    if args.out:
        args.out.write_text(json.dumps({"chosen": best, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
