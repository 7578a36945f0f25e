"""Scoring of answers against the judged answer set, on hand-made answers (no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archon.agent.answer_eval import (
    Answer,
    Question,
    contains,
    is_refusal,
    load_answers,
    report,
    score,
    summarise,
)
from archon.errors import ConfigError

ANSWERS = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "answers.jsonl"

SYNC = Question(
    id="q1",
    question="How do I sync the knowledge base?",
    facts=[["archon kb sync"], ["POST /sync", "/sync"]],
    cite=["archon:docs/knowledge-base.md"],
    answerable=True,
    split="tune",
    corpus="archon",
)
NONE = Question(
    id="q2", question="How do I use pg_dump?", facts=[], cite=[], answerable=False, split="tune"
)


def answer(
    q: Question,
    text: str,
    cited=(),
    sources=(),
    tokens: int | None = 10,
    seconds: float = 1.0,
    split: str | None = None,
) -> Answer:
    return score(
        q,
        Answer(
            id=q.id,
            split=split or q.split,
            answerable=q.answerable,
            text=text,
            cited=list(cited),
            sources=list(sources) or list(cited),
            completion_tokens=tokens,
            seconds=seconds,
            ttft=0.1,
        ),
    )


def test_facts_match_case_folded_with_whitespace_normalised() -> None:
    assert contains("Run  `Archon\n KB sync` [1].", ["archon kb sync"])
    assert contains("use POST /sync", ["nothing", "post /sync"])
    assert not contains("run archon kb-sync", ["archon kb sync"])
    assert not contains("anything", ["", "  "])  # an empty alternative matches nothing


def test_the_essential_fact_and_the_share_of_facts() -> None:
    both = answer(SYNC, "Run `archon kb sync` or POST /sync [1].")
    assert both.essential and both.facts_share == 1.0
    second_only = answer(SYNC, "Send POST /sync to the service.")
    assert not second_only.essential and second_only.facts_share == 0.5


def test_citations_count_only_the_cited_sources() -> None:
    right = answer(SYNC, "x [1]", cited=["archon:docs/knowledge-base.md", "archon:README.md"])
    assert right.cites_relevant is True and right.retrieved_hit
    wrong = answer(
        SYNC,
        "x [2]",
        cited=["archon:README.md"],
        sources=["archon:README.md", "archon:docs/knowledge-base.md"],
    )
    assert wrong.cites_relevant is False and wrong.retrieved_hit  # retrieved, not cited
    silent = answer(SYNC, "x", sources=["archon:docs/knowledge-base.md"])
    assert silent.cites_relevant is None and silent.retrieved_hit


@pytest.mark.parametrize(
    "text",
    [
        "The context does not say how to back up PostgreSQL.",
        "The documentation doesn't mention pg_dump.",
        "I don't know.",
        "This is not covered in the provided docs.",
        "There is no information about pg_dump in the context.",
        "I cannot find that in the documentation.",
    ],
)
def test_refusals(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "Run `pg_dump mydb > backup.sql`.",
        "Use archon kb sync; it does the sync for every source.",
        # a "not" far into a long answer is not a refusal: a refusal comes first
        "Run archon kb sync [1]. "
        + "It reads the sources file and indexes them. " * 10
        + "It does not delete the store.",
    ],
)
def test_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_summary_per_split_and_all() -> None:
    answers = [
        answer(SYNC, "archon kb sync [1]", cited=["archon:docs/knowledge-base.md"], tokens=40),
        answer(SYNC, "no idea, try POST /sync", cited=["archon:README.md"], tokens=80),
        answer(SYNC, "something", tokens=200),  # cites nothing
        answer(NONE, "The context does not say.", tokens=8),
        answer(NONE, "Run pg_dump.", tokens=6),
        answer(SYNC, "archon kb sync", split="test", tokens=20),
    ]
    answers.append(Answer("e", "test", True, "", [], [], None, 0.5, None, error="HTTP 503: down"))
    tune, test, total = summarise(answers, [SYNC, NONE])
    assert (tune.split, tune.questions, tune.answerable) == ("tune", 5, 3)
    assert tune.fact_recall == pytest.approx(1 / 3)
    assert tune.facts_share == pytest.approx((0.5 + 0.5 + 0) / 3)  # "/sync" only in one
    assert tune.citation_precision == 0.5  # of the two answers that cite, one cites a right file
    assert tune.cite_rate == pytest.approx(2 / 3)
    assert tune.refusal_rate == 0.5
    assert tune.false_refusals == 0.0
    assert tune.median_tokens == 40
    assert tune.median_answer_tokens is None  # nothing counted the whole texts
    assert tune.by_corpus == {"archon": pytest.approx(1 / 3)}
    assert (test.questions, test.answerable, test.errors, test.fact_recall) == (2, 1, 1, 1.0)
    assert test.refusal_rate is None  # no unanswerable question in that split
    assert total.split == "all" and total.questions == 7
    table = report([tune, test, total])
    assert table.splitlines()[1].startswith("tune")
    assert "errors 1" in table


def test_the_judged_set_loads_and_splits(tmp_path: Path) -> None:
    every = load_answers(ANSWERS)
    assert len(every) >= 40
    tune = load_answers(ANSWERS, "tune")
    test = load_answers(ANSWERS, "test")
    assert len(tune) + len(test) == len(every)
    assert all(q.facts and q.cite for q in every if q.answerable)
    assert any(not q.answerable for q in tune) and any(not q.answerable for q in test)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "facts": [], "answerable": True}) + "\n")
    with pytest.raises(ConfigError, match="needs facts"):
        load_answers(bad)
    with pytest.raises(ConfigError, match="holds no question of split 'x'"):
        load_answers(ANSWERS, "x")


def test_the_whole_answers_length_when_counted() -> None:
    answers = [answer(SYNC, "From [1] a.md:\n\nquote\n\nmodel", tokens=t) for t in (10, 20, 30)]
    for a, whole in zip(answers, (50, 70, 90), strict=True):
        a.answer_tokens = whole
    [tune] = summarise(answers)
    assert (tune.median_tokens, tune.median_answer_tokens) == (20, 70)
    assert "answer-tokens" in report([tune]) and " 70 " in report([tune])
