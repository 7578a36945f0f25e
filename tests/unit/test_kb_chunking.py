"""Chunking the real corpora (../shared/corpora): boundaries never inside a code fence, heading
trails that nest. Pure functions over the files: no model, no store, no process."""

from __future__ import annotations

from pathlib import Path

import pytest

from archon.kb.chunking import chunk_markdown, split_blocks
from archon.markdown_blocks import ATOMIC

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
        fences = [(b.start_line, b.end_line) for b in split_blocks(text) if b.kind in ATOMIC]
        for chunk in chunks:
            # A chunk boundary never falls inside a code fence.
            for start, end in fences:
                assert not (start < chunk.start_line <= end), (path, chunk.start_line)
                assert not (start <= chunk.end_line < end), (path, chunk.end_line)
            if chunk.tokens > 200:  # only a single code block, HTML block or table may exceed it
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


# CommonMark's reading, which the line scanner before markdown-it-py got wrong.
COMMONMARK = """Setext title
============

Intro paragraph.

Install
-------

    pip install archon
    # an indented code block: not a heading

<details>
<summary>More</summary>

# not a heading inside an HTML block? It is: a blank line ends the HTML block.
</details>

| flag | default |
|------|---------|
| `--x` | 1 |
"""


def test_setext_headings_indented_code_html_and_tables_read_as_commonmark() -> None:
    blocks = split_blocks(COMMONMARK)
    kinds = [(b.kind, b.start_line) for b in blocks]
    assert kinds[:4] == [("heading", 1), ("paragraph", 4), ("heading", 6), ("code", 9)]
    assert [b.title for b in blocks if b.heading_level] == [
        "Setext title",
        "Install",
        "not a heading inside an HTML block? It is: a blank line ends the HTML block.",
    ]
    assert blocks[0].heading_level == 1 and blocks[2].heading_level == 2
    assert [b.kind for b in blocks[4:]] == ["html", "heading", "html", "table"]
    chunks = chunk_markdown(COMMONMARK, min_tokens=0)
    assert chunks[1].heading_path == ["Setext title", "Install"]
    assert "# an indented code block" in chunks[1].text  # its comment line is code, not a trail


def test_front_matter_is_metadata_not_a_setext_heading() -> None:
    text = "---\ntitle: Sync options\nweight: 3\n---\n\nBody text.\n"
    (block,) = split_blocks(text)
    assert (block.kind, block.start_line, block.text) == ("paragraph", 6, "Body text.")
    (chunk,) = chunk_markdown(text)
    assert chunk.heading_path == ["Sync options"]


def test_an_oversized_list_is_cut_between_items_never_inside_a_code_block_in_it() -> None:
    code = "\n".join(f"   archon step-{i} --flag value" for i in range(30))
    text = "Steps:\n\n1. First install:\n\n   ```bash\n" + code + "\n   ```\n\n2. Then check.\n"
    chunks = chunk_markdown(text, max_tokens=60, min_tokens=0)
    opened = [c for c in chunks if "```bash" in c.text]
    assert len(opened) == 1 and opened[0].text.count("```") == 2  # the fence stays whole
    assert chunks[-1].text.strip().endswith("2. Then check.")
