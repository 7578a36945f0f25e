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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_code_bench import CODE_SOURCES, CORPORA, JUDGED
from kb_reference import MAX_CHARS, arguments, chunks, run


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
    from archon.kb.evaluate import load_queries

    args = arguments()
    docs, texts = corpus()
    judged = [j for f in sorted(JUDGED.glob("*.jsonl")) for j in load_queries(f)]
    splits = {s: [j for j in judged if j.split == s] for s in args.split}
    run(docs, texts, args.data / "reference-code-vectors.npz", splits, args.json)


if __name__ == "__main__":
    main()
