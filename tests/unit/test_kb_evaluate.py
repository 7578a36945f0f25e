"""Graded nDCG and the judged-set loader, on hand-computed cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from archon.errors import ConfigError
from archon.kb.chunking import Chunk
from archon.kb.evaluate import load_queries, ndcg, recall
from archon.kb.sync import indexed_text


def test_graded_ndcg_by_hand() -> None:
    grades = {"a": 2, "b": 1}
    assert ndcg(["a", "b"], grades) == pytest.approx(1.0)
    # Swapped: gains 1 then 3 against the ideal 3 then 1.
    swapped = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert ndcg(["b", "a"], grades) == pytest.approx(swapped)
    assert ndcg(["x", "y"], grades) == 0.0
    # Binary judgements keep the old meaning.
    assert ndcg(["x", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))


def test_recall_counts_the_answering_files() -> None:
    assert recall(["b"], {"a": 2, "b": 1}) == 0.0
    assert recall(["a"], {"a": 2, "b": 1}) == 1.0
    assert recall(["b"], {"b": 1, "c": 1}) == 0.5


def test_loader_reads_both_formats_and_splits(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [
        {"query": "q1", "relevant": ["s:a.md"]},
        {"query": "q2", "relevant": {"s:a.md": 2, "s:b.md": 1}, "split": "tune", "kind": "howto"},
        {"query": "q3", "relevant": {"s:c.md": 2}, "split": "test"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [j.query for j in load_queries(path)] == ["q1", "q2", "q3"]
    tune = load_queries(path, "tune")
    assert [(j.query, j.relevant, j.kind) for j in tune] == [
        ("q2", {"s:a.md": 2, "s:b.md": 1}, "howto")
    ]
    with pytest.raises(ConfigError, match="no queries in split 'dev'"):
        load_queries(path, "dev")
    path.write_text(json.dumps({"query": "q", "relevant": {"s:a.md": 3}}) + "\n")
    with pytest.raises(ConfigError, match=r"q.jsonl:1"):
        load_queries(path)


def test_shipped_judged_sets_load() -> None:
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
    for path in sorted((root / "kb_judged").glob("*.jsonl")):
        judged = load_queries(path)
        assert {j.split for j in judged} == {"tune", "test"}, path.name


def test_indexed_text_carries_where_the_chunk_lives() -> None:
    chunk = Chunk("Enable it with selfHeal.", ["Automated Sync Policy", "Self-Healing"], 1, 3, 5)
    plain = indexed_text("argo-cd", "docs/user-guide/auto_sync.md", chunk, context=False)
    assert plain == "Automated Sync Policy > Self-Healing\n\nEnable it with selfHeal."
    rich = indexed_text("argo-cd", "docs/user-guide/auto_sync.md", chunk, context=True)
    assert rich.splitlines()[0] == "argo-cd: docs user guide auto sync"
    assert rich.endswith(plain)
