"""Chunking the real corpora (../shared/corpora): boundaries never inside a code fence, heading
trails that nest. Pure functions over the files: no model, no store, no process."""

from __future__ import annotations

from pathlib import Path

import pytest

from archon.kb.chunking import FENCE, chunk_markdown, split_blocks

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"
pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is missing")


@pytest.mark.parametrize("corpus", ["tekton-pipeline", "prometheus", "argo-cd"])
def test_chunking_the_real_corpora(corpus: str) -> None:
    files = sorted((CORPORA / corpus).rglob("*.md"))
    assert files
    total = 0
    for path in files:
        text = path.read_text(errors="replace")
        chunks = chunk_markdown(text)
        total += len(chunks)
        fences = [
            (b.start_line, b.end_line) for b in split_blocks(text) if FENCE.match(b.text.lstrip())
        ]
        for chunk in chunks:
            # A chunk boundary never falls inside a code fence.
            for start, end in fences:
                assert not (start < chunk.start_line <= end), (path, chunk.start_line)
                assert not (start <= chunk.end_line < end), (path, chunk.end_line)
            if chunk.tokens > 800:  # only a single fence or table may exceed the maximum
                assert len(split_blocks(chunk.text)) == 1, (path, chunk.start_line)
        headed = [c for c in chunks if c.heading_path]
        if any(line.startswith("#") for line in text.splitlines()):
            assert headed, path
    assert total > len(files)


def test_heading_paths_nest() -> None:
    text = (CORPORA / "prometheus/docs/querying/basics.md").read_text()
    chunks = chunk_markdown(text, min_tokens=0)
    paths = [" > ".join(c.heading_path) for c in chunks]
    assert "Querying basics > Time series selectors > Range Vector Selectors" in paths
    assert all(p.startswith("Querying basics") for p in paths)
