"""Passages of retrieved chunks: Markdown blocks, scoring, the window put in the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from archon.agent.highlights import best_passage, blocks, passages, window

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"

# Shaped like docs/knowledge-base.md: wrapped prose, a lead-in line and its command, a table.
DOC = """## Quick start

The knowledge base reads the Markdown docs of your Git repositories and
keeps them in sync.

Index every source once:

```bash
archon kb sync --sources sources.yaml
```

| setting | default | what |
|---|---|---|
| `sync_interval` | `300` | seconds between syncs |

- `POST /sync` asks a running service to sync now.
"""


def test_blocks_join_wrapped_lines_and_keep_commands_with_their_lead_in() -> None:
    found = blocks(DOC)
    texts = [b.text for b in found]
    assert texts[0] == (
        "The knowledge base reads the Markdown docs of your Git repositories and "
        "keeps them in sync."
    )
    assert texts[1] == (
        "Index every source once:\n```bash\narchon kb sync --sources sources.yaml\n```"
    )
    # A table row per block; the delimiter row is syntax, not content.
    assert texts[2:4] == [
        "| setting | default | what |",
        "| `sync_interval` | `300` | seconds between syncs |",
    ]
    assert texts[4] == "- `POST /sync` asks a running service to sync now."
    assert not any(t.startswith("#") for t in texts)  # the heading trail has the headings
    lines = DOC.splitlines()
    assert (found[1].first_line, found[1].last_line) == (5, 9)
    assert lines[found[1].first_line] == "Index every source once:"
    assert lines[found[1].last_line] == "```"


def test_blocks_read_setext_headings_indented_code_and_lazy_lines_as_commonmark() -> None:
    text = (
        "Sync options\n============\n\nRun it:\n\n    archon kb sync\n\n"
        "- a list item\nlazily continued\n- another\n"
    )
    found = blocks(text)
    assert [b.text for b in found] == [
        "Run it:\n    archon kb sync",  # the setext heading is left out like an ATX one
        "- a list item lazily continued",
        "- another",
    ]


def test_a_chunk_cut_inside_a_code_block_keeps_its_lines() -> None:
    found = blocks("Run:\n\n```bash\narchon up\narchon doctor")
    assert found[-1].text.endswith("archon up\narchon doctor")


def test_the_passage_with_the_rare_words_of_the_question_wins() -> None:
    best = best_passage("How do I sync the knowledge base?", [DOC])
    assert best is not None
    assert "archon kb sync" in best.text
    # Verbatim Markdown, as the file has it: a code block stays a code block.
    assert best.text in DOC


def test_passages_span_chunks_and_say_which() -> None:
    other = "The agent listens on port 8080.\n\nIt forwards chats to the model servers."
    ranked = passages("Which port does the agent listen on?", [DOC, other])
    assert ranked[0].chunk == 1 and "8080" in ranked[0].text
    assert best_passage("zebra", [DOC, other]) is None  # no word in common: no quote


def test_a_long_single_block_is_cut_and_a_cut_code_block_closed() -> None:
    code = "Run:\n\n```bash\n" + "\n".join(f"archon step-{i} --flag" for i in range(60)) + "\n```"
    best = best_passage("run archon step", [code], max_chars=120)
    assert best is not None and len(best.text) <= 130
    assert best.text.count("```") % 2 == 0


def test_window_keeps_short_text_and_centres_long_text_on_its_best_passage() -> None:
    assert window("sync", DOC, 5000) == (DOC, 0)
    filler = "\n\n".join(f"Paragraph {i} says nothing of interest here at all." for i in range(40))
    text = filler + "\n\nSend a SIGHUP to reload the configuration.\n\n" + filler
    excerpt, skipped = window("How do I reload the configuration?", text, 400)
    assert "SIGHUP" in excerpt and len(excerpt) <= 400
    assert text.splitlines()[skipped] == excerpt.splitlines()[0]
    excerpt, skipped = window("zebra", text, 400)  # nothing matches: the start
    assert skipped == 0 and excerpt.startswith("Paragraph 0")


@pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is not here")
def test_on_a_real_doc_the_quote_is_the_line_that_answers() -> None:
    # Prometheus's own configuration docs (../shared/corpora/prometheus).
    text = (CORPORA / "prometheus/docs/configuration/configuration.md").read_text()
    best = best_passage("How do I reload the Prometheus configuration without restarting?", [text])
    assert best is not None and "SIGHUP" in best.text
    assert best.text.splitlines()[0] == text.splitlines()[best.first_line]


def test_words_said_outright_beat_the_same_words_inside_paths_and_names() -> None:
    # Shaped like docs/runbooks/ArchonKnowledgeBaseSyncStale.md beside docs/knowledge-base.md.
    runbook = (
        "- Check the URL in `manifests/knowledge-base/sources.yaml`.\n"
        "- **No sync runs**: the CronJob `kb-sync` is suspended (`kubectl get jobs`)."
    )
    guide = "To sync the knowledge base once:\n\n```bash\narchon kb sync --sources s.yaml\n```"
    best = best_passage("How do I sync the knowledge base?", [runbook, guide])
    assert best is not None and best.chunk == 1 and "archon kb sync" in best.text
